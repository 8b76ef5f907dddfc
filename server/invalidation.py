"""Keeps this process's key cache in step with every other process.

A key created, updated or deleted through any replica (or any worker of
one) appends an entry to the store's change feed in the same transaction.
``ChangeFollower`` reads the entries committed since its last read and drops
the affected lookup hashes from the cache, so a deleted key is refused
everywhere:

- within milliseconds, where the store can wake the follower (PostgreSQL
  notifications, SQLite's commit counter);
- within ``poll`` seconds (plus one query) otherwise: the follower reads the
  feed on that interval whatever happens, so a lost notification or a
  dropped listener connection costs at most that.

The feed, not the follower, decides which entries are due: it hands out a
position with each page and returns, from that position, every entry
committed since, however late its transaction commits (see
``docs/REVOCATION.md``). The follower clears the whole cache when the feed
says entries it had not read were pruned, or that the database is not the
one it was reading (a failover or a replacement).

The follower never stops the process: a failed read is logged and retried at
the next poll, while the cache goes on answering as before (cached keys until
their TTL, ``UNAVAILABLE`` for the rest).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence
from datetime import timedelta
from typing import Protocol

from server.domain.errors import StoreUnavailable
from server.domain.records import ChangeKind, FeedPosition, KeyChange, Mark
from server.domain.store import ChangeFeed

log = logging.getLogger(__name__)

# How long change entries are kept; a process that could not read the feed
# for longer clears its cache rather than trust it.
DEFAULT_RETENTION = timedelta(hours=1)
DEFAULT_PRUNE_INTERVAL_S = 300.0
PAGE_SIZE = 500
# Between retries of a follower that failed for a reason other than the store.
UNEXPECTED_ERROR_DELAY_S = 5.0


class KeyCache(Protocol):
    """What the follower needs of the cache (``server.cache.CachedKeyStore``)."""

    def invalidate(self, lookup_hashes: list[bytes], key_ids: set[str]) -> None:
        """Forget what is known about these lookup hashes and these keys."""
        ...

    def forget_unknown(self, lookup_hashes: list[bytes]) -> None:
        """Forget that these hashes were unknown (their keys were created)."""
        ...

    def clear(self) -> None:
        """Forget everything."""
        ...


class AppliedChanges(Protocol):
    """Who hears what the follower applied (``server.watchers.Watchers``)."""

    def applied(self, changes: Sequence[KeyChange], mark: Mark) -> None:
        """A complete read of the feed applied ``changes`` and reached ``mark``."""
        ...

    def reset(self, mark: Mark, changes: Sequence[KeyChange]) -> None:
        """The cache was cleared, or continuity broke; the mark is ``mark``
        and the read that found it applied ``changes``."""
        ...


class _NobodyListening:
    def applied(self, changes: Sequence[KeyChange], mark: Mark) -> None:
        return None

    def reset(self, mark: Mark, changes: Sequence[KeyChange]) -> None:
        return None


class PollWait(Protocol):
    """How the follower waits between reads: until ``wake`` is set or
    ``poll`` seconds have passed."""

    async def __call__(self, wake: asyncio.Event, poll: float) -> None: ...


async def wait_for_wake(wake: asyncio.Event, poll: float) -> None:
    """The production ``PollWait``."""
    # Not asyncio.wait_for: on Python 3.11 a cancellation that arrives as
    # the event is set can be lost, and stopping the follower then hangs.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(poll):
            await wake.wait()


class ChangeFollower:
    """Reads a ``ChangeFeed`` and drops changed keys from a ``KeyCache``."""

    def __init__(
        self,
        feed: ChangeFeed,
        cache: KeyCache,
        *,
        poll: float,
        retention: timedelta = DEFAULT_RETENTION,
        prune_interval: float = DEFAULT_PRUNE_INTERVAL_S,
        wait: PollWait = wait_for_wake,
    ) -> None:
        self._feed = feed
        self._cache = cache
        self._poll = poll
        self._retention = retention
        self._prune_interval = prune_interval
        self._wait = wait
        self._wake = asyncio.Event()
        self._syncing = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._position: FeedPosition | None = None
        self._read_at: float | None = None
        self._mark = Mark(0)
        self._listener: AppliedChanges = _NobodyListening()

    @property
    def mark(self) -> Mark:
        """The sequence up to which this process has applied every change
        that can ever commit; it never goes back. ``Mark(0)`` until the
        first read."""
        return self._mark

    def has_read(self) -> bool:
        """Whether a read of the feed has ever completed."""
        return self._read_at is not None

    def tell(self, listener: AppliedChanges) -> None:
        """From now on, report every complete read to ``listener``."""
        self._listener = listener

    async def start(self) -> None:
        """Finds the feed's position, then follows it in the background.
        A store that cannot answer yet is retried at the next poll."""
        try:
            await self.sync()
        except StoreUnavailable:
            log.warning("change feed unavailable at start; retrying")
        self._tasks = [
            asyncio.create_task(self._follow(), name="change-follower"),
            asyncio.create_task(self._listen(), name="change-listener"),
        ]

    async def stop(self) -> None:
        """Stops following."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def sync(self) -> None:
        """Applies every change entry committed since the last read.

        Raises ``StoreUnavailable`` when the feed cannot be read.
        """
        async with self._syncing:
            started = asyncio.get_running_loop().time()
            await self._sync()
            self._read_at = started

    def lag(self) -> float:
        """Seconds since the start of the last complete read of the feed
        (0 before the first): how old a change may be that this process has
        not applied yet."""
        if self._read_at is None:
            return 0.0
        return asyncio.get_running_loop().time() - self._read_at

    async def _sync(self) -> None:
        if self._position is None:
            page = await self._feed.changes_since(None, limit=PAGE_SIZE)
            # Anything cached before the feed had a position (a start with
            # the database down) may predate changes before that position.
            self._cache.clear()
            self._position = page.position
            self._reached(page.mark, reset=True)
            return
        applied: list[KeyChange] = []
        reset = False
        mark = self._mark.sequence
        while True:
            page = await self._feed.changes_since(self._position, limit=PAGE_SIZE)
            if page.reset:
                self._cache.clear()
                reset = True
                log.warning("the database failed over or was replaced; cleared the key cache")
            elif page.missed:
                self._cache.clear()
                reset = True
                log.warning("change feed fell behind pruning; cleared the key cache")
            if any(change.key_id is None for change in page.changes):
                self._cache.clear()
                reset = True
                log.warning("change entries name no key (an older release wrote them); cleared")
            elif any(change.sequence <= self._mark.sequence for change in page.changes):
                # Answers already carry a higher mark: this change would not
                # make their holders drop them.
                reset = True
                log.warning("a change came in below the mark already handed out; reset watchers")
            self._apply(page.changes)
            applied.extend(page.changes)
            self._position = page.position
            mark = page.mark
            if not page.more:
                break
        self._reached(mark, reset=reset, applied=applied)

    def _reached(self, mark: int, *, reset: bool, applied: Sequence[KeyChange] = ()) -> None:
        """Raises the mark (never lowers it: after a failover the new
        database's sequences may start lower) and reports the read."""
        if mark > self._mark.sequence:
            self._mark = Mark(mark)
        if reset:
            self._listener.reset(self._mark, applied)
        elif applied:
            self._listener.applied(applied, self._mark)

    def _apply(self, changes: Sequence[KeyChange]) -> None:
        # A creation only makes a hash that was unknown known: whatever was
        # found for it since is current (later changes have entries of their
        # own), so only the other kinds drop found keys, every hash of them.
        created = [c.lookup_hash for c in changes if c.kind is ChangeKind.CREATED]
        changed = [c for c in changes if c.kind is not ChangeKind.CREATED]
        if created:
            self._cache.forget_unknown(created)
        if changed:
            self._cache.invalidate(
                [c.lookup_hash for c in changed],
                {c.key_id for c in changed if c.key_id is not None},
            )

    async def _follow(self) -> None:
        loop = asyncio.get_running_loop()
        # Spread the processes' prunes over the interval.
        next_prune = loop.time() + random.uniform(0, self._prune_interval)  # noqa: S311
        failing = False
        while True:
            await self._wait(self._wake, self._poll)
            self._wake.clear()
            try:
                await self.sync()
                if loop.time() >= next_prune:
                    next_prune = loop.time() + self._prune_interval
                    await self._feed.prune_changes(self._retention)
            except StoreUnavailable:
                if not failing:
                    log.warning("change feed unavailable; cached keys answer until their TTL")
                failing = True
                continue
            except Exception:
                log.exception("change feed follower failed; retrying")
                failing = True
                await asyncio.sleep(UNEXPECTED_ERROR_DELAY_S)
                continue
            if failing:
                log.info("change feed readable again")
                failing = False

    async def _listen(self) -> None:
        while True:
            try:
                await self._feed.follow_notifications(self._wake.set)
            except Exception:
                log.exception("change notifications failed; polling meanwhile")
                await asyncio.sleep(UNEXPECTED_ERROR_DELAY_S)
                continue
            return
