"""``Authorize`` clients that answer repeated checks from memory (contract section 10).

Each client keeps a ``WatchChanges`` stream open in the background and
reuses a server's answer only while that stream proves nothing has changed
for the key since the server read it:

- a key that fails the format or checksum is answered ``KEY_MALFORMED``
  locally and never leaves the process; answers for unknown keys (no key id)
  and ``UNSPECIFIED`` answers are never kept;
- an answer with revision R for key k is kept only if, at the moment it
  arrives, the stream is fresh, R >= F (the mark of the stream's last
  ``reset``), R >= the highest sequence of a change for k received, the
  stream has not reset or broken since the request was sent (the *epoch*),
  and its ``cache_ttl`` is positive. This is decided under the same lock the
  stream reader holds while it applies a message, so no change can slip in
  between;
- a change (k, s) drops every kept answer for k with R < s; a ``reset``
  drops everything and sets F to its mark;
- the stream is *fresh* while a message arrived within ``staleness``
  seconds (monotonic clock); a broken stream is not fresh at once. An
  answer is reused only while the stream is fresh and until the moment the
  request was sent plus ``cache_ttl``.

Memory is bounded: at most ``max_entries`` answers, the oldest stored evicted
first, and at most ``max_entries`` key ids in the change record (on overflow
it is cleared and F raised to the highest sequence it held, so nothing older
can be stored). Answers are keyed by ``(key_or_header, method, path,
client_ip)`` exactly as given, so a hit parses nothing.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
from collections.abc import Callable, Sequence
from time import monotonic
from types import TracebackType
from typing import Final, Self

import grpc

from clients._authorize import (
    AsyncAuthorizeClient,
    AuthorizeClient,
    CheckItem,
    Decision,
    Reason,
    key_from_authorization,
)
from clients._channel import ChannelOptions
from clients._keys import is_well_formed
from voiso.apikeys.v1 import authorize_pb2

__all__ = [
    "DEFAULT_MAX_ENTRIES",
    "DEFAULT_STALENESS",
    "AsyncCachingAuthorizeClient",
    "CachingAuthorizeClient",
    "DecisionMemory",
]

DEFAULT_STALENESS: Final = 1.0
"""Seconds without a stream message after which no answer is reused."""

DEFAULT_MAX_ENTRIES: Final = 10_000
"""Answers kept at most (and key ids in the change record)."""

YIELD_INTERVAL: Final = 0.005
"""The asyncio client gives its event loop a turn at least this often
(seconds): a check answered from memory does not otherwise suspend, and a
loop of them would keep the task that reads the stream from running."""
INITIAL_RECONNECT_DELAY: Final = 0.05
MAX_RECONNECT_DELAY: Final = 1.0

CacheKey = tuple[str, str, str, str]
"""``(key_or_header, method, path, client_ip)`` as the caller gave them."""

Entry = tuple[float, Decision, str]
"""A kept answer: ``(expires, decision, key_id)``; ``expires`` on the monotonic clock."""

_MALFORMED: Final = Decision(allowed=False, reason=Reason.KEY_MALFORMED)
_NEVER_KEPT: Final = frozenset({Reason.UNSPECIFIED, Reason.KEY_NOT_FOUND, Reason.KEY_MALFORMED})


def _reconnect_delay(failures: int) -> float:
    """Seconds before reopening the stream after ``failures`` breaks in a
    row: 50 ms doubling to 1 s, each drawn from the upper half of its
    ceiling so that clients that broke together come back apart."""
    ceiling = min(MAX_RECONNECT_DELAY, INITIAL_RECONNECT_DELAY * 2.0 ** (failures - 1))
    return ceiling * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not a secret


class DecisionMemory:
    """The kept answers and what the ``WatchChanges`` stream said about them.

    The stream reader calls :meth:`apply` and :meth:`broken`; a checker
    calls :meth:`store` after a server answered. All three hold one lock. A
    hit reads :attr:`entries` and :attr:`fresh_until` without it: a dict
    lookup and a float read are atomic, and a hit racing a change is a
    check that happened just before the change arrived.
    """

    def __init__(
        self,
        *,
        staleness: float = DEFAULT_STALENESS,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        if not staleness > 0:
            raise ValueError("staleness must be positive")
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.staleness = staleness
        self.max_entries = max_entries
        self.entries: dict[CacheKey, Entry] = {}
        """Kept answers, oldest stored first; read without the lock, changed under it."""
        self.fresh_until = -math.inf
        """The clock reading at which the stream stops being fresh."""
        self.epoch = 0
        """Bumped by every reset and every break; an answer is kept only in
        the epoch its request was sent in."""
        self._clock = clock
        self._lock = threading.Lock()
        self._floor = 0  # F: the mark of the last reset
        self._seen: dict[str, int] = {}
        self._revisions: dict[str, dict[CacheKey, int]] = {}

    @property
    def fresh(self) -> bool:
        """Whether a stream message arrived within ``staleness``."""
        return self._clock() < self.fresh_until

    def apply(self, message: authorize_pb2.WatchChangesResponse) -> None:
        """Applies one stream message."""
        with self._lock:
            event = message.WhichOneof("event")
            if event == "changes":
                for change in message.changes.changes:
                    self._change(change.key_id, change.sequence)
            elif event != "heartbeat":
                # A reset, or an event newer than this client: forgetting
                # everything is what a reset does and always safe.
                self.entries.clear()
                self._revisions.clear()
                self._seen.clear()
                self._floor = message.mark
                self.epoch += 1
            self.fresh_until = self._clock() + self.staleness

    def broken(self) -> None:
        """The stream ended or failed: nothing is fresh until the next one speaks."""
        with self._lock:
            self.epoch += 1
            self.fresh_until = -math.inf

    def store(
        self,
        cache_key: CacheKey,
        response: authorize_pb2.CheckResponse,
        decision: Decision,
        *,
        epoch: int,
        sent_at: float,
    ) -> bool:
        """Keeps ``decision`` (from ``response``) if the rules allow; whether it did.

        ``epoch`` and ``sent_at`` are :attr:`epoch` and the clock, read
        before the request was sent.
        """
        key_id = decision.key_id
        if decision.reason in _NEVER_KEPT or not key_id:
            return False
        ttl = response.cache_ttl.seconds + response.cache_ttl.nanos / 1e9
        revision = response.revision
        if not ttl > 0:
            return False
        with self._lock:
            if not (
                epoch == self.epoch
                and self._clock() < self.fresh_until
                and revision >= self._floor
                and revision >= self._seen.get(key_id, revision)
            ):
                return False
            entries = self.entries
            replaced = entries.pop(cache_key, None)
            if replaced is not None:
                self._unindex(cache_key, replaced[2])
            elif len(entries) >= self.max_entries:
                oldest = next(iter(entries))
                self._unindex(oldest, entries.pop(oldest)[2])
            entries[cache_key] = (sent_at + ttl, decision, key_id)
            self._revisions.setdefault(key_id, {})[cache_key] = revision
        return True

    def _change(self, key_id: str, sequence: int) -> None:
        seen = self._seen
        if key_id in seen:
            seen[key_id] = max(seen[key_id], sequence)
        elif len(seen) >= self.max_entries:
            # Forgetting which keys changed is safe once nothing older than
            # the newest forgotten change may be stored any more.
            self._floor = max(self._floor, sequence, *seen.values())
            seen.clear()
        else:
            seen[key_id] = sequence
        revisions = self._revisions.get(key_id)
        if revisions is None:
            return
        for cache_key, revision in list(revisions.items()):
            if revision < sequence:
                del revisions[cache_key]
                del self.entries[cache_key]
        if not revisions:
            del self._revisions[key_id]

    def _unindex(self, cache_key: CacheKey, key_id: str) -> None:
        revisions = self._revisions[key_id]
        del revisions[cache_key]
        if not revisions:
            del self._revisions[key_id]


def _recall(
    memory: DecisionMemory, items: Sequence[CheckItem]
) -> tuple[list[Decision | None], list[int], int]:
    """Answers a batch from memory and the format check where they can: the
    decisions (``None`` where the server must be asked), the positions to
    ask, and how many came from memory."""
    decisions: list[Decision | None] = []
    asked: list[int] = []
    hits = 0
    entries = memory.entries
    now = monotonic()
    fresh = now < memory.fresh_until
    for position, (key_or_header, method, path) in enumerate(items):
        entry = entries.get((key_or_header, method, path, ""))
        if fresh and entry is not None and now < entry[0]:
            decisions.append(entry[1])
            hits += 1
        elif not is_well_formed(key_from_authorization(key_or_header)):
            decisions.append(_MALFORMED)
        else:
            decisions.append(None)
            asked.append(position)
    return decisions, asked, hits


def _settle(
    memory: DecisionMemory,
    items: Sequence[CheckItem],
    decisions: list[Decision | None],
    asked: list[int],
    responses: Sequence[authorize_pb2.CheckResponse],
    *,
    epoch: int,
    sent_at: float,
) -> None:
    """Fills in the server's answers at the asked positions, keeping what the rules allow."""
    for position, response in zip(asked, responses, strict=True):
        key_or_header, method, path = items[position]
        decision = Decision.from_proto(response)
        memory.store(
            (key_or_header, method, path, ""), response, decision, epoch=epoch, sent_at=sent_at
        )
        decisions[position] = decision


