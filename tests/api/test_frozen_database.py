"""A PostgreSQL that hangs (every process of it stopped with SIGSTOP, as a
stalled VM or a black-holed network looks): an uncached check is
``UNAVAILABLE`` within ``APIKEYS_STORE_TIMEOUT`` (default 0.5 s) plus a
little, where it used to wait for the database command timeout; cached keys
keep answering; ``KeyAdmin`` reports NOT_SERVING; all of it recovers once
the database runs again.

The database is a throwaway cluster of this test's own.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from server.app import AUTHORIZE_SERVICE, KEY_ADMIN_SERVICE
from server.domain.keys import generate_key
from tests.api.rpc import rpc_error
from tests.api.test_health import NOT_SERVING, SERVING, allowed, new_key, seconds_until, status
from tests.harness import SHARED_SECRETS, running_server
from tests.pg_cluster import ThrowawayCluster
from voiso.apikeys.v1 import authorize_pb2 as az

pytestmark = pytest.mark.postgres

STORE_TIMEOUT_S = 0.5
SLACK_S = 0.2


def _cluster_processes(cluster: ThrowawayCluster) -> list[int]:
    """The postmaster of ``cluster`` and every process it forked."""
    postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
    processes = [postmaster]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:
            processes.append(int(entry.name))
    return processes


@contextmanager
def frozen(cluster: ThrowawayCluster) -> Iterator[None]:
    """Every process of ``cluster`` stopped for the block, then continued."""
    processes = _cluster_processes(cluster)
    for pid in processes:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in processes:
            os.kill(pid, signal.SIGCONT)


async def test_a_hung_database_costs_an_uncached_check_the_store_timeout_only(
    cluster: ThrowawayCluster, tmp_path: Path
) -> None:
    args = ["--database-url", cluster.url, *SHARED_SECRETS, "--cache-ttl", "300"]
    async with running_server(tmp_path / "var", args=args, health_probe=0.2) as h:
        assert h.server.settings.store_timeout == STORE_TIMEOUT_S
        _, cached = await new_key(h)
        _, uncached = await new_key(h)
        await h.server.sync_changes()
        assert await allowed(h, cached)

        with frozen(cluster):
            for key in (uncached, generate_key()):
                began = time.monotonic()
                down = await rpc_error(
                    h.authorize.Check(
                        az.CheckRequest(key=key, method="GET", path="/api/v4/users"), timeout=15
                    )
                )
                waited = time.monotonic() - began
                assert down.code() == grpc.StatusCode.UNAVAILABLE
                assert waited < STORE_TIMEOUT_S + SLACK_S
            assert await allowed(h, cached)
            await seconds_until(h, KEY_ADMIN_SERVICE, NOT_SERVING)
            assert await status(h, AUTHORIZE_SERVICE) == SERVING
            assert await status(h, "") == SERVING

        await seconds_until(h, KEY_ADMIN_SERVICE, SERVING, give_up=20)
        assert await allowed(h, uncached)
        await asyncio.wait_for(new_key(h), 15)
