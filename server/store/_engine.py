"""Database URLs and the async engines built from them.

Two backends are supported: SQLite through aiosqlite (the embedded default)
and PostgreSQL through asyncpg (shared by replicas).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from server.domain.errors import StoreUnavailable

logger = logging.getLogger(__name__)

SQLITE_DRIVER = "sqlite+aiosqlite"
POSTGRES_DRIVER = "postgresql+asyncpg"

# How long a SQLite writer waits for another process's write lock.
SQLITE_BUSY_TIMEOUT_MS = 5000
# Bounds on PostgreSQL so that a dead or hung server shows up within seconds
# instead of stalling every request.
POSTGRES_CONNECT_TIMEOUT_S = 5
POSTGRES_COMMAND_TIMEOUT_S = 10
POSTGRES_POOL_SIZE = 10
POSTGRES_MAX_OVERFLOW = 10
POOL_TIMEOUT_S = 10
# The change feed's engine: one reader (the follower reads, and prunes, one
# thing at a time) and a spare, kept apart from the pool that Check lookups
# can drain.
FEED_POOL_SIZE = 2
# Defence in depth for every session (the feed's correctness does not depend
# on them): no statement runs, and no transaction sits idle holding its locks
# and its place in every snapshot, longer than this. PostgreSQL 17 and later
# also cap a whole transaction.
POSTGRES_STATEMENT_TIMEOUT_MS = 10_000
POSTGRES_IDLE_IN_TRANSACTION_TIMEOUT_MS = 15_000
POSTGRES_TRANSACTION_TIMEOUT_MS = 30_000
_TRANSACTION_TIMEOUT_SINCE = 17

_WAL_SWITCH_ATTEMPTS = 20
_WAL_SWITCH_RETRY_S = 0.05

# Execution option naming the BEGIN a SQLite transaction starts with.
_SQLITE_BEGIN = "apikeys_sqlite_begin"
_SQLITE_BEGINS = {"deferred": "BEGIN", "immediate": "BEGIN IMMEDIATE"}

# Connection info entry: the SQLite file a connection opened, and its identity.
_OPENED_FILE = "apikeys_opened_file"
# The database holds every key's lookup hash and ciphertext; SQLite gives its
# -wal and -shm files the database file's mode, so all three stay private.
_SQLITE_FILE_MODE = 0o600

_EXAMPLES = "sqlite+aiosqlite:///path/to/keys.db or postgresql+asyncpg://user@host:5432/dbname"


def check_database_url(url: str) -> None:
    """Raise ``ValueError`` unless ``url`` names a supported database.

    The message never repeats a password from the URL.
    """
    _parse(url)


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite ``url``; None for PostgreSQL."""
    parsed = _parse(url)
    if parsed.drivername != SQLITE_DRIVER or parsed.database is None:
        return None
    return Path(parsed.database)


def _parse(url: str) -> URL:
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise ValueError(f"malformed database URL; expected {_EXAMPLES}") from exc
    shown = parsed.render_as_string(hide_password=True)
    if parsed.drivername == SQLITE_DRIVER:
        if parsed.database in (None, "", ":memory:") or parsed.database.startswith("file:"):
            raise ValueError(
                f"database URL {shown!r} names no SQLite file; "
                "give a path, e.g. sqlite+aiosqlite:///var/keys.db"
            )
        if parsed.host or parsed.query:
            raise ValueError(
                f"database URL {shown!r}: a SQLite URL takes only a file path, "
                "e.g. sqlite+aiosqlite:///var/keys.db"
            )
    elif parsed.drivername == POSTGRES_DRIVER:
        # asyncpg takes a Unix socket directory as ?host=...
        if not (parsed.host or parsed.query.get("host")) or not parsed.database:
            raise ValueError(
                f"database URL {shown!r} needs a host and a database name, "
                "e.g. postgresql+asyncpg://user@host:5432/dbname"
            )
    else:
        raise ValueError(f"unsupported database driver {parsed.drivername!r}; expected {_EXAMPLES}")
    return parsed


async def create_engine(url: str, *, pool_size: int | None = None) -> AsyncEngine:
    """A configured engine for ``url``; raises ``ValueError`` for a bad URL.

    ``pool_size`` fixes the number of pooled connections (no overflow)
    instead of the defaults.

    For SQLite the database file (and its directory) is created if missing
    and put in WAL mode, and transactions begin with a plain (deferred)
    ``BEGIN``; a write transaction should run on :func:`writer` of the engine
    so that it takes the write lock up front.
    """
    parsed = _parse(url)
    if parsed.drivername == SQLITE_DRIVER:
        assert parsed.database is not None
        path = await asyncio.to_thread(_prepare_sqlite_file, Path(parsed.database))
        return _sqlite_engine(parsed, path, pool_size)
    return _postgres_engine(parsed, pool_size)


