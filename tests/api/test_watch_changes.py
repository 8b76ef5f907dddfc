"""``Authorize.WatchChanges`` on the real server: a reset first, every applied
change named by key and sequence, heartbeats only while the feed is read, a
bounded number of watchers that do not take the call bound, and a watcher
that stops reading cut off rather than buffered for."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import h2.settings
import pytest
from sqlalchemy.engine import make_url

from bench import attacks
from tests.api.rpc import rpc_error
from tests.harness import SHARED_SECRETS, Harness, eventually, running_server
from tests.pg_cluster import ThrowawayCluster
from voiso.apikeys.v1 import authorize_pb2 as az
from voiso.apikeys.v1 import key_admin_pb2 as pb

WATCH = "/voiso.apikeys.v1.Authorize/WatchChanges"


async def new_key(h: Harness, scopes: tuple[str, ...] = ("users.read",)) -> tuple[str, str]:
    created = await h.admin.CreateKey(
        pb.CreateKeyRequest(name="k", scopes=list(scopes)), metadata=h.auth()
    )
    return created.key.id, created.secret


async def check(h: Harness, key: str) -> az.CheckResponse:
    return await h.authorize.Check(
        az.CheckRequest(key=key, method="GET", path="/api/v4/users"), timeout=15
    )


async def next_event(stream: Any, kind: str, within: float = 5.0) -> az.WatchChangesResponse:
    """The next message of ``kind``, skipping others (heartbeats)."""
    async with asyncio.timeout(within):
        while True:
            message = await stream.read()
            assert message is not grpc.aio.EOF
            if message.WhichOneof("event") == kind:
                return message


@pytest.fixture
async def watched(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_server(tmp_path / "var", watch_heartbeat=0.05) as h:
        yield h


async def test_a_stream_opens_with_a_reset_at_the_servers_mark_then_heartbeats(
    watched: Harness,
) -> None:
    await new_key(watched)
    await watched.server.sync_changes()
    stream = watched.authorize.WatchChanges(az.WatchChangesRequest())
    first = await stream.read()
    assert first.WhichOneof("event") == "reset"
    assert first.mark == watched.server.parts.follower.mark.sequence > 0
    beat = await next_event(stream, "heartbeat", within=1)
    assert beat.mark >= first.mark
    stream.cancel()


@pytest.mark.parametrize("change", ["update", "disable", "roll", "delete"])
async def test_each_change_is_sent_by_key_with_a_sequence_above_earlier_answers(
    watched: Harness, change: str
) -> None:
    key_id, secret = await new_key(watched)
    await watched.server.sync_changes()
    before = await check(watched, secret)
    assert before.allowed
    assert before.cache_ttl.seconds == 30
    stream = watched.authorize.WatchChanges(az.WatchChangesRequest())
    await next_event(stream, "reset")

    auth = watched.auth()
    kind = {
        "update": az.CHANGE_KIND_UPDATED,
        "disable": az.CHANGE_KIND_DISABLED,
        "roll": az.CHANGE_KIND_ROLLED,
        "delete": az.CHANGE_KIND_DELETED,
    }[change]
    if change == "update":
        update = pb.UpdateKeyRequest(
            id=key_id, scopes=["campaigns.read"], update_mask={"paths": ["scopes"]}
        )
        await watched.admin.UpdateKey(update, metadata=auth)
    elif change == "disable":
        await watched.admin.DisableKey(pb.DisableKeyRequest(id=key_id), metadata=auth)
    elif change == "roll":
        await watched.admin.RollKey(
            pb.RollKeyRequest(id=key_id, overlap={"seconds": 60}), metadata=auth
        )
    else:
        await watched.admin.DeleteKey(pb.DeleteKeyRequest(id=key_id), metadata=auth)

    message = await next_event(stream, "changes")
    [sent] = message.changes.changes
    assert (sent.key_id, sent.kind) == (key_id, kind)
    assert sent.sequence > before.revision
    assert message.mark >= sent.sequence
    after = await check(watched, secret)
    assert after.revision >= sent.sequence
    stream.cancel()


async def test_answers_carry_the_time_to_expiry_as_their_ttl(watched: Harness) -> None:
    created = await watched.admin.CreateKey(
        pb.CreateKeyRequest(
            name="k", scopes=["users.read"], expire_time={"seconds": int(time.time()) + 5}
        ),
        metadata=watched.auth(),
    )
    answer = await check(watched, created.secret)
    assert answer.allowed
    assert 0 < answer.cache_ttl.seconds + answer.cache_ttl.nanos / 1e9 <= 5


async def test_watching_turned_off_is_unimplemented(tmp_path: Path) -> None:
    async with running_server(tmp_path / "var", watch=False) as h:
        stream = h.authorize.WatchChanges(az.WatchChangesRequest())
        refused = await rpc_error(stream.read())
        assert refused.code() == grpc.StatusCode.UNIMPLEMENTED
        assert (await check(h, "vsk_nope")).reason == az.REASON_KEY_MALFORMED


async def test_watchers_are_capped_and_a_closed_one_frees_its_place(tmp_path: Path) -> None:
    async with running_server(tmp_path / "var", max_watchers=2) as h:
        streams = [h.authorize.WatchChanges(az.WatchChangesRequest()) for _ in range(2)]
        for stream in streams:
            await next_event(stream, "reset")
        third = h.authorize.WatchChanges(az.WatchChangesRequest())
        refused = await rpc_error(third.read())
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        streams[0].cancel()
        await eventually(lambda: len(h.server.parts.watchers or ()) == 1, within=5)
        again = h.authorize.WatchChanges(az.WatchChangesRequest())
        await next_event(again, "reset")
        again.cancel()
        streams[1].cancel()


async def test_watchers_do_not_use_up_the_concurrent_call_bound(tmp_path: Path) -> None:
    async with running_server(tmp_path / "var", max_concurrent_rpcs=2) as h:
        streams = [h.authorize.WatchChanges(az.WatchChangesRequest()) for _ in range(6)]
        for stream in streams:
            await next_event(stream, "reset")
        answers = await asyncio.gather(*(check(h, "vsk_nope") for _ in range(2)))
        assert {answer.reason for answer in answers} == {az.REASON_KEY_MALFORMED}
        for stream in streams:
            stream.cancel()


async def test_a_watcher_that_stops_reading_is_cut_off_and_the_server_serves_on(
    tmp_path: Path,
) -> None:
    async with running_server(tmp_path / "var", watch_heartbeat=0.02, watch_buffer=4) as h:
        target = f"127.0.0.1:{h.server.port}"
        connection = await asyncio.to_thread(_stalled_watcher, target)
        try:
            await eventually(lambda: len(h.server.parts.watchers or ()) == 1, within=5)
            # Heartbeats pile up behind a window the watcher never reopens;
            # past the buffer it is dropped.
            await eventually(lambda: len(h.server.parts.watchers or ()) == 0, within=10)
            assert (await check(h, "vsk_nope")).reason == az.REASON_KEY_MALFORMED
            stream = h.authorize.WatchChanges(az.WatchChangesRequest())
            await next_event(stream, "reset")
            stream.cancel()
        finally:
            connection.close()


def _stalled_watcher(target: str) -> attacks.Connection:
    """A raw HTTP/2 client that opens a watch with a 16-byte window and
    never reads again."""
    connection = attacks.Connection(target)
    connection.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 16})
    stream_id = connection.h2.get_next_available_stream_id()
    connection.h2.send_headers(stream_id, attacks.grpc_request_headers(target, WATCH))
    connection.h2.send_data(stream_id, b"\x00\x00\x00\x00\x00", end_stream=True)
    connection.flush()
    connection.receive(0.5)
    return connection


@pytest.mark.postgres
async def test_a_server_that_cannot_read_the_feed_falls_silent_and_speaks_again(
    cluster: ThrowawayCluster, tmp_path: Path
) -> None:
    args = ["--database-url", cluster.url, *SHARED_SECRETS, "--change-poll", "0.2"]
    async with running_server(tmp_path / "var", args=args, watch_heartbeat=0.05) as h:
        stream = h.authorize.WatchChanges(az.WatchChangesRequest())
        await next_event(stream, "reset")
        await next_event(stream, "heartbeat", within=1)

        heard: list[tuple[float, str]] = []

        async def listen() -> None:
            # A read cut short by a timeout would cancel the call itself.
            while (message := await stream.read()) is not grpc.aio.EOF:
                heard.append((time.monotonic(), message.WhichOneof("event")))

        listening = asyncio.create_task(listen())
        await asyncio.to_thread(cluster.stop, "immediate")
        stopped = time.monotonic()
        await asyncio.sleep(2)
        beats = [at for at, kind in heard if kind == "heartbeat"]
        # Heartbeats end within the poll + 0.5 s of the last read.
        assert beats and beats[-1] - stopped < 0.2 + 0.5 + 0.2
        assert not [at for at in beats if at > stopped + 1]

        await asyncio.to_thread(cluster.start)
        await eventually(
            lambda: any(kind == "heartbeat" and at > stopped + 2 for at, kind in heard),
            within=15,
        )
        stream.cancel()
        listening.cancel()


@pytest.mark.postgres
async def test_a_watcher_opening_while_the_mark_is_held_back_still_hears_of_changes_above_it(
    tmp_path: Path, postgres_url: str
) -> None:
    args = ["--database-url", postgres_url, *SHARED_SECRETS]
    async with running_server(tmp_path / "var", args=args) as h:
        key_id, _ = await new_key(h)
        await h.server.sync_changes()
        # A transaction that holds an id keeps the horizon, so the mark, at it.
        holder = await asyncpg.connect(
            make_url(postgres_url).set(drivername="postgresql").render_as_string(False)
        )
        try:
            async with holder.transaction():
                await holder.fetchval("SELECT pg_current_xact_id()")
                await h.admin.DisableKey(pb.DisableKeyRequest(id=key_id), metadata=h.auth())
                await h.server.sync_changes()

                stream = h.authorize.WatchChanges(az.WatchChangesRequest())
                reset = await next_event(stream, "reset")
                replayed = await next_event(stream, "changes", within=1)
                [change] = replayed.changes.changes
                assert (change.key_id, change.kind) == (key_id, az.CHANGE_KIND_DISABLED)
                assert change.sequence > reset.mark
                stream.cancel()
        finally:
            await holder.close()
