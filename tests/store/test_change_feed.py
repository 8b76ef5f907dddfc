"""The change feed (``ChangeFeed``) on every backend of ``migrated_database_url``, and
on PostgreSQL the faults it must survive: a commit that lands long after
later changes were read, a pruner whose clock is far ahead, a database that
is not the one a reader was following."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from server.domain.errors import KeyCollision
from server.domain.records import ChangeKind, ChangePage, FeedPosition, KeyChanges, KeyRecord
from server.invalidation import ChangeFollower
from server.store import SqlKeyStore, open_store
from server.store._engine import POSTGRES_MAX_OVERFLOW, POSTGRES_POOL_SIZE
from tests.conftest import BASE_TIME, KeyFactory, fresh_postgres_database
from tests.store.feed import read_changes

LIMIT = 50
T1 = BASE_TIME + timedelta(days=1)


@pytest.fixture
def store(sql_store: SqlKeyStore) -> SqlKeyStore:
    """The SQL store alone: the change feed is its own, which the cache
    follows rather than offers."""
    return sql_store


async def _prune_everything(store: SqlKeyStore) -> int:
    """Prunes every entry; on a PostgreSQL server shared with other work a
    transaction running elsewhere holds the horizon back for a moment."""
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        pruned = await store.prune_changes(timedelta(0))
        if pruned or asyncio.get_running_loop().time() > deadline:
            return pruned
        await asyncio.sleep(0.05)


async def _until_every_transaction_before_now_finished(store: SqlKeyStore) -> None:
    """On PostgreSQL, until the horizon passes every entry written so far,
    as it has for entries older than the retention, unless a transaction
    has been running that long."""
    if store.engine.dialect.name != "postgresql":
        return
    newest = text("SELECT max(xid) FROM key_changes")
    horizon = text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
    async with store.engine.connect() as conn:
        written = await conn.scalar(newest)
        for _ in range(200):
            if await conn.scalar(horizon) > written:
                return
            await conn.commit()
            await asyncio.sleep(0.05)
    raise AssertionError("a transaction elsewhere held the horizon for 10 s")


async def _start(store: SqlKeyStore) -> FeedPosition:
    page = await store.changes_since(None, limit=10)
    assert page.changes == () and not page.missed and not page.reset
    return page.position


async def test_every_mutation_appears_once_in_the_order_taken(
    store: SqlKeyStore, make_key: KeyFactory
) -> None:
    position = await _start(store)
    position_mark = (await store.changes_since(position, limit=1)).mark
    key = await store.create_key(make_key(), max_keys=LIMIT)
    await store.update_key("cc-1", key.id, KeyChanges(name="n"), actor_id="a", time=T1)
    await store.reveal_key("cc-1", key.id, actor_id="a", time=T1)
    await store.delete_key("cc-1", key.id, actor_id="a", time=T1)

    page = await read_changes(store, position, limit=1)

    assert [(c.kind, c.key_id, c.lookup_hash) for c in page.changes] == [
        (ChangeKind.CREATED, key.id, key.lookup_hash),
        (ChangeKind.UPDATED, key.id, key.lookup_hash),
        (ChangeKind.DELETED, key.id, key.lookup_hash),
    ]
    sequences = [c.sequence for c in page.changes]
    assert sequences == sorted(sequences)
    assert page.mark >= sequences[-1] > position_mark
    assert [c.seq for c in page.changes] == sorted({c.seq for c in page.changes})
    assert (await read_changes(store, page.position)).changes == ()


async def test_a_failed_mutation_appends_nothing(store: SqlKeyStore, make_key: KeyFactory) -> None:
    key = await store.create_key(make_key(), max_keys=LIMIT)
    position = await _start(store)

    with pytest.raises(KeyCollision):
        await store.create_key(make_key(lookup_hash=key.lookup_hash), max_keys=LIMIT)
    assert await store.delete_key("cc-1", "key_missing", actor_id="a", time=T1) is None

    assert (await read_changes(store, position)).changes == ()


async def test_pruning_goes_by_age_and_a_reader_behind_it_hears_so(
    store: SqlKeyStore, make_key: KeyFactory
) -> None:
    behind = await _start(store)
    await store.create_key(make_key(), max_keys=LIMIT)

    assert await store.prune_changes(timedelta(hours=1)) == 0
    assert await _prune_everything(store) == 1
    assert await store.prune_changes(timedelta(0)) == 0

    page = await read_changes(store, behind)
    assert page.changes == () and page.missed
    newer = await store.create_key(make_key(), max_keys=LIMIT)
    after = await read_changes(store, page.position)
    assert [c.lookup_hash for c in after.changes] == [newer.lookup_hash] and not after.missed


async def test_a_reader_that_kept_up_is_not_told_it_missed_anything(
    store: SqlKeyStore, make_key: KeyFactory
) -> None:
    await store.create_key(make_key(), max_keys=LIMIT)
    await _until_every_transaction_before_now_finished(store)
    position = await _start(store)

    assert await _prune_everything(store) == 1

    assert not (await read_changes(store, position)).missed


async def test_a_database_file_replaced_under_a_reader_resets_it(
    tmp_path: Path, make_key: KeyFactory
) -> None:
    first = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'first.db'}")
    second = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'second.db'}")
    try:
        for _ in range(3):
            await first.create_key(make_key(), max_keys=LIMIT)
        position = await _start(first)

        page = await second.changes_since(position, limit=10)
    finally:
        await first.close()
        await second.close()

    assert page.reset and page.changes == ()


# PostgreSQL: transactions commit in any order and for as long as they like.


@dataclass
class _InFlight:
    """A delete by a second writer, stalled between taking its entry's seq
    and committing, and what a reader read meanwhile."""

    key: KeyRecord
    seq: int
    read: ChangePage
    commit: Callable[[], Awaitable[None]]


@contextlib.asynccontextmanager
async def _delete_in_flight(
    store: SqlKeyStore, database_url: str, make_key: KeyFactory, *, later: int
) -> AsyncIterator[_InFlight]:
    """Yields once the stalled delete took its seq, ``later`` keys created
    after it committed, and a reader positioned before all of them read."""
    key = await store.create_key(make_key(), max_keys=LIMIT)
    position = await _start(store)
    connection = await asyncpg.connect(
        make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    try:
        transaction = connection.transaction()
        await transaction.start()
        await connection.execute("DELETE FROM api_keys WHERE lookup_hash = $1", key.lookup_hash)
        seq = await connection.fetchval(
            "INSERT INTO key_changes (key_id, lookup_hash, kind, time)"
            " VALUES ($1, $2, 'deleted', 0) RETURNING seq",
            key.id,
            key.lookup_hash,
        )
        created = [await store.create_key(make_key(), max_keys=LIMIT) for _ in range(later)]
        read = await read_changes(store, position)
        assert [c.lookup_hash for c in read.changes] == [k.lookup_hash for k in created]
        assert all(c.seq > seq for c in read.changes)
        yield _InFlight(key=key, seq=int(seq), read=read, commit=transaction.commit)
    finally:
        await connection.close()


@pytest.mark.postgres
async def test_a_change_committed_after_later_ones_were_read_is_still_read(
    postgres_url: str, make_key: KeyFactory
) -> None:
    store = await open_store(postgres_url)
    try:
        async with _delete_in_flight(store, postgres_url, make_key, later=3) as stalled:
            # No reader may pass the running transaction's entry, however
            # often it reads meanwhile.
            read = stalled.read
            marks = [read.mark]
            for _ in range(3):
                read = await read_changes(store, read.position)
                assert read.changes == ()
                marks.append(read.mark)
            await stalled.commit()

        late = await read_changes(store, read.position)
    finally:
        await store.close()

    assert [(c.seq, c.key_id, c.lookup_hash) for c in late.changes] == [
        (stalled.seq, stalled.key.id, stalled.key.lookup_hash)
    ]
    # Every mark handed out while it was in flight is below it, so whoever
    # holds an answer stamped with one drops it when the change arrives.
    assert late.changes[0].sequence > max(marks)


@pytest.mark.postgres
async def test_a_pruner_far_ahead_in_time_cannot_prune_a_change_still_in_flight(
    postgres_url: str, make_key: KeyFactory
) -> None:
    store = await open_store(postgres_url)
    try:
        async with _delete_in_flight(store, postgres_url, make_key, later=1) as stalled:
            # Everything looks a day old to a clock a day ahead.
            await store.prune_changes(timedelta(days=-1))
            await stalled.commit()

        late = await read_changes(store, stalled.read.position)
    finally:
        await store.close()

    assert [(c.seq, c.lookup_hash) for c in late.changes] == [
        (stalled.seq, stalled.key.lookup_hash)
    ]
    assert not late.missed


@pytest.mark.postgres
async def test_a_reader_pointed_at_another_database_is_reset(
    postgres_url: str, make_key: KeyFactory
) -> None:
    async with fresh_postgres_database() as other_url:
        first = await open_store(postgres_url)
        other = await open_store(other_url)
        try:
            await first.create_key(make_key(), max_keys=LIMIT)
            position = await _start(first)
            await other.create_key(make_key(), max_keys=LIMIT)

            page = await other.changes_since(position, limit=10)
            after = await read_changes(other, page.position)
        finally:
            await first.close()
            await other.close()

    assert page.reset and page.changes == ()
    assert not after.reset and after.changes == ()


class _RecordingCache:
    def __init__(self) -> None:
        self.invalidated: list[bytes] = []

    def invalidate(self, lookup_hashes: list[bytes], key_ids: set[str]) -> None:
        self.invalidated.extend(lookup_hashes)

    def forget_unknown(self, lookup_hashes: list[bytes]) -> None:
        self.invalidated.extend(lookup_hashes)

    def clear(self) -> None:
        self.invalidated.clear()


@pytest.mark.postgres
async def test_lookups_holding_every_pooled_connection_do_not_hold_up_invalidations(
    postgres_url: str, make_key: KeyFactory
) -> None:
    store = await open_store(postgres_url)
    cache = _RecordingCache()
    follower = ChangeFollower(store, cache, poll=1)
    try:
        await follower.sync()
        key = await store.create_key(make_key(), max_keys=LIMIT)
        async with contextlib.AsyncExitStack() as lookups:
            # A flood of Check lookups of unknown keys, each holding a
            # pooled connection, as many as the pool lends.
            for _ in range(POSTGRES_POOL_SIZE + POSTGRES_MAX_OVERFLOW):
                await lookups.enter_async_context(store.engine.connect())
            await asyncio.wait_for(follower.sync(), timeout=2)
    finally:
        await store.close()

    assert cache.invalidated == [key.lookup_hash]
