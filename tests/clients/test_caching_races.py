"""Each interleaving of a check in flight and a change to its key, forced
against the real server (``docs/CACHING.md`` gives the argument): whatever
the order, no decision made before a change is answered from memory after
the change reached the client.

The server decides a held check at once but sends its answer only when the
test lets it go (``HeldAnswers``, wired in as production wires the real
servicer), so a change, a reset or a stall can be put between the decision
and its arrival.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from sqlalchemy.engine import make_url

from clients import AsyncKeyAdminClient, ChannelOptions, Reason
from server.api.authorize import AuthorizeServicer
from server.app import Wiring
from server.domain.authorize import Checks
from server.watchers import Watchers
from tests.clients.caching import REFUSED_WITHIN, USERS, Caching, Opener, create_key
from tests.harness import SHARED_SECRETS, Harness, eventually, running_server
from tests.pg_cluster import ThrowawayCluster
from voiso.apikeys.v1 import authorize_pb2 as az


class HeldAnswers(AuthorizeServicer):
    """The real ``Authorize`` servicer, except that while ``holding`` each
    ``Check`` is decided at once and answered only once ``release`` is set."""

    def __init__(self, checks: Checks, watchers: Watchers | None) -> None:
        super().__init__(checks, watchers)
        self.holding = False
        self.decided = asyncio.Event()
        self.release = asyncio.Event()

    async def Check(self, request: az.CheckRequest, context: Any) -> az.CheckResponse:
        response = await super().Check(request, context)
        if self.holding:
            self.decided.set()
            await self.release.wait()
        return response


class Held:
    """A server whose answers the test holds, and a watch of its own on it."""

    def __init__(self, harness: Harness, servicer: HeldAnswers) -> None:
        self.harness = harness
        self.servicer = servicer
        self.heard: list[az.WatchChangesResponse] = []
        self._stream = harness.authorize.WatchChanges(az.WatchChangesRequest())
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while (message := await self._stream.read()) is not grpc.aio.EOF:
            self.heard.append(message)

    async def heard_of(self, event: str, key_id: str = "") -> None:
        """Until this process's own watch got a message of ``event`` (for
        ``key_id``), and a moment more for the client's watch, fed in the
        same step, to get it too."""

        def got() -> bool:
            return any(
                message.WhichOneof("event") == event
                and (not key_id or any(c.key_id == key_id for c in message.changes.changes))
                for message in self.heard
            )

        await eventually(got, within=5)
        await asyncio.sleep(0.1)

    async def start_held_check(self, client: Caching, secret: str) -> asyncio.Task[Any]:
        """A check whose answer is decided now and held."""
        self.servicer.holding = True
        self.servicer.decided.clear()
        self.servicer.release.clear()
        check = asyncio.create_task(client.check(secret, *USERS))
        await asyncio.wait_for(self.servicer.decided.wait(), 5)
        return check

    def stop_holding(self) -> None:
        self.servicer.holding = False
        self.servicer.release.set()

    def close(self) -> None:
        self._stream.cancel()
        self._reader.cancel()


@pytest.fixture
async def held(tmp_path: Path) -> AsyncIterator[Held]:
    servicers: list[HeldAnswers] = []

    def wire(checks: Checks, watchers: Watchers | None) -> HeldAnswers:
        servicers.append(HeldAnswers(checks, watchers))
        return servicers[-1]

    async with running_server(
        tmp_path / "var", wiring=Wiring(authorize_servicer=wire), watch_heartbeat=0.05
    ) as h:
        [servicer] = servicers
        server = Held(h, servicer)
        try:
            yield server
        finally:
            server.stop_holding()
            server.close()


async def _admin(h: Harness) -> AsyncKeyAdminClient:
    return AsyncKeyAdminClient(ChannelOptions(target=h.target), token=h.token())


async def test_a_change_that_arrives_before_the_answer_keeps_it_out_of_memory(
    held: Held, open_client: Opener
) -> None:
    key_id, secret = await create_key(held.harness, ["users.read"])
    client = await open_client(held.harness.target)
    check = await held.start_held_check(client, secret)
    async with await _admin(held.harness) as admin:
        await admin.disable_key(key_id)
    await held.heard_of("changes", key_id)
    held.stop_holding()

    # The stale answer still reaches the caller that asked before the change...
    assert (await check).allowed
    # ...but is not kept: the next check asks the server.
    misses = client.misses
    refused = await client.check(secret, *USERS)
    assert refused.reason is Reason.KEY_DISABLED
    assert client.misses == misses + 1


async def test_an_answer_kept_before_the_change_is_dropped_by_it(
    held: Held, open_client: Opener
) -> None:
    key_id, secret = await create_key(held.harness, ["users.read"])
    client = await open_client(held.harness.target)
    check = await held.start_held_check(client, secret)
    held.stop_holding()
    assert (await check).allowed
    await eventually(lambda: client.size == 1, within=1)
    hits = client.hits
    assert (await client.check(secret, *USERS)).allowed
    assert client.hits == hits + 1

    async with await _admin(held.harness) as admin:
        await admin.disable_key(key_id)
    changed = time.monotonic()
    while (decision := await client.check(secret, *USERS)).allowed:
        assert time.monotonic() - changed < REFUSED_WITHIN
        await asyncio.sleep(0.005)
    assert decision.reason is Reason.KEY_DISABLED


async def test_an_answer_that_arrives_after_a_reset_is_not_kept(
    held: Held, open_client: Opener
) -> None:
    _, secret = await create_key(held.harness, ["users.read"])
    client = await open_client(held.harness.target)
    check = await held.start_held_check(client, secret)
    resets = sum(1 for m in held.heard if m.WhichOneof("event") == "reset")
    # A change entry that names no key, as a replica of the release before
    # key ids writes one: the server cannot tell which key changed and
    # resets every watcher.
    database = make_url(held.harness.server.settings.database_url).database
    assert database is not None
    with sqlite3.connect(database) as db:
        db.execute(
            "INSERT INTO key_changes (lookup_hash, kind, time) VALUES (?, 'updated', 0)",
            (b"\x00" * 32,),
        )
    await eventually(
        lambda: sum(1 for m in held.heard if m.WhichOneof("event") == "reset") > resets, within=5
    )
    await asyncio.sleep(0.1)
    held.stop_holding()

    assert (await check).allowed
    misses = client.misses
    assert (await client.check(secret, *USERS)).allowed
    assert client.misses == misses + 1


async def test_an_answer_is_not_reused_past_the_keys_expiry(
    harness: Harness, open_client: Opener
) -> None:
    async with await _admin(harness) as admin:
        key, secret = await admin.create_key(
            "expiring", "", ["users.read"], expire_time=datetime.now(UTC) + timedelta(seconds=1.5)
        )
    expires = time.monotonic() + 1.5
    client = await open_client(harness.target)
    # Answers from before the server applied the creation would be dropped
    # when it reaches the client; this test is about the ones after.
    await harness.server.sync_changes()
    await asyncio.sleep(0.1)
    while time.monotonic() < expires + 0.5:
        decision = await client.check(secret, *USERS)
        if time.monotonic() > expires + 0.05:
            # Nothing wrote to the key: only its TTL can end the reuse.
            assert decision.reason is Reason.KEY_EXPIRED, "an allow reused past the expiry"
        await asyncio.sleep(0.01)
    # Before the expiry the allow was answered from memory.
    assert client.hits > 0, key.id


async def test_a_rolled_keys_previous_secret_is_not_reused_past_the_overlap(
    harness: Harness, open_client: Opener
) -> None:
    key_id, old_secret = await create_key(harness, ["users.read"])
    client = await open_client(harness.target)
    async with await _admin(harness) as admin:
        await admin.roll_key(key_id, overlap=timedelta(seconds=1.5))
    overlap_ends = time.monotonic() + 1.5
    await harness.server.sync_changes()
    await asyncio.sleep(0.1)
    hits = client.hits
    while time.monotonic() < overlap_ends + 0.5:
        decision = await client.check(old_secret, *USERS)
        if time.monotonic() > overlap_ends + 0.05:
            assert decision.reason is Reason.KEY_NOT_FOUND, "the old secret reused past the overlap"
        await asyncio.sleep(0.01)
    # During the overlap the old secret was answered from memory.
    assert client.hits > hits


@pytest.mark.postgres
async def test_a_commit_stalled_for_16_seconds_is_still_refused_once_it_commits(
    tmp_path: Path, postgres_url: str, open_client: Opener
) -> None:
    args = ["--database-url", postgres_url, *SHARED_SECRETS, "--change-poll", "0.2"]
    async with running_server(tmp_path / "var", args=args) as h:
        key_id, secret = await create_key(h, ["users.read"])
        bystander_id, bystander = await create_key(h, ["users.read"])
        client = await open_client(h.target)
        writer = await asyncpg.connect(
            make_url(postgres_url).set(drivername="postgresql").render_as_string(False)
        )
        try:
            transaction = writer.transaction()
            await transaction.start()
            # What a disable writes, with the commit held back: the row and
            # its change entry, whose transaction id is taken now.
            await writer.execute("UPDATE api_keys SET disabled = true WHERE id = $1", key_id)
            await writer.execute(
                "INSERT INTO key_changes (key_id, lookup_hash, kind, time)"
                " SELECT id, lookup_hash, 'disabled', 0 FROM api_keys WHERE id = $1",
                key_id,
            )
            stalled_until = time.monotonic() + 16
            hits = client.hits
            async with await _admin(h) as admin:
                # Held in memory, then changed while the mark is held back.
                assert (await client.check(bystander, *USERS)).allowed
                await admin.disable_key(bystander_id)
            while time.monotonic() < stalled_until:
                # Not committed: the key is still enabled, and the client may
                # go on answering it from memory.
                assert (await client.check(secret, *USERS)).allowed
                await asyncio.sleep(0.05)
            assert client.hits > hits + 100
            assert (await client.check(bystander, *USERS)).reason is Reason.KEY_DISABLED
            await transaction.commit()
            committed = time.monotonic()
        finally:
            await writer.close()
        while (decision := await client.check(secret, *USERS)).allowed:
            assert time.monotonic() - committed < REFUSED_WITHIN, "the late commit was passed over"
            await asyncio.sleep(0.005)
        assert decision.reason is Reason.KEY_DISABLED


@pytest.mark.postgres
async def test_a_server_that_cannot_read_the_feed_is_not_trusted_from_memory(
    cluster: ThrowawayCluster, tmp_path: Path, open_client: Opener
) -> None:
    args = ["--database-url", cluster.url, *SHARED_SECRETS, "--change-poll", "0.2"]
    async with running_server(tmp_path / "var", args=args, cache_ttl=300) as h:
        _, secret = await create_key(h, ["users.read"])
        client = await open_client(h.target, staleness=0.5)
        assert (await client.check(secret, *USERS)).allowed
        assert (await client.check(secret, *USERS)).allowed
        hits = client.hits
        assert hits >= 1

        await asyncio.to_thread(cluster.stop, "immediate")
        stopped = time.monotonic()
        # The server falls silent within the poll + 0.5 s; the client stops
        # trusting its memory `staleness` after the last heartbeat.
        await eventually(lambda: not client.fresh, within=0.2 + 0.5 + 0.05 + 0.5 + 0.5)
        silent_after = time.monotonic() - stopped
        hits = client.hits
        # The server still answers from its own cache; the client asks it.
        assert (await client.check(secret, *USERS)).allowed
        assert client.hits == hits
        await asyncio.to_thread(cluster.start)
        await eventually(lambda: client.fresh, within=15)
        assert silent_after < 2.0
