"""The in-process key cache: a ``KeyStore`` wrapping any ``KeyStore``.

Only ``find_by_lookup_hash`` (the ``Check`` path) is cached; admin reads go to
the store. Found keys live for the TTL, unknown keys for the shorter negative
TTL, so a flood of random well-formed keys costs one query per distinct key
and then none. Concurrent misses for one hash share a single store query.

Mutations made through this process drop the affected entry before they
return, so the very next ``Check`` sees them. Mutations made elsewhere reach
this cache through ``invalidate`` (the change feed). When the store fails,
entries still within their TTL keep answering; everything else raises
``StoreUnavailable``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from datetime import datetime

from cachetools import TTLCache

from server.domain.records import (
    AuditPage,
    KeyChanges,
    KeyCursor,
    KeyPage,
    KeyRecord,
    Roll,
)
from server.domain.store import KeyStore


class CachedKeyStore:
    """A ``KeyStore`` that answers lookups by hash from memory."""

    def __init__(
        self,
        store: KeyStore,
        *,
        ttl: float,
        size: int,
        negative_ttl: float,
        negative_size: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``ttl`` and ``negative_ttl`` are seconds of ``clock``, which both
        caches read to expire entries; tests pass a clock they move."""
        self._store = store
        self._found: TTLCache[bytes, KeyRecord] = TTLCache(maxsize=size, ttl=ttl, timer=clock)
        self._unknown: TTLCache[bytes, bool] = TTLCache(
            maxsize=negative_size, ttl=negative_ttl, timer=clock
        )
        # Each lookup under way with the generation it started in.
        self._inflight: dict[bytes, tuple[asyncio.Task[KeyRecord | None], int]] = {}
        # Bumped on every invalidation so that a lookup which started before
        # it cannot put the stale answer back into the cache.
        self._generation = 0
        # Bumped when created keys' hashes stop being unknown: a lookup that
        # started before must not store "unknown", but what it found stands.
        self._unknown_generation = 0
        self.hits = 0
        """Lookups answered from memory (the key, or that it is unknown)."""
        self.misses = 0
        """Lookups that went to the store (or joined one under way)."""

    @property
    def store(self) -> KeyStore:
        """The wrapped store."""
        return self._store

    def __len__(self) -> int:
        return len(self._found)

    def cached(self, lookup_hash: bytes) -> KeyRecord | None:
        """The key if this process holds it within its TTL; ``None`` says
        nothing about the store (ask ``find_by_lookup_hash``)."""
        # One TTL-checked lookup (``get`` would make two).
        try:
            record = self._found[lookup_hash]
        except KeyError:
            return None
        self.hits += 1
        return record

    async def find_by_lookup_hash(self, lookup_hash: bytes) -> KeyRecord | None:
        """The key from memory, or from the store on a miss (shared by
        concurrent callers of the same hash)."""
        record = self.cached(lookup_hash)
        if record is not None:
            return record
        if lookup_hash in self._unknown:
            self.hits += 1
            return None
        self.misses += 1
        inflight = self._inflight.get(lookup_hash)
        # Joined only if no change was applied since it started: a caller's
        # revision is the mark when it asked, and the read it joins must not
        # be older than every change up to that mark.
        if inflight is not None and inflight[1] == self._generation:
            lookup = inflight[0]
        else:
            # The query runs in a task of the cache's own, not in the first
            # caller's: a caller that gives up (deadline, disconnect) cancels
            # only its own wait, never the lookup the others are sharing.
            lookup = asyncio.create_task(
                self._load(lookup_hash, self._generation, self._unknown_generation)
            )
            lookup.add_done_callback(_retrieve_outcome)
            self._inflight[lookup_hash] = (lookup, self._generation)
        return await asyncio.shield(lookup)

    async def _load(
        self, lookup_hash: bytes, generation: int, unknown_generation: int
    ) -> KeyRecord | None:
        try:
            record = await self._store.find_by_lookup_hash(lookup_hash)
        finally:
            inflight = self._inflight.get(lookup_hash)
            if inflight is not None and inflight[0] is asyncio.current_task():
                del self._inflight[lookup_hash]
        if generation == self._generation:
            if record is not None:
                self._found[lookup_hash] = record
            elif unknown_generation == self._unknown_generation:
                self._unknown[lookup_hash] = True
        return record

    def invalidate(
        self,
        lookup_hashes: frozenset[bytes] | set[bytes] | list[bytes],
        key_ids: frozenset[str] | set[str] = frozenset(),
    ) -> None:
        """Forgets what is known about these hashes and every hash that finds
        one of these keys (a rolled key has two)."""
        self._generation += 1
        if key_ids:
            # Changes are rare and the cache small: a scan beats keeping an
            # index in step with every expiry and eviction.
            held = [h for h, record in list(self._found.items()) if record.id in key_ids]
            for lookup_hash in held:
                self._found.pop(lookup_hash, None)
        for lookup_hash in lookup_hashes:
            self._found.pop(lookup_hash, None)
            self._unknown.pop(lookup_hash, None)
            # A lookup already under way may have read the old row: later
            # callers must not join it.
            self._inflight.pop(lookup_hash, None)

    def forget_unknown(self, lookup_hashes: list[bytes]) -> None:
        """Forgets that these hashes were unknown (their keys were just
        created), keeping any entry already found for them: a key can only
        be found once its creation has committed, so that entry is current."""
        self._unknown_generation += 1
        for lookup_hash in lookup_hashes:
            self._unknown.pop(lookup_hash, None)
            # A lookup already under way may have found nothing yet.
            self._inflight.pop(lookup_hash, None)

    def clear(self) -> None:
        """Forgets everything (used when changes may have been missed)."""
        self._generation += 1
        self._found.clear()
        self._unknown.clear()
        self._inflight.clear()

    async def create_key(self, key: KeyRecord, *, max_keys: int) -> KeyRecord:
        """Creates through the store and forgets the hash as unknown."""
        created = await self._store.create_key(key, max_keys=max_keys)
        self.invalidate([key.lookup_hash])
        return created

    async def get_key(self, contact_center_id: str, key_id: str) -> KeyRecord | None:
        """Passed through: admin reads always see the store."""
        return await self._store.get_key(contact_center_id, key_id)

    async def list_keys(
        self,
        contact_center_id: str,
        *,
        query: str,
        after: KeyCursor | None,
        limit: int,
    ) -> KeyPage:
        """Passed through."""
        return await self._store.list_keys(contact_center_id, query=query, after=after, limit=limit)

    async def update_key(
        self,
        contact_center_id: str,
        key_id: str,
        changes: KeyChanges,
        *,
        actor_id: str,
        time: datetime,
    ) -> tuple[KeyRecord, KeyRecord] | None:
        """Updates through the store, then drops the cached entry."""
        result = await self._store.update_key(
            contact_center_id, key_id, changes, actor_id=actor_id, time=time
        )
        if result is not None:
            self.invalidate(list(result[0].lookup_hashes))
        return result

    async def delete_key(
        self, contact_center_id: str, key_id: str, *, actor_id: str, time: datetime
    ) -> KeyRecord | None:
        """Deletes through the store, then drops the cached entry."""
        deleted = await self._store.delete_key(
            contact_center_id, key_id, actor_id=actor_id, time=time
        )
        if deleted is not None:
            self.invalidate(list(deleted.lookup_hashes))
        return deleted

    async def set_key_disabled(
        self,
        contact_center_id: str,
        key_id: str,
        disabled: bool,
        *,
        actor_id: str,
        time: datetime,
    ) -> tuple[KeyRecord, KeyRecord] | None:
        """Disables or enables through the store, then drops every cached
        entry of the key."""
        result = await self._store.set_key_disabled(
            contact_center_id, key_id, disabled, actor_id=actor_id, time=time
        )
        if result is not None:
            self.invalidate(list(result[0].lookup_hashes))
        return result

    async def roll_key(
        self,
        contact_center_id: str,
        key_id: str,
        roll: Roll,
        *,
        actor_id: str,
        time: datetime,
    ) -> tuple[KeyRecord, KeyRecord] | None:
        """Rolls through the store, then drops the key's old and new hashes."""
        result = await self._store.roll_key(
            contact_center_id, key_id, roll, actor_id=actor_id, time=time
        )
        if result is not None:
            self.invalidate([*result[0].lookup_hashes, roll.lookup_hash])
        return result

    async def reveal_key(
        self, contact_center_id: str, key_id: str, *, actor_id: str, time: datetime
    ) -> KeyRecord | None:
        """Passed through."""
        return await self._store.reveal_key(contact_center_id, key_id, actor_id=actor_id, time=time)

    async def list_audit_events(
        self,
        contact_center_id: str,
        *,
        key_id: str | None,
        before_id: int | None,
        limit: int,
    ) -> AuditPage:
        """Passed through."""
        return await self._store.list_audit_events(
            contact_center_id, key_id=key_id, before_id=before_id, limit=limit
        )

    async def record_last_used(self, uses: Mapping[str, datetime]) -> None:
        """Passed through."""
        await self._store.record_last_used(uses)

    async def close(self) -> None:
        """Cancels lookups under way and closes the wrapped store."""
        for lookup, _ in list(self._inflight.values()):
            lookup.cancel()
        self._inflight.clear()
        await self._store.close()


def _retrieve_outcome(lookup: asyncio.Task[KeyRecord | None]) -> None:
    # Every waiter may have gone; marking the outcome retrieved keeps an
    # outage from being reported as "exception never retrieved".
    if not lookup.cancelled():
        lookup.exception()
