"""Database fixtures for the whole suite.

``database_url`` runs a test once per backend: SQLite in ``tmp_path`` and a
fresh PostgreSQL database (created for the test, dropped after it). When
PostgreSQL cannot be reached the PostgreSQL run is skipped, or fails when the
``CI`` environment variable is set. ``APIKEYS_TEST_POSTGRES`` overrides the
server to use (a libpq URL of a user allowed to create databases).
``migrated_database_url`` is the same per backend but already migrated, and
on PostgreSQL it is one database of the suite's, emptied for each test.

``store`` runs a test once per backend and per ``KeyStore`` implementation
(the SQL store, and the cache around it); ``sql_store`` is the SQL store
alone, for what only it offers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from server.cache import CachedKeyStore
from server.domain.records import KeyRecord
from server.domain.store import KeyStore
from server.store import SqlKeyStore, migrate, open_store
from tests.harness import SHARED_SECRETS, Harness, running_server
from tests.pg_cluster import ThrowawayCluster

POSTGRES_ADMIN_URL = os.environ.get(
    "APIKEYS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)

# Why PostgreSQL was unreachable, once a test has found out, so that the
# remaining tests skip or fail at once instead of each waiting to connect.
_postgres_unreachable: list[str] = []


def _postgres_missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI requires PostgreSQL", pytrace=False)
    pytest.skip(reason)


async def _admin_connection() -> Any:
    if _postgres_unreachable:
        _postgres_missing(_postgres_unreachable[0])
    try:
        return await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5, command_timeout=60)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        shown = make_url(POSTGRES_ADMIN_URL).render_as_string(hide_password=True)
        _postgres_unreachable.append(f"PostgreSQL at {shown} is unreachable: {exc!r}")
        _postgres_missing(_postgres_unreachable[0])
        raise


@asynccontextmanager
async def fresh_postgres_database() -> AsyncIterator[str]:
    """A new, empty PostgreSQL database as a ``postgresql+asyncpg`` URL,
    dropped (with any connections still open to it) on exit."""
    name = f"apikeys_{secrets.token_hex(8)}"
    admin = await _admin_connection()
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            url = make_url(POSTGRES_ADMIN_URL).set(drivername="postgresql+asyncpg", database=name)
            yield url.render_as_string(hide_password=False)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


# What makes up the schema, to notice a test that changed it.
_SCHEMA_QUERY = """
SELECT string_agg(item, E'\n' ORDER BY item) FROM (
    SELECT format('%s.%s %s %s', table_name, column_name, data_type, is_nullable) AS item
    FROM information_schema.columns WHERE table_schema = 'public'
    UNION ALL SELECT indexdef FROM pg_indexes WHERE schemaname = 'public'
    UNION ALL SELECT conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint
    WHERE connamespace = 'public'::regnamespace
    UNION ALL SELECT tgname || ' ' || tgrelid::regclass::text FROM pg_trigger WHERE NOT tgisinternal
    UNION ALL SELECT proname || ' ' || md5(prosrc) FROM pg_proc
    WHERE pronamespace = 'public'::regnamespace
) AS schema_items
"""


class _SuiteDatabase:
    """One migrated PostgreSQL database that the suite's tests take in turn,
    emptied before each: a ``CREATE DATABASE`` costs half a second, emptying
    a few tables a few milliseconds.

    Emptying ends every other session on it, resets settings made on the
    database, and puts back what a freshly migrated database holds: every
    table truncated and refilled with the rows the migrations wrote, every
    sequence restarted. A database whose schema a test changed is made anew.
    """

    def __init__(self) -> None:
        self.name = f"apikeys_suite_{os.getpid()}_{secrets.token_hex(4)}"
        self.created = False
        self._schema = ""
        self._seed: dict[str, list[asyncpg.Record]] = {}

    @property
    def url(self) -> str:
        url = make_url(POSTGRES_ADMIN_URL).set(drivername="postgresql+asyncpg", database=self.name)
        return url.render_as_string(hide_password=False)

    async def emptied(self) -> str:
        """The database's URL, holding what it held right after migrating."""
        admin = await _admin_connection()
        try:
            if self.created:
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = $1 AND pid <> pg_backend_pid()",
                    self.name,
                )
                await admin.execute(f'ALTER DATABASE "{self.name}" RESET ALL')
                with contextlib.suppress(asyncpg.PostgresError, TimeoutError):
                    if await self._restore():
                        return self.url
                await admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{self.name}"')
            self.created = True
        finally:
            await admin.close()
        await migrate(self.url)
        await self._remember()
        return self.url

    async def _connect(self) -> Any:
        plain = make_url(self.url).set(drivername="postgresql")
        return await asyncpg.connect(
            plain.render_as_string(hide_password=False), timeout=5, command_timeout=30
        )

    async def _remember(self) -> None:
        connection = await self._connect()
        try:
            self._schema = await connection.fetchval(_SCHEMA_QUERY)
            tables = await connection.fetch(
                "SELECT quote_ident(tablename) AS name FROM pg_tables WHERE schemaname = 'public'"
            )
            self._seed = {
                row["name"]: await connection.fetch(f"SELECT * FROM {row['name']}")
                for row in tables
            }
        finally:
            await connection.close()

    async def _restore(self) -> bool:
        connection = await self._connect()
        try:
            if await connection.fetchval(_SCHEMA_QUERY) != self._schema:
                return False
            # A session that outlived its test (one still ending after the
            # terminate above) must not stall the suite: past this, the
            # database is made anew instead.
            await connection.execute("SET lock_timeout = '5s'")
            async with connection.transaction():
                await connection.execute(f"TRUNCATE {', '.join(self._seed)} RESTART IDENTITY")
                for table, rows in self._seed.items():
                    if rows:
                        await connection.copy_records_to_table(
                            table.strip('"'), records=rows, columns=list(rows[0].keys())
                        )
                for row in await connection.fetch(
                    "SELECT quote_ident(sequencename) AS name FROM pg_sequences"
                    " WHERE schemaname = 'public'"
                ):
                    await connection.execute(f"ALTER SEQUENCE {row['name']} RESTART")
            return True
        finally:
            await connection.close()

    async def drop(self) -> None:
        """Drops the database, if the suite made it."""
        if not self.created:
            return
        admin = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(scope="session")