def writer(engine: AsyncEngine) -> AsyncEngine:
    """A view of ``engine`` for transactions that will write.

    On SQLite they begin with ``BEGIN IMMEDIATE``: a deferred transaction that
    reads first and then writes must upgrade its lock, and two of them doing
    so at once fail with "database is locked" without waiting. Taking the
    write lock at BEGIN makes writers queue on ``busy_timeout`` instead.
    PostgreSQL ignores the option.
    """
    return engine.execution_options(**{_SQLITE_BEGIN: "immediate"})


def _prepare_sqlite_file(path: Path) -> Path:
    """Create the database and switch it to WAL, which lets readers run while
    a writer commits. Returns the file's absolute path.

    The journal mode is stored in the file, so it is set once here, before
    the engine opens any connection, rather than on every connect: switching
    needs an exclusive lock, and SQLite refuses that without waiting while
    another connection is mid-transaction. Two processes starting at once on
    a new file can still collide, hence the few retries.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created here, private, rather than by sqlite3.connect with the umask's
    # mode; an existing file is opened and left as it is.
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, _SQLITE_FILE_MODE))
    for attempt in range(_WAL_SWITCH_ATTEMPTS):
        connection = sqlite3.connect(
            path, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000, isolation_level=None
        )
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return path.absolute()
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or attempt + 1 == _WAL_SWITCH_ATTEMPTS:
                raise
        finally:
            connection.close()
        time.sleep(_WAL_SWITCH_RETRY_S)
    raise AssertionError("the last attempt returns or raises")  # pragma: no cover


def opened_sqlite_file(url: URL) -> Path:
    """The database file of an engine that ``create_engine`` made for SQLite
    (its URL names the file as a ``file:`` URI)."""
    assert url.database is not None
    location = url.database.removeprefix("file:").split("?", 1)[0]
    return Path(unquote(location))


def _sqlite_engine(url: URL, path: Path, pool_size: int | None) -> AsyncEngine:
    # mode=rw: a connection opened after the file was removed fails instead
    # of creating an empty database in its place, which a restart would then
    # take for the real one.
    opened = url.set(database=f"file:{quote(str(path))}?mode=rw", query={"uri": "true"})
    engine = create_async_engine(
        opened, hide_parameters=True, pool_timeout=POOL_TIMEOUT_S, **_pool_options(pool_size)
    )

    # The recipe from SQLAlchemy's SQLite dialect documentation: the sqlite3
    # module's own transaction handling does not BEGIN before a SELECT, so
    # reads would not be isolated; SQLAlchemy emits BEGIN itself instead.
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        # Taken just after SQLite opened the file, so it names the file this
        # connection reads and writes for as long as it lives.
        record.info[_OPENED_FILE] = (path, _file_identity(path))
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS:d}")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(_SQLITE_BEGIN, "deferred")
        connection.exec_driver_sql(_SQLITE_BEGINS[mode])

    return engine


async def ensure_same_database_file(conn: AsyncConnection) -> None:
    """On SQLite, raises ``StoreUnavailable`` unless the database file that
    ``conn`` has open is still the file at its path (same device and inode).

    Called inside a write transaction before it commits: a write into a file
    that was removed or replaced under the running server would be
    acknowledged and then lost. PostgreSQL connections pass.
    """
    raw = await conn.get_raw_connection()
    opened = raw.info.get(_OPENED_FILE)
    if opened is None:
        return
    path, identity = opened
    if _file_identity(path) == identity:
        return
    logger.error(
        "the SQLite database file was removed or replaced under the running server; "
        "its writes are refused: restore the file, then restart the server",
        extra={"file": str(path)},
    )
    raise StoreUnavailable("the key store's database file is gone")


def _file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at ``path``, or None if there is none."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino)


def _postgres_engine(url: URL, pool_size: int | None) -> AsyncEngine:
    pool = _pool_options(pool_size) or {
        "pool_size": POSTGRES_POOL_SIZE,
        "max_overflow": POSTGRES_MAX_OVERFLOW,
    }
    engine = create_async_engine(
        url,
        hide_parameters=True,
        pool_pre_ping=True,
        pool_timeout=POOL_TIMEOUT_S,
        connect_args={
            "timeout": POSTGRES_CONNECT_TIMEOUT_S,
            "command_timeout": POSTGRES_COMMAND_TIMEOUT_S,
            "server_settings": {
                "application_name": "apikeys",
                "statement_timeout": str(POSTGRES_STATEMENT_TIMEOUT_MS),
                "idle_in_transaction_session_timeout": str(POSTGRES_IDLE_IN_TRANSACTION_TIMEOUT_MS),
            },
        },
        **pool,
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Older servers refuse the unknown setting at connect, so it is set
        # only where the server has it.
        if dbapi_connection.driver_connection.get_server_version().major < (
            _TRANSACTION_TIMEOUT_SINCE
        ):
            return
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"SET transaction_timeout = {POSTGRES_TRANSACTION_TIMEOUT_MS:d}")
        finally:
            cursor.close()

    return engine


def _pool_options(pool_size: int | None) -> dict[str, int]:
    return {} if pool_size is None else {"pool_size": pool_size, "max_overflow": 0}
