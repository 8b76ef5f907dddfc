"""Last-used flushes on PostgreSQL never wait for a row another transaction
holds, so a stalled admin write holds up neither the flush nor, through the
flush's own locks, admin writes to other keys; and no session lets a
statement or an idle transaction hold locks for long."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from server.domain.errors import StoreUnavailable
from server.domain.records import KeyChanges
from server.store import open_store
from tests.conftest import BASE_TIME, KeyFactory

pytestmark = pytest.mark.postgres

USED = BASE_TIME + timedelta(days=1)
# Far below the 10 s a flush used to wait for a locked row.
PROMPT_S = 2.0


async def test_a_flush_skips_a_key_a_stalled_admin_write_holds_and_blocks_no_one(
    postgres_url: str, make_key: KeyFactory
) -> None:
    store = await open_store(postgres_url)
    stalled = await asyncpg.connect(
        make_url(postgres_url).set(drivername="postgresql").render_as_string()
    )
    try:
        # Ids in this order: a flush that took row locks in id order and
        # waited would hold the free key's lock while waiting for the other.
        free = await store.create_key(make_key(id="key_a"), max_keys=50)
        held = await store.create_key(make_key(id="key_b"), max_keys=50)
        transaction = stalled.transaction()
        await transaction.start()
        await stalled.execute("SELECT 1 FROM api_keys WHERE id = $1 FOR UPDATE", held.id)

        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(
                store.record_last_used({free.id: USED, held.id: USED}), timeout=PROMPT_S
            )
        # The flush left no lock behind for admin writes to wait on.
        await asyncio.wait_for(
            store.update_key("cc-1", free.id, KeyChanges(name="renamed"), actor_id="a", time=USED),
            timeout=PROMPT_S,
        )
        await transaction.rollback()

        free_now = await store.get_key("cc-1", free.id)
        held_now = await store.get_key("cc-1", held.id)
        # Retried (as the usage recorder does) once the stalled write ends.
        await store.record_last_used({held.id: USED})
        held_later = await store.get_key("cc-1", held.id)
    finally:
        await stalled.close()
        await store.close()

    assert free_now is not None and free_now.last_used_time == USED
    assert held_now is not None and held_now.last_used_time is None
    assert held_later is not None and held_later.last_used_time == USED


async def test_every_session_bounds_its_statements_and_idle_transactions(
    postgres_url: str,
) -> None:
    store = await open_store(postgres_url)
    try:
        settings = {}
        for engine in (store.engine, store.feed_engine):
            async with engine.connect() as conn:
                for name in ("statement_timeout", "idle_in_transaction_session_timeout"):
                    settings[name] = await conn.scalar(text(f"SHOW {name}"))
    finally:
        await store.close()

    assert settings == {"statement_timeout": "10s", "idle_in_transaction_session_timeout": "15s"}