def suite_database() -> Iterator[_SuiteDatabase]:
    """The suite's shared PostgreSQL database, dropped at the end."""
    database = _SuiteDatabase()
    yield database
    asyncio.run(database.drop())


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite database file (not yet created) in the test's directory."""
    return f"sqlite+aiosqlite:///{tmp_path / 'db' / 'keys.db'}"


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database for this test."""
    async with fresh_postgres_database() as url:
        yield url


@pytest.fixture(
    params=[pytest.param("sqlite"), pytest.param("postgres", marks=pytest.mark.postgres)]
)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database on each backend in turn."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'db' / 'keys.db'}"
        return
    async with fresh_postgres_database() as url:
        yield url


@pytest.fixture(
    params=[pytest.param("sqlite"), pytest.param("postgres", marks=pytest.mark.postgres)]
)
async def migrated_database_url(
    request: pytest.FixtureRequest, tmp_path: Path, suite_database: _SuiteDatabase
) -> str:
    """A migrated database holding no keys, on each backend in turn (for
    tests of what is in the database, not of how it got its schema)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'db' / 'keys.db'}"
    return await suite_database.emptied()


@pytest.fixture
async def sql_store(migrated_database_url: str) -> AsyncIterator[SqlKeyStore]:
    """A migrated SQL store on each backend, closed after the test."""
    opened = await open_store(migrated_database_url)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture(
    params=[pytest.param("sql", id="SqlKeyStore"), pytest.param("cached", id="CachedKeyStore")]
)
async def store(request: pytest.FixtureRequest, sql_store: SqlKeyStore) -> AsyncIterator[KeyStore]:
    """Every ``KeyStore`` implementation on each backend: the SQL store, and
    the cache wrapping it, which must keep the same contract."""
    if request.param == "sql":
        yield sql_store
        return
    # A clock that never moves: nothing expires during the test, so any stale
    # answer the cache held on to would reach the assertions.
    cache = CachedKeyStore(
        sql_store, ttl=60, size=1000, negative_ttl=60, negative_size=1000, clock=lambda: 0.0
    )
    try:
        yield cache
    finally:
        await cache.close()


BASE_TIME = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


@dataclass
class KeyFactory:
    """Builds distinct ``KeyRecord`` values; each call's ``create_time`` is
    one second after the previous one unless given."""

    contact_center_id: str = "cc-1"
    _count: int = field(default=0, init=False)

    def __call__(self, **fields: Any) -> KeyRecord:
        self._count += 1
        created = fields.pop("create_time", BASE_TIME + timedelta(seconds=self._count))
        values: dict[str, Any] = {
            "id": f"key_{secrets.token_hex(12)}",
            "contact_center_id": self.contact_center_id,
            "name": f"key {self._count}",
            "description": "",
            "scopes": ("campaigns.read",),
            "lookup_hash": secrets.token_bytes(32),
            "last4": "Zx9k",
            "secret_ciphertext": secrets.token_bytes(60),
            "encryption_key_id": "k1",
            "create_time": created,
            "update_time": created,
            "last_used_time": None,
            "created_by": "user-1",
        }
        values.update(fields)
        return KeyRecord(**values)


@pytest.fixture
def make_key() -> KeyFactory:
    """A ``KeyFactory`` for contact center ``cc-1``."""
    return KeyFactory()


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    """The real server on the embedded default (SQLite in ``tmp_path``)."""
    async with running_server(tmp_path / "var") as started:
        yield started


@pytest.fixture
async def harness_on(tmp_path: Path, migrated_database_url: str) -> AsyncIterator[Harness]:
    """The real server on each backend of ``migrated_database_url``."""
    async with running_server(
        tmp_path / "var", args=["--database-url", migrated_database_url, *SHARED_SECRETS]
    ) as started:
        yield started


@pytest.fixture
def cluster() -> Iterator[ThrowawayCluster]:
    """A started PostgreSQL cluster of the test's own, for tests that stop,
    restart or break the database (never the shared server)."""
    try:
        started = ThrowawayCluster()
        started.start()
    except (RuntimeError, OSError) as exc:
        pytest.fail(f"cannot start a throwaway PostgreSQL cluster: {exc}", pytrace=False)
    try:
        yield started
    finally:
        started.destroy()
