"""Keeps this process's key cache in step with every other process.

A key created, updated or deleted through any replica (or any worker of
one) appends an entry to the store's change feed in the same transaction.
``ChangeFollower`` reads the entries it has not seen and drops the affected
lookup hashes from the cache, so a deleted key is refused everywhere:

- within milliseconds on PostgreSQL, where the mutating transaction NOTIFYs
  and a listener wakes the follower;
- within ``poll`` seconds (plus one query) otherwise: the follower reads the
  feed on that interval whatever happens, so a lost notification, a dropped
  listener connection or SQLite (which has no notifications) cost at most that.

Entries may become visible out of ``seq`` order (a transaction can commit
after one that took a later ``seq``), so the follower does not simply read
"after the highest seen". It keeps a low-water mark below which every
``seq`` has been seen, re-reads from it, skips entries already applied, and
gives up waiting on a missing ``seq`` (a rolled-back transaction) only after
``gap_window`` seconds. A follower that fell so far behind that entries it
needed were pruned clears the whole cache instead.

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
from datetime import UTC, datetime, timedelta
from typing import Protocol

from server.domain.errors import StoreUnavailable
from server.domain.records import KeyChange
from server.domain.store import ChangeFeed

log = logging.getLogger(__name__)

# How long a missing seq may still turn up. Each mutation takes its seq as
# the last statement before its commit, so this only has to outlast a slow
# commit; waiting longer costs a few re-read rows, never a missed change.
DEFAULT_GAP_WINDOW_S = 15.0
# How long change entries are kept; a process that could not read the feed
# for longer clears its cache rather than trust it.
DEFAULT_RETENTION = timedelta(hours=1)
DEFAULT_PRUNE_INTERVAL_S = 300.0
PAGE_SIZE = 500
# On start the follower re-reads this many seqs below the latest, in case
# transactions that took them commit after it looked.
START_WINDOW = 1000
# Between retries of a follower that failed for a reason other than the store.
UNEXPECTED_ERROR_DELAY_S = 5.0


class KeyCache(Protocol):
    """What the follower needs of the cache (``server.cache.CachedKeyStore``)."""

    def invalidate(self, lookup_hashes: list[bytes]) -> None:
        """Forget what is known about these lookup hashes."""
        ...

    def clear(self) -> None:
        """Forget everything."""
        ...


class ChangeFollower:
    """Reads a ``ChangeFeed`` and drops changed keys from a ``KeyCache``."""

    def __init__(
        self,
        feed: ChangeFeed,
        cache: KeyCache,
        *,
        poll: float,
        gap_window: float = DEFAULT_GAP_WINDOW_S,
        retention: timedelta = DEFAULT_RETENTION,
        prune_interval: float = DEFAULT_PRUNE_INTERVAL_S,
    ) -> None:
        self._feed = feed
        self._cache = cache
        self._poll = poll
        self._gap_window = gap_window
        self._retention = retention
        self._prune_interval = prune_interval
        self._wake = asyncio.Event()
        self._syncing = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        # Every seq up to _low has been applied or given up on; above it,
        # each seq up to _high is either in _seen or in _missing (with the
        # loop time it was first found missing).
        self._low: int | None = None
        self._high = 0
        self._seen: set[int] = set()
        self._missing: dict[int, float] = {}
        self._read_at: float | None = None

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
        """Applies every change entry not yet applied.

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
        now = asyncio.get_running_loop().time()
        if self._low is None:
            latest = await self._feed.latest_change()
            self._low = self._high = max(0, latest - START_WINDOW)
            positioning = True
        else:
            positioning = False
        cursor = self._low
        while True:
            page = await self._feed.changes_after(cursor, limit=PAGE_SIZE)
            if page.pruned_through > self._low:
                self._skip_pruned(page.pruned_through, quietly=positioning)
            self._apply(page.changes, now)
            if len(page.changes) < PAGE_SIZE:
                break
            cursor = page.changes[-1].seq
        self._advance(now)

    def _apply(self, changes: Sequence[KeyChange], now: float) -> None:
        assert self._low is not None
        stale: list[bytes] = []
        for change in changes:
            seq = change.seq
            if seq <= self._low or seq in self._seen:
                continue
            self._seen.add(seq)
            self._missing.pop(seq, None)
            if seq > self._high:
                for skipped in range(self._high + 1, seq):
                    self._missing[skipped] = now
                self._high = seq
            stale.append(change.lookup_hash)
        if stale:
            self._cache.invalidate(stale)

    def _advance(self, now: float) -> None:
        assert self._low is not None
        while self._low < self._high:
            following = self._low + 1
            if following in self._seen:
                self._seen.remove(following)
            elif now - self._missing[following] >= self._gap_window:
                del self._missing[following]
            else:
                break
            self._low = following

    def _skip_pruned(self, pruned_through: int, *, quietly: bool) -> None:
        """Entries up to ``pruned_through`` are gone, some perhaps unseen:
        nothing cached can be trusted."""
        self._cache.clear()
        if not quietly:
            log.warning(
                "change feed fell behind pruning; cleared the key cache",
                extra={"position": self._low, "pruned_through": pruned_through},
            )
        self._low = pruned_through
        self._high = max(self._high, pruned_through)
        self._seen = {seq for seq in self._seen if seq > pruned_through}
        self._missing = {seq: at for seq, at in self._missing.items() if seq > pruned_through}

    async def _follow(self) -> None:
        loop = asyncio.get_running_loop()
        # Spread the processes' prunes over the interval.
        next_prune = loop.time() + random.uniform(0, self._prune_interval)  # noqa: S311
        failing = False
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._poll)
            self._wake.clear()
            try:
                await self.sync()
                if loop.time() >= next_prune:
                    next_prune = loop.time() + self._prune_interval
                    await self._feed.prune_changes(datetime.now(UTC) - self._retention)
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
