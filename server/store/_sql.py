"""``SqlKeyStore``: the ``KeyStore`` and ``ChangeFeed`` Protocols on SQLAlchemy Core.

Every mutation, its audit event and its change-feed entry commit in one
transaction; on PostgreSQL the transaction also NOTIFYs the listeners of
other processes, which PostgreSQL delivers only once it has committed. Driver and
connection errors become ``StoreUnavailable`` in one place,
:func:`_unavailable_on_error`, so no database text reaches a caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from alembic import command
from alembic.config import Config
from sqlalchemy import (
    ColumnElement,
    RowMapping,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.dml import Insert

from server.domain.errors import KeyCollision, KeyLimitExceeded, StoreUnavailable
from server.domain.records import (
    AuditAction,
    AuditPage,
    AuditRecord,
    ChangeKind,
    ChangePage,
    FeedPosition,
    KeyChanges,
    KeyCursor,
    KeyPage,
    KeyRecord,
    Roll,
    Unchanged,
)
from server.domain.store import ChangeFeed, KeyStore
from server.store._engine import (
    FEED_POOL_SIZE,
    create_engine,
    ensure_same_database_file,
    opened_sqlite_file,
    writer,
)
from server.store._feed import (
    POSTGRES_XID,
    database_clock,
    postgres_changes,
    postgres_prune,
    raise_pruned_marks,
    sqlite_changes,
)
from server.store._listener import CHANGE_CHANNEL, ChangeListener, CommitWatcher
from server.store._schema import (
    api_keys,
    audit_events,
    contact_centers,
    key_changes,
    retired_lookup_hashes,
    write_probes,
)
from server.store._times import MICROSECOND
from server.store._times import from_micros as _from_micros
from server.store._times import to_micros as _to_micros

logger = logging.getLogger(__name__)

# What a database outage or a broken database looks like from here: SQLAlchemy
# wraps most driver errors, but a failed connect can surface as the raw
# socket or driver exception (TimeoutError is an OSError).
_DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    SQLAlchemyError,
    OSError,
    sqlite3.Error,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)

_MIGRATIONS = "server.store:migrations"
# Key of the PostgreSQL advisory lock that makes replicas starting together
# migrate one after another; any constant unique to this service will do.
_MIGRATION_LOCK_ID = 0x61706B6579730001

_LIKE_ESCAPE = "\\"

_RECORD_LAST_USED = (
    update(api_keys)
    .where(
        api_keys.c.id == bindparam("b_key_id"),
        or_(
            api_keys.c.last_used_time.is_(None),
            api_keys.c.last_used_time < bindparam("b_time"),
        ),
    )
    .values(last_used_time=bindparam("b_time"))
)


async def open_store(database_url: str, *, migrate: bool = True) -> SqlKeyStore:
    """Open the store at ``database_url``, first migrating it to the latest
    schema unless ``migrate`` is false.

    Raises ``ValueError`` for a malformed or unsupported URL and
    ``StoreUnavailable`` when the database cannot be reached.
    """
    with _unavailable_on_error("open"):
        engine = await create_engine(database_url)
        feed_engine = await create_engine(database_url, pool_size=FEED_POOL_SIZE)
    try:
        if migrate:
            await _upgrade(engine)
    except BaseException:
        await engine.dispose()
        await feed_engine.dispose()
        raise
    return SqlKeyStore(engine, feed_engine)


async def migrate(database_url: str, *, revision: str = "head") -> None:
    """Bring the database at ``database_url`` to the latest schema (Alembic
    ``upgrade head``), or to an earlier ``revision`` (to stage a rollout).
    Safe to run again, and from several replicas at once.

    Raises ``ValueError`` for a malformed or unsupported URL and
    ``StoreUnavailable`` when the database cannot be reached.
    """
    with _unavailable_on_error("migrate"):
        engine = await create_engine(database_url)
    try:
        await _upgrade(engine, revision)
    finally:
        await engine.dispose()


class SqlKeyStore(KeyStore, ChangeFeed):
    """The key store and its change feed on SQLite (aiosqlite) or PostgreSQL
    (asyncpg).

    Build one with :func:`open_store`, which configures the engines this
    class relies on: ``engine`` for keys, ``feed_engine`` (a small pool of
    its own, so that a flood of lookups cannot hold up invalidations) for
    reading and pruning the change feed.
    """

    def __init__(self, engine: AsyncEngine, feed_engine: AsyncEngine) -> None:
        self.engine = engine
        self.feed_engine = feed_engine
        self._writer = writer(engine)
        self._postgres = engine.dialect.name == "postgresql"
        # SQLite runs one write transaction at a time anyway; queueing this
        # process's writers here spares them the busy handler's sleep-and-retry
        # (which also still guards against other processes).
        self._sqlite_write_lock = None if self._postgres else asyncio.Lock()

    async def create_key(self, key: KeyRecord, *, max_keys: int) -> KeyRecord:
        """Insert ``key`` and its ``created`` audit event in one transaction.

        Raises ``KeyLimitExceeded`` when the contact center already holds
        ``max_keys`` keys and ``KeyCollision`` when the id is taken or a live
        or deleted key had the same lookup hash.
        """
        row = _key_row(key)
        stored = _key_record(row)
        center = key.contact_center_id
        async with self._write("create_key") as conn:
            await conn.execute(
                self._insert_ignoring_conflicts(contact_centers),
                {"contact_center_id": center, "key_count": 0},
            )
            # The conditional increment is the limit: PostgreSQL makes
            # concurrent creates queue on this row's lock and re-check the
            # condition, SQLite has a single writer.
            counted = await conn.execute(
                update(contact_centers)
                .where(
                    contact_centers.c.contact_center_id == center,
                    contact_centers.c.key_count < max_keys,
                )
                .values(key_count=contact_centers.c.key_count + 1)
            )
            if counted.rowcount != 1:
                raise KeyLimitExceeded(center, max_keys)
            inserted = await conn.execute(self._insert_ignoring_conflicts(api_keys), row)
            if inserted.rowcount != 1:
                taken = await conn.scalar(select(api_keys.c.id).where(api_keys.c.id == key.id))
                if taken is not None:
                    raise KeyCollision("key id in use")
                raise KeyCollision("lookup hash in use")
            # Checked after the insert: a concurrent delete of a key with this
            # hash holds the unique index entry until it commits, by which time
            # the hash is in the retired table for this query to see.
            retired = await conn.scalar(
                select(retired_lookup_hashes.c.lookup_hash).where(
                    retired_lookup_hashes.c.lookup_hash == key.lookup_hash
                )
            )
            if retired is not None:
                raise KeyCollision("lookup hash retired")
            await conn.execute(
                insert(audit_events),
                _audit_row(
                    AuditAction.CREATED,
                    stored,
                    actor_id=stored.created_by,
                    time=stored.create_time,
                    new_name=stored.name,
                    new_description=stored.description,
                    new_scopes=stored.scopes,
                    new_expire_time=stored.expire_time,
                    new_allowed_cidrs=stored.allowed_cidrs,
                ),
            )
            await self._record_changes(conn, stored.id, (stored.lookup_hash,), ChangeKind.CREATED)
        return stored

    async def get_key(self, contact_center_id: str, key_id: str) -> KeyRecord | None:
        """The key, or ``None`` if it does not exist in that contact center."""
        async with self._read("get_key") as conn:
            result = await conn.execute(
                select(api_keys).where(
                    api_keys.c.contact_center_id == contact_center_id, api_keys.c.id == key_id
                )
            )
            row = result.mappings().first()
        return None if row is None else _key_record(row)

    async def list_keys(
        self,
        contact_center_id: str,
        *,
        query: str,
        after: KeyCursor | None,
        limit: int,
    ) -> KeyPage:
        """Keys newest first (ties by descending id) whose name or description
        contains ``query`` case-insensitively, starting strictly after
        ``after``; at most ``limit``. ``total_size`` counts every match."""
        _check_limit(limit)
        matching: list[ColumnElement[bool]] = [api_keys.c.contact_center_id == contact_center_id]
        if query:
            pattern = f"%{_escape_like(_fold(query))}%"
            matching.append(
                or_(
                    api_keys.c.name_folded.like(pattern, escape=_LIKE_ESCAPE),
                    api_keys.c.description_folded.like(pattern, escape=_LIKE_ESCAPE),
                )
            )
        page = list(matching)
        if after is not None:
            after_time = _to_micros(after.create_time)
            page.append(
                or_(
                    api_keys.c.create_time < after_time,
                    and_(api_keys.c.create_time == after_time, api_keys.c.id < after.key_id),
                )
            )
        async with self._read("list_keys", snapshot=True) as conn:
            total = await conn.scalar(select(func.count()).select_from(api_keys).where(*matching))
            result = await conn.execute(
                select(api_keys)
                .where(*page)
                .order_by(api_keys.c.create_time.desc(), api_keys.c.id.desc())
                .limit(limit + 1)
            )
            rows = result.mappings().all()
        return KeyPage(
            keys=tuple(_key_record(row) for row in rows[:limit]),
            total_size=int(total or 0),
            has_more=len(rows) > limit,
        )

    async def update_key(
        self,
        contact_center_id: str,
        key_id: str,
        changes: KeyChanges,
        *,
        actor_id: str,
        time: datetime,
    ) -> tuple[KeyRecord, KeyRecord] | None:
        """Apply ``changes``, set ``update_time`` and append an ``updated``
        audit event in one transaction. Returns (before, after), or ``None``
        if no such key.

        The event holds old and new values of each field that ``changes``
        sets; fields it leaves alone are empty on both sides.
        """
        values: dict[str, Any] = {"update_time": _to_micros(time)}
        if changes.name is not None:
            values["name"] = changes.name
            values["name_folded"] = _fold(changes.name)
        if changes.description is not None:
            values["description"] = changes.description
            values["description_folded"] = _fold(changes.description)
        if changes.scopes is not None:
            values["scopes"] = _dump_scopes(changes.scopes)
        if not isinstance(changes.expire_time, Unchanged):
            values["expire_time"] = _optional_micros(changes.expire_time)
        if changes.allowed_cidrs is not None:
            values["allowed_cidrs"] = _dump_list(changes.allowed_cidrs)
        expiry_changed = not isinstance(changes.expire_time, Unchanged)
        cidrs_changed = changes.allowed_cidrs is not None
        async with self._write("update_key") as conn:
            changed = await self._change_key(conn, contact_center_id, key_id, values)
            if changed is None:
                return None
            before, after = changed
            await conn.execute(
                insert(audit_events),
                _audit_row(
                    AuditAction.UPDATED,
                    after,
                    actor_id=actor_id,
                    time=time,
                    old_name=before.name if changes.name is not None else "",
                    new_name=after.name if changes.name is not None else "",
                    old_description=(before.description if changes.description is not None else ""),
                    new_description=after.description if changes.description is not None else "",
                    old_scopes=before.scopes if changes.scopes is not None else (),
                    new_scopes=after.scopes if changes.scopes is not None else (),
                    old_expire_time=before.expire_time if expiry_changed else None,
                    new_expire_time=after.expire_time if expiry_changed else None,
                    old_allowed_cidrs=before.allowed_cidrs if cidrs_changed else (),
                    new_allowed_cidrs=after.allowed_cidrs if cidrs_changed else (),
                ),
            )
            await self._record_changes(conn, after.id, after.lookup_hashes, ChangeKind.UPDATED)
        return before, after

    async def set_key_disabled(
        self,
        contact_center_id: str,
        key_id: str,
        disabled: bool,
        *,
        actor_id: str,
        time: datetime,
    ) -> tuple[KeyRecord, KeyRecord] | None:
        """Disable or enable the key, set ``update_time`` and append a
        ``disabled`` or ``enabled`` audit event in one transaction. Returns
        (before, after), or ``None`` if no such key."""
        values: dict[str, Any] = {"disabled": disabled, "update_time": _to_micros(time)}
        action, kind = (
            (AuditAction.DISABLED, ChangeKind.DISABLED)
            if disabled
            else (AuditAction.ENABLED, ChangeKind.ENABLED)
        )
        async with self._write("set_key_disabled") as conn:
            changed = await self._change_key(conn, contact_center_id, key_id, values)
            if changed is None:
                return None
            before, after = changed
            await conn.execute(
                insert(audit_events), _audit_row(action, after, actor_id=actor_id, time=time)
            )
            # Both secrets of a rolled key go, or the old one would keep
            # answering from caches.
            await self._record_changes(conn, after.id, after.lookup_hashes, kind)
        return before, after

    async def roll_key(
        self,
        contact_center_id: str,
        key_id: str,
        roll: Roll,
        *,
        actor_id: str,
        time: datetime,
    ) -> tuple[KeyRecord, KeyRecord] | None:
        """Give the key a new secret and append a ``rolled`` audit event in
        one transaction. Returns (before, after), or ``None`` if no such key.

        The replaced secret keeps finding the key until
        ``roll.previous_expire_time`` (not at all if that is not after
        ``time``); a secret replaced by an earlier roll stops at once. The
        replaced lookup hash is retired now, so no other key can ever take
        it. Raises ``KeyCollision`` if the new lookup hash was ever used.
        """
        async with self._write("roll_key") as conn:
            row = await self._locked_key(conn, contact_center_id, key_id)
            if row is None:
                return None
            before = _key_record(row)
            taken = await conn.scalar(
                select(func.count())
                .select_from(api_keys)
                .where(
                    or_(
                        api_keys.c.lookup_hash == roll.lookup_hash,
                        api_keys.c.previous_lookup_hash == roll.lookup_hash,
                    )
                )
            )
            retired = await conn.scalar(
                select(retired_lookup_hashes.c.lookup_hash).where(
                    retired_lookup_hashes.c.lookup_hash == roll.lookup_hash
                )
            )
            if taken or retired is not None:
                raise KeyCollision("lookup hash in use or retired")
            overlapping = roll.previous_expire_time > time
            values: dict[str, Any] = {
                "lookup_hash": roll.lookup_hash,
                "last4": roll.last4,
                "secret_ciphertext": roll.secret_ciphertext,
                "encryption_key_id": roll.encryption_key_id,
                "previous_lookup_hash": before.lookup_hash if overlapping else None,
                "previous_expire_time": (
                    _to_micros(roll.previous_expire_time) if overlapping else None
                ),
                "update_time": _to_micros(time),
            }
            await conn.execute(
                self._insert_ignoring_conflicts(retired_lookup_hashes),
                {"lookup_hash": before.lookup_hash},
            )
            await conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(values))
            after = _key_record({**row, **values})
            await conn.execute(
                insert(audit_events),
                _audit_row(
                    AuditAction.ROLLED,
                    after,
                    actor_id=actor_id,
                    time=time,
                    previous_secret_expire_time=max(roll.previous_expire_time, time),
                ),
            )
            await self._record_changes(
                conn, after.id, (*before.lookup_hashes, roll.lookup_hash), ChangeKind.ROLLED
            )
        return before, after

    async def delete_key(
        self, contact_center_id: str, key_id: str, *, actor_id: str, time: datetime
    ) -> KeyRecord | None:
        """Delete the key, retire its lookup hash and append a ``deleted``
        audit event (with the key's last name, description and scopes as the
        old values) in one transaction. Returns the deleted key, or ``None``
        if no such key."""
        async with self._write("delete_key") as conn:
            result = await conn.execute(
                delete(api_keys)
                .where(api_keys.c.contact_center_id == contact_center_id, api_keys.c.id == key_id)
                .returning(*api_keys.c)
            )
            row = result.mappings().first()
            if row is None:
                return None
            deleted = _key_record(row)
            await conn.execute(
                self._insert_ignoring_conflicts(retired_lookup_hashes),
                {"lookup_hash": deleted.lookup_hash},
            )
            await conn.execute(
                update(contact_centers)
                .where(contact_centers.c.contact_center_id == contact_center_id)
                .values(key_count=contact_centers.c.key_count - 1)
            )
            await conn.execute(
                insert(audit_events),
                _audit_row(
                    AuditAction.DELETED,
                    deleted,
                    actor_id=actor_id,
                    time=time,
                    old_name=deleted.name,
                    old_description=deleted.description,
                    old_scopes=deleted.scopes,
                    old_expire_time=deleted.expire_time,
                    old_allowed_cidrs=deleted.allowed_cidrs,
                ),
            )
            await self._record_changes(conn, deleted.id, deleted.lookup_hashes, ChangeKind.DELETED)
        return deleted

    async def reveal_key(
        self, contact_center_id: str, key_id: str, *, actor_id: str, time: datetime
    ) -> KeyRecord | None:
        """Return the key and append a ``revealed`` audit event in one
        transaction, or ``None`` if no such key."""
        async with self._write("reveal_key") as conn:
            # A shared row lock: a concurrent delete waits for this reveal, so
            # a secret is never handed out after its key's deletion committed.
            result = await conn.execute(
                select(api_keys)
                .where(api_keys.c.contact_center_id == contact_center_id, api_keys.c.id == key_id)
                .with_for_update(read=True)
            )
            row = result.mappings().first()
            if row is None:
                return None
            key = _key_record(row)
            await conn.execute(
                insert(audit_events),
                _audit_row(AuditAction.REVEALED, key, actor_id=actor_id, time=time),
            )
        return key

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
        _check_limit(limit)
        conditions: list[ColumnElement[bool]] = [
            audit_events.c.contact_center_id == contact_center_id
        ]
        if key_id is not None:
            conditions.append(audit_events.c.key_id == key_id)
        if before_id is not None:
            conditions.append(audit_events.c.id < before_id)
        async with self._read("list_audit_events") as conn:
            result = await conn.execute(
                select(audit_events)
                .where(*conditions)
                .order_by(audit_events.c.id.desc())
                .limit(limit + 1)
            )
            rows = result.mappings().all()
        return AuditPage(
            events=tuple(_audit_record(row) for row in rows[:limit]),
            has_more=len(rows) > limit,
        )

    async def find_by_lookup_hash(self, lookup_hash: bytes) -> KeyRecord | None:
        """The live key with this HMAC lookup hash, in any contact center,
        current or (for a rolled key, until its next roll or deletion)
        previous."""
        async with self._read("find_by_lookup_hash") as conn:
            result = await conn.execute(
                select(api_keys).where(
                    or_(
                        api_keys.c.lookup_hash == lookup_hash,
                        api_keys.c.previous_lookup_hash == lookup_hash,
                    )
                )
            )
            row = result.mappings().first()
        return None if row is None else _key_record(row)

    async def record_last_used(self, uses: Mapping[str, datetime]) -> None:
        """Set ``last_used_time`` of each key id to the given time unless
        it is already later, in one short transaction that never waits for a
        row lock. Unknown (deleted) ids are ignored.

        On PostgreSQL a key whose row another transaction holds (an admin
        write, another replica's flush) is skipped rather than waited for,
        so a stalled writer holds up neither this flush nor, through it,
        other writers; ``StoreUnavailable`` then says some times were not
        written, for the caller to retry. SQLite's single writer has no row
        locks to wait for.
        """
        if not uses:
            return
        written = set(uses)
        async with self._write("record_last_used") as conn:
            if self._postgres:
                written = set(
                    await conn.scalars(
                        select(api_keys.c.id)
                        .where(api_keys.c.id.in_(uses))
                        .order_by(api_keys.c.id)
                        .with_for_update(skip_locked=True)
                    )
                )
            params = [
                {"b_key_id": key_id, "b_time": _to_micros(used)}
                for key_id, used in sorted(uses.items())
                if key_id in written
            ]
            if params:
                await conn.execute(_RECORD_LAST_USED, params)
        if written != set(uses) and await self._any_key_exists(set(uses) - written):
            raise StoreUnavailable("last-used times of keys being written elsewhere wait")

    async def _any_key_exists(self, key_ids: set[str]) -> bool:
        async with self._read("record_last_used") as conn:
            found = await conn.scalar(select(api_keys.c.id).where(api_keys.c.id.in_(key_ids)))
        return found is not None

    async def changes_since(self, position: FeedPosition | None, *, limit: int) -> ChangePage:
        """Entries committed after ``position`` was taken, oldest ``seq``
        first, at most ``limit``; see ``docs/REVOCATION.md`` for why none is
        ever passed over.

        On PostgreSQL a position is a pair of snapshots: an entry is due when
        its transaction is visible in the newer one and was not in the older
        one. On SQLite, whose single writer commits entries in ``seq``
        order, it is the highest ``seq`` read.
        """
        _check_limit(limit)
        async with self._read("changes_since", snapshot=True, feed=True) as conn:
            if self._postgres:
                return await postgres_changes(conn, position, limit)
            return await sqlite_changes(conn, position, limit)

    async def prune_changes(self, older_than: timedelta) -> int:
        """Delete entries committed more than ``older_than`` ago by the
        database's clock, and raise the pruned marks past them; returns how
        many went.

        On PostgreSQL only entries of transactions below the oldest one still
        running go, so an entry that may yet commit is never pruned, whatever
        the clocks. Any number of processes may prune at once: they queue on
        the marks' row, and the later ones find nothing left to delete.
        """
        retention = older_than // MICROSECOND
        async with self._write("prune_changes", feed=True) as conn:
            if self._postgres:
                return await postgres_prune(conn, retention)
            cutoff = select(database_clock(conn) - retention).scalar_subquery()
            through = await conn.scalar(
                select(func.max(key_changes.c.seq)).where(key_changes.c.time < cutoff)
            )
            if through is None:
                return 0
            await raise_pruned_marks(conn, through=through, below_xid=0)
            result = await conn.execute(delete(key_changes).where(key_changes.c.seq <= through))
        return int(result.rowcount)

    async def probe_write(self) -> None:
        """Commit a write, proving the database takes them now; raises
        ``StoreUnavailable`` when it does not (down, read-only, full, or on
        SQLite a database file removed or replaced)."""
        async with self._write("probe_write") as conn:
            probe = await conn.scalar(
                insert(write_probes)
                .values(time=_to_micros(datetime.now(UTC)))
                .returning(write_probes.c.id)
            )
            await conn.execute(delete(write_probes).where(write_probes.c.id == probe))

    async def follow_notifications(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` after every change another connection may have
        committed, until cancelled. On PostgreSQL, LISTEN on a dedicated
        connection (and wake on every (re)connect too); on SQLite, watch the
        file's commit counter (``PRAGMA data_version``) on a connection of
        its own."""
        if self._postgres:
            dsn = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            await ChangeListener(dsn, wake).run()
            return
        await CommitWatcher(opened_sqlite_file(self.engine.url), wake).run()

    async def close(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()
        await self.feed_engine.dispose()

    async def _locked_key(
        self, conn: AsyncConnection, contact_center_id: str, key_id: str
    ) -> RowMapping | None:
        """The key's row, locked against concurrent writers until the
        transaction ends."""
        result = await conn.execute(
            select(api_keys)
            .where(api_keys.c.contact_center_id == contact_center_id, api_keys.c.id == key_id)
            .with_for_update()
        )
        return result.mappings().first()

    async def _change_key(
        self,
        conn: AsyncConnection,
        contact_center_id: str,
        key_id: str,
        values: Mapping[str, Any],
    ) -> tuple[KeyRecord, KeyRecord] | None:
        """Lock the key's row and set ``values`` on it; (before, after), or
        ``None`` if no such key."""
        row = await self._locked_key(conn, contact_center_id, key_id)
        if row is None:
            return None
        await conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(values))
        return _key_record(row), _key_record({**row, **values})

    async def _record_changes(
        self,
        conn: AsyncConnection,
        key_id: str,
        lookup_hashes: Sequence[bytes],
        kind: ChangeKind,
    ) -> None:
        """Append the mutation's change entries to its transaction: one per
        lookup hash that must be dropped from caches, each naming the key.
        Called last in it, so that the ``seq`` is taken just before the
        commit and later ``seq`` values rarely become visible first."""
        for lookup_hash in lookup_hashes:
            values: dict[str, Any] = {
                "key_id": key_id,
                "lookup_hash": lookup_hash,
                "kind": kind.value,
                "time": database_clock(conn),
            }
            if self._postgres:
                values["xid"] = POSTGRES_XID
            seq = await conn.scalar(insert(key_changes).values(values).returning(key_changes.c.seq))
        if self._postgres:
            # Only a wake-up (the payload is the seq, never key material):
            # readers take the changes themselves from the table.
            await conn.execute(select(func.pg_notify(CHANGE_CHANNEL, str(seq))))

    @contextlib.asynccontextmanager
    async def _write(self, operation: str, *, feed: bool = False) -> AsyncIterator[AsyncConnection]:
        """A write transaction (on the feed's engine with ``feed``):
        committed when the block ends, rolled back if it raises. On SQLite
        it commits only into the file still at the database's path."""
        with _unavailable_on_error(operation):
            async with contextlib.AsyncExitStack() as stack:
                if self._sqlite_write_lock is not None:
                    await stack.enter_async_context(self._sqlite_write_lock)
                engine = writer(self.feed_engine) if feed else self._writer
                conn = await stack.enter_async_context(engine.begin())
                yield conn
                await ensure_same_database_file(conn)

    @contextlib.asynccontextmanager
    async def _read(
        self, operation: str, *, snapshot: bool = False, feed: bool = False
    ) -> AsyncIterator[AsyncConnection]:
        """A read-only transaction (on the feed's engine with ``feed``).
        With ``snapshot`` its statements all see the same state (SQLite
        transactions always do)."""
        with _unavailable_on_error(operation):
            async with (self.feed_engine if feed else self.engine).connect() as conn:
                if snapshot and self._postgres:
                    await conn.execution_options(isolation_level="REPEATABLE READ")
                yield conn

    def _insert_ignoring_conflicts(self, table: Any) -> Insert:
        dialect_insert = postgresql.insert if self._postgres else sqlite.insert
        return dialect_insert(table).on_conflict_do_nothing()


@contextlib.contextmanager
def _unavailable_on_error(operation: str) -> Iterator[None]:
    """Turn a database failure into ``StoreUnavailable``.

    The caller's error carries no driver text, SQL or parameters; the log
    gets the driver's error class and message (the engine hides parameters).
    """
    try:
        yield
    except _DRIVER_ERRORS as exc:
        cause = getattr(exc, "orig", None) or exc
        logger.warning(
            "key store %s failed: %s: %s", operation, type(cause).__name__, _first_line(cause)
        )
        raise StoreUnavailable(f"the key store could not complete {operation}") from exc


async def _upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    with _unavailable_on_error("migrate"):
        async with writer(engine).begin() as conn:
            if conn.dialect.name == "postgresql":
                await conn.execute(select(func.pg_advisory_xact_lock(_MIGRATION_LOCK_ID)))
            await conn.run_sync(_run_alembic, revision)


def _run_alembic(connection: Connection, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", _MIGRATIONS)
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().split("\n", 1)[0]


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")


def _fold(text: str) -> str:
    return text.casefold()


def _escape_like(text: str) -> str:
    return (
        text.replace(_LIKE_ESCAPE, _LIKE_ESCAPE * 2)
        .replace("%", _LIKE_ESCAPE + "%")
        .replace("_", _LIKE_ESCAPE + "_")
    )


def _dump_scopes(scopes: Sequence[str]) -> str:
    return json.dumps(sorted(scopes), separators=(",", ":"))


def _load_scopes(text: str) -> tuple[str, ...]:
    return tuple(json.loads(text))


def _dump_list(values: Sequence[str]) -> str:
    return json.dumps(list(values), separators=(",", ":"))


def _optional_micros(time: datetime | None) -> int | None:
    return None if time is None else _to_micros(time)


def _optional_time(micros: int | None) -> datetime | None:
    return None if micros is None else _from_micros(micros)


def _key_row(key: KeyRecord) -> dict[str, Any]:
    return {
        "id": key.id,
        "contact_center_id": key.contact_center_id,
        "name": key.name,
        "description": key.description,
        "name_folded": _fold(key.name),
        "description_folded": _fold(key.description),
        "scopes": _dump_scopes(key.scopes),
        "lookup_hash": key.lookup_hash,
        "last4": key.last4,
        "secret_ciphertext": key.secret_ciphertext,
        "encryption_key_id": key.encryption_key_id,
        "create_time": _to_micros(key.create_time),
        "update_time": _to_micros(key.update_time),
        "last_used_time": _optional_micros(key.last_used_time),
        "created_by": key.created_by,
        "expire_time": _optional_micros(key.expire_time),
        "disabled": key.disabled,
        "allowed_cidrs": _dump_list(key.allowed_cidrs),
        "previous_lookup_hash": key.previous_lookup_hash,
        "previous_expire_time": _optional_micros(key.previous_expire_time),
    }


def _key_record(row: Mapping[str, Any] | RowMapping) -> KeyRecord:
    previous = row["previous_lookup_hash"]
    return KeyRecord(
        id=row["id"],
        contact_center_id=row["contact_center_id"],
        name=row["name"],
        description=row["description"],
        scopes=_load_scopes(row["scopes"]),
        lookup_hash=bytes(row["lookup_hash"]),
        last4=row["last4"],
        secret_ciphertext=bytes(row["secret_ciphertext"]),
        encryption_key_id=row["encryption_key_id"],
        create_time=_from_micros(row["create_time"]),
        update_time=_from_micros(row["update_time"]),
        last_used_time=_optional_time(row["last_used_time"]),
        created_by=row["created_by"],
        expire_time=_optional_time(row["expire_time"]),
        disabled=bool(row["disabled"]),
        allowed_cidrs=tuple(json.loads(row["allowed_cidrs"])),
        previous_lookup_hash=None if previous is None else bytes(previous),
        previous_expire_time=_optional_time(row["previous_expire_time"]),
    )


def _audit_row(
    action: AuditAction,
    key: KeyRecord,
    *,
    actor_id: str,
    time: datetime,
    old_name: str = "",
    new_name: str = "",
    old_description: str = "",
    new_description: str = "",
    old_scopes: Sequence[str] = (),
    new_scopes: Sequence[str] = (),
    old_expire_time: datetime | None = None,
    new_expire_time: datetime | None = None,
    old_allowed_cidrs: Sequence[str] = (),
    new_allowed_cidrs: Sequence[str] = (),
    previous_secret_expire_time: datetime | None = None,
) -> dict[str, Any]:
    return {
        "contact_center_id": key.contact_center_id,
        "key_id": key.id,
        "action": action.value,
        "actor_id": actor_id,
        "time": _to_micros(time),
        "old_name": old_name,
        "new_name": new_name,
        "old_description": old_description,
        "new_description": new_description,
        "old_scopes": _dump_scopes(old_scopes),
        "new_scopes": _dump_scopes(new_scopes),
        "old_expire_time": _optional_micros(old_expire_time),
        "new_expire_time": _optional_micros(new_expire_time),
        "old_allowed_cidrs": _dump_list(old_allowed_cidrs),
        "new_allowed_cidrs": _dump_list(new_allowed_cidrs),
        "previous_secret_expire_time": _optional_micros(previous_secret_expire_time),
    }


def _audit_record(row: RowMapping) -> AuditRecord:
    return AuditRecord(
        id=row["id"],
        contact_center_id=row["contact_center_id"],
        key_id=row["key_id"],
        action=AuditAction(row["action"]),
        actor_id=row["actor_id"],
        time=_from_micros(row["time"]),
        old_name=row["old_name"],
        new_name=row["new_name"],
        old_description=row["old_description"],
        new_description=row["new_description"],
        old_scopes=_load_scopes(row["old_scopes"]),
        new_scopes=_load_scopes(row["new_scopes"]),
        old_expire_time=_optional_time(row["old_expire_time"]),
        new_expire_time=_optional_time(row["new_expire_time"]),
        old_allowed_cidrs=tuple(json.loads(row["old_allowed_cidrs"])),
        new_allowed_cidrs=tuple(json.loads(row["new_allowed_cidrs"])),
        previous_secret_expire_time=_optional_time(row["previous_secret_expire_time"]),
    )
