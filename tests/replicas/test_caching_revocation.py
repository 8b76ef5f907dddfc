"""A caching client refuses a changed key as quickly as the plain client does,
across replicas (docs/CACHING.md, contract section 10).

Two server processes A and B share one fresh PostgreSQL database; an
``AsyncCachingAuthorizeClient`` talks to B only, and every change is made
through A, so nothing but B's change feed and B's ``WatchChanges`` stream
can make the client forget a key. The servers keep found keys for 300 s:
only the change feed makes them forget one either. What a test knows of the
client's memory it learns from its public ``hits``, ``misses`` and
``fresh``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from google.protobuf import field_mask_pb2
from sqlalchemy.engine import make_url

from clients import (
    AsyncCachingAuthorizeClient,
    ChannelOptions,
    DeadlineExceeded,
    Reason,
    Unavailable,
)
from tests.conftest import POSTGRES_ADMIN_URL
from tests.harness import eventually
from tests.replicas.processes import (
    STOP_TIMEOUT_S,
    AdminKeys,
    ServerProcess,
    delete_key,
    local_ports,
    new_key,
    percentile,
    server_process,
    summary,
)
from tests.replicas.proxy import switching_proxy
from voiso.apikeys.v1 import authorize_pb2 as az
from voiso.apikeys.v1 import key_admin_pb2 as pb

POLL_S = 0.5
REPLICA_ARGS = ("--cache-ttl", "300", "--change-poll", str(POLL_S))
# APIKEYS_WATCH_HEARTBEAT's default, which the servers run with.
HEARTBEAT_S = 0.25
USERS = ("GET", "/api/v4/users")
# The contract's bound for a change to reach a caching client whose stream is fresh.
CONTRACT_BOUND_S = 1.0
# With the listener down only the poll delivers a change: the server's bound then.
POLL_BOUND_S = POLL_S + 0.5
# Deadlines of calls that should succeed: the two cores are shared, and
# these tests are about memory, not about how fast a miss is.
CALL_TIMEOUT_S = 5.0
# How long a stream may take to open, or to come back after its server did
# (gRPC's own reconnect backoff starts at 1 s and grows by 1.6).
STREAM_OPENS_S = 10.0
# The pause between two checks of a key that is about to be refused: the
# resolution of the measurement, short next to the 100 ms asserted, and
# long enough not to starve the servers of the two shared cores.
SPIN_S = 0.001
# How long the mark of a server may stay below a key's creation (see ``warm``).
WARM_WITHIN_S = 20.0
# How often B's listener connection is looked for and terminated.
KILL_EVERY_S = 0.005


@dataclass
class Pair:
    a: ServerProcess
    b: ServerProcess
    admin_keys: AdminKeys
    database_url: str


@pytest.fixture
async def pair(tmp_path: Path, postgres_url: str) -> AsyncIterator[Pair]:
    """A and B on one fresh PostgreSQL database."""
    admin_keys = AdminKeys.make(tmp_path / "identity")
    async with (
        server_process(
            tmp_path / "a", database_url=postgres_url, admin_keys=admin_keys, args=REPLICA_ARGS
        ) as a,
        server_process(
            tmp_path / "b", database_url=postgres_url, admin_keys=admin_keys, args=REPLICA_ARGS
        ) as b,
    ):
        yield Pair(a=a, b=b, admin_keys=admin_keys, database_url=postgres_url)


@asynccontextmanager
async def caching_client(
    target: str, *, staleness: float = 1.0
) -> AsyncIterator[AsyncCachingAuthorizeClient]:
    """A caching client of ``target`` whose stream is open and fresh."""
    options = ChannelOptions(target=target, timeout=CALL_TIMEOUT_S)
    async with AsyncCachingAuthorizeClient(options, staleness=staleness) as client:
        assert await client.wait_fresh(STREAM_OPENS_S)
        yield client


async def new_key_applied_by(
    creating: ServerProcess, applying: ServerProcess, admin_keys: AdminKeys
) -> tuple[str, str]:
    """A key created through ``creating``, once ``applying`` has applied its creation.

    Until then ``applying`` answers with a revision below the creation's
    sequence, and a caching client rightly drops such an answer when the
    creation reaches it; from then on what it keeps, it keeps.
    """
    watch = applying.authorize.WatchChanges(az.WatchChangesRequest())
    try:
        assert (await watch.read()).WhichOneof("event") == "reset"
        key_id, secret = await new_key(creating, admin_keys)
        async with asyncio.timeout(STREAM_OPENS_S):
            while True:
                message = await watch.read()
                if message.WhichOneof("event") == "changes" and any(
                    change.key_id == key_id for change in message.changes.changes
                ):
                    return key_id, secret
    finally:
        watch.cancel()


async def warm(client: AsyncCachingAuthorizeClient, secret: str) -> None:
    """Checks ``secret`` until an answer comes from memory (each one allowed).

    Usually the second check is the hit. But a server's mark is below the
    horizon of its last read, and transactions of any database on the shared
    PostgreSQL server hold that horizon back: until the mark passes the
    key's creation, the server's answers carry a revision below it, which
    the client rightly does not keep.
    """
    hits = client.hits
    deadline = time.monotonic() + WARM_WITHIN_S
    while client.hits == hits:
        assert (await client.check(secret, *USERS)).allowed
        assert time.monotonic() < deadline, "never answered from memory"
        await asyncio.sleep(SPIN_S)


async def seconds_until_refused(
    client: AsyncCachingAuthorizeClient,
    secret: str,
    refusal: Reason,
    since: float,
    *,
    give_up: float = 10.0,
) -> float:
    """Checks ``secret`` until refused (for ``refusal``); the seconds from
    ``since`` (a ``time.perf_counter``) to that answer."""
    while True:
        decision = await client.check(secret, *USERS)
        elapsed = time.perf_counter() - since
        if not decision.allowed:
            assert decision.reason is refusal, decision
            return elapsed
        assert elapsed < give_up, f"still allowed {elapsed:.1f} s after the change"
        # Paced, so that the figure is the change's way to the client, not
        # how long a busy loop left the stream unread.
        await asyncio.sleep(SPIN_S)


async def _delete(server: ServerProcess, admin_keys: AdminKeys, key_id: str) -> None:
    await delete_key(server, admin_keys, key_id)


async def _rescope(server: ServerProcess, admin_keys: AdminKeys, key_id: str) -> None:
    await server.admin.UpdateKey(
        pb.UpdateKeyRequest(
            id=key_id,
            scopes=["campaigns.read"],
            update_mask=field_mask_pb2.FieldMask(paths=["scopes"]),
        ),
        metadata=admin_keys.metadata(),
        timeout=15,
    )


async def _disable(server: ServerProcess, admin_keys: AdminKeys, key_id: str) -> None:
    await server.admin.DisableKey(
        pb.DisableKeyRequest(id=key_id), metadata=admin_keys.metadata(), timeout=15
    )


@dataclass(frozen=True)
class Change:
    """A change that makes ``GET /api/v4/users`` refused, and the refusal's reason."""

    name: str
    make: Callable[[ServerProcess, AdminKeys, str], Awaitable[None]]
    refusal: Reason


