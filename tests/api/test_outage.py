"""A store outage: cached keys keep answering, uncached ones get UNAVAILABLE
(never an allow), and everything recovers without a restart.

The database is a throwaway PostgreSQL cluster of this test's own, stopped and
started again under the running server; the shared server is never touched.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from server.domain.keys import generate_key
from tests.api.rpc import rpc_error
from tests.harness import SHARED_SECRETS, Harness, running_server
from tests.pg_cluster import ThrowawayCluster
from voiso.apikeys.v1 import authorize_pb2 as az
from voiso.apikeys.v1 import key_admin_pb2 as pb

pytestmark = pytest.mark.postgres


async def check(h: Harness, key: str) -> az.CheckResponse:
    return await h.authorize.Check(
        az.CheckRequest(key=key, method="GET", path="/api/v4/users"), timeout=15
    )


async def new_key(h: Harness) -> tuple[str, str]:
    created = await h.admin.CreateKey(
        pb.CreateKeyRequest(name="k", scopes=["users.read"]), metadata=h.auth()
    )
    return created.key.id, created.secret


async def test_outage_serves_cached_keys_refuses_the_rest_and_recovers(
    cluster: ThrowawayCluster, tmp_path: Path
) -> None:
    args = ["--database-url", cluster.url, *SHARED_SECRETS, "--cache-ttl", "300"]
    async with running_server(tmp_path / "var", args=args) as h:
        _, cached = await new_key(h)
        _, uncached = await new_key(h)
        # The feed brings this server's own creates back round; once it has,
        # nothing will evict the key cached next.
        await h.server.sync_changes()
        assert (await check(h, cached)).allowed

        await asyncio.to_thread(cluster.stop, "immediate")

        for _ in range(3):
            assert (await check(h, cached)).allowed
            down = await rpc_error(check(h, uncached))
            assert down.code() == grpc.StatusCode.UNAVAILABLE
            unknown = await rpc_error(check(h, generate_key()))
            assert unknown.code() == grpc.StatusCode.UNAVAILABLE
        admin_down = await rpc_error(
            h.admin.ListKeys(pb.ListKeysRequest(), metadata=h.auth(), timeout=15)
        )
        assert admin_down.code() == grpc.StatusCode.UNAVAILABLE
        assert "asyncpg" not in (admin_down.details() or "")

        await asyncio.to_thread(cluster.start)

        assert (await check(h, uncached)).allowed
        key_id, fresh = await new_key(h)
        assert (await check(h, fresh)).allowed
        await h.admin.DeleteKey(pb.DeleteKeyRequest(id=key_id), metadata=h.auth())
        assert (await check(h, fresh)).reason == az.REASON_KEY_NOT_FOUND
