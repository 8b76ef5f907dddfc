"""What one caller can make the server hold: the HTTP/2 and gRPC bounds.

Each bound grpc-core can enforce is one of its channel arguments, set here
from ``Settings`` (docs/LIMITS.md says what grpc-core does with each, and
which attacks it has no setting for):

- ``grpc.max_concurrent_streams`` is advertised as HTTP/2
  ``MAX_CONCURRENT_STREAMS``; with ``grpc.http.overload_protection`` (on by
  default, set here so that it stays on) a stream keeps counting until the
  server has finished with it, so streams a client resets at once still
  hold their place and the next ones are refused in the transport, before
  any Python runs for them. That is what keeps rapid reset cheap.
- ``grpc.max_receive_message_length`` bounds the bytes one request can make
  the server buffer.
- ``grpc.http2.bdp_probe`` off keeps every flow-control window at HTTP/2's
  64 KiB. With bandwidth-delay probes on, grpc-core advertises 4 MiB per
  stream and per connection, so calls still queued in grpc-core (the ones
  the service has not yet refused or read) can each hold megabytes. The
  service's requests are small, so larger windows buy it nothing.
- Idle and maximum age (with a grace period) close connections the server
  would otherwise keep forever; keepalive pings find dead peers, and a
  client pinging more often than allowed is sent GOAWAY after
  ``MAX_PING_STRIKES`` warnings.

The bounds on calls (how many are in progress, how long a request may take to
arrive) are the service's own: ``server.api.admission``.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.settings import Settings

MAX_PING_STRIKES = 2
KEEPALIVE_TIMEOUT_SECONDS = 20.0


def _millis(seconds: float) -> int:
    return round(seconds * 1000)


@dataclass(frozen=True, kw_only=True, slots=True)
class TransportLimits:
    """The bounds one server applies to every connection and call."""

    max_message_bytes: int
    max_streams_per_connection: int
    max_concurrent_rpcs: int
    request_timeout: float
    connection_idle: float
    connection_max_age: float
    connection_age_grace: float
    keepalive_interval: float
    min_client_ping_interval: float

    @classmethod
    def from_settings(cls, settings: Settings) -> TransportLimits:
        """The bounds ``settings`` asks for."""
        return cls(
            max_message_bytes=settings.max_message_bytes,
            max_streams_per_connection=settings.max_streams_per_connection,
            max_concurrent_rpcs=settings.max_concurrent_rpcs,
            request_timeout=settings.request_timeout,
            connection_idle=settings.connection_idle,
            connection_max_age=settings.connection_max_age,
            connection_age_grace=settings.connection_age_grace,
            keepalive_interval=settings.keepalive_interval,
            min_client_ping_interval=settings.min_client_ping_interval,
        )

    def channel_options(self) -> list[tuple[str, int]]:
        """The grpc-core server arguments that enforce these bounds."""
        return [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.http2.bdp_probe", 0),
            ("grpc.max_concurrent_streams", self.max_streams_per_connection),
            ("grpc.http.overload_protection", 1),
            ("grpc.max_connection_idle_ms", _millis(self.connection_idle)),
            ("grpc.max_connection_age_ms", _millis(self.connection_max_age)),
            ("grpc.max_connection_age_grace_ms", _millis(self.connection_age_grace)),
            ("grpc.keepalive_time_ms", _millis(self.keepalive_interval)),
            ("grpc.keepalive_timeout_ms", _millis(KEEPALIVE_TIMEOUT_SECONDS)),
            (
                "grpc.http2.min_ping_interval_without_data_ms",
                _millis(self.min_client_ping_interval),
            ),
            ("grpc.http2.max_ping_strikes", MAX_PING_STRIKES),
        ]