DELETE = Change("delete", _delete, Reason.KEY_NOT_FOUND)
RESCOPE = Change("re-scope", _rescope, Reason.SCOPE_MISSING)
DISABLE = Change("disable", _disable, Reason.KEY_DISABLED)
CHANGES = (DELETE, RESCOPE, DISABLE)


async def refused_after(
    pair: Pair, client: AsyncCachingAuthorizeClient, change: Change, key_id: str, secret: str
) -> float:
    """Once ``client`` answers ``secret`` from memory, ``change`` through A;
    the seconds from sending the change to the client's refusal."""
    await warm(client, secret)
    since = time.perf_counter()
    await change.make(pair.a, pair.admin_keys, key_id)
    return await seconds_until_refused(client, secret, change.refusal, since)


async def fresh_again(client: AsyncCachingAuthorizeClient, secret: str) -> float:
    """Waits for ``client``'s stream to be fresh again; checks that the first
    check after that is asked of the server (nothing held from before is
    reused); the seconds it took to be fresh."""
    started = time.monotonic()
    assert await client.wait_fresh(STREAM_OPENS_S)
    reconnected = time.monotonic() - started
    hits, misses = client.hits, client.misses
    assert (await client.check(secret, *USERS)).allowed
    assert (client.hits, client.misses) == (hits, misses + 1)
    return reconnected


