"""A check waits for the store no longer than the store timeout or the time
left until the caller's deadline, whichever ends first; giving up ends only
that caller's wait, never the lookup other callers share.

The store is a fake at the storage Protocol whose lookups answer only when
released; the cache and the authorizer in front of it are the real ones.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import pytest

from server.cache import CachedKeyStore
from server.domain.authorize import Authorizer
from server.domain.errors import StoreUnavailable
from server.domain.keys import KeyHasher, generate_key
from server.domain.records import KeyRecord
from server.domain.routes import RouteTable
from server.domain.scopes import SCOPE_CATALOG
from server.domain.usage import UsageRecorder
from tests.conftest import KeyFactory

HASHER = KeyHasher(b"store-timeout-secret".ljust(32, b"."))
METHOD, PATH = "GET", "/api/v4/campaigns"
SLACK_S = 0.2


class HeldStore:
    """Answers lookups by hash only once released; counts them."""

    def __init__(self, record: KeyRecord) -> None:
        self.record = record
        self.lookups = 0
        self.release = asyncio.Event()

    async def find_by_lookup_hash(self, lookup_hash: bytes) -> KeyRecord | None:
        self.lookups += 1
        await self.release.wait()
        return self.record if lookup_hash == self.record.lookup_hash else None

    async def record_last_used(self, uses: Mapping[str, datetime]) -> None:
        return None

    async def close(self) -> None:
        return None


def checking(store: HeldStore, *, store_timeout: float) -> Authorizer:
    cache = CachedKeyStore(
        store,  # type: ignore[arg-type]
        ttl=60,
        size=10,
        negative_ttl=60,
        negative_size=10,
    )
    keys: Any = cache
    return Authorizer(
        keys=keys,
        hasher=HASHER,
        routes=RouteTable.load(known_scopes=SCOPE_CATALOG.keys()),
        usage=UsageRecorder(keys, interval=3600),
        store_timeout=store_timeout,
    )


@pytest.fixture
def key_and_store(make_key: KeyFactory) -> tuple[str, HeldStore]:
    key = generate_key()
    return key, HeldStore(make_key(lookup_hash=HASHER.lookup_hash(key)))


async def _seconds_until_unavailable(
    authorizer: Authorizer, key: str, time_left: float | None
) -> float:
    began = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await authorizer.check(key, METHOD, PATH, time_left=time_left)
    return time.monotonic() - began


async def test_a_miss_waits_no_longer_than_the_store_timeout(
    key_and_store: tuple[str, HeldStore],
) -> None:
    key, store = key_and_store
    authorizer = checking(store, store_timeout=0.2)

    waited = await _seconds_until_unavailable(authorizer, key, time_left=None)

    assert 0.2 <= waited < 0.2 + SLACK_S


async def test_a_nearer_deadline_bounds_the_wait_instead(
    key_and_store: tuple[str, HeldStore],
) -> None:
    key, store = key_and_store
    authorizer = checking(store, store_timeout=30)

    waited = await _seconds_until_unavailable(authorizer, key, time_left=0.1)

    assert 0.1 <= waited < 0.1 + SLACK_S


async def test_a_caller_giving_up_leaves_the_shared_lookup_to_the_others(
    key_and_store: tuple[str, HeldStore],
) -> None:
    key, store = key_and_store
    authorizer = checking(store, store_timeout=30)
    patient = asyncio.create_task(authorizer.check(key, METHOD, PATH))
    await asyncio.sleep(0)

    await _seconds_until_unavailable(authorizer, key, time_left=0.05)
    store.release.set()

    assert (await patient).allowed
    assert store.lookups == 1
    # The shared answer was cached: the next check needs no store at all.
    assert (await authorizer.check(key, METHOD, PATH, time_left=0)).allowed
