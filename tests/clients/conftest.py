"""Fixtures of the client tests: a caching client of each kind, an admin client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from clients import (
    AsyncCachingAuthorizeClient,
    AsyncKeyAdminClient,
    CachingAuthorizeClient,
    ChannelOptions,
)
from tests.clients.caching import STREAM_OPENS, Caching, InThread, Opener
from tests.harness import Harness


@pytest.fixture(params=["sync", "async"])
async def open_client(request: pytest.FixtureRequest) -> AsyncIterator[Opener]:
    """Opens a caching client of the test's kind to a target; closes it after the test."""
    opened: list[Caching] = []

    async def open_(target: str, *, fresh: bool = True, **settings: Any) -> Caching:
        # Generous deadlines: the machine is shared, and these tests are about memory.
        options = ChannelOptions(target=target, timeout=5.0)
        client: Caching
        if request.param == "sync":
            client = InThread(CachingAuthorizeClient(options, **settings))
        else:
            client = AsyncCachingAuthorizeClient(options, **settings)
        opened.append(client)
        if fresh:
            assert await client.wait_fresh(STREAM_OPENS)
        return client

    yield open_
    for client in opened:
        await client.close()


@pytest.fixture
async def admin(harness: Harness) -> AsyncIterator[AsyncKeyAdminClient]:
    async with AsyncKeyAdminClient(
        ChannelOptions(target=harness.target), token=harness.token()
    ) as a:
        yield a
