"""The open ``WatchChanges`` streams: what this process applies to its key
cache, pushed to callers that cache answers themselves.

The ``ChangeFollower`` reports each read of the change feed here once it is
complete (every change of the read at once, with the mark it reached), so a
watcher that opens in the middle of a read gets a ``reset`` with the mark
from before the read and every change of the read after it. Opening a watch
queues its ``reset`` in the same step that registers it, so nothing applied
in between is missed.

Heartbeats go out every ``heartbeat`` seconds, but only while the follower's
last complete read is younger than ``fresh_within``: a process that cannot
read the feed falls silent, and its watchers stop trusting what they cached.
One event object is shared by every watcher it goes to.

Each watcher holds at most ``buffer`` events. One that does not read them
fast enough is cut off (its queue emptied, its stream ended with
``RESOURCE_EXHAUSTED``): it never makes this process hold more. Its caller
opens a new stream and starts afresh from a ``reset``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from server.domain.errors import WatcherCutOff, WatchersExhausted
from server.domain.records import ChangeKind, KeyChange, Mark

log = logging.getLogger(__name__)

RESET: Final = "reset"
CHANGES: Final = "changes"
HEARTBEAT: Final = "heartbeat"
# Changes per message: a read of the feed may apply thousands.
MAX_CHANGES_PER_EVENT = 500
# Heartbeats stop once the last complete read of the feed is older than the
# poll interval plus this.
FRESH_MARGIN_S = 0.5
# How long a cut-off stream has to end by itself before its task is cancelled.
CUT_OFF_GRACE_S = 1.0


@dataclass(frozen=True, slots=True)
class AppliedChange:
    """One change as watchers see it: which key, what, and where in the feed."""

    key_id: str
    kind: ChangeKind
    sequence: int


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One message to every watcher: a reset, changes or a heartbeat, with
    the mark of the process when it was made."""

    kind: str
    mark: int
    changes: tuple[AppliedChange, ...] = ()


class FeedReader(Protocol):
    """What watchers need of the ``ChangeFollower``."""

    @property
    def mark(self) -> Mark:
        """The process's mark."""
        ...

    def lag(self) -> float:
        """Seconds since the start of the last complete read of the feed."""
        ...

    def has_read(self) -> bool:
        """Whether a read of the feed has ever completed."""
        ...


class Watch:
    """One open stream's queue of events."""

    def __init__(self, watchers: Watchers, buffer: int) -> None:
        self._watchers = watchers
        self._buffer = buffer
        self._events: collections.deque[WatchEvent] = collections.deque()
        self._ready = asyncio.Event()
        self._cut_off = False
        self._ended = False
        self._task = asyncio.current_task()

    async def next(self) -> WatchEvent | None:
        """The next event; ``None`` once the process is stopping;
        ``WatcherCutOff`` once the watcher fell behind."""
        while not self._events:
            if self._cut_off:
                raise WatcherCutOff("this watcher fell too far behind; watch again")
            if self._ended:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._events.popleft()

    def end(self) -> None:
        """Ends the stream after the events already queued."""
        self._ended = True
        self._ready.set()

    def close(self) -> None:
        """Stops receiving events."""
        self._watchers.discard(self)

    def put(self, event: WatchEvent) -> None:
        if self._cut_off:
            return
        if len(self._events) >= self._buffer:
            self._cut_off = True
            self._events.clear()
            self._watchers.discard(self)
            # A stream stuck in a write to a caller that stopped reading
            # would never come back for its next event to learn it.
            if self._task is not None:
                self._task.get_loop().call_later(CUT_OFF_GRACE_S, self._task.cancel)
        else:
            self._events.append(event)
        self._ready.set()


