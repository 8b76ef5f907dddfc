"""Alembic migrations on every backend of ``database_url``."""

from __future__ import annotations

import asyncio

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import create_async_engine

from server.store import migrate, open_store
from server.store._schema import metadata
from tests.conftest import KeyFactory

TABLES = {
    "alembic_version",
    "api_keys",
    "audit_events",
    "contact_centers",
    "key_changes",
    "key_changes_pruned",
    "retired_lookup_hashes",
    "write_probes",
}


async def _inspect(database_url: str) -> tuple[set[str], str, list[object]]:
    """Tables, schema revision, and differences from the Core metadata."""

    def read(connection: Connection) -> tuple[set[str], str, list[object]]:
        tables = set(inspect(connection).get_table_names())
        revision = connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
        return tables, revision, differences

    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(read)
    finally:
        await engine.dispose()


async def test_migrating_a_fresh_database_creates_the_schema(database_url: str) -> None:
    await migrate(database_url)

    tables, revision, differences = await _inspect(database_url)

    assert tables == TABLES
    assert revision == "0005"
    assert differences == []


async def test_migrating_again_changes_nothing(database_url: str, make_key: KeyFactory) -> None:
    store = await open_store(database_url)
    try:
        key = await store.create_key(make_key(), max_keys=50)
    finally:
        await store.close()

    await migrate(database_url)
    store = await open_store(database_url)
    try:
        assert await store.get_key("cc-1", key.id) == key
    finally:
        await store.close()
    tables, revision, _ = await _inspect(database_url)
    assert (tables, revision) == (TABLES, "0005")


async def test_replicas_migrating_at_once_all_succeed(database_url: str) -> None:
    await asyncio.gather(*(migrate(database_url) for _ in range(4)))

    tables, revision, _ = await _inspect(database_url)
    assert (tables, revision) == (TABLES, "0005")
