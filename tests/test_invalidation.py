"""``ChangeFollower`` against a fake change feed (the storage Protocol),
driven step by step: the follower's waits between reads are the test's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from server.domain.errors import StoreUnavailable
from server.domain.records import ChangeKind, ChangePage, FeedPosition, KeyChange, Mark
from server.invalidation import PAGE_SIZE, ChangeFollower


class FakeFeed:
    """Entries in commit order; a position is how many of them a reader has
    read, and the database it read them from."""

    def __init__(self) -> None:
        self.committed: list[KeyChange] = []
        self.pruned = 0
        self.database = "first"
        self.down = False
        self.reads = 0
        self.pruned_with: list[timedelta] = []

    def commit(
        self, seq: int, kind: ChangeKind = ChangeKind.DELETED, *, key_id: str | None = None
    ) -> bytes:
        lookup_hash = f"hash-{seq}".encode()
        self.committed.append(
            KeyChange(
                seq=seq,
                sequence=seq,
                key_id=f"key-{seq}" if key_id is None else key_id,
                lookup_hash=lookup_hash,
                kind=kind,
                time=_NOW,
            )
        )
        return lookup_hash

    def commit_unnamed(self, seq: int) -> None:
        """An entry as the release before key ids wrote it."""
        self.committed.append(
            KeyChange(
                seq=seq,
                sequence=seq,
                key_id=None,
                lookup_hash=f"hash-{seq}".encode(),
                kind=ChangeKind.UPDATED,
                time=_NOW,
            )
        )

    def replace_database(self) -> None:
        self.committed, self.pruned, self.database = [], 0, "second"

    async def changes_since(self, position: FeedPosition | None, *, limit: int) -> ChangePage:
        self.reads += 1
        if self.down:
            raise StoreUnavailable("down")
        end = FeedPosition(f"{self.database}:{len(self.committed)}")
        mark = self.committed[-1].sequence if self.committed else 0
        if position is None:
            return ChangePage(changes=(), position=end, mark=mark)
        database, read = position.split(":")
        if database != self.database:
            return ChangePage(changes=(), position=end, mark=mark, reset=True)
        start = max(int(read), self.pruned)
        changes = tuple(self.committed[start : start + limit])
        read_to = start + len(changes)
        return ChangePage(
            changes=changes,
            position=FeedPosition(f"{self.database}:{read_to}"),
            mark=self.committed[read_to - 1].sequence if read_to else 0,
            more=start + len(changes) < len(self.committed),
            missed=int(read) < self.pruned,
        )

    async def prune_changes(self, older_than: timedelta) -> int:
        self.pruned_with.append(older_than)
        return 0

    async def follow_notifications(self, wake: Callable[[], None]) -> None:
        return


_NOW = datetime(2025, 3, 1, tzinfo=UTC)


class RecordingCache:
    def __init__(self) -> None:
        self.invalidated: list[bytes] = []
        self.invalidated_keys: set[str] = set()
        self.known_now: list[bytes] = []
        self.clears = 0

    def invalidate(self, lookup_hashes: list[bytes], key_ids: set[str]) -> None:
        self.invalidated.extend(lookup_hashes)
        self.invalidated_keys.update(key_ids)

    def forget_unknown(self, lookup_hashes: list[bytes]) -> None:
        self.known_now.extend(lookup_hashes)

    def clear(self) -> None:
        self.clears += 1


class SteppedPolls:
    """A ``PollWait`` that returns only when the test says so."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self._steps: asyncio.Queue[None] = asyncio.Queue()
        self._waiting = asyncio.Event()

    async def __call__(self, wake: asyncio.Event, poll: float) -> None:
        self.waits.append(poll)
        self._waiting.set()
        await self._steps.get()

    async def step(self) -> None:
        """Lets the follower read once, and returns when it waits again."""
        await self._waiting.wait()
        self._waiting.clear()
        self._steps.put_nowait(None)
        await self._waiting.wait()


async def _started(follower: ChangeFollower) -> ChangeFollower:
    await follower.sync()
    return follower


async def test_each_change_is_applied_once_in_the_order_it_committed() -> None:
    feed, cache = FakeFeed(), RecordingCache()
    follower = await _started(ChangeFollower(feed, cache, poll=1))
    first, third = feed.commit(1), feed.commit(3)
    await follower.sync()
    late = feed.commit(2)  # took its seq before 3 but committed after it
    await follower.sync()
    await follower.sync()

    assert cache.invalidated == [first, third, late]


async def test_a_creation_only_forgets_that_its_hash_was_unknown() -> None:
    feed, cache = FakeFeed(), RecordingCache()
    follower = await _started(ChangeFollower(feed, cache, poll=1))
    created = feed.commit(1, ChangeKind.CREATED)
    updated = feed.commit(2, ChangeKind.UPDATED)

    await follower.sync()

    assert cache.known_now == [created]
    assert cache.invalidated == [updated]


async def test_a_backlog_longer_than_a_page_is_read_in_one_sync() -> None:
    feed, cache = FakeFeed(), RecordingCache()
    follower = await _started(ChangeFollower(feed, cache, poll=1))
    hashes = [feed.commit(seq) for seq in range(1, PAGE_SIZE * 2 + 2)]

    await follower.sync()

    assert cache.invalidated == hashes


