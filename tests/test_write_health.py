"""The write probe's verdicts, with a store fake at the probe's Protocol:
a failing or hung probe means NOT_SERVING, the next commit SERVING again,
and a hung probe is waited for rather than joined by more."""

from __future__ import annotations

import asyncio

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from server.domain.errors import StoreUnavailable
from server.health import WriteHealth

SERVICE = "voiso.apikeys.v1.KeyAdmin"
INTERVAL_S = 0.05


class ScriptedStore:
    """Fails, hangs or commits each probe as the test says; counts probes."""

    def __init__(self) -> None:
        self.probes = 0
        self.failing = False
        self.release: asyncio.Event | None = None

    async def probe_write(self) -> None:
        self.probes += 1
        if self.release is not None:
            await self.release.wait()
        if self.failing:
            raise StoreUnavailable("the key store could not complete probe_write")


async def reported(health: HealthServicer) -> int:
    request = health_pb2.HealthCheckRequest(service=SERVICE)
    response = await health.Check(request, None)  # type: ignore[arg-type]
    return int(response.status)


class SteppedPauses:
    """The pause between probes, ended by the test instead of by time."""

    def __init__(self) -> None:
        self._pauses: asyncio.Queue[asyncio.Future[None]] = asyncio.Queue()
        self.current: asyncio.Future[None] | None = None

    async def __call__(self, seconds: float) -> None:
        assert seconds == INTERVAL_S
        pause = asyncio.get_running_loop().create_future()
        self._pauses.put_nowait(pause)
        await pause

    async def end_one(self) -> None:
        """Ends the loop's pause and waits until, its probe done, the loop
        pauses again."""
        if self.current is None:
            self.current = await asyncio.wait_for(self._pauses.get(), 5)
        self.current.set_result(None)
        self.current = await asyncio.wait_for(self._pauses.get(), 5)


async def monitored() -> tuple[ScriptedStore, HealthServicer, WriteHealth]:
    store, health = ScriptedStore(), HealthServicer()
    await health.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    return store, health, WriteHealth(store, health, service=SERVICE, interval=INTERVAL_S)


async def test_a_failed_probe_reports_not_serving_and_the_next_commit_serving() -> None:
    store, health, write_health = await monitored()

    store.failing = True
    assert await write_health.probe() is False
    assert await reported(health) == health_pb2.HealthCheckResponse.NOT_SERVING

    store.failing = False
    assert await write_health.probe() is True
    assert await reported(health) == health_pb2.HealthCheckResponse.SERVING


async def test_a_hung_probe_fails_and_is_waited_for_instead_of_repeated() -> None:
    store, health, write_health = await monitored()
    store.release = asyncio.Event()

    assert await write_health.probe() is False
    assert await write_health.probe() is False
    assert store.probes == 1
    assert await reported(health) == health_pb2.HealthCheckResponse.NOT_SERVING

    store.release.set()
    assert await write_health.probe() is True
    assert await reported(health) == health_pb2.HealthCheckResponse.SERVING


async def test_probing_runs_by_itself_until_stopped() -> None:
    store, health = ScriptedStore(), HealthServicer()
    await health.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    pauses = SteppedPauses()
    write_health = WriteHealth(store, health, service=SERVICE, interval=INTERVAL_S, pause=pauses)
    store.failing = True
    write_health.start()
    try:
        await pauses.end_one()
        assert await reported(health) == health_pb2.HealthCheckResponse.NOT_SERVING
        store.failing = False
        await pauses.end_one()
        assert await reported(health) == health_pb2.HealthCheckResponse.SERVING
    finally:
        await write_health.stop()
    assert store.probes == 2
    # Stopped in its pause: nothing is left to end it and probe again.
    assert pauses.current is not None and pauses.current.cancelled()
