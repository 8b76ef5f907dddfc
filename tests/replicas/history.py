"""A history checker for revocation across replicas.

Writers on some replicas create keys, take the ``users.read`` scope away and
give it back, and delete keys; checkers on the other replicas ask ``Check``
about those keys all the while. Every write and every answer is recorded
with the time it was sent and the time it came back. A write committed
somewhere between the two; so for each key, the states that could have been
current at any instant are known, and each answer is compared with them.
An answer that matches no state that could have been current while it was
in flight is *stale*, by the time from the moment its state was certainly
replaced (the replacing write's return) to the moment the question was
sent.

Each key is written by one writer at a time, so its writes are ordered; a
write whose RPC failed leaves the key's state unknown from then on, and
answers about it are not judged after that point.

Run a longer history against a fresh database on the local PostgreSQL
(``--stall 16`` adds deletes that hold their change's sequence number 16 s
before committing):

    .venv/bin/python -m tests.replicas.history --seconds 180
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc
from google.protobuf import field_mask_pb2
from sqlalchemy.engine import make_url

from tests.replicas.processes import AdminKeys, ServerProcess, server_process
from voiso.apikeys.v1 import key_admin_pb2 as pb

ALLOWING = ("users.read",)
DENYING = ("campaigns.read",)
RPC_TIMEOUT_S = 15.0
POLL_S = 1.0
# The README's bound: the poll interval plus one read of the feed (half a
# second here, for a loaded machine).
BOUND_S = POLL_S + 0.5
DELETED_CHECKED = 8


@dataclass(frozen=True, kw_only=True, slots=True)
class Write:
    """One write of a key's state: ``allowed`` is what ``Check`` must answer
    once it has committed; ``ok`` is false when the RPC failed."""

    allowed: bool
    sent: float
    returned: float
    ok: bool = True


@dataclass(frozen=True, kw_only=True, slots=True)
class Answer:
    """One ``Check`` answer about a key."""

    allowed: bool
    sent: float
    received: float


@dataclass(kw_only=True, slots=True)
class KeyHistory:
    """Every write and answer of one key, writes in order."""

    writes: list[Write] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True, slots=True)
class Verdict:
    """What the checker found: totals, and the staleness of every answer
    that matched no state that could have been current (seconds)."""

    writes: int
    answers: int
    judged: int
    stale: tuple[float, ...]

    @property
    def worst(self) -> float:
        """The worst staleness, 0 when no answer was stale."""
        return max(self.stale, default=0.0)

    def beyond(self, bound: float) -> int:
        """How many answers were stale by more than ``bound`` seconds."""
        return sum(1 for staleness in self.stale if staleness > bound)

    def summary(self) -> str:
        return (
            f"{self.writes} writes, {self.answers} answers ({self.judged} judged), "
            f"{len(self.stale)} stale, worst {self.worst * 1000:.1f} ms"
        )


def judge(histories: Sequence[KeyHistory]) -> Verdict:
    """Compares every answer with the states that could have been current
    while it was in flight."""
    stale: list[float] = []
    writes = answers = judged = 0
    for history in histories:
        writes += len(history.writes)
        answers += len(history.answers)
        # State i is the one written by writes[i]: possible from the moment
        # that write was sent until the next write certainly committed.
        failed_at = next((w.sent for w in history.writes if not w.ok), float("inf"))
        spans = [
            (
                write.allowed,
                write.sent,
                history.writes[i + 1].returned if i + 1 < len(history.writes) else float("inf"),
            )
            for i, write in enumerate(history.writes)
            if write.ok
        ]
        for answer in history.answers:
            if answer.sent >= failed_at:
                continue
            judged += 1
            if any(
                allowed == answer.allowed and start <= answer.received and answer.sent <= end
                for allowed, start, end in spans
            ):
                continue
            # A state that only became possible later is not stale but
            # impossible, the worst there is.
            replaced = [
                end for allowed, _, end in spans if allowed == answer.allowed and end < answer.sent
            ]
            stale.append(answer.sent - max(replaced) if replaced else float("inf"))
    return Verdict(writes=writes, answers=answers, judged=judged, stale=tuple(stale))


@dataclass
class _Key:
    id: str
    secret: str
    history: KeyHistory
    allowed: bool = True


@dataclass
class HistoryRun:
    """Writers and checkers over a shared set of keys."""

    admin_keys: AdminKeys
    seed: int = 0
    keys_per_writer: int = 8
    histories: list[KeyHistory] = field(default_factory=list)
    _live: list[_Key] = field(default_factory=list)
    # The latest deleted keys, which checkers keep asking about: that is
    # where a missed invalidation would show.
    _deleted: deque[_Key] = field(default_factory=lambda: deque(maxlen=DELETED_CHECKED))
    # With a database URL, deletes that stall this many seconds between
    # taking their change's seq and committing (as a paused writer's do)
    # run alongside the writers.
    stall: float = 0.0
    database_url: str = ""
    # Keys whose stalled delete committed: checked to the end of the run.
    _stalled: list[_Key] = field(default_factory=list)
    _stocked: asyncio.Event = field(default_factory=asyncio.Event)
    _stocked_at: int = 0

    async def run(
        self,
        writers: Sequence[ServerProcess],
        checkers: Sequence[ServerProcess],
        *,
        seconds: float,
        checks_per_checker: int = 4,
    ) -> Verdict:
        """Runs for ``seconds`` and judges the history."""
        metadata = self.admin_keys.metadata()
        stop = time.perf_counter() + seconds
        tasks = [
            asyncio.create_task(self._write(writer, metadata, stop, seed=self.seed + n))
            for n, writer in enumerate(writers)
        ]
        # Checkers start once every writer has keys to ask about.
        self._stocked_at = len(writers) * self.keys_per_writer
        stocked = asyncio.create_task(self._stocked.wait())
        await asyncio.wait([stocked, *tasks], return_when=asyncio.FIRST_COMPLETED)
        if not stocked.done():
            # A writer failed before there was anything to check.
            stocked.cancel()
            await asyncio.gather(*tasks)
        if self.stall:
            tasks.append(asyncio.create_task(self._stalled_deletes(writers[0], metadata, stop)))
        tasks += [
            asyncio.create_task(self._check(checker, stop, seed=self.seed + 100 + n))
            for n, checker in enumerate(checkers)
            for _ in range(checks_per_checker)
        ]
        await asyncio.gather(*tasks)
        return judge(self.histories)

    async def _write(
        self, server: ServerProcess, metadata: tuple[tuple[str, str], ...], stop: float, seed: int
    ) -> None:
        rng = random.Random(seed)
        own: list[_Key] = []
        while time.perf_counter() < stop:
            if len(own) < self.keys_per_writer:
                own.append(await self._create(server, metadata))
                continue
            key = rng.choice(own)
            if rng.random() < 0.2:
                own.remove(key)
                await self._delete(server, metadata, key)
                self._live.remove(key)
                self._deleted.append(key)
            else:
                await self._rescope(server, metadata, key, allowed=not key.allowed)

    async def _create(self, server: ServerProcess, metadata: tuple[tuple[str, str], ...]) -> _Key:
        sent = time.perf_counter()
        created = await server.admin.CreateKey(
            pb.CreateKeyRequest(name="history", scopes=list(ALLOWING)),
            metadata=metadata,
            timeout=RPC_TIMEOUT_S,
        )
        history = KeyHistory(writes=[Write(allowed=True, sent=sent, returned=time.perf_counter())])
        self.histories.append(history)
        key = _Key(id=created.key.id, secret=created.secret, history=history)
        self._live.append(key)
        if len(self._live) >= self._stocked_at:
            self._stocked.set()
        return key

    async def _rescope(
        self,
        server: ServerProcess,
        metadata: tuple[tuple[str, str], ...],
        key: _Key,
        *,
        allowed: bool,
    ) -> None:
        request = pb.UpdateKeyRequest(
            id=key.id,
            scopes=list(ALLOWING if allowed else DENYING),
            update_mask=field_mask_pb2.FieldMask(paths=["scopes"]),
        )
        await self._record(
            key,
            allowed,
            server.admin.UpdateKey(request, metadata=metadata, timeout=RPC_TIMEOUT_S),
        )
        key.allowed = allowed

    async def _delete(
        self, server: ServerProcess, metadata: tuple[tuple[str, str], ...], key: _Key
    ) -> None:
        request = pb.DeleteKeyRequest(id=key.id)
        await self._record(
            key, False, server.admin.DeleteKey(request, metadata=metadata, timeout=RPC_TIMEOUT_S)
        )

    async def _record(self, key: _Key, allowed: bool, call: Awaitable[object]) -> None:
        sent = time.perf_counter()
        ok = True
        try:
            await call
        except grpc.aio.AioRpcError:
            ok = False
        key.history.writes.append(
            Write(allowed=allowed, sent=sent, returned=time.perf_counter(), ok=ok)
        )

    async def _stalled_deletes(
        self, server: ServerProcess, metadata: tuple[tuple[str, str], ...], stop: float
    ) -> None:
        """One after another: a key created through ``server``, asked about
        by the checkers, then deleted in a transaction that holds its
        change's seq for ``stall`` seconds before committing."""
        connection = await asyncpg.connect(
            make_url(self.database_url).set(drivername="postgresql").render_as_string(False)
        )
        try:
            while time.perf_counter() + self.stall + 1 < stop:
                key = await self._create(server, metadata)
                await asyncio.sleep(0.5)
                sent = time.perf_counter()
                async with connection.transaction():
                    deleted = await connection.fetchrow(
                        "DELETE FROM api_keys WHERE id = $1"
                        " RETURNING lookup_hash, contact_center_id",
                        key.id,
                    )
                    await connection.execute(
                        "INSERT INTO key_changes (lookup_hash, kind, time)"
                        " VALUES ($1, 'deleted', (extract(epoch from now()) * 1000000)::bigint)",
                        deleted["lookup_hash"],
                    )
                    await asyncio.sleep(self.stall)
                key.history.writes.append(
                    Write(allowed=False, sent=sent, returned=time.perf_counter())
                )
                self._live.remove(key)
                self._stalled.append(key)
                # Outside the stalled transaction, which must not hold up
                # every create on this row meanwhile.
                await connection.execute(
                    "UPDATE contact_centers SET key_count = key_count - 1"
                    " WHERE contact_center_id = $1",
                    deleted["contact_center_id"],
                )
        finally:
            await connection.close()

    async def _check(self, server: ServerProcess, stop: float, seed: int) -> None:
        rng = random.Random(seed)
        while time.perf_counter() < stop:
            pick = rng.random()
            if self._stalled and pick < 0.1:
                key = rng.choice(self._stalled)
            elif self._deleted and pick < 0.4:
                key = rng.choice(self._deleted)
            else:
                key = rng.choice(self._live)
            sent = time.perf_counter()
            try:
                response = await server.check(key.secret)
            except grpc.aio.AioRpcError:
                continue
            key.history.answers.append(
                Answer(allowed=response.allowed, sent=sent, received=time.perf_counter())
            )


