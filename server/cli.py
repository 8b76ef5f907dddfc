"""``apikeys-server``: the service's entry point.

A bad option stops the server before it does anything, with one line naming
the option and exit status 2; an unreachable database at start is one line
and exit status 1. Neither prints a traceback. With ``--workers`` above 1 the
process prepares and migrates once, then supervises that many forked servers
(``server.workers``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.app import Wiring, prepare, serve
from server.domain.errors import StoreUnavailable
from server.logs import configure_logging
from server.metrics import MetricsProcess
from server.settings import (
    Settings,
    SettingsError,
    ensure_database_present,
    load_settings,
    split_address,
)
from server.store import migrate
from server.workers import PortReservation, PortUnavailable, supervise

log = logging.getLogger(__name__)

HEALTH_TIMEOUT = 2.0
# What a worker needs after its shutdown grace: flushing last-used times and
# closing its store, each bounded by the database timeouts.
WORKER_STOP_ALLOWANCE_S = 15.0
T = TypeVar("T")


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    wiring: Wiring | None = None,
) -> int:
    """Runs ``apikeys-server`` with ``argv`` and ``environ`` (by default the
    process's own); returns the exit status. ``wiring`` replaces the parts
    the server is built from (benchmarks run variants this way)."""
    try:
        settings = load_settings(argv, environ)
    except SettingsError as exc:
        print(f"apikeys-server: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if settings.command == "health":
        return _guarded(lambda: _run(settings, lambda: _probe_health(settings)))
    if settings.command == "migrate":
        return _guarded(lambda: _migrate(settings))
    if settings.workers > 1:
        return _guarded(lambda: _serve_workers(settings, wiring))
    return _guarded(lambda: _serve(settings, wiring))


def _serve(settings: Settings, wiring: Wiring | None, metrics: MetricsProcess | None = None) -> int:
    metrics_dir = None
    if metrics is not None:
        metrics.leave_to_the_metrics_process()
        metrics_dir = metrics.directory
    _run(settings, lambda: serve(settings, wiring, metrics_dir=metrics_dir))
    return 0


def _migrate(settings: Settings) -> int:
    ensure_database_present(settings)
    _run(settings, lambda: migrate(settings.database_url))
    return 0


def _serve_workers(settings: Settings, wiring: Wiring | None) -> int:
    with contextlib.closing(_reserved_ports(settings)):
        # Generated secrets, the development key pair and the schema are
        # made once here, so the workers do not race to make them; the
        # event loop this takes is closed again before the first fork.
        prepare(settings)
        _migrate(settings)
        if settings.metrics_listen is None:
            return supervise(
                settings.workers,
                lambda: _guarded(lambda: _serve(settings, wiring)),
                stop_timeout=settings.shutdown_grace + WORKER_STOP_ALLOWANCE_S,
            )
        # Forked before the workers, so that the supervisor never runs a
        # thread or event loop of its own for the metrics.
        with contextlib.closing(MetricsProcess(settings.metrics_listen)) as metrics:
            metrics.start()
            return supervise(
                settings.workers,
                lambda: _guarded(lambda: _serve(settings, wiring, metrics)),
                stop_timeout=settings.shutdown_grace + WORKER_STOP_ALLOWANCE_S,
                on_exit=metrics.worker_exited,
            )


def _reserved_ports(settings: Settings) -> PortReservation:
    """The workers' ports, held so that no second server can share them."""
    addresses = {"--listen": split_address(settings.listen)}
    if settings.admin_listen:
        addresses["--admin-listen"] = split_address(settings.admin_listen)
    try:
        return PortReservation.claim(addresses)
    except PortUnavailable as exc:
        raise SettingsError(exc.name, exc.reason) from None


def _guarded(action: Callable[[], int]) -> int:
    """Runs ``action``, turning the expected failures into one line on
    stderr and an exit status."""
    try:
        return action()
    except SettingsError as exc:
        print(f"apikeys-server: error: {exc}", file=sys.stderr)
        return 2
    except StoreUnavailable as exc:
        print(f"apikeys-server: error: database unavailable: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


async def _probe_health(settings: Settings) -> int:
    wildcard = settings.listen_host in ("0.0.0.0", "::")  # noqa: S104 - probing, not binding
    host = "127.0.0.1" if wildcard else settings.listen_host
    target = f"[{host}]:{settings.listen_port}" if ":" in host else f"{host}:{settings.listen_port}"
    async with _health_channel(settings, target) as channel:
        try:
            stub: Any = health_pb2_grpc.HealthStub(channel)
            response = await stub.Check(
                health_pb2.HealthCheckRequest(service=settings.service), timeout=HEALTH_TIMEOUT
            )
        except grpc.aio.AioRpcError as exc:
            print(f"apikeys-server: {target} not healthy: {exc.code().name}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(f"{target} {settings.service or '(server)'} {status}")
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


def _health_channel(settings: Settings, target: str) -> grpc.aio.Channel:
    """A channel to the server's port speaking what the port speaks: TLS
    when the server has a certificate, with the server's own pair as the
    client certificate when it asks for one."""
    if settings.tls_cert is None or settings.tls_key is None:
        return grpc.aio.insecure_channel(target)
    mutual = settings.tls_client_ca is not None
    credentials = grpc.ssl_channel_credentials(
        root_certificates=settings.health_ca.read_bytes() if settings.health_ca else None,
        private_key=settings.tls_key.read_bytes() if mutual else None,
        certificate_chain=settings.tls_cert.read_bytes() if mutual else None,
    )
    options = []
    if settings.health_server_name:
        options.append(("grpc.ssl_target_name_override", settings.health_server_name))
    return grpc.aio.secure_channel(target, credentials, options=options)


def _run(settings: Settings, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    loop_factory = None
    if settings.uvloop:
        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
        except ImportError:
            log.info("uvloop not installed; using asyncio's event loop")
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main())
