"""Driving the caching clients in tests: either client through one interface,
and keys whose creation the server has already applied."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from clients import (
    AsyncCachingAuthorizeClient,
    AsyncKeyAdminClient,
    CachingAuthorizeClient,
    ChannelOptions,
    Decision,
)
from tests.harness import Harness
from voiso.apikeys.v1 import authorize_pb2

USERS = ("GET", "/api/v4/users")
# How long the tests give the stream to open.
STREAM_OPENS = 5.0
# The contract's bound for a change to reach a caching client whose stream is fresh.
REFUSED_WITHIN = 1.0


class InThread:
    """The blocking client, each blocking call made from a worker thread."""

    def __init__(self, client: CachingAuthorizeClient) -> None:
        self.client = client

    @property
    def hits(self) -> int:
        return self.client.hits

    @property
    def misses(self) -> int:
        return self.client.misses

    @property
    def fresh(self) -> bool:
        return self.client.fresh

    @property
    def size(self) -> int:
        return self.client.size

    async def check(self, key: str, method: str, path: str, **options: Any) -> Decision:
        return await asyncio.to_thread(self.client.check, key, method, path, **options)

    async def check_many(self, items: Any, **options: Any) -> list[Decision]:
        return await asyncio.to_thread(self.client.check_many, items, **options)

    async def wait_fresh(self, seconds: float) -> bool:
        return await asyncio.to_thread(self.client.wait_fresh, seconds)

    async def close(self) -> None:
        await asyncio.to_thread(self.client.close)


Caching = AsyncCachingAuthorizeClient | InThread
"""Either caching client, as the tests drive it."""
Opener = Callable[..., Awaitable[Caching]]


async def create_key(h: Harness, scopes: list[str]) -> tuple[str, str]:
    """A new key's id and secret, once the server has applied its creation.

    Until then the server's answers for the key carry a revision below the
    creation's sequence, and a caching client rightly drops them when the
    creation reaches it on its stream; tests that count hits start after it.
    """
    watch = h.authorize.WatchChanges(authorize_pb2.WatchChangesRequest())
    try:
        assert (await watch.read()).WhichOneof("event") == "reset"
        async with AsyncKeyAdminClient(ChannelOptions(target=h.target), token=h.token()) as admin:
            key, secret = await admin.create_key("crm", "", scopes)
        async with asyncio.timeout(STREAM_OPENS):
            while True:
                message = await watch.read()
                if message.WhichOneof("event") == "changes" and any(
                    change.key_id == key.id for change in message.changes.changes
                ):
                    return key.id, secret
    finally:
        watch.cancel()
