"""The caching ``Authorize`` clients against the real server (contract section 10).

Every test runs with the blocking client and with the ``asyncio`` one. The
blocking client's calls run in a worker thread so that the in-process
server's event loop keeps serving while they block. What a test knows of the
client's memory it learns from the public ``hits``, ``misses``, ``fresh``
and ``size``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from clients import (
    AsyncCachingAuthorizeClient,
    AsyncKeyAdminClient,
    ChannelOptions,
    Decision,
    Reason,
    Unavailable,
)
from clients._keys import well_formed_key
from clients.cli import main
from tests.clients.caching import REFUSED_WITHIN, USERS, Opener, create_key
from tests.harness import Harness, running_server
from tests.replicas.proxy import pump
from voiso.apikeys.v1 import key_admin_pb2


async def test_a_repeated_check_is_answered_from_memory(
    harness: Harness, open_client: Opener
) -> None:
    key_id, secret = await create_key(harness, ["users.read"])
    client = await open_client(harness.target)
    first = await client.check(secret, *USERS)
    assert first.allowed and first.key_id == key_id
    for _ in range(5):
        assert await client.check(secret, *USERS) == first
    assert (client.hits, client.misses) == (5, 1)
    # A denial of a found key is kept as well, per method, path and address.
    denied = await client.check(secret, "GET", "/api/v4/campaigns")
    assert await client.check(secret, "GET", "/api/v4/campaigns") == denied
    assert denied.reason is Reason.SCOPE_MISSING
    assert (client.hits, client.misses) == (6, 2)
    # The header form is its own entry, parsed once, then answered from memory too.
    for _ in range(2):
        assert (await client.check(f"Bearer {secret}", *USERS)).allowed
    assert (client.hits, client.misses) == (7, 3)


async def test_check_many_answers_what_it_can_from_memory_and_batches_the_rest(
    harness: Harness, open_client: Opener
) -> None:
    _, secret = await create_key(harness, ["users.read"])
    client = await open_client(harness.target)
    unknown = well_formed_key()
    items = [
        (secret, *USERS),
        ("vsk_short", *USERS),
        (unknown, *USERS),
        (secret, "GET", "/api/v4/campaigns"),
    ] * 60
    expected = [Reason.ALLOWED, Reason.KEY_MALFORMED, Reason.KEY_NOT_FOUND, Reason.SCOPE_MISSING]
    first = await client.check_many(items, timeout=5.0)
    assert [decision.reason for decision in first] == expected * 60
    # The malformed keys were never sent; everything else was, in batches.
    assert (client.hits, client.misses) == (0, 180)
    again = await client.check_many(items, timeout=5.0)
    assert again == first
    # The found key's answers come from memory now; the unknown key is asked again.
    assert (client.hits, client.misses) == (120, 240)
    assert (await client.check(secret, *USERS)).allowed
    assert client.hits == 121


async def test_a_malformed_key_never_leaves_the_process(open_client: Opener) -> None:
    # No server listens here: any call would fail with UNAVAILABLE.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        nowhere = f"127.0.0.1:{probe.getsockname()[1]}"
    client = await open_client(nowhere, fresh=False)
    for text in ["", "vsk_short", "vsk_" + "A" * 49, f"Basic {well_formed_key()}"]:
        decision = await client.check(text, *USERS)
        assert decision == Decision(allowed=False, reason=Reason.KEY_MALFORMED)
    assert (client.hits, client.misses) == (0, 0)


async def test_an_unknown_key_is_asked_about_every_time(
    harness: Harness, open_client: Opener
) -> None:
    client = await open_client(harness.target)
    unknown = well_formed_key()
    for _ in range(3):
        assert (await client.check(unknown, *USERS)).reason is Reason.KEY_NOT_FOUND
    assert (client.hits, client.misses, client.size) == (0, 3, 0)


async def _delete(admin: AsyncKeyAdminClient, key_id: str) -> None:
    await admin.delete_key(key_id)


async def _rescope(admin: AsyncKeyAdminClient, key_id: str) -> None:
    await admin.update_key(key_id, scopes=["campaigns.read"])


async def _disable(admin: AsyncKeyAdminClient, key_id: str) -> None:
    await admin.disable_key(key_id)


async def _roll(admin: AsyncKeyAdminClient, key_id: str) -> None:
    await admin.roll_key(key_id, overlap=timedelta(0))


@pytest.mark.parametrize(
    ("change", "refusal"),
    [
        (_delete, Reason.KEY_NOT_FOUND),
        (_rescope, Reason.SCOPE_MISSING),
        (_disable, Reason.KEY_DISABLED),
        (_roll, Reason.KEY_NOT_FOUND),
    ],
    ids=["delete", "update-scopes", "disable", "roll"],
)
async def test_a_change_to_the_key_is_refused_within_a_second(
    harness: Harness,
    admin: AsyncKeyAdminClient,
    open_client: Opener,
    change: Callable[[AsyncKeyAdminClient, str], Awaitable[None]],
    refusal: Reason,
) -> None:
    key_id, secret = await create_key(harness, ["users.read"])
    client = await open_client(harness.target)
    assert (await client.check(secret, *USERS)).allowed
    assert (await client.check(secret, *USERS)).allowed
    assert client.hits == 1  # the answer is in memory when the change is made
    await change(admin, key_id)
    changed = time.monotonic()
    while (decision := await client.check(secret, *USERS)).allowed:
        assert time.monotonic() - changed < REFUSED_WITHIN, "still allowed from memory"
        await asyncio.sleep(0.01)
    assert decision.reason is refusal
    # The refusal is what the server says, not a guess from memory.
    assert client.fresh


async def test_nothing_is_reused_once_the_server_stops_speaking(
    tmp_path: Path, open_client: Opener
) -> None:
    staleness = 0.3
    # The first message is the reset; the next heartbeat is a minute away.
    async with running_server(tmp_path / "var", watch_heartbeat=60.0) as h:
        _, secret = await create_key(h, ["users.read"])
        client = await open_client(h.target, staleness=staleness)
        assert (await client.check(secret, *USERS)).allowed
        assert (await client.check(secret, *USERS)).allowed
        hits = client.hits
        assert hits == 1 or not client.fresh  # a slow machine may have passed staleness already
        await asyncio.sleep(staleness + 0.05)
        assert not client.fresh
        assert (await client.check(secret, *USERS)).allowed
        assert (client.hits, client.misses) == (hits, 3 - hits)


async def test_a_stopped_server_is_not_vouched_for_from_memory(
    tmp_path: Path, open_client: Opener
) -> None:
    async with running_server(tmp_path / "var") as h:
        _, secret = await create_key(h, ["users.read"])
        client = await open_client(h.target)
        assert (await client.check(secret, *USERS)).allowed
        assert (await client.check(secret, *USERS)).allowed
        assert client.hits == 1
    # The stream broke with the server: memory is not trusted, the server is asked.
    stopped = time.monotonic()
    while client.fresh:
        assert time.monotonic() - stopped < REFUSED_WITHIN
        await asyncio.sleep(0.01)
    with pytest.raises(Unavailable):
        await client.check(secret, *USERS, timeout=0.5)
    assert client.hits == 1


async def test_at_most_max_entries_answers_are_held(harness: Harness, open_client: Opener) -> None:
    _, secret = await create_key(harness, ["routing.queues.read"])
    client = await open_client(harness.target, max_entries=3)
    paths = [f"/api/v4/routing/queues/q{index}" for index in range(6)]
    for path in paths:
        await client.check(secret, "GET", path)
        assert client.size <= 3
    assert client.size == 3
    # The oldest went first: the last three are in memory, the first is not.
    for path in paths[-3:]:
        await client.check(secret, "GET", path)
    assert (client.hits, client.misses) == (3, 6)
    await client.check(secret, "GET", paths[0])
    assert client.misses == 7


def _watch_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "apikeys-watch-changes"]


def _watch_tasks() -> list[asyncio.Task[Any]]:
    return [task for task in asyncio.all_tasks() if task.get_name() == "apikeys-watch-changes"]


async def test_close_stops_the_stream_promptly(harness: Harness, open_client: Opener) -> None:
    client = await open_client(harness.target)
    assert _watch_threads() or _watch_tasks()
    began = time.monotonic()
    await client.close()
    assert time.monotonic() - began < 0.5
    assert _watch_threads() == [] and _watch_tasks() == []
    assert not client.fresh


async def test_close_is_prompt_while_the_stream_is_reconnecting(open_client: Opener) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        nowhere = f"127.0.0.1:{probe.getsockname()[1]}"
    client = await open_client(nowhere, fresh=False)
    await asyncio.sleep(0.3)  # a few failed attempts, then a backoff wait
    began = time.monotonic()
    await client.close()
    assert time.monotonic() - began < 0.5
    assert _watch_threads() == [] and _watch_tasks() == []


async def test_cli_check_with_cache_answers_repeats_from_memory(
    harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    _, secret = await create_key(harness, ["users.read"])
    base = ["--server", harness.target]
    status = await asyncio.to_thread(
        main, [*base, "check", secret, *USERS, "--cache", "--repeat", "5"]
    )
    out = capsys.readouterr().out
    assert status == 0
    assert "from memory      4 of 5" in out
    status = await asyncio.to_thread(
        main, [*base, "--json", "check", secret, *USERS, "--cache", "--repeat", "3"]
    )
    document = json.loads(capsys.readouterr().out)
    assert status == 0
    assert (document["reason"], document["checks"], document["from_memory"]) == (
        "REASON_ALLOWED",
        3,
        2,
    )
    # Without --cache nothing is said about memory, however often it asks.
    status = await asyncio.to_thread(main, [*base, "check", secret, *USERS, "--repeat", "2"])
    assert status == 0
    assert "from memory" not in capsys.readouterr().out


async def test_loadtest_with_cache_reports_answers_from_memory(
    harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    token = harness.token(contact_center="cc-load")
    status = await asyncio.to_thread(
        main,
        [
            "--server",
            harness.target,
            "--token",
            token,
            "--json",
            "loadtest",
            "--cache",
            "--requests",
            "400",
            "--concurrency",
            "8",
            "--unknown-keys",
            "5",
            "--mix",
            "valid=1,revoked=1,unknown=1,malformed=1",
        ],
    )
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert status == 0
    assert report["sent"] == report["answered"] == 400
    assert report["errors"] == {}
    assert report["decisions_by_kind"] == {
        "malformed": {"REASON_KEY_MALFORMED": 100},
        "revoked": {"REASON_KEY_NOT_FOUND": 100},
        "unknown": {"REASON_KEY_NOT_FOUND": 100},
        "valid": {"REASON_ALLOWED": 100},
    }
    # Only answers for found keys are kept: the valid ones, after their first asks.
    assert 0 < report["from_memory"] <= 100
    listed = await harness.admin.ListKeys(
        key_admin_pb2.ListKeysRequest(), metadata=harness.auth(token)
    )
    assert listed.total_size == 0


def test_the_async_client_refuses_to_start_outside_an_event_loop() -> None:
    with pytest.raises(RuntimeError, match="no running event loop"):
        AsyncCachingAuthorizeClient(ChannelOptions(target="127.0.0.1:1"))


class PingCounter:
    """A TCP proxy to a server that counts the HTTP/2 PINGs the client sends."""

    PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    PING, ACK = 0x6, 0x1

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.pings = 0
        self.frames = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, _, port = self.upstream.rpartition(":")
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        try:
            await asyncio.gather(self._client_side(reader, up_writer), pump(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            up_writer.close()

    async def _client_side(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        preface = await reader.readexactly(len(self.PREFACE))
        assert preface == self.PREFACE
        writer.write(preface)
        while True:
            header = await reader.readexactly(9)
            payload = await reader.readexactly(int.from_bytes(header[:3], "big"))
            self.frames += 1
            if header[3] == self.PING and not header[4] & self.ACK:
                self.pings += 1
            writer.write(header + payload)
            await writer.drain()


async def test_a_caching_client_sends_the_server_no_pings(
    harness: Harness, open_client: Opener
) -> None:
    """Answers and heartbeats are small: a client that pinged to size its
    windows for them would cost the server a read and a reply each time
    (about one heartbeat in three with grpc-core's bandwidth probes on)."""
    _, secret = await create_key(harness, ["users.read"])
    counter = PingCounter(harness.target)
    proxy = await asyncio.start_server(counter.handle, "127.0.0.1", 0)
    try:
        client = await open_client(f"127.0.0.1:{proxy.sockets[0].getsockname()[1]}")
        for _ in range(5):
            assert (await client.check(secret, *USERS)).allowed
        await asyncio.sleep(2.0)  # eight heartbeats
        assert client.fresh
    finally:
        proxy.close()
    assert counter.frames > 8
    assert counter.pings == 0