def _answered(decisions: list[Decision | None]) -> list[Decision]:
    """The decisions of a batch once every position has one."""
    return [decision for decision in decisions if decision is not None]


class _CachingClient:
    """What both caching clients keep: their memory and how it answered."""

    def __init__(self, *, staleness: float, max_entries: int) -> None:
        self._memory = DecisionMemory(staleness=staleness, max_entries=max_entries)
        self._entries = self._memory.entries
        self._hits = 0
        self._misses = 0

    @property
    def hits(self) -> int:
        """Checks answered from memory."""
        return self._hits

    @property
    def misses(self) -> int:
        """Checks answered by the server."""
        return self._misses

    @property
    def fresh(self) -> bool:
        """Whether the stream spoke within ``staleness``: only then is memory used."""
        return self._memory.fresh

    @property
    def size(self) -> int:
        """Answers held now."""
        return len(self._entries)


class CachingAuthorizeClient(_CachingClient):
    """A blocking ``Authorize`` client that answers repeated checks from memory.

    A drop-in for :class:`~clients.AuthorizeClient` (``check`` and
    ``check_many``); see the module docstring for when an answer is reused.
    A daemon thread keeps the ``WatchChanges`` stream open on the client's
    channel. ``hits`` and ``misses`` count answers from memory and from the
    server (a malformed key, answered locally, is neither); they are counted
    without a lock, so with many threads they may undercount slightly.
    """

    def __init__(
        self,
        options: ChannelOptions | None = None,
        *,
        staleness: float = DEFAULT_STALENESS,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        super().__init__(staleness=staleness, max_entries=max_entries)
        self._authorize = AuthorizeClient(options)
        self._closed = threading.Event()
        self._follower = threading.Thread(
            target=self._follow, name="apikeys-watch-changes", daemon=True
        )
        self._follower.start()

    def wait_fresh(self, timeout: float) -> bool:
        """Waits up to ``timeout`` seconds for the stream to be fresh; whether it is."""
        deadline = monotonic() + timeout
        while not self._memory.fresh:
            if monotonic() >= deadline or self._closed.wait(0.01):
                return False
        return True

    def check(
        self,
        key_or_header: str,
        method: str,
        path: str,
        *,
        client_ip: str | None = None,
        timeout: float | None = None,
    ) -> Decision:
        """As :meth:`AuthorizeClient.check`, from memory when the rules allow."""
        cache_key = (key_or_header, method, path, client_ip or "")
        entry = self._entries.get(cache_key)
        if entry is not None:
            now = monotonic()
            if now < entry[0] and now < self._memory.fresh_until:
                self._hits += 1
                return entry[1]
        key = key_from_authorization(key_or_header)
        if not is_well_formed(key):
            return _MALFORMED
        memory = self._memory
        epoch = memory.epoch
        sent_at = monotonic()
        response = self._authorize.check_response(
            key, method, path, client_ip=client_ip, timeout=timeout
        )
        self._misses += 1
        decision = Decision.from_proto(response)
        memory.store(cache_key, response, decision, epoch=epoch, sent_at=sent_at)
        return decision

    def check_many(
        self, items: Sequence[CheckItem], *, timeout: float | None = None
    ) -> list[Decision]:
        """As :meth:`AuthorizeClient.check_many`: from memory where the rules
        allow, malformed keys locally, the rest in batches of 100 (``timeout``
        applies to each batch)."""
        memory = self._memory
        decisions, asked, hits = _recall(memory, items)
        self._hits += hits
        if asked:
            epoch = memory.epoch
            sent_at = monotonic()
            responses = self._authorize.check_many_responses(
                [items[position] for position in asked], timeout=timeout
            )
            self._misses += len(asked)
            _settle(memory, items, decisions, asked, responses, epoch=epoch, sent_at=sent_at)
        return _answered(decisions)

    def close(self) -> None:
        """Stops the stream and closes the channel; calls in flight are cancelled.
        Closing again does nothing."""
        if self._closed.is_set():
            return
        self._closed.set()
        # Closing the channel ends the stream the follower is blocked on.
        self._authorize.close()
        self._follower.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _follow(self) -> None:
        failures = 0
        while not self._closed.is_set():
            try:
                stream = self._authorize.watch_changes()
            except ValueError:  # the channel was closed under us
                return
            try:
                for message in stream:
                    self._memory.apply(message)
                    failures = 0
            except grpc.RpcError:
                pass
            finally:
                self._memory.broken()
            failures += 1
            self._closed.wait(_reconnect_delay(failures))


class AsyncCachingAuthorizeClient(_CachingClient):
    """The ``asyncio`` form of :class:`CachingAuthorizeClient`; create it inside
    the event loop. The stream is read by a task of that loop."""

    def __init__(
        self,
        options: ChannelOptions | None = None,
        *,
        staleness: float = DEFAULT_STALENESS,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        loop = asyncio.get_running_loop()  # before the channel: outside a loop, open nothing
        super().__init__(staleness=staleness, max_entries=max_entries)
        self._authorize = AsyncAuthorizeClient(options)
        self._closed = False
        self._follower = loop.create_task(self._follow(), name="apikeys-watch-changes")
        self._yield_at = 0.0

    async def wait_fresh(self, timeout: float) -> bool:  # noqa: ASYNC109 - a wait, not a call
        """Waits up to ``timeout`` seconds for the stream to be fresh; whether it is."""
        deadline = monotonic() + timeout
        while not self._memory.fresh:
            if monotonic() >= deadline or self._follower.done():
                return False
            await asyncio.sleep(0.01)
        return True

    async def check(
        self,
        key_or_header: str,
        method: str,
        path: str,
        *,
        client_ip: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Decision:
        """As :meth:`AsyncAuthorizeClient.check`, from memory when the rules allow."""
        now = monotonic()
        if now >= self._yield_at:
            await self._let_the_stream_in()
            now = monotonic()
        cache_key = (key_or_header, method, path, client_ip or "")
        entry = self._entries.get(cache_key)
        if entry is not None and now < entry[0] and now < self._memory.fresh_until:
            self._hits += 1
            return entry[1]
        key = key_from_authorization(key_or_header)
        if not is_well_formed(key):
            return _MALFORMED
        memory = self._memory
        epoch = memory.epoch
        sent_at = monotonic()
        response = await self._authorize.check_response(
            key, method, path, client_ip=client_ip, timeout=timeout
        )
        self._misses += 1
        decision = Decision.from_proto(response)
        # No await between the answer and this: the stream task cannot run in between.
        memory.store(cache_key, response, decision, epoch=epoch, sent_at=sent_at)
        return decision

    async def check_many(
        self,
        items: Sequence[CheckItem],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> list[Decision]:
        """The awaitable form of :meth:`CachingAuthorizeClient.check_many`."""
        if monotonic() >= self._yield_at:
            await self._let_the_stream_in()
        memory = self._memory
        decisions, asked, hits = _recall(memory, items)
        self._hits += hits
        if asked:
            epoch = memory.epoch
            sent_at = monotonic()
            responses = await self._authorize.check_many_responses(
                [items[position] for position in asked], timeout=timeout
            )
            self._misses += len(asked)
            _settle(memory, items, decisions, asked, responses, epoch=epoch, sent_at=sent_at)
        return _answered(decisions)

    async def _let_the_stream_in(self) -> None:
        # Before memory is read, never between reading it and answering: what
        # the stream applies during the turn is seen by this check.
        self._yield_at = monotonic() + YIELD_INTERVAL
        await asyncio.sleep(0)

    async def close(self) -> None:
        """Stops the stream and closes the channel; calls in flight are cancelled.
        Closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        self._follower.cancel()
        await asyncio.wait({self._follower})
        await self._authorize.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _follow(self) -> None:
        failures = 0
        while True:
            stream = self._authorize.watch_changes()
            try:
                async for message in stream:
                    self._memory.apply(message)
                    failures = 0
            except grpc.RpcError:
                pass
            finally:
                stream.cancel()
                self._memory.broken()
            failures += 1
            await asyncio.sleep(_reconnect_delay(failures))