async def _main(seconds: float, replicas: int, stall: float) -> Verdict:
    from tests.conftest import fresh_postgres_database

    with tempfile.TemporaryDirectory(prefix="apikeys-history-") as tmp:
        root = Path(tmp)
        admin_keys = AdminKeys.make(root / "identity")
        async with fresh_postgres_database() as url:
            return await run_replicas(
                root, url, admin_keys, replicas=replicas, seconds=seconds, stall=stall
            )


async def run_replicas(
    root: Path,
    database_url: str,
    admin_keys: AdminKeys,
    *,
    replicas: int,
    seconds: float,
    stall: float = 0.0,
) -> Verdict:
    """Starts ``replicas`` servers on ``database_url`` (long cache TTL,
    1 s poll), writes through two, checks through the rest, and judges;
    with ``stall``, stalled deletes run alongside."""
    async with contextlib.AsyncExitStack() as stack:
        started = [
            await stack.enter_async_context(
                server_process(
                    root / f"replica-{n}",
                    database_url=database_url,
                    admin_keys=admin_keys,
                    args=("--cache-ttl", "300", "--change-poll", str(POLL_S)),
                )
            )
            for n in range(replicas)
        ]
        run = HistoryRun(admin_keys=admin_keys, stall=stall, database_url=database_url)
        return await run.run(started[:2], started[2:], seconds=seconds)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument(
        "--stall",
        type=float,
        default=0.0,
        help="also run deletes that hold their change's seq this many seconds before committing",
    )
    args = parser.parse_args(argv)
    verdict = asyncio.run(_main(args.seconds, args.replicas, args.stall))
    print(verdict.summary())
    print(f"stale beyond the bound ({BOUND_S:g} s): {verdict.beyond(BOUND_S)}")
    return 1 if verdict.beyond(BOUND_S) else 0


if __name__ == "__main__":
    sys.exit(main())
