"""Revocation across replicas under the faults that used to leave a deleted
key allowed elsewhere until its cache entry expired: a commit that lands
long after its change took its sequence number, and a failover to a
database that had not received the last commits. With either, no replica
may allow the key longer than the poll interval plus one feed read after
the delete committed.

Each test runs two ``python -m server`` replicas with a long cache TTL, so
only the change feed can make them forget a key.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from sqlalchemy.engine import make_url

from clients import AsyncCachingAuthorizeClient, ChannelOptions
from server.store import migrate
from tests.pg_cluster import ThrowawayCluster
from tests.replicas.processes import (
    AdminKeys,
    ServerProcess,
    delete_key,
    free_port,
    new_key,
    seconds_until_denied,
    server_process,
)
from tests.replicas.proxy import switching_proxy
from voiso.apikeys.v1 import authorize_pb2 as az

pytestmark = pytest.mark.postgres

POLL_S = 0.5
# The bound the README gives: the poll interval plus one feed read (a
# generous second for a read on a loaded two-core machine).
BOUND_S = POLL_S + 1.0
# Longer than the 15-second window after which followers used to give up on
# a sequence number that had not committed yet.
STALL_S = 16.0


@contextlib.asynccontextmanager
async def _replicas(tmp_path: Path, database_url: str) -> AsyncIterator[tuple[Any, Any, Any]]:
    admin_keys = AdminKeys.make(tmp_path / "identity")
    common: dict[str, Any] = {
        "database_url": database_url,
        "admin_keys": admin_keys,
        "args": ("--cache-ttl", "300", "--change-poll", str(POLL_S)),
    }
    async with (
        server_process(tmp_path / "a", **common) as a,
        server_process(tmp_path / "b", **common) as b,
    ):
        yield a, b, admin_keys


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def test_a_delete_that_commits_long_after_later_changes_still_revokes(
    tmp_path: Path, postgres_url: str
) -> None:
    async with _replicas(tmp_path, postgres_url) as (a, b, admin_keys):
        stalled_id, stalled = await new_key(a, admin_keys)
        assert (await b.check(stalled)).allowed
        writer = await asyncpg.connect(_libpq(postgres_url))
        try:
            # A delete through a replica paused between taking its change's
            # sequence number and committing.
            transaction = writer.transaction()
            await transaction.start()
            lookup_hash = await writer.fetchval(
                "DELETE FROM api_keys WHERE id = $1 RETURNING lookup_hash", stalled_id
            )
            await writer.execute(
                "INSERT INTO key_changes (lookup_hash, kind, time)"
                " VALUES ($1, 'deleted', (extract(epoch from now()) * 1000000)::bigint)",
                lookup_hash,
            )
            deadline = time.monotonic() + STALL_S
            while time.monotonic() < deadline:
                # Later changes commit and are applied meanwhile.
                _, later = await new_key(a, admin_keys)
                assert (await b.check(later)).allowed
                await asyncio.sleep(1.0)
            assert (await b.check(stalled)).allowed
            await transaction.commit()
            committed = time.perf_counter()
        finally:
            await writer.close()

        assert await seconds_until_denied(b, stalled, committed, give_up=BOUND_S) < BOUND_S
        assert not (await a.check(stalled)).allowed


async def _copy_rows(source: str, target: str, table: str) -> None:
    reading = await asyncpg.connect(_libpq(source))
    writing = await asyncpg.connect(_libpq(target))
    try:
        rows = await reading.fetch(f"SELECT * FROM {table}")
        await writing.copy_records_to_table(table, records=[tuple(row) for row in rows])
    finally:
        await reading.close()
        await writing.close()


async def _commit_and_read(
    a: ServerProcess, b: ServerProcess, admin_keys: AdminKeys, *, count: int
) -> None:
    """``count`` keys created through A and checked on B, whose follower
    then stands past their changes."""
    for _ in range(count):
        _, created = await new_key(a, admin_keys)
        assert (await b.check(created)).allowed


async def _revoked_after_failover(
    a: ServerProcess, b: ServerProcess, admin_keys: AdminKeys, key_id: str, secret: str
) -> None:
    """Deletes through A, whose pooled connections died with the old
    primary (the first attempts may find the database unavailable), and
    checks that B, which had the key cached, refuses it within the bound."""
    deadline = time.monotonic() + 20
    while True:
        try:
            await delete_key(a, admin_keys, key_id)
            break
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline
            await asyncio.sleep(0.1)
    deleted = time.perf_counter()

    assert await seconds_until_denied(b, secret, deleted, give_up=BOUND_S) < BOUND_S
    assert "failed over or was replaced" in b.log.read_text()


async def test_after_failover_to_a_database_without_the_last_commits_a_delete_still_revokes(
    tmp_path: Path, cluster: ThrowawayCluster
) -> None:
    standby = ThrowawayCluster()
    try:
        standby.start()
        async with switching_proxy(cluster.port) as proxy:
            url = f"postgresql+asyncpg://postgres@127.0.0.1:{proxy.port}/postgres"
            async with _replicas(tmp_path, url) as (a, b, admin_keys):
                key_id, secret = await new_key(a, admin_keys)
                # What the standby had received when the primary failed.
                await migrate(standby.url)
                for table in ("contact_centers", "api_keys"):
                    await _copy_rows(cluster.url, standby.url, table)
                # Commits the standby never received: B reads past them.
                await _commit_and_read(a, b, admin_keys, count=20)
                assert (await b.check(secret)).allowed

                await proxy.switch(standby.port)
                await _revoked_after_failover(a, b, admin_keys, key_id, secret)
    finally:
        standby.destroy()


async def _until_replayed(standby: ThrowawayCluster, key_id: str) -> None:
    connection = await asyncpg.connect(_libpq(standby.url))
    try:
        deadline = time.monotonic() + 20
        while not await connection.fetchval("SELECT count(*) FROM api_keys WHERE id = $1", key_id):
            assert time.monotonic() < deadline, "the standby did not catch up"
            await asyncio.sleep(0.05)
    finally:
        await connection.close()


async def test_after_failover_to_a_promoted_standby_missing_the_last_commits_a_delete_revokes(
    tmp_path: Path, cluster: ThrowawayCluster
) -> None:
    async with switching_proxy(cluster.port) as replication:
        # In threads: the base backup and the standby's start stream
        # through the proxy, which runs on this event loop.
        standby = await asyncio.to_thread(ThrowawayCluster, standby_of=replication.port)
        try:
            await asyncio.to_thread(standby.start)
            async with switching_proxy(cluster.port) as proxy:
                url = f"postgresql+asyncpg://postgres@127.0.0.1:{proxy.port}/postgres"
                async with _replicas(tmp_path, url) as (a, b, admin_keys):
                    key_id, secret = await new_key(a, admin_keys)
                    await _until_replayed(standby, key_id)
                    # The replication link freezes; the primary goes on
                    # committing changes (more than the 32 sequence values
                    # PostgreSQL logs ahead) that B reads past.
                    await replication.switch(free_port())
                    await _commit_and_read(a, b, admin_keys, count=40)
                    assert (await b.check(secret)).allowed

                    async with _watched(b) as heard, _caching_client(b, secret) as cached:
                        await asyncio.to_thread(standby.promote)
                        switched = time.monotonic()
                        await proxy.switch(standby.port)
                        await _revoked_after_failover(a, b, admin_keys, key_id, secret)
                        # B's watchers were told to drop everything, and a
                        # caching client of B refuses the key too.
                        assert any(at > switched and event == "reset" for at, event in heard)
                        decision = await cached.check(secret, "GET", "/api/v4/users")
                        assert not decision.allowed
        finally:
            standby.destroy()


@contextlib.asynccontextmanager
async def _watched(server: ServerProcess) -> AsyncIterator[list[tuple[float, str]]]:
    """The events of a ``WatchChanges`` stream on ``server``, as they arrive."""
    heard: list[tuple[float, str]] = []
    stream = server.authorize.WatchChanges(az.WatchChangesRequest())

    async def read() -> None:
        while (message := await stream.read()) is not grpc.aio.EOF:
            heard.append((time.monotonic(), message.WhichOneof("event") or ""))

    reading = asyncio.create_task(read())
    try:
        yield heard
    finally:
        stream.cancel()
        reading.cancel()


@contextlib.asynccontextmanager
async def _caching_client(
    server: ServerProcess, secret: str
) -> AsyncIterator[AsyncCachingAuthorizeClient]:
    """A caching client of ``server`` that answers ``secret`` from memory."""
    options = ChannelOptions(target=f"127.0.0.1:{server.port}", timeout=5.0)
    async with AsyncCachingAuthorizeClient(options) as client:
        assert await client.wait_fresh(5)
        deadline = time.monotonic() + 10
        while client.hits == 0:
            assert (await client.check(secret, "GET", "/api/v4/users")).allowed
            assert time.monotonic() < deadline, "never answered from memory"
            await asyncio.sleep(0.01)
        yield client