class Watchers:
    """Every open watch of this process, fed by the change follower."""

    def __init__(
        self,
        feed: FeedReader,
        *,
        limit: int,
        buffer: int,
        heartbeat: float,
        fresh_within: float,
    ) -> None:
        self._feed = feed
        self._limit = limit
        self._buffer = buffer
        self._heartbeat = heartbeat
        self._fresh_within = fresh_within
        self._open: set[Watch] = set()
        # The latest change of each key applied with a sequence above the
        # mark (on PostgreSQL, while an older transaction holds the horizon
        # back): a watcher that opens now starts at the mark and must still
        # hear of them. At most one entry per key.
        self._above_mark: dict[str, AppliedChange] = {}
        self._ticker: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._open)

    def open(self) -> Watch:
        """A new watch whose first event is a ``reset`` at the current mark;
        ``WatchersExhausted`` past the limit."""
        if len(self._open) >= self._limit:
            raise WatchersExhausted(self._limit)
        mark = self._feed.mark.sequence
        watch = Watch(self, self._buffer)
        watch.put(WatchEvent(RESET, mark))
        if self._above_mark:
            watch.put(WatchEvent(CHANGES, mark, tuple(self._above_mark.values())))
        self._open.add(watch)
        return watch

    def discard(self, watch: Watch) -> None:
        """Forgets a watch (closed or cut off)."""
        self._open.discard(watch)

    def applied(self, changes: Sequence[KeyChange], mark: Mark) -> None:
        """Sends what one read of the feed applied, with the mark it reached."""
        applied = self._remember(changes, mark)
        for start in range(0, len(applied), MAX_CHANGES_PER_EVENT):
            chunk = tuple(applied[start : start + MAX_CHANGES_PER_EVENT])
            self._broadcast(WatchEvent(CHANGES, mark.sequence, chunk))

    def reset(self, mark: Mark, changes: Sequence[KeyChange] = ()) -> None:
        """Tells every watcher to drop everything it holds; ``changes`` are
        what the read that reset applied."""
        self._remember(changes, mark)
        self._broadcast(WatchEvent(RESET, mark.sequence))

    def _remember(self, changes: Sequence[KeyChange], mark: Mark) -> list[AppliedChange]:
        """The changes as watchers see them, one per key and kind, and
        those above ``mark`` kept for watchers yet to open."""
        # A mutation writes one entry per lookup hash of its key; the
        # highest sequence of each key and kind drops everything the others
        # would.
        latest: dict[tuple[str, ChangeKind], int] = {}
        for change in changes:
            if change.key_id is not None:
                name = (change.key_id, change.kind)
                latest[name] = max(latest.get(name, change.sequence), change.sequence)
        applied = [
            AppliedChange(key_id, kind, sequence) for (key_id, kind), sequence in latest.items()
        ]
        above = self._above_mark
        for key_id in [k for k, held in above.items() if held.sequence <= mark.sequence]:
            del above[key_id]
        for sent in applied:
            held = above.get(sent.key_id)
            if sent.sequence > mark.sequence and (held is None or held.sequence < sent.sequence):
                above[sent.key_id] = sent
        return applied

    def start(self) -> None:
        """Starts the heartbeats."""
        self._ticker = asyncio.create_task(self._beat(), name="watch-heartbeats")

    async def stop(self) -> None:
        """Stops the heartbeats and ends every open watch, so that their
        callers move to another replica rather than wait for the grace."""
        for watch in list(self._open):
            watch.end()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None

    def _broadcast(self, event: WatchEvent) -> None:
        for watch in list(self._open):
            watch.put(event)

    async def _beat(self) -> None:
        silent = False
        while True:
            await asyncio.sleep(self._heartbeat)
            if not self._open:
                continue
            reading = self._feed.has_read() and self._feed.lag() < self._fresh_within
            if reading:
                self._broadcast(WatchEvent(HEARTBEAT, self._feed.mark.sequence))
            if silent != (not reading):
                silent = not reading
                if silent:
                    log.warning("change feed not read lately; watchers get no heartbeats")
                else:
                    log.info("change feed read again; heartbeats resume")
