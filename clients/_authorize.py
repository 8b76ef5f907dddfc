"""Clients of the ``Authorize`` service, which v4 API services call on every request.

Async methods take ``timeout`` rather than relying on ``asyncio.timeout``
because it becomes the gRPC deadline the server sees and stops working at.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

import grpc

from clients._channel import AsyncChannelClient, ChannelClient, ChannelOptions
from clients._exceptions import InternalError
from voiso.apikeys.v1 import authorize_pb2, authorize_pb2_grpc

__all__ = [
    "DEFAULT_CHECK_TIMEOUT",
    "MAX_CHECKS_PER_BATCH",
    "AsyncAuthorizeClient",
    "AuthorizeClient",
    "CheckItem",
    "Decision",
    "Reason",
    "key_from_authorization",
]

DEFAULT_CHECK_TIMEOUT: Final = 0.1
"""Seconds a check may take, retries included, unless the options or the call say otherwise."""

MAX_CHECKS_PER_BATCH: Final = 100
"""How many checks one ``CheckBatch`` call carries; ``check_many`` splits longer lists."""

CheckItem = tuple[str, str, str]
"""``(key, method, path)`` of one check."""

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


class Reason(enum.StrEnum):
    """Why a check was decided as it was; values are the proto enum's names."""

    UNSPECIFIED = "REASON_UNSPECIFIED"
    ALLOWED = "REASON_ALLOWED"
    KEY_MALFORMED = "REASON_KEY_MALFORMED"
    KEY_NOT_FOUND = "REASON_KEY_NOT_FOUND"
    SCOPE_MISSING = "REASON_SCOPE_MISSING"
    ROUTE_NOT_FOUND = "REASON_ROUTE_NOT_FOUND"
    KEY_DISABLED = "REASON_KEY_DISABLED"
    KEY_EXPIRED = "REASON_KEY_EXPIRED"
    IP_NOT_ALLOWED = "REASON_IP_NOT_ALLOWED"

    @classmethod
    def from_proto(cls, value: int) -> Reason:
        """The reason for a proto enum value; ``UNSPECIFIED`` for values newer than this client."""
        try:
            return cls(authorize_pb2.Reason.Name(authorize_pb2.Reason.ValueType(value)))
        except ValueError:
            return cls.UNSPECIFIED


@dataclass(frozen=True, kw_only=True, slots=True)
class Decision:
    """The answer to one check.

    ``allowed`` is true only when the key exists and one of its scopes covers
    the route. ``key_id``, ``contact_center_id`` and ``granted_scopes`` are set
    when the key was found; ``required_scopes`` (any one suffices) and
    ``route`` when a route matched.
    """

    allowed: bool
    reason: Reason
    key_id: str = ""
    contact_center_id: str = ""
    granted_scopes: tuple[str, ...] = ()
    required_scopes: tuple[str, ...] = ()
    route: str = ""

    @classmethod
    def from_proto(cls, response: authorize_pb2.CheckResponse) -> Decision:
        """The decision a ``CheckResponse`` carries."""
        reason = Reason.from_proto(response.reason)
        return cls(
            # Fails closed: an allow without the reason that proves it is a deny.
            allowed=response.allowed and reason is Reason.ALLOWED,
            reason=reason,
            key_id=response.key_id,
            contact_center_id=response.contact_center_id,
            granted_scopes=tuple(response.granted_scopes),
            required_scopes=tuple(response.required_scopes),
            route=response.route,
        )


def key_from_authorization(value: str) -> str:
    """The API key in a raw key or an ``Authorization`` header value.

    ``"Bearer <key>"`` (scheme case-insensitive) gives ``<key>``; surrounding
    whitespace is dropped. Any other scheme is returned as is, so the service
    answers it as a malformed key.
    """
    value = value.strip()
    parts = value.split(None, 1)
    if parts and parts[0].lower() == "bearer":
        return parts[1] if len(parts) == 2 else ""
    return value


def _check_request(
    key: str, method: str, path: str, client_ip: str | None = None
) -> authorize_pb2.CheckRequest:
    return authorize_pb2.CheckRequest(
        key=key_from_authorization(key), method=method, path=path, client_ip=client_ip or ""
    )


def _batches(items: Sequence[CheckItem]) -> list[authorize_pb2.CheckBatchRequest]:
    return [
        authorize_pb2.CheckBatchRequest(
            checks=[_check_request(*item) for item in items[start : start + MAX_CHECKS_PER_BATCH]]
        )
        for start in range(0, len(items), MAX_CHECKS_PER_BATCH)
    ]


def _batch_results(
    request: authorize_pb2.CheckBatchRequest, response: authorize_pb2.CheckBatchResponse
) -> Sequence[authorize_pb2.CheckResponse]:
    if len(response.results) != len(request.checks):
        # Results pair with checks by position; a short answer cannot be paired safely.
        raise InternalError(
            grpc.StatusCode.INTERNAL,
            f"CheckBatch answered {len(response.results)} results for {len(request.checks)} checks",
        )
    return response.results


def _batch_decisions(
    request: authorize_pb2.CheckBatchRequest, response: authorize_pb2.CheckBatchResponse
) -> list[Decision]:
    return [Decision.from_proto(result) for result in _batch_results(request, response)]


