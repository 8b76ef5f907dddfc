"""Wake-ups for the change feed: PostgreSQL LISTEN on a connection of its
own, and on SQLite a watch on the file's commit counter.

A mutating transaction runs ``pg_notify(CHANGE_CHANNEL, seq)``; PostgreSQL
delivers it to every listener when (and only if) the transaction commits, so
another process's cache hears of a delete within milliseconds. Notifications
are only a wake-up: while this connection is down they are lost, which is why
every (re)connect also wakes the reader to re-read the change table, and why
the reader polls that table anyway.

The connection is outside the engine's pool (a pooled connection is handed to
other work and reset between uses, which would drop the LISTEN) and is named
``apikeys-listener`` in ``pg_stat_activity``.

SQLite has no notifications, but ``PRAGMA data_version`` on a connection
changes whenever another connection (of any process) has committed to the
file, and reading it touches only shared memory, so ``CommitWatcher`` reads
it every ``COMMIT_WATCH_INTERVAL_S`` on a connection of its own.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg

log = logging.getLogger(__name__)

CHANGE_CHANNEL = "apikeys_key_changes"
APPLICATION_NAME = "apikeys-listener"

CONNECT_TIMEOUT_S = 5.0
# An idle connection whose server vanished (a failover, a dropped route) can
# look open for minutes; a trivial query this often proves it is alive.
KEEPALIVE_INTERVAL_S = 5.0
KEEPALIVE_TIMEOUT_S = 5.0
RECONNECT_FIRST_DELAY_S = 0.1
RECONNECT_MAX_DELAY_S = 5.0
# A connection that lived this long counts as healthy: the next loss starts
# the reconnect delays from the first one again.
HEALTHY_AFTER_S = 30.0
# How often the SQLite commit counter is read: the p99 of a wake-up after a
# commit by another process is about this; a read costs microseconds.
COMMIT_WATCH_INTERVAL_S = 0.01
COMMIT_WATCH_RETRY_S = 1.0

# TimeoutError (a connect or probe that took too long) is an OSError.
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


class ChangeListener:
    """Listens on ``CHANGE_CHANNEL`` and calls ``wake`` on every
    notification and after every successful (re)connect."""

    def __init__(self, dsn: str, wake: Callable[[], None]) -> None:
        self._dsn = dsn
        self._wake = wake

    async def run(self) -> None:
        """Listen until cancelled, reconnecting with growing delays (never
        more than ``RECONNECT_MAX_DELAY_S``) whenever the connection fails."""
        delay = RECONNECT_FIRST_DELAY_S
        connected_before = False
        failures = 0
        loop = asyncio.get_running_loop()
        while True:
            try:
                connection = await asyncpg.connect(
                    self._dsn,
                    timeout=CONNECT_TIMEOUT_S,
                    server_settings={"application_name": APPLICATION_NAME},
                )
            except _CONNECTION_ERRORS as exc:
                if failures == 0:
                    log.warning(
                        "change listener cannot connect; retrying",
                        extra={"error": type(exc).__name__},
                    )
                failures += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_DELAY_S)
                continue
            since = loop.time()
            try:
                await self._listen(connection, reconnect=connected_before)
            finally:
                connection.terminate()
            connected_before = True
            failures = 0
            if loop.time() - since >= HEALTHY_AFTER_S:
                delay = RECONNECT_FIRST_DELAY_S
            log.warning("change listener disconnected; reconnecting")
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_DELAY_S)

    async def _listen(self, connection: Any, *, reconnect: bool) -> None:
        """Returns when ``connection`` is lost."""
        lost = asyncio.Event()
        connection.add_termination_listener(lambda _connection: lost.set())
        try:
            await connection.add_listener(CHANGE_CHANNEL, self._on_notification)
        except _CONNECTION_ERRORS:
            return
        log.info("change listener reconnected" if reconnect else "change listener connected")
        # Changes committed while nobody listened were not announced.
        self._wake()
        while not lost.is_set():
            try:
                await asyncio.wait_for(lost.wait(), timeout=KEEPALIVE_INTERVAL_S)
            except TimeoutError:
                try:
                    await connection.fetchval("SELECT 1", timeout=KEEPALIVE_TIMEOUT_S)
                except _CONNECTION_ERRORS:
                    return

    def _on_notification(self, _connection: Any, _pid: int, _channel: str, _payload: str) -> None:
        self._wake()


class CommitWatcher:
    """Calls ``wake`` whenever another connection has committed to the
    SQLite file at ``path``."""

    def __init__(self, path: Path, wake: Callable[[], None]) -> None:
        self._path = path
        self._wake = wake

    async def run(self) -> None:
        """Watch until cancelled; a failed read (the file locked for a
        moment, or replaced) reopens the connection a little later."""
        while True:
            try:
                connection = await asyncio.to_thread(self._open)
            except sqlite3.Error:
                await asyncio.sleep(COMMIT_WATCH_RETRY_S)
                continue
            try:
                await self._watch(connection)
            except sqlite3.Error as exc:
                log.warning(
                    "watching the database file for commits failed; retrying",
                    extra={"error": type(exc).__name__},
                )
            finally:
                connection.close()
            # Commits made while nobody watched were not seen.
            self._wake()
            await asyncio.sleep(COMMIT_WATCH_RETRY_S)

    def _open(self) -> sqlite3.Connection:
        # No busy wait: the counter is read on the event loop, which must
        # never block; a busy file just skips one reading. Read-only, and
        # never creating the file: a watcher must not put an empty database
        # where a removed one was.
        return sqlite3.connect(
            f"file:{quote(str(self._path))}?mode=ro",
            uri=True,
            timeout=0,
            isolation_level=None,
            check_same_thread=False,
        )

    async def _watch(self, connection: sqlite3.Connection) -> None:
        seen = _data_version(connection)
        while True:
            await asyncio.sleep(COMMIT_WATCH_INTERVAL_S)
            try:
                version = _data_version(connection)
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                    raise
                continue
            if version != seen:
                seen = version
                self._wake()


def _data_version(connection: sqlite3.Connection) -> int:
    row = connection.execute("PRAGMA data_version").fetchone()
    return int(row[0])
