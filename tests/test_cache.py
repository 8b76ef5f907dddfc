"""The cache's own guarantees, with a store fake at the KeyStore protocol
whose lookups can be held open."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from server.cache import CachedKeyStore
from server.domain.errors import StoreUnavailable
from tests.conftest import KeyFactory


class HeldStore:
    """Answers ``find_by_lookup_hash`` only when released; counts lookups."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.lookups = 0
        self.release = asyncio.Event()

    async def find_by_lookup_hash(self, lookup_hash: bytes) -> Any:
        self.lookups += 1
        await self.release.wait()
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer

    async def close(self) -> None:
        pass


class ManualClock:
    """Monotonic seconds that pass only when the test advances them."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


TTL = 30
NEGATIVE_TTL = 5


def cache_over(store: HeldStore, clock: Callable[[], float] = time.monotonic) -> CachedKeyStore:
    return CachedKeyStore(
        store,  # type: ignore[arg-type]
        ttl=TTL,
        size=10,
        negative_ttl=NEGATIVE_TTL,
        negative_size=10,
        clock=clock,
    )


async def test_concurrent_misses_share_one_lookup(make_key: KeyFactory) -> None:
    record = make_key()
    store = HeldStore(record)
    cache = cache_over(store)
    waiters = [asyncio.create_task(cache.find_by_lookup_hash(b"h")) for _ in range(10)]
    await asyncio.sleep(0)
    store.release.set()
    assert await asyncio.gather(*waiters) == [record] * 10
    assert store.lookups == 1


async def test_a_cancelled_caller_does_not_cancel_the_others(make_key: KeyFactory) -> None:
    record = make_key()
    store = HeldStore(record)
    cache = cache_over(store)
    impatient = asyncio.create_task(cache.find_by_lookup_hash(b"h"))
    patient = asyncio.create_task(cache.find_by_lookup_hash(b"h"))
    await asyncio.sleep(0)
    impatient.cancel()
    with pytest.raises(asyncio.CancelledError):
        await impatient
    store.release.set()
    assert await asyncio.wait_for(patient, timeout=5) is record
    assert await cache.find_by_lookup_hash(b"h") is record
    assert store.lookups == 1


async def test_an_outage_reaches_every_waiter_and_is_not_cached() -> None:
    store = HeldStore(StoreUnavailable("down"))
    cache = cache_over(store)
    waiters = [asyncio.create_task(cache.find_by_lookup_hash(b"h")) for _ in range(3)]
    await asyncio.sleep(0)
    store.release.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(result, StoreUnavailable) for result in results)
    store.answer = None
    assert await cache.find_by_lookup_hash(b"h") is None
    assert store.lookups == 2


async def test_a_lookup_under_way_during_an_invalidation_is_not_joined_or_kept(
    make_key: KeyFactory,
) -> None:
    stale = make_key()
    store = HeldStore(stale)
    cache = cache_over(store)
    first = asyncio.create_task(cache.find_by_lookup_hash(b"h"))
    await asyncio.sleep(0)
    cache.invalidate([b"h"])  # e.g. the key was deleted meanwhile
    store.answer = None
    second = asyncio.create_task(cache.find_by_lookup_hash(b"h"))
    await asyncio.sleep(0)
    store.release.set()
    assert await second is None
    await first
    assert await cache.find_by_lookup_hash(b"h") is None


async def test_cached_answers_only_from_memory_within_the_ttl(make_key: KeyFactory) -> None:
    record = make_key()
    store = HeldStore(record)
    clock = ManualClock()
    cache = cache_over(store, clock)
    assert cache.cached(b"h") is None
    assert store.lookups == 0  # a miss is an answer from memory too
    store.release.set()
    assert await cache.find_by_lookup_hash(b"h") is record
    assert cache.cached(b"h") is record
    cache.invalidate([b"h"])
    assert cache.cached(b"h") is None
    assert await cache.find_by_lookup_hash(b"h") is record
    clock.advance(TTL - 1)
    assert cache.cached(b"h") is record
    clock.advance(1)
    assert cache.cached(b"h") is None
    assert store.lookups == 2


async def test_a_key_unknown_here_is_found_once_the_negative_ttl_has_passed(
    make_key: KeyFactory,
) -> None:
    store = HeldStore(None)
    store.release.set()
    clock = ManualClock()
    cache = cache_over(store, clock)
    assert await cache.find_by_lookup_hash(b"h") is None
    record = make_key()
    store.answer = record  # e.g. created through another replica
    clock.advance(NEGATIVE_TTL - 1)
    assert await cache.find_by_lookup_hash(b"h") is None
    assert store.lookups == 1
    clock.advance(1)
    assert await cache.find_by_lookup_hash(b"h") is record
    assert store.lookups == 2


async def test_an_unknown_key_is_never_cached_as_found() -> None:
    store = HeldStore(None)
    store.release.set()
    cache = cache_over(store)
    assert await cache.find_by_lookup_hash(b"h") is None
    assert cache.cached(b"h") is None
    assert await cache.find_by_lookup_hash(b"h") is None
    assert store.lookups == 1


async def test_a_creation_elsewhere_keeps_what_a_lookup_under_way_found(
    make_key: KeyFactory,
) -> None:
    record = make_key()
    store = HeldStore(record)
    cache = cache_over(store)
    lookup = asyncio.create_task(cache.find_by_lookup_hash(b"h"))
    await asyncio.sleep(0)
    cache.forget_unknown([b"h"])
    store.release.set()

    assert await lookup is record
    assert cache.cached(b"h") is record


async def test_a_creation_elsewhere_stops_an_unknown_found_before_it_from_being_kept() -> None:
    store = HeldStore(None)
    cache = cache_over(store)
    lookup = asyncio.create_task(cache.find_by_lookup_hash(b"h"))
    await asyncio.sleep(0)
    cache.forget_unknown([b"h"])
    store.release.set()
    assert await lookup is None

    assert await cache.find_by_lookup_hash(b"h") is None
    assert store.lookups == 2
