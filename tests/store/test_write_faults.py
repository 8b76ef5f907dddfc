"""Writes the store cannot make fail instead of being acknowledged, and the
probe that health is judged by sees them.

On SQLite the files can be removed or replaced under a running store: a
write must then fail rather than go into a file nobody will open again. On
PostgreSQL a read-only database still answers ``SELECT 1``, so only a
committed write tells that it cannot take keys.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from server.domain.errors import StoreUnavailable
from server.store import SqlKeyStore, open_store
from tests.conftest import BASE_TIME, POSTGRES_ADMIN_URL, KeyFactory

LIMIT = 50


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> SqlKeyStore:
    """A migrated SQLite store; each test closes it itself."""
    return await open_store(f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}")


def _remove_database_files(directory: Path) -> None:
    for file in directory.glob("keys.db*"):
        file.unlink()


def _database_files(directory: Path) -> dict[str, int]:
    """The database's files in ``directory`` and their permission bits."""
    return {path.name: stat.S_IMODE(path.stat().st_mode) for path in directory.glob("keys.db*")}


async def test_the_write_probe_commits_on_every_backend(sql_store: SqlKeyStore) -> None:
    await sql_store.probe_write()
    await sql_store.probe_write()


async def test_a_write_after_the_files_were_removed_fails_and_is_logged(
    tmp_path: Path,
    sqlite_store: SqlKeyStore,
    make_key: KeyFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="server.store")
    try:
        kept = await sqlite_store.create_key(make_key(), max_keys=LIMIT)
        _remove_database_files(tmp_path)

        with pytest.raises(StoreUnavailable):
            await sqlite_store.create_key(make_key(), max_keys=LIMIT)
        with pytest.raises(StoreUnavailable):
            await sqlite_store.delete_key("cc-1", kept.id, actor_id="a", time=BASE_TIME)
        with pytest.raises(StoreUnavailable):
            await sqlite_store.probe_write()
    finally:
        await sqlite_store.close()

    assert "removed or replaced" in caplog.text
    assert str(tmp_path / "keys.db") in {getattr(r, "file", "") for r in caplog.records}
    # Nothing recreated the database in the meantime, so a restart finds it
    # missing instead of empty.
    assert _database_files(tmp_path) == {}


async def test_a_write_into_a_replaced_file_fails(
    tmp_path: Path, sqlite_store: SqlKeyStore, make_key: KeyFactory
) -> None:
    other = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'other' / 'keys.db'}")
    await other.close()
    try:
        await sqlite_store.create_key(make_key(), max_keys=LIMIT)
        _remove_database_files(tmp_path)
        os.rename(tmp_path / "other" / "keys.db", tmp_path / "keys.db")

        with pytest.raises(StoreUnavailable):
            await sqlite_store.create_key(make_key(), max_keys=LIMIT)
    finally:
        await sqlite_store.close()


async def test_the_database_files_are_private_whatever_the_umask(
    tmp_path: Path, make_key: KeyFactory
) -> None:
    previous = os.umask(0o022)
    try:
        store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}")
        try:
            await store.create_key(make_key(), max_keys=LIMIT)
            modes = _database_files(tmp_path)
        finally:
            await store.close()
    finally:
        os.umask(previous)

    assert modes == {"keys.db": 0o600, "keys.db-wal": 0o600, "keys.db-shm": 0o600}


@pytest.mark.postgres
async def test_the_probe_fails_on_a_read_only_database_that_still_answers_reads(
    postgres_url: str,
) -> None:
    await (await open_store(postgres_url)).close()
    name = make_url(postgres_url).database
    admin = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
        read_only = await open_store(postgres_url, migrate=False)
        try:
            assert await read_only.get_key("cc-1", "key_1") is None
            with pytest.raises(StoreUnavailable):
                await read_only.probe_write()
        finally:
            await read_only.close()
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
        await admin.close()
