"""PostgreSQL LISTEN for the change feed, on a connection of its own.

A mutating transaction runs ``pg_notify(CHANGE_CHANNEL, seq)``; PostgreSQL
delivers it to every listener when (and only if) the transaction commits, so
another process's cache hears of a delete within milliseconds. Notifications
are only a wake-up: while this connection is down they are lost, which is why
every (re)connect also wakes the reader to re-read the change table, and why
the reader polls that table anyway.

The connection is outside the engine's pool (a pooled connection is handed to
other work and reset between uses, which would drop the LISTEN) and is named
``apikeys-listener`` in ``pg_stat_activity``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

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