async def trial(pair: Pair, client: AsyncCachingAuthorizeClient, change: Change) -> float:
    """A key held in the memory of ``client`` (on B) is changed through A;
    the seconds from sending the change to the client's refusal."""
    key_id, secret = await new_key_applied_by(pair.a, pair.b, pair.admin_keys)
    latency = await refused_after(pair, client, change, key_id, secret)
    if change is not DELETE:
        # A contact center holds at most 50 keys, disabled ones included.
        await delete_key(pair.a, pair.admin_keys, key_id)
    return latency


async def trials(
    pair: Pair, client: AsyncCachingAuthorizeClient, per_change: int
) -> dict[str, list[float]]:
    """``per_change`` trials of each change, interleaved so that each kind
    sees the same machine; the latencies by change."""
    latencies: dict[str, list[float]] = {change.name: [] for change in CHANGES}
    for _ in range(per_change):
        for change in CHANGES:
            latencies[change.name].append(await trial(pair, client, change))
    return latencies


def report(title: str, latencies: dict[str, list[float]]) -> list[float]:
    """Prints the summary of every change and of all together; all of them."""
    every = [latency for by_change in latencies.values() for latency in by_change]
    print(f"\n{title}: {summary(every, 'changes')}")
    for name, by_change in latencies.items():
        print(f"  {name}: {summary(by_change, 'changes')}")
    return every


@pytest.mark.postgres
async def test_a_change_through_one_replica_is_refused_by_a_caching_client_of_the_other(
    pair: Pair,
) -> None:
    async with caching_client(pair.b.target) as client:
        latencies = await trials(pair, client, per_change=40)
        # The stream stayed open throughout: no break made the client forget.
        assert client.fresh
        answered = f"{client.hits} checks from memory, {client.misses} by B"

    every = report(
        f"PostgreSQL, NOTIFY, caching client on B ({answered}), from sending the change",
        latencies,
    )
    assert max(every) < CONTRACT_BOUND_S, summary(every, "changes")
    # Notifications and the stream, not the 0.5 s poll, are what deliver it.
    assert percentile(every, 0.99) < 0.1, summary(every, "changes")


@pytest.mark.postgres
async def test_a_loop_of_checks_answered_from_memory_still_hears_a_change(pair: Pair) -> None:
    """A check answered from memory waits on nothing, so a caller whose loop
    does nothing else would never let the stream be read, and would learn of
    a change only once the unread stream went stale. The client gives the
    event loop a turn every few milliseconds, so the change is refused
    within the bound while the loop never pauses on its own."""
    async with caching_client(pair.b.target) as client:
        key_id, secret = await new_key_applied_by(pair.a, pair.b, pair.admin_keys)
        await warm(client, secret)
        hits = client.hits
        deleting = asyncio.create_task(delete_key(pair.a, pair.admin_keys, key_id))
        started = time.perf_counter()
        while (decision := await client.check(secret, *USERS)).allowed:
            assert time.perf_counter() - started < CONTRACT_BOUND_S, "still allowed from memory"
        took = time.perf_counter() - started
        await deleting
    assert decision.reason is Reason.KEY_NOT_FOUND
    assert client.hits > hits
    print(f"\nrefused {took * 1000:.1f} ms after the delete was sent, {client.hits - hits} hits")


