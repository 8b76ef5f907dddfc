"""The storage the domain needs, as Protocols.

``server.store`` implements both on SQLAlchemy; ``server.cache`` wraps any
``KeyStore`` with the same interface, and ``server.invalidation`` follows a
``ChangeFeed`` to keep that cache in step with other processes. Every method is scoped: admin
methods take the actor's contact center and never see another's keys.
Implementations raise ``StoreUnavailable`` when the database cannot answer and
never let driver errors escape.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Protocol

from server.domain.records import (
    AuditPage,
    ChangePage,
    FeedPosition,
    KeyChanges,
    KeyCursor,
    KeyPage,
    KeyRecord,
    Roll,
)


class KeyLookup(Protocol):
    """How ``Check`` finds keys: the cache in front of a ``KeyStore``."""

    def cached(self, lookup_hash: bytes) -> KeyRecord | None:
        """The key if it is held in memory and fresh, without waiting;
        ``None`` when it is not (which says nothing about the store)."""
        ...

    async def find_by_lookup_hash(self, lookup_hash: bytes) -> KeyRecord | None:
        """The key with this lookup hash, from memory or the store, or
        ``None`` if no live key has it."""
        ...


class KeyStore(Protocol):
    """Keys, their audit log, and lookups by hash for ``Check``."""

    async def create_key(self, key: KeyRecord, *, max_keys: int) -> KeyRecord:
        """Insert ``key`` and its ``created`` audit event in one transaction.

        Raises ``KeyLimitExceeded`` if the contact center already holds
        ``max_keys`` keys (concurrent creates can never exceed it) and
        ``KeyCollision`` if the id or lookup hash was ever used.
        """
        ...

    async def get_key(self, contact_center_id: str, key_id: str) -> KeyRecord | None:
        """The key, or ``None`` if it does not exist in that contact center."""
        ...

    async def list_keys(
        self,
        contact_center_id: str,
        *,
        query: str,
        after: KeyCursor | None,
        limit: int,
    ) -> KeyPage:
        """Keys newest first whose name or description contains ``query``
        (case-insensitive), starting after ``after``; at most ``limit``."""
        ...

    async def update_key(
        self,
        contact_center_id: str,
        key_id: str,
        changes: KeyChanges,
        *,
        actor_id: str,
        time: datetime,
    ) -> tuple[KeyRecord, KeyRecord] | None:
        """Apply ``changes`` and append an ``updated`` audit event in one
        transaction. Returns (before, after), or ``None`` if no such key."""
        ...

    async def delete_key(
        self, contact_center_id: str, key_id: str, *, actor_id: str, time: datetime
    ) -> KeyRecord | None:
        """Delete the key and append a ``deleted`` audit event in one
        transaction. Returns the deleted key, or ``None`` if no such key.
        The lookup hash is retired, never to be used by another key."""
        ...

    async def set_key_disabled(
        self,
        contact_center_id: str,
        key_id: str,
        disabled: bool,
        *,
        actor_id: str,
        time: datetime,
    ) -> tuple[KeyRecord, KeyRecord] | None:
        """Disable or enable the key and append a ``disabled`` or ``enabled``
        audit event in one transaction. Returns (before, after), or ``None``
        if no such key."""
        ...

    async def roll_key(
        self,
        contact_center_id: str,
        key_id: str,
        roll: Roll,
        *,
        actor_id: str,
        time: datetime,
    ) -> tuple[KeyRecord, KeyRecord] | None:
        """Give the key the secret of ``roll`` and append a ``rolled`` audit
        event in one transaction; the replaced secret finds the key until
        ``roll.previous_expire_time``, one replaced earlier no longer does.
        Returns (before, after), or ``None`` if no such key. Raises
        ``KeyCollision`` if the new lookup hash was ever used."""
        ...

    async def reveal_key(
        self, contact_center_id: str, key_id: str, *, actor_id: str, time: datetime
    ) -> KeyRecord | None:
        """Return the key and append a ``revealed`` audit event in one
        transaction, or ``None`` if no such key."""
        ...

    async def list_audit_events(
        self,
        contact_center_id: str,
        *,
        key_id: str | None,
        before_id: int | None,
        limit: int,
    ) -> AuditPage:
        """Audit events newest first (descending ``id``), optionally of one
        key (deleted keys included), with ``id < before_id``; at most
        ``limit``."""
        ...

    async def find_by_lookup_hash(self, lookup_hash: bytes) -> KeyRecord | None:
        """The live key with this HMAC lookup hash (its current one, or the
        previous one of a rolled key), in any contact center."""
        ...

    async def record_last_used(self, uses: Mapping[str, datetime]) -> None:
        """Set ``last_used_time`` of each key id to the given time unless
        it is already later. Unknown (deleted) ids are ignored."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class ChangeFeed(Protocol):
    """The record of key mutations that every process follows.

    Each mutation of a key (create, update, delete, disable, enable, roll)
    appends an entry per lookup hash of the key in its own transaction, so
    an entry is visible exactly when its mutation is. A reader that passes
    back the position of each page it read gets every committed entry
    exactly once, whatever order transactions commit in and however long
    one stays open.
    """

    async def changes_since(self, position: FeedPosition | None, *, limit: int) -> ChangePage:
        """Entries committed after ``position`` was taken, at most ``limit``.

        With ``None`` the page holds no entries and its position is the
        feed's current end: a reader starting with nothing derived from the
        database yet needs nothing before it.
        """
        ...

    async def prune_changes(self, older_than: timedelta) -> int:
        """Delete entries committed more than ``older_than`` ago by the
        database's clock; returns how many went. Never deletes past an entry
        that a transaction still running could commit before."""
        ...

    async def follow_notifications(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` whenever another process may have committed a change
        and after every (re)connect of the notification channel, until
        cancelled. Retries a lost channel by itself."""
        ...
