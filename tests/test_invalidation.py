"""``ChangeFollower`` against a fake change feed (the storage Protocol)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

from server.domain.errors import StoreUnavailable
from server.domain.records import ChangeKind, ChangePage, KeyChange
from server.invalidation import ChangeFollower


class FakeFeed:
    def __init__(self) -> None:
        self.rows: dict[int, bytes] = {}
        self.pruned_through = 0
        self.down = False
        self.reads = 0

    def commit(self, seq: int) -> bytes:
        self.rows[seq] = f"hash-{seq}".encode()
        return self.rows[seq]

    async def latest_change(self) -> int:
        return max([self.pruned_through, *self.rows])

    async def changes_after(self, seq: int, *, limit: int) -> ChangePage:
        self.reads += 1
        if self.down:
            raise StoreUnavailable("down")
        changes = tuple(
            KeyChange(seq=s, lookup_hash=h, kind=ChangeKind.DELETED, time=datetime.now(UTC))
            for s, h in sorted(self.rows.items())
            if s > seq
        )
        return ChangePage(changes=changes[:limit], pruned_through=self.pruned_through)

    async def prune_changes(self, before: datetime) -> int:
        return 0

    async def follow_notifications(self, wake: Callable[[], None]) -> None:
        return


class RecordingCache:
    def __init__(self) -> None:
        self.invalidated: list[bytes] = []
        self.clears = 0

    def invalidate(self, lookup_hashes: list[bytes]) -> None:
        self.invalidated.extend(lookup_hashes)

    def clear(self) -> None:
        self.clears += 1


async def test_each_change_is_applied_once_even_when_committed_out_of_order() -> None:
    feed, cache = FakeFeed(), RecordingCache()
    follower = ChangeFollower(feed, cache, poll=1, gap_window=60)
    await follower.sync()
    first, third = feed.commit(1), feed.commit(3)
    await follower.sync()
    late = feed.commit(2)  # took its seq before 3 but committed after it
    await follower.sync()
    await follower.sync()

    assert cache.invalidated == [first, third, late]


async def test_a_gap_that_never_fills_is_given_up_after_the_window() -> None:
    feed, cache = FakeFeed(), RecordingCache()
    follower = ChangeFollower(feed, cache, poll=1, gap_window=0.05)
    await follower.sync()
    feed.commit(1)
    feed.commit(3)
    await follower.sync()
    await asyncio.sleep(0.06)
    await follower.sync()
    feed.rows.clear()  # a reader still waiting on seq 2 would re-read from 1
    newest = feed.commit(4)
    await follower.sync()

    assert cache.invalidated[-1] == newest and cache.invalidated.count(newest) == 1


async def test_falling_behind_pruning_clears_the_cache() -> None:
    feed, cache = FakeFeed(), RecordingCache()
    follower = ChangeFollower(feed, cache, poll=1)
    await follower.sync()
    feed.commit(1)
    feed.commit(2)
    feed.rows.clear()
    feed.pruned_through = 2
    after = feed.commit(3)
    await follower.sync()

    assert cache.clears == 1
    assert cache.invalidated == [after]


async def test_an_unreadable_feed_is_retried_at_the_next_poll() -> None:
    feed, cache = FakeFeed(), RecordingCache()
    follower = ChangeFollower(feed, cache, poll=0.02)
    await follower.start()
    try:
        feed.down = True
        reads = feed.reads
        await asyncio.sleep(0.2)
        # Retried on the poll interval, not in a hot loop.
        assert 3 <= feed.reads - reads <= 15
        feed.down = False
        deleted = feed.commit(1)
        await asyncio.sleep(0.1)
    finally:
        await follower.stop()

    assert cache.invalidated == [deleted]