async def test_falling_behind_pruning_clears_the_cache() -> None:
    feed, cache = FakeFeed(), RecordingCache()
    follower = await _started(ChangeFollower(feed, cache, poll=1))
    clears_at_start = cache.clears
    feed.commit(1)
    feed.commit(2)
    feed.pruned = 2
    after = feed.commit(3)
    await follower.sync()

    assert cache.clears == clears_at_start + 1
    assert cache.invalidated == [after]


async def test_a_replaced_database_clears_the_cache_and_is_followed_from_its_end() -> None:
    feed, cache = FakeFeed(), RecordingCache()
    follower = await _started(ChangeFollower(feed, cache, poll=1))
    clears_at_start = cache.clears
    feed.commit(1)
    await follower.sync()
    feed.replace_database()
    feed.commit(1)  # a seq the follower has seen, from another history
    await follower.sync()
    newest = feed.commit(2)
    await follower.sync()

    assert cache.clears == clears_at_start + 1
    assert cache.invalidated == [b"hash-1", newest]


async def test_a_start_without_the_feed_clears_what_was_cached_meanwhile() -> None:
    feed, cache = FakeFeed(), RecordingCache()
    feed.down = True
    polls = SteppedPolls()
    follower = ChangeFollower(feed, cache, poll=1, wait=polls)
    await follower.start()
    try:
        assert cache.clears == 0
        feed.down = False
        await polls.step()
    finally:
        await follower.stop()

    assert cache.clears == 1


async def test_an_unreadable_feed_is_retried_once_per_poll_interval() -> None:
    feed, cache = FakeFeed(), RecordingCache()
    polls = SteppedPolls()
    follower = ChangeFollower(feed, cache, poll=0.5, prune_interval=3600, wait=polls)
    await follower.start()
    try:
        feed.down = True
        reads = feed.reads
        for _ in range(3):
            await polls.step()
        # One read per poll, never a retry loop in between.
        assert feed.reads - reads == 3
        assert polls.waits == [0.5] * 4
        feed.down = False
        deleted = feed.commit(1)
        await polls.step()
    finally:
        await follower.stop()

    assert cache.invalidated == [deleted]


class RecordingWatchers:
    """The follower's listener (``server.watchers.Watchers`` in production)."""

    def __init__(self) -> None:
        self.heard: list[tuple[str, int, list[str]]] = []

    def applied(self, changes: Sequence[KeyChange], mark: Mark) -> None:
        self.heard.append(("changes", mark.sequence, [c.key_id or "" for c in changes]))

    def reset(self, mark: Mark, changes: Sequence[KeyChange]) -> None:
        self.heard.append(("reset", mark.sequence, []))


async def _told(feed: FakeFeed, cache: RecordingCache) -> tuple[ChangeFollower, RecordingWatchers]:
    follower = ChangeFollower(feed, cache, poll=1)
    watchers = RecordingWatchers()
    follower.tell(watchers)
    await follower.sync()
    return follower, watchers


async def test_a_read_is_reported_once_complete_with_every_change_and_the_mark_reached() -> None:
    feed, cache = FakeFeed(), RecordingCache()
    feed.commit(1)
    follower, watchers = await _told(feed, cache)
    for seq in range(2, PAGE_SIZE + 5):
        feed.commit(seq, key_id="key-a" if seq % 2 else "key-b")
    await follower.sync()

    assert watchers.heard[0] == ("reset", 1, [])
    [(kind, mark, keys)] = watchers.heard[1:]
    assert (kind, mark, len(keys)) == ("changes", PAGE_SIZE + 4, PAGE_SIZE + 3)
    assert follower.mark.sequence == PAGE_SIZE + 4
    assert cache.invalidated_keys == {"key-a", "key-b"}


async def test_an_entry_that_names_no_key_clears_the_cache_and_resets_watchers() -> None:
    feed, cache = FakeFeed(), RecordingCache()
    follower, watchers = await _told(feed, cache)
    clears = cache.clears
    feed.commit_unnamed(1)
    await follower.sync()

    assert cache.clears == clears + 1
    assert watchers.heard[-1] == ("reset", 1, [])


async def test_a_change_below_a_mark_already_handed_out_resets_watchers() -> None:
    feed, cache = FakeFeed(), RecordingCache()
    follower, watchers = await _told(feed, cache)
    feed.commit(5)
    await follower.sync()
    feed.commit(3)  # as a database replaced behind the feed's back would
    await follower.sync()

    assert watchers.heard[-2:] == [("changes", 5, ["key-5"]), ("reset", 5, [])]
    assert follower.mark.sequence == 5


async def test_the_mark_never_goes_back_when_the_database_is_replaced() -> None:
    feed, cache = FakeFeed(), RecordingCache()
    follower, watchers = await _told(feed, cache)
    feed.commit(7)
    await follower.sync()
    feed.replace_database()
    feed.commit(2)
    await follower.sync()

    assert follower.mark.sequence == 7
    assert watchers.heard[-1] == ("reset", 7, [])