@asynccontextmanager
async def listener_kept_down(server: ServerProcess, database_url: str) -> AsyncIterator[set[int]]:
    """Terminates ``server``'s ``apikeys-listener`` connection whenever one
    is open, every few milliseconds, until the block ends; yields the
    PostgreSQL pids terminated so far. Other processes' listeners (A's) are
    left alone: a listener is ``server``'s when its client port is one of
    the ports ``server``'s process holds open."""
    database = make_url(database_url).database
    admin = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
    terminated: set[int] = set()
    others: set[int] = set()

    async def keep_down() -> None:
        while True:
            listeners = await admin.fetch(
                "SELECT pid, client_port FROM pg_stat_activity"
                " WHERE application_name = 'apikeys-listener' AND datname = $1",
                database,
            )
            unknown = [row for row in listeners if row["pid"] not in others | terminated]
            if unknown:
                ours = local_ports(server.process.pid)
                for row in unknown:
                    if row["client_port"] not in ours:
                        others.add(row["pid"])
                    elif await admin.fetchval("SELECT pg_terminate_backend($1)", row["pid"]):
                        terminated.add(row["pid"])
            await asyncio.sleep(KILL_EVERY_S)

    def still_killing() -> None:
        if killer.done():
            killer.result()  # raises what stopped it
            raise AssertionError("the listener killer stopped")

    killer = asyncio.create_task(keep_down())
    try:
        await eventually(lambda: bool(terminated) or killer.done(), within=5)
        still_killing()
        yield terminated
        still_killing()
    finally:
        killer.cancel()
        await asyncio.gather(killer, return_exceptions=True)
        await admin.close()
    # The listener is what was terminated, not the whole pair's.
    assert others, "A's listener was never seen"


@pytest.mark.postgres
async def test_with_the_listener_of_the_clients_replica_kept_down_the_poll_still_refuses(
    pair: Pair,
) -> None:
    async with (
        caching_client(pair.b.target) as client,
        listener_kept_down(pair.b, pair.database_url) as terminated,
    ):
        latencies = await trials(pair, client, per_change=4)
        assert client.fresh

    every = report(
        f"PostgreSQL, B's listener terminated {len(terminated)} times, poll {POLL_S:g} s,"
        " caching client on B",
        latencies,
    )
    assert max(every) < POLL_BOUND_S, summary(every, "changes")
    assert "change listener disconnected" in pair.b.log.read_text()
    # B's listener alone: A's stayed connected.
    assert "change listener disconnected" not in pair.a.log.read_text()


