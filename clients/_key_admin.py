"""Clients of the ``KeyAdmin`` service, used by admin tooling and the ``apikeys`` CLI.

Every call carries ``authorization: Bearer <token>`` metadata. Methods return
the generated messages as they are. Async methods take ``timeout`` rather than
relying on ``asyncio.timeout`` because it becomes the gRPC deadline the server
sees.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Final, TypeVar

import grpc
from google.protobuf import duration_pb2, field_mask_pb2

from clients._channel import AsyncChannelClient, ChannelClient, ChannelOptions, RetryPolicy
from voiso.apikeys.v1 import api_key_pb2, key_admin_pb2, key_admin_pb2_grpc

__all__ = ["DEFAULT_ADMIN_TIMEOUT", "AsyncKeyAdminClient", "KeyAdminClient"]

DEFAULT_ADMIN_TIMEOUT: Final = 5.0
"""Seconds an admin call may take, retries included, unless options or call say otherwise."""

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


def _metadata(token: str) -> tuple[tuple[str, str], ...]:
    # Checked here so that gRPC never gets to quote a bad token in an error message.
    if not token or not token.isascii() or not token.isprintable() or " " in token:
        raise ValueError("the admin token must be non-empty printable ASCII without spaces")
    return (("authorization", f"Bearer {token}"),)


def _list_keys_request(
    query: str, page_size: int, page_token: str
) -> key_admin_pb2.ListKeysRequest:
    return key_admin_pb2.ListKeysRequest(query=query, page_size=page_size, page_token=page_token)


def _list_audit_events_request(
    key_id: str, page_size: int, page_token: str
) -> key_admin_pb2.ListAuditEventsRequest:
    return key_admin_pb2.ListAuditEventsRequest(
        key_id=key_id, page_size=page_size, page_token=page_token
    )


def _create_request(
    name: str,
    description: str,
    scopes: Sequence[str],
    expire_time: datetime | None,
    allowed_cidrs: Sequence[str],
) -> key_admin_pb2.CreateKeyRequest:
    request = key_admin_pb2.CreateKeyRequest(
        name=name, description=description, scopes=scopes, allowed_cidrs=allowed_cidrs
    )
    if expire_time is not None:
        request.expire_time.FromDatetime(_aware(expire_time))
    return request


def _aware(moment: datetime) -> datetime:
    # A naive datetime would be read as local time by some and UTC by others.
    if moment.utcoffset() is None:
        raise ValueError("expire_time must be timezone-aware")
    return moment


def _roll_request(key_id: str, overlap: timedelta) -> key_admin_pb2.RollKeyRequest:
    duration = duration_pb2.Duration()
    duration.FromTimedelta(overlap)
    return key_admin_pb2.RollKeyRequest(id=key_id, overlap=duration)


def _update_request(
    key_id: str,
    name: str | None,
    description: str | None,
    scopes: Sequence[str] | None,
    expire_time: datetime | None = None,
    clear_expire_time: bool = False,
    allowed_cidrs: Sequence[str] | None = None,
) -> key_admin_pb2.UpdateKeyRequest:
    request = key_admin_pb2.UpdateKeyRequest(id=key_id)
    paths = []
    if expire_time is not None and clear_expire_time:
        raise ValueError("give expire_time or clear_expire_time, not both")
    if expire_time is not None:
        request.expire_time.FromDatetime(_aware(expire_time))
    if expire_time is not None or clear_expire_time:
        paths.append("expire_time")
    if allowed_cidrs is not None:
        request.allowed_cidrs.extend(allowed_cidrs)
        paths.append("allowed_cidrs")
    if name is not None:
        request.name = name
        paths.append("name")
    if description is not None:
        request.description = description
        paths.append("description")
    if scopes is not None:
        request.scopes.extend(scopes)
        paths.append("scopes")
    if not paths:
        # An empty mask means name, description and scopes to the server:
        # never send one by accident.
        raise ValueError("update_key needs at least one field to change")
    request.update_mask.CopyFrom(field_mask_pb2.FieldMask(paths=paths))
    return request


class KeyAdminClient(ChannelClient):
    """A blocking ``KeyAdmin`` client acting with one admin token.

    Failed calls raise :class:`~clients.ApiKeysError` subclasses. Calls that
    fail with ``UNAVAILABLE`` are retried, except ``create_key``: a retry after
    a lost answer would create a second key.
    """

    def __init__(self, options: ChannelOptions | None = None, *, token: str) -> None:
        # Checked before a channel exists, so a bad token leaves nothing open.
        metadata = _metadata(token)
        super().__init__(options, default_timeout=DEFAULT_ADMIN_TIMEOUT)
        self._metadata = metadata
        self._once = dataclasses.replace(self._retrier, policy=RetryPolicy(max_attempts=1))
        self._stub = key_admin_pb2_grpc.KeyAdminStub(self._channel)

    def create_key(
        self,
        name: str,
        description: str = "",
        scopes: Sequence[str] = (),
        *,
        expire_time: datetime | None = None,
        allowed_cidrs: Sequence[str] = (),
        timeout: float | None = None,
    ) -> tuple[api_key_pb2.ApiKey, str]:
        """Creates a key; returns it and its secret, which is shown only this once.

        ``expire_time`` (timezone-aware, in the future) ends the key's use;
        ``allowed_cidrs`` limits the networks it may be used from.
        """
        request = _create_request(name, description, scopes, expire_time, allowed_cidrs)
        response = self._call(self._stub.CreateKey, request, timeout, retry=False)
        return response.key, response.secret

    def get_key(self, key_id: str, *, timeout: float | None = None) -> api_key_pb2.ApiKey:
        """One key of the token's contact center."""
        request = key_admin_pb2.GetKeyRequest(id=key_id)
        response = self._call(self._stub.GetKey, request, timeout)
        return response.key

    def list_keys(
        self,
        query: str = "",
        page_size: int = 0,
        page_token: str = "",
        *,
        timeout: float | None = None,
    ) -> key_admin_pb2.ListKeysResponse:
        """One page of keys, newest first; ``page_size`` 0 is the server's default (50)."""
        request = _list_keys_request(query, page_size, page_token)
        return self._call(self._stub.ListKeys, request, timeout)

    def iter_keys(
        self, query: str = "", page_size: int = 0, *, timeout: float | None = None
    ) -> Iterator[api_key_pb2.ApiKey]:
        """Every matching key, newest first, fetching page by page; ``timeout`` is per page."""
        page_token = ""
        while True:
            page = self.list_keys(query, page_size, page_token, timeout=timeout)
            yield from page.keys
            page_token = page.next_page_token
            if not page_token:
                return

    def update_key(
        self,
        key_id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        scopes: Sequence[str] | None = None,
        expire_time: datetime | None = None,
        clear_expire_time: bool = False,
        allowed_cidrs: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> api_key_pb2.ApiKey:
        """Changes the given fields only (the update mask names exactly those); returns the key.

        ``clear_expire_time`` removes the expiry; an empty ``allowed_cidrs``
        lets the key be used from any address again.
        """
        request = _update_request(
            key_id, name, description, scopes, expire_time, clear_expire_time, allowed_cidrs
        )
        response = self._call(self._stub.UpdateKey, request, timeout)
        return response.key

    def disable_key(self, key_id: str, *, timeout: float | None = None) -> api_key_pb2.ApiKey:
        """Disables a key: refused by every check, kept with its history."""
        request = key_admin_pb2.DisableKeyRequest(id=key_id)
        return self._call(self._stub.DisableKey, request, timeout).key

    def enable_key(self, key_id: str, *, timeout: float | None = None) -> api_key_pb2.ApiKey:
        """Enables a disabled key again."""
        request = key_admin_pb2.EnableKeyRequest(id=key_id)
        return self._call(self._stub.EnableKey, request, timeout).key

    def roll_key(
        self, key_id: str, *, overlap: timedelta, timeout: float | None = None
    ) -> tuple[api_key_pb2.ApiKey, str]:
        """Gives a key a new secret, returned this once; the old one keeps
        working for ``overlap`` (zero: not at all). Not retried: a retry after
        a lost answer would roll again and end the first overlap."""
        request = _roll_request(key_id, overlap)
        response = self._call(self._stub.RollKey, request, timeout, retry=False)
        return response.key, response.secret

    def delete_key(self, key_id: str, *, timeout: float | None = None) -> None:
        """Deletes a key, revoking it at once."""
        request = key_admin_pb2.DeleteKeyRequest(id=key_id)
        self._call(self._stub.DeleteKey, request, timeout)

    def reveal_key(self, key_id: str, *, timeout: float | None = None) -> str:
        """A key's full secret; the server audits every reveal."""
        request = key_admin_pb2.RevealKeyRequest(id=key_id)
        response = self._call(self._stub.RevealKey, request, timeout)
        return response.secret

    def list_scopes(self, *, timeout: float | None = None) -> list[api_key_pb2.ScopeInfo]:
        """The scope catalog, sorted by name."""
        request = key_admin_pb2.ListScopesRequest()
        response = self._call(self._stub.ListScopes, request, timeout)
        return list(response.scopes)

    def list_audit_events(
        self,
        key_id: str = "",
        page_size: int = 0,
        page_token: str = "",
        *,
        timeout: float | None = None,
    ) -> key_admin_pb2.ListAuditEventsResponse:
        """One page of audit events, newest first, of one key if ``key_id`` is set."""
        request = _list_audit_events_request(key_id, page_size, page_token)
        return self._call(self._stub.ListAuditEvents, request, timeout)

    def iter_audit_events(
        self, key_id: str = "", page_size: int = 0, *, timeout: float | None = None
    ) -> Iterator[api_key_pb2.AuditEvent]:
        """Every matching audit event, newest first, page by page; ``timeout`` is per page."""
        page_token = ""
        while True:
            page = self.list_audit_events(key_id, page_size, page_token, timeout=timeout)
            yield from page.events
            page_token = page.next_page_token
            if not page_token:
                return

    def _call(
        self,
        rpc: grpc.UnaryUnaryMultiCallable[_Request, _Response],
        request: _Request,
        timeout: float | None,
        *,
        retry: bool = True,
    ) -> _Response:
        """Calls ``rpc`` with the token, retried if ``retry``, within ``timeout`` or the default."""
        return (self._retrier if retry else self._once).call(
            lambda remaining: rpc(request, timeout=remaining, metadata=self._metadata),
            timeout=self._timeout if timeout is None else timeout,
        )


class AsyncKeyAdminClient(AsyncChannelClient):
    """The ``asyncio`` form of :class:`KeyAdminClient`; create it inside the event loop."""

    def __init__(self, options: ChannelOptions | None = None, *, token: str) -> None:
        # Checked before a channel exists, so a bad token leaves nothing open.
        metadata = _metadata(token)
        super().__init__(options, default_timeout=DEFAULT_ADMIN_TIMEOUT)
        self._metadata = metadata
        self._once = dataclasses.replace(self._retrier, policy=RetryPolicy(max_attempts=1))
        self._stub = key_admin_pb2_grpc.KeyAdminStub(self._channel)

    async def create_key(
        self,
        name: str,
        description: str = "",
        scopes: Sequence[str] = (),
        *,
        expire_time: datetime | None = None,
        allowed_cidrs: Sequence[str] = (),
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> tuple[api_key_pb2.ApiKey, str]:
        """Creates a key; returns it and its secret, which is shown only this once.

        ``expire_time`` (timezone-aware, in the future) ends the key's use;
        ``allowed_cidrs`` limits the networks it may be used from.
        """
        request = _create_request(name, description, scopes, expire_time, allowed_cidrs)
        response = await self._call(self._stub.CreateKey, request, timeout, retry=False)
        return response.key, response.secret

    async def get_key(
        self,
        key_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> api_key_pb2.ApiKey:
        """One key of the token's contact center."""
        request = key_admin_pb2.GetKeyRequest(id=key_id)
        response = await self._call(self._stub.GetKey, request, timeout)
        return response.key

    async def list_keys(
        self,
        query: str = "",
        page_size: int = 0,
        page_token: str = "",
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> key_admin_pb2.ListKeysResponse:
        """One page of keys, newest first; ``page_size`` 0 is the server's default (50)."""
        request = _list_keys_request(query, page_size, page_token)
        return await self._call(self._stub.ListKeys, request, timeout)

    async def iter_keys(
        self,
        query: str = "",
        page_size: int = 0,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> AsyncIterator[api_key_pb2.ApiKey]:
        """Every matching key, newest first, fetching page by page; ``timeout`` is per page."""
        page_token = ""
        while True:
            page = await self.list_keys(query, page_size, page_token, timeout=timeout)
            for key in page.keys:
                yield key
            page_token = page.next_page_token
            if not page_token:
                return

    async def update_key(
        self,
        key_id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        scopes: Sequence[str] | None = None,
        expire_time: datetime | None = None,
        clear_expire_time: bool = False,
        allowed_cidrs: Sequence[str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> api_key_pb2.ApiKey:
        """Changes the given fields only (the update mask names exactly those); returns the key.

        ``clear_expire_time`` removes the expiry; an empty ``allowed_cidrs``
        lets the key be used from any address again.
        """
        request = _update_request(
            key_id, name, description, scopes, expire_time, clear_expire_time, allowed_cidrs
        )
        response = await self._call(self._stub.UpdateKey, request, timeout)
        return response.key

    async def disable_key(
        self,
        key_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> api_key_pb2.ApiKey:
        """Disables a key: refused by every check, kept with its history."""
        request = key_admin_pb2.DisableKeyRequest(id=key_id)
        return (await self._call(self._stub.DisableKey, request, timeout)).key

    async def enable_key(
        self,
        key_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> api_key_pb2.ApiKey:
        """Enables a disabled key again."""
        request = key_admin_pb2.EnableKeyRequest(id=key_id)
        return (await self._call(self._stub.EnableKey, request, timeout)).key

    async def roll_key(
        self,
        key_id: str,
        *,
        overlap: timedelta,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> tuple[api_key_pb2.ApiKey, str]:
        """The awaitable form of :meth:`KeyAdminClient.roll_key`."""
        request = _roll_request(key_id, overlap)
        response = await self._call(self._stub.RollKey, request, timeout, retry=False)
        return response.key, response.secret

    async def delete_key(
        self,
        key_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None:
        """Deletes a key, revoking it at once."""
        request = key_admin_pb2.DeleteKeyRequest(id=key_id)
        await self._call(self._stub.DeleteKey, request, timeout)

    async def reveal_key(
        self,
        key_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> str:
        """A key's full secret; the server audits every reveal."""
        request = key_admin_pb2.RevealKeyRequest(id=key_id)
        response = await self._call(self._stub.RevealKey, request, timeout)
        return response.secret

    async def list_scopes(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> list[api_key_pb2.ScopeInfo]:
        """The scope catalog, sorted by name."""
        request = key_admin_pb2.ListScopesRequest()
        response = await self._call(self._stub.ListScopes, request, timeout)
        return list(response.scopes)

    async def list_audit_events(
        self,
        key_id: str = "",
        page_size: int = 0,
        page_token: str = "",
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> key_admin_pb2.ListAuditEventsResponse:
        """One page of audit events, newest first, of one key if ``key_id`` is set."""
        request = _list_audit_events_request(key_id, page_size, page_token)
        return await self._call(self._stub.ListAuditEvents, request, timeout)

    async def iter_audit_events(
        self,
        key_id: str = "",
        page_size: int = 0,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> AsyncIterator[api_key_pb2.AuditEvent]:
        """Every matching audit event, newest first, page by page; ``timeout`` is per page."""
        page_token = ""
        while True:
            page = await self.list_audit_events(key_id, page_size, page_token, timeout=timeout)
            for event in page.events:
                yield event
            page_token = page.next_page_token
            if not page_token:
                return

    def _call(
        self,
        rpc: grpc.aio.UnaryUnaryMultiCallable[_Request, _Response],
        request: _Request,
        timeout: float | None,
        *,
        retry: bool = True,
    ) -> Awaitable[_Response]:
        """The awaitable form of :meth:`KeyAdminClient._call`."""
        return (self._retrier if retry else self._once).acall(
            lambda remaining: rpc(request, timeout=remaining, metadata=self._metadata),
            timeout=self._timeout if timeout is None else timeout,
        )
