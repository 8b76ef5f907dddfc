"""What ``grpc.health.v1.Health`` reports for ``KeyAdmin``: whether the store
takes writes, judged by a committed write every few seconds.

A ``SELECT 1`` succeeds on a read-only or full database, and on SQLite on a
file that was removed under the server, so only a write that commits proves
that ``CreateKey`` and ``DeleteKey`` can work. ``Authorize`` (and the overall
service ``""``, which follows it) is left alone: the process still answers
checks from its cache during a database outage, and an orchestrator that
restarted every replica for it would empty every cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class WriteProbe(Protocol):
    """The store's side of the probe."""

    async def probe_write(self) -> None:
        """Commits a write; raises ``StoreUnavailable`` when it cannot."""
        ...


class WriteHealth:
    """Sets ``service`` SERVING or NOT_SERVING after each probe of ``store``.

    A probe that has not committed within ``interval`` seconds counts as
    failed; it is left to finish (the store's own timeouts bound it) rather
    than cancelled, and no second probe starts while it runs.
    """

    def __init__(
        self,
        store: WriteProbe,
        health: HealthServicer,
        *,
        service: str,
        interval: float,
        pause: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        """``pause`` waits between probes (tests step it instead of sleeping)."""
        self._store = store
        self._pause = pause
        self._health = health
        self._service = service
        self._interval = interval
        self._serving = True
        self._probe: asyncio.Task[None] | None = None
        self._loop: asyncio.Task[None] | None = None

    @property
    def serving(self) -> bool:
        """Whether the last probe committed."""
        return self._serving

    def start(self) -> None:
        """Probes every ``interval`` seconds until ``stop``."""
        self._loop = asyncio.create_task(self._run(), name="write-health")

    async def stop(self) -> None:
        """Stops probing; a probe under way is abandoned."""
        for task in (self._loop, self._probe):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._loop = self._probe = None

    async def probe(self) -> bool:
        """Probes once and reports the outcome; returns whether it committed."""
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._store.probe_write())
            self._probe.add_done_callback(_retrieve_outcome)
        try:
            await asyncio.wait_for(asyncio.shield(self._probe), self._interval)
        except TimeoutError:
            failure = f"no commit within {self._interval:g} s"
        except Exception as exc:  # whatever it is, the write did not commit
            failure = str(exc)
        else:
            failure = ""
        await self._report(failure)
        return not failure

    async def _run(self) -> None:
        while True:
            await self._pause(self._interval)
            await self.probe()

    async def _report(self, failure: str) -> None:
        serving = not failure
        if serving == self._serving:
            return
        self._serving = serving
        if serving:
            log.warning("the store takes writes again", extra={"service": self._service})
        else:
            log.error(
                "the store cannot be written; reporting NOT_SERVING",
                extra={"service": self._service, "reason": failure},
            )
        await self._health.set(self._service, SERVING if serving else NOT_SERVING)


def _retrieve_outcome(probe: asyncio.Task[None]) -> None:
    # A probe abandoned after its timeout may fail with nobody waiting.
    if not probe.cancelled():
        probe.exception()
