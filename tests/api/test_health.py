"""Health tells the truth about writes: ``KeyAdmin`` is NOT_SERVING while the
store cannot commit one and SERVING again by itself once it can, while
``Authorize`` and the server as a whole stay SERVING as long as the process
answers checks.

The probe runs every 0.1 s here instead of the default 2 s.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.app import AUTHORIZE_SERVICE, KEY_ADMIN_SERVICE, prepare
from server.settings import SettingsError
from tests.api.rpc import rpc_error
from tests.harness import SHARED_SECRETS, Harness, running_server
from tests.pg_cluster import ThrowawayCluster
from voiso.apikeys.v1 import authorize_pb2 as az
from voiso.apikeys.v1 import key_admin_pb2 as pb

PROBE_S = 0.1
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def status(h: Harness, service: str) -> int:
    stub: Any = health_pb2_grpc.HealthStub(h.channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(response.status)


async def statuses(h: Harness) -> dict[str, int]:
    return {name: await status(h, name) for name in ("", AUTHORIZE_SERVICE, KEY_ADMIN_SERVICE)}


async def seconds_until(h: Harness, service: str, wanted: int, *, give_up: float = 10.0) -> float:
    began = time.monotonic()
    while await status(h, service) != wanted:
        assert time.monotonic() - began < give_up, f"{service} not {wanted} after {give_up} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - began


async def new_key(h: Harness) -> tuple[str, str]:
    created = await h.admin.CreateKey(
        pb.CreateKeyRequest(name="k", scopes=["users.read"]), metadata=h.auth(), timeout=15
    )
    return created.key.id, created.secret


async def allowed(h: Harness, key: str) -> bool:
    response = await h.authorize.Check(
        az.CheckRequest(key=key, method="GET", path="/api/v4/users"), timeout=15
    )
    return response.allowed


def _move_database_files(source: Path, target: Path) -> None:
    target.mkdir(exist_ok=True)
    for file in source.glob("apikeys.db*"):
        os.rename(file, target / file.name)


def remove_database_files(directory: Path) -> None:
    for file in directory.glob("apikeys.db*"):
        file.unlink()


async def test_every_service_is_serving_once_started(tmp_path: Path) -> None:
    async with running_server(tmp_path / "var", health_probe=PROBE_S) as h:
        for _ in range(3):
            assert await h.server.parts.write_health.probe()
        assert await statuses(h) == {
            "": SERVING,
            AUTHORIZE_SERVICE: SERVING,
            KEY_ADMIN_SERVICE: SERVING,
        }


async def test_removed_database_files_fail_the_next_write_and_key_admin_health(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "var"
    async with running_server(data_dir, health_probe=PROBE_S) as h:
        _, cached = await new_key(h)
        assert await allowed(h, cached)
        await asyncio.to_thread(remove_database_files, data_dir)
        removed = time.monotonic()

        refused = await rpc_error(
            h.admin.CreateKey(
                pb.CreateKeyRequest(name="lost", scopes=["users.read"]), metadata=h.auth()
            )
        )
        assert refused.code() == grpc.StatusCode.UNAVAILABLE
        await seconds_until(h, KEY_ADMIN_SERVICE, NOT_SERVING)
        assert time.monotonic() - removed < 5
        assert await status(h, AUTHORIZE_SERVICE) == SERVING
        assert await status(h, "") == SERVING
        assert await allowed(h, cached)

    # A restart refuses the data directory rather than start on an empty
    # database in its place.
    with pytest.raises(SettingsError, match=str(data_dir / "apikeys.db")):
        prepare(h.server.settings)


async def test_key_admin_serves_again_by_itself_once_the_file_is_back(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    async with running_server(data_dir, health_probe=PROBE_S) as h:
        await asyncio.to_thread(_move_database_files, data_dir, tmp_path / "away")
        await seconds_until(h, KEY_ADMIN_SERVICE, NOT_SERVING)

        await asyncio.to_thread(_move_database_files, tmp_path / "away", data_dir)
        await seconds_until(h, KEY_ADMIN_SERVICE, SERVING)
        await new_key(h)


@pytest.mark.postgres
async def test_a_stopped_database_is_not_serving_for_key_admin_only_until_it_is_back(
    cluster: ThrowawayCluster, tmp_path: Path
) -> None:
    args = ["--database-url", cluster.url, *SHARED_SECRETS, "--cache-ttl", "300"]
    async with running_server(tmp_path / "var", args=args, health_probe=PROBE_S) as h:
        _, cached = await new_key(h)
        await h.server.sync_changes()
        assert await allowed(h, cached)

        await asyncio.to_thread(cluster.stop, "immediate")
        await seconds_until(h, KEY_ADMIN_SERVICE, NOT_SERVING)
        assert await status(h, AUTHORIZE_SERVICE) == SERVING
        assert await status(h, "") == SERVING
        assert await allowed(h, cached)

        await asyncio.to_thread(cluster.start)
        await seconds_until(h, KEY_ADMIN_SERVICE, SERVING)
        await new_key(h)