class AuthorizeClient(ChannelClient):
    """A blocking ``Authorize`` client; one channel per client, shared by all calls and threads.

    Failed calls raise :class:`~clients.ApiKeysError` subclasses; a deny is a
    :class:`Decision`, not an error.
    """

    def __init__(self, options: ChannelOptions | None = None) -> None:
        super().__init__(options, default_timeout=DEFAULT_CHECK_TIMEOUT)
        self._stub = authorize_pb2_grpc.AuthorizeStub(self._channel)

    def check(
        self,
        key: str,
        method: str,
        path: str,
        *,
        client_ip: str | None = None,
        timeout: float | None = None,
    ) -> Decision:
        """Whether ``key`` (a raw key or ``"Bearer <key>"``) may call ``method``
        ``path`` from ``client_ip`` (the caller's address, for keys limited to
        networks)."""
        return Decision.from_proto(
            self.check_response(key, method, path, client_ip=client_ip, timeout=timeout)
        )

    def check_response(
        self,
        key: str,
        method: str,
        path: str,
        *,
        client_ip: str | None = None,
        timeout: float | None = None,
    ) -> authorize_pb2.CheckResponse:
        """The server's whole answer to :meth:`check`, with the ``revision``
        and ``cache_ttl`` a caller that reuses answers needs."""
        request = _check_request(key, method, path, client_ip)
        return self._call(self._stub.Check, request, timeout)

    def watch_changes(self) -> Iterator[authorize_pb2.WatchChangesResponse]:
        """The ``WatchChanges`` stream: iterate it for the server's messages;
        it is also a ``grpc.Call`` (``cancel()``). Not retried, no deadline."""
        stream: Iterator[authorize_pb2.WatchChangesResponse] = self._stub.WatchChanges(
            authorize_pb2.WatchChangesRequest()
        )
        return stream

    def check_many(
        self, items: Sequence[CheckItem], *, timeout: float | None = None
    ) -> list[Decision]:
        """Decisions for ``(key, method, path)`` items, in order, in batches of 100.

        ``timeout`` applies to each batch.
        """
        return [
            Decision.from_proto(response)
            for response in self.check_many_responses(items, timeout=timeout)
        ]

    def check_many_responses(
        self, items: Sequence[CheckItem], *, timeout: float | None = None
    ) -> list[authorize_pb2.CheckResponse]:
        """The server's whole answers to :meth:`check_many`, as :meth:`check_response`."""
        return [
            response
            for request in _batches(items)
            for response in _batch_results(
                request, self._call(self._stub.CheckBatch, request, timeout)
            )
        ]

    def _call(
        self,
        rpc: grpc.UnaryUnaryMultiCallable[_Request, _Response],
        request: _Request,
        timeout: float | None,
    ) -> _Response:
        """Calls ``rpc``, retried, within ``timeout`` or the default."""
        return self._retrier.call(
            lambda remaining: rpc(request, timeout=remaining),
            timeout=self._timeout if timeout is None else timeout,
        )


class AsyncAuthorizeClient(AsyncChannelClient):
    """The ``asyncio`` form of :class:`AuthorizeClient`; create it inside the event loop."""

    def __init__(self, options: ChannelOptions | None = None) -> None:
        super().__init__(options, default_timeout=DEFAULT_CHECK_TIMEOUT)
        self._stub = authorize_pb2_grpc.AuthorizeStub(self._channel)

    async def check(
        self,
        key: str,
        method: str,
        path: str,
        *,
        client_ip: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Decision:
        """The awaitable form of :meth:`AuthorizeClient.check`."""
        return Decision.from_proto(
            await self.check_response(key, method, path, client_ip=client_ip, timeout=timeout)
        )

    async def check_response(
        self,
        key: str,
        method: str,
        path: str,
        *,
        client_ip: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> authorize_pb2.CheckResponse:
        """The awaitable form of :meth:`AuthorizeClient.check_response`."""
        request = _check_request(key, method, path, client_ip)
        return await self._call(self._stub.Check, request, timeout)

    def watch_changes(
        self,
    ) -> grpc.aio.UnaryStreamCall[
        authorize_pb2.WatchChangesRequest, authorize_pb2.WatchChangesResponse
    ]:
        """The ``WatchChanges`` stream as an ``async for``-able call; not retried, no deadline."""
        return self._stub.WatchChanges(authorize_pb2.WatchChangesRequest())

    async def check_many(
        self,
        items: Sequence[CheckItem],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> list[Decision]:
        """Decisions for ``(key, method, path)`` items, in order, in batches of 100.

        ``timeout`` applies to each batch.
        """
        return [
            Decision.from_proto(response)
            for response in await self.check_many_responses(items, timeout=timeout)
        ]

    async def check_many_responses(
        self,
        items: Sequence[CheckItem],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> list[authorize_pb2.CheckResponse]:
        """The awaitable form of :meth:`AuthorizeClient.check_many_responses`."""
        responses: list[authorize_pb2.CheckResponse] = []
        for request in _batches(items):
            response = await self._call(self._stub.CheckBatch, request, timeout)
            responses.extend(_batch_results(request, response))
        return responses

    def _call(
        self,
        rpc: grpc.aio.UnaryUnaryMultiCallable[_Request, _Response],
        request: _Request,
        timeout: float | None,
    ) -> Awaitable[_Response]:
        """The awaitable form of :meth:`AuthorizeClient._call`."""
        return self._retrier.acall(
            lambda remaining: rpc(request, timeout=remaining),
            timeout=self._timeout if timeout is None else timeout,
        )