async def test_a_client_whose_server_is_stopped_answers_nothing_from_memory_after_staleness(
    tmp_path: Path,
) -> None:
    staleness = 0.5
    # Memory may still be used until the last message, sent just before the
    # stop, is ``staleness`` old; then no answer may come from it.
    trusted_for = staleness + HEARTBEAT_S
    watched_for = trusted_for + 1.0
    admin_keys = AdminKeys.make(tmp_path / "identity")
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}"
    async with (
        server_process(
            tmp_path / "server", database_url=database_url, admin_keys=admin_keys, args=REPLICA_ARGS
        ) as server,
        caching_client(server.target, staleness=staleness) as client,
    ):
        _, secret = await new_key_applied_by(server, server, admin_keys)
        await warm(client, secret)

        outcomes: list[tuple[float, str]] = []  # (sent, after the stop; what came back)
        hits_once_untrusted: int | None = None
        os.kill(server.process.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            while (sent := time.monotonic() - stopped) < watched_for:
                hits = client.hits
                if sent >= trusted_for and hits_once_untrusted is None:
                    hits_once_untrusted = hits
                try:
                    decision = await client.check(secret, *USERS, timeout=0.1)
                except (DeadlineExceeded, Unavailable) as exc:
                    outcome = type(exc).__name__
                else:
                    source = "memory" if client.hits > hits else "server"
                    outcome = f"{decision.reason} from {source}"
                outcomes.append((sent, outcome))
                await asyncio.sleep(0.01)
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        assert client.hits == hits_once_untrusted

        # Once the server speaks again, memory is used again.
        assert await client.wait_fresh(STREAM_OPENS_S)
        await warm(client, secret)

    trusted = [outcome for sent, outcome in outcomes if sent < trusted_for]
    after = [outcome for sent, outcome in outcomes if sent >= trusted_for]
    last_from_memory = max(
        (sent for sent, outcome in outcomes if outcome.endswith("from memory")), default=None
    )
    print(
        f"\nSIGSTOP, staleness {staleness:g} s: {len(trusted)} checks in the first"
        f" {trusted_for * 1000:.0f} ms ({trusted.count('REASON_ALLOWED from memory')} from memory),"
        f" last from memory at"
        f" {'-' if last_from_memory is None else f'{last_from_memory * 1000:.0f} ms'};"
        f" {len(after)} checks after it: {sorted(set(after))}"
    )
    assert len(after) >= 5, outcomes
    assert all(outcome in {"DeadlineExceeded", "Unavailable"} for outcome in after), outcomes
    assert last_from_memory is None or last_from_memory < trusted_for


async def stop(server: ServerProcess) -> None:
    """Stops ``server`` as an orchestrator does (SIGTERM) and waits until it has exited."""
    server.process.send_signal(signal.SIGTERM)
    await asyncio.to_thread(server.process.wait, STOP_TIMEOUT_S)


@pytest.mark.postgres
async def test_a_client_moved_to_another_replica_keeps_nothing_it_was_told_by_the_first(
    pair: Pair,
) -> None:
    async with (
        switching_proxy(pair.b.port) as proxy,
        caching_client(f"127.0.0.1:{proxy.port}") as client,
    ):
        key_id, secret = await new_key_applied_by(pair.a, pair.b, pair.admin_keys)
        await warm(client, secret)

        await stop(pair.b)
        await eventually(lambda: not client.fresh, within=CONTRACT_BOUND_S)
        hits = client.hits
        with pytest.raises((Unavailable, DeadlineExceeded)):
            await client.check(secret, *USERS, timeout=0.5)
        assert client.hits == hits

        await proxy.switch(pair.a.port)
        # What B said is gone: the first check after the switch asks A.
        reconnected = await fresh_again(client, secret)
        assert client.hits == hits
        latency = await refused_after(pair, client, DELETE, key_id, secret)

    print(
        f"\nmoved from B to A: fresh on A {reconnected * 1000:.0f} ms after the switch;"
        f" delete refused in {latency * 1000:.1f} ms"
    )
    assert latency < CONTRACT_BOUND_S


@pytest.mark.postgres
async def test_a_client_recovers_when_its_server_restarts_on_the_same_port(
    pair: Pair, tmp_path: Path
) -> None:
    async with caching_client(pair.b.target) as client:
        key_id, secret = await new_key_applied_by(pair.a, pair.b, pair.admin_keys)
        await warm(client, secret)

        await stop(pair.b)
        await eventually(lambda: not client.fresh, within=CONTRACT_BOUND_S)
        async with server_process(
            tmp_path / "b-restarted",
            database_url=pair.database_url,
            admin_keys=pair.admin_keys,
            args=REPLICA_ARGS,
            port=pair.b.port,
        ) as restarted:
            # Asked after the restart, then answered from memory again.
            reconnected = await fresh_again(client, secret)
            latency = await refused_after(pair, client, RESCOPE, key_id, secret)
            assert "Traceback" not in restarted.log.read_text()

    print(
        f"\nB restarted on its port: fresh again {reconnected * 1000:.0f} ms after it served;"
        f" re-scope refused in {latency * 1000:.1f} ms"
    )
    assert latency < CONTRACT_BOUND_S
