"""Last-used times, recorded in memory on the hot path and written in batches.

``Check`` must never wait for a database write, so a use is a dictionary
assignment; a background task hands the batch to the store every flush
interval and once more at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime

from server.domain.errors import StoreUnavailable
from server.domain.store import KeyStore

log = logging.getLogger(__name__)


class UsageRecorder:
    """Collects the last use of each key and flushes the batch to the store."""

    def __init__(self, store: KeyStore, *, interval: float) -> None:
        self._store = store
        self._interval = interval
        self._pending: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    def record(self, key_id: str) -> None:
        """Notes that ``key_id`` authorized a request now."""
        self._pending[key_id] = time.time()

    async def flush(self) -> None:
        """Writes the pending uses; on a store outage they are kept for the
        next attempt (newer uses of the same key win)."""
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        uses = {key_id: datetime.fromtimestamp(at, UTC) for key_id, at in batch.items()}
        try:
            await self._store.record_last_used(uses)
        except StoreUnavailable:
            self._keep(batch)
            log.warning("could not record last-used times; will retry", extra={"keys": len(batch)})
        except BaseException:
            # Cancelled at shutdown mid-write, or failed otherwise: the batch
            # goes back for the final flush (writing it twice is harmless,
            # times only move forward).
            self._keep(batch)
            raise

    def _keep(self, batch: dict[str, float]) -> None:
        for key_id, at in batch.items():
            if self._pending.get(key_id, 0.0) < at:
                self._pending[key_id] = at

    def start(self) -> None:
        """Starts flushing every interval in the background."""
        self._task = asyncio.create_task(self._run(), name="usage-flush")

    async def stop(self) -> None:
        """Stops the background task and flushes what is left."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except Exception:
                log.exception("recording last-used times failed; will retry")
