"""PostgreSQL restarting under Check load: cached keys keep answering, the
rest are UNAVAILABLE (never allowed), and afterwards both replicas recover
by themselves: a delete still reaches the other replica and new keys work.

The database is a throwaway cluster of this test's own; the shared server is
never touched.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest

from server.domain.keys import generate_key
from tests.pg_cluster import ThrowawayCluster
from tests.replicas.processes import (
    AdminKeys,
    ServerProcess,
    delete_key,
    new_key,
    seconds_until_denied,
    server_process,
)
from voiso.apikeys.v1 import key_admin_pb2 as pb

pytestmark = pytest.mark.postgres

POLL_S = 0.5


async def _load(server: ServerProcess, cached: str, outcomes: Counter[str]) -> None:
    """Checks a cached key and never-seen keys until cancelled, counting
    what came back; an allowed unknown key is the one outcome never allowed."""
    while True:
        for key, kind in ((cached, "cached"), (generate_key(), "unknown")):
            try:
                response = await server.check(key)
            except grpc.aio.AioRpcError as exc:
                outcomes[f"{kind} {exc.code().name}"] += 1
            else:
                outcomes[f"{kind} {'allowed' if response.allowed else 'denied'}"] += 1
        await asyncio.sleep(0.005)


async def _until_store_answers(server: ServerProcess, admin_keys: AdminKeys) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            await server.admin.ListKeys(
                pb.ListKeysRequest(), metadata=admin_keys.metadata(), timeout=5
            )
            return
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() < deadline, "the store did not come back"
            await asyncio.sleep(0.1)


async def test_a_database_restart_loses_no_revocation(
    cluster: ThrowawayCluster, tmp_path: Path
) -> None:
    admin_keys = AdminKeys.make(tmp_path / "identity")
    common = {
        "database_url": cluster.url,
        "admin_keys": admin_keys,
        "args": ("--cache-ttl", "300", "--change-poll", str(POLL_S)),
    }
    async with (
        server_process(tmp_path / "a", **common) as a,  # type: ignore[arg-type]
        server_process(tmp_path / "b", **common) as b,  # type: ignore[arg-type]
    ):
        _, cached = await new_key(a, admin_keys)
        _, uncached = await new_key(a, admin_keys)
        revoked_id, revoked = await new_key(a, admin_keys)
        # B drops each created hash once the feed brings it round; cache on B
        # only after that, so that nothing evicts these entries later.
        await asyncio.sleep(POLL_S * 3)
        assert (await b.check(cached)).allowed
        assert (await b.check(revoked)).allowed

        outcomes: Counter[str] = Counter()
        load = asyncio.create_task(_load(b, cached, outcomes))
        try:
            await asyncio.sleep(0.2)
            await asyncio.to_thread(cluster.stop, "fast")

            assert (await b.check(cached)).allowed
            for key in (uncached, generate_key()):
                with pytest.raises(grpc.aio.AioRpcError) as down:
                    await b.check(key)
                assert down.value.code() == grpc.StatusCode.UNAVAILABLE
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await delete_key(a, admin_keys, revoked_id)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            await asyncio.sleep(1.0)

            await asyncio.to_thread(cluster.start)
            await _until_store_answers(a, admin_keys)

            since = time.perf_counter()
            await delete_key(a, admin_keys, revoked_id)
            # The poll delivers it even while the listener waits to reconnect.
            assert await seconds_until_denied(b, revoked, since) < POLL_S + 1.0
            await _until_logged(b, "change listener reconnected")
        finally:
            load.cancel()
            await asyncio.gather(load, return_exceptions=True)

        assert (await b.check(uncached)).allowed
        _, fresh = await new_key(a, admin_keys)
        assert (await b.check(fresh)).allowed
        assert (await a.check(fresh)).allowed

    assert outcomes["unknown allowed"] == 0
    assert outcomes["cached allowed"] > 0 and outcomes["cached UNAVAILABLE"] == 0
    assert outcomes["unknown UNAVAILABLE"] > 0 and outcomes["unknown denied"] > 0
    assert set(outcomes) <= {
        "cached allowed",
        "unknown denied",
        "unknown UNAVAILABLE",
    }, outcomes
    b_log = b.log.read_text()
    assert "change listener reconnected" in b_log
    assert "Traceback" not in b_log


async def _until_logged(server: ServerProcess, text: str) -> None:
    deadline = time.monotonic() + 15
    while text not in server.log.read_text():
        assert time.monotonic() < deadline, f"never logged {text!r}"
        await asyncio.sleep(0.1)
