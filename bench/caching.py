"""The caching clients (``clients.CachingAuthorizeClient`` and its asyncio twin),
next to the plain clients and to a server without watchers.

    python -m bench.caching [--runs 3] [--duration 3] [--window 10] [--trials 100]

Three measurements, each a section of ``python -m bench`` too:

- **Decisions/s and latency.** One real server (``bench.serve``, SQLite,
  pinned to the server CPU) holds 50 keys created through ``KeyAdmin``. A
  client process on the load CPU checks them round-robin, one caller, one
  check at a time, with the plain client and with the caching client, sync
  and asyncio; the kinds alternate within each run and their order flips
  between runs. Each kind gets a closed loop for ``--duration`` seconds
  counting decisions, then another in which every ``check`` is timed with
  ``time.perf_counter_ns`` into an HdrHistogram. The target is on the
  blocking ``CachingAuthorizeClient``.
- **Server CPU with idle watchers.** The server process's CPU time
  (``/proc/<pid>/stat`` utime + stime) over ``--window`` seconds with no
  watcher, with 100 idle ``AsyncCachingAuthorizeClient`` (one in each of 100
  processes unless ``--holders`` says fewer; clients in one process share
  its connection), and with 100 raw ``WatchChanges`` streams each on a
  connection of its own; the three alternate within each run.
  ``--only idle-profile`` (not part of the suite) shows where that CPU goes:
  a cProfile of the server and its system calls, per heartbeat message.
- **Revocation through another replica.** Two servers on one fresh
  PostgreSQL database; an ``AsyncCachingAuthorizeClient`` on replica B holds
  the answer for a key, the key is deleted (or its scopes changed) through
  replica A, and the client checks until it refuses: the time from sending
  the change, and from its return.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import pstats
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import asyncpg
import grpc
from hdrh.histogram import HdrHistogram
from sqlalchemy.engine import make_url

from bench import h2
from clients import (
    AsyncAuthorizeClient,
    AsyncCachingAuthorizeClient,
    AsyncKeyAdminClient,
    AuthorizeClient,
    CachingAuthorizeClient,
    ChannelOptions,
    create_aio_channel,
)
from clients.devtoken import DEV_SIGNING_KEY_FILE, mint_dev_token
from server.admin_tokens import ensure_dev_key_pair
from voiso.apikeys.v1 import authorize_pb2, authorize_pb2_grpc

if TYPE_CHECKING:
    from bench.suite import BenchServer, Report

WORKING_SET: Final = 50
SCOPE = "campaigns.read"
OTHER_SCOPE = "reporting.cdrs.read"
ROUTE: Final = ("GET", "/api/v4/campaigns")
KINDS: Final = ("plain", "caching", "async-plain", "async-caching")
TARGET_KIND = "caching"
TARGET_MULTIPLE: Final = 100.0
TARGET_P99_US: Final = 50.0
IDLE_WATCHERS: Final = 100
DEFAULT_HOLDERS: Final = 100
IDLE_KINDS: Final = ("none", "caching", "raw")
TARGET_IDLE_CORE: Final = 0.03
PROFILE_TOP: Final = 25
REVOCATION_BOUND_S: Final = 1.0
DEFAULT_RUNS: Final = 3
DEFAULT_DURATION: Final = 3.0
DEFAULT_WINDOW: Final = 10.0
DEFAULT_TRIALS: Final = 100
DEFAULT_POSTGRES: Final = "postgresql://postgres@127.0.0.1:5432/postgres"
# A check that takes longer than this is a broken run, not a slow one.
CALL_TIMEOUT: Final = 5.0
FRESH_TIMEOUT: Final = 10.0
# How long the server gets to settle after watchers open or close, before
# its CPU time is read.
SETTLE_S: Final = 1.0
# Refusal not seen within this many seconds of the change: the trial failed.
GIVE_UP_S: Final = 10.0
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


# --- the client process (runs on the load CPU) -----------------------------------------


def _histogram() -> HdrHistogram:
    # Nanoseconds, from 1 ns to 10 s, 3 significant digits.
    return HdrHistogram(1, 10_000_000_000, 3)


def _percentiles(latencies: array[int]) -> dict[str, float]:
    histogram = _histogram()
    for value in latencies:
        histogram.record_value(max(1, value))
    return {
        "p50_us": histogram.get_value_at_percentile(50) / 1000.0,
        "p99_us": histogram.get_value_at_percentile(99) / 1000.0,
        "p999_us": histogram.get_value_at_percentile(99.9) / 1000.0,
    }


def _timer_floor_ns() -> float:
    """p50 of two back-to-back ``perf_counter_ns`` reads: what timing a call adds."""
    clock = time.perf_counter_ns
    latencies = array("q")
    for _ in range(100_000):
        began = clock()
        latencies.append(clock() - began)
    return _percentiles(latencies)["p50_us"] * 1000.0


def _sync_loop(
    check: Callable[[str], object], keys: Sequence[str], duration: float
) -> dict[str, float]:
    """Decisions/s of an untimed closed loop, then a loop timing every call."""
    clock = time.perf_counter
    calls = 0
    began = clock()
    deadline = began + duration
    while clock() < deadline:
        for key in keys:
            check(key)
        calls += len(keys)
    rps = calls / (clock() - began)
    timer = time.perf_counter_ns
    latencies = array("q")
    deadline = clock() + duration
    while clock() < deadline:
        for key in keys:
            start = timer()
            check(key)
            latencies.append(timer() - start)
    return {"rps": rps, "calls": calls + len(latencies), **_percentiles(latencies)}


async def _async_loop(
    check: Callable[[str], Awaitable[object]], keys: Sequence[str], duration: float
) -> dict[str, float]:
    """:func:`_sync_loop` with ``await``; the loop yields to the event loop
    once per pass over the keys, as a service yields between requests (a
    hit suspends only every few milliseconds on its own)."""
    clock = time.perf_counter
    calls = 0
    began = clock()
    deadline = began + duration
    while clock() < deadline:
        for key in keys:
            await check(key)
        calls += len(keys)
        await asyncio.sleep(0)
    rps = calls / (clock() - began)
    timer = time.perf_counter_ns
    latencies = array("q")
    deadline = clock() + duration
    while clock() < deadline:
        for key in keys:
            start = timer()
            await check(key)
            latencies.append(timer() - start)
        await asyncio.sleep(0)
    return {"rps": rps, "calls": calls + len(latencies), **_percentiles(latencies)}


def _measure_sync(kind: str, options: ChannelOptions, keys: Sequence[str], duration: float) -> Any:
    method, path = ROUTE
    if kind == "plain":
        with AuthorizeClient(options) as plain:
            for key in keys:
                if not plain.check(key, method, path).allowed:
                    raise RuntimeError("a working-set key was refused")
            return _sync_loop(lambda key: plain.check(key, method, path), keys, duration)
    with CachingAuthorizeClient(options) as caching:
        if not caching.wait_fresh(FRESH_TIMEOUT):
            raise RuntimeError("the caching client's stream did not open")
        for _ in range(2):
            for key in keys:
                if not caching.check(key, method, path).allowed:
                    raise RuntimeError("a working-set key was refused")
        hits, misses = caching.hits, caching.misses
        result = _sync_loop(lambda key: caching.check(key, method, path), keys, duration)
        return {**result, "hits": caching.hits - hits, "misses": caching.misses - misses}


async def _measure_async(
    kind: str, options: ChannelOptions, keys: Sequence[str], duration: float
) -> Any:
    method, path = ROUTE
    if kind == "async-plain":
        async with AsyncAuthorizeClient(options) as plain:
            for key in keys:
                if not (await plain.check(key, method, path)).allowed:
                    raise RuntimeError("a working-set key was refused")
            return await _async_loop(lambda key: plain.check(key, method, path), keys, duration)
    async with AsyncCachingAuthorizeClient(options) as caching:
        if not await caching.wait_fresh(FRESH_TIMEOUT):
            raise RuntimeError("the caching client's stream did not open")
        for _ in range(2):
            for key in keys:
                if not (await caching.check(key, method, path)).allowed:
                    raise RuntimeError("a working-set key was refused")
        hits, misses = caching.hits, caching.misses
        result = await _async_loop(lambda key: caching.check(key, method, path), keys, duration)
        return {**result, "hits": caching.hits - hits, "misses": caching.misses - misses}


def decisions_worker(args: argparse.Namespace) -> int:
    """Measures each kind in ``--order``; one JSON line per kind."""
    options = ChannelOptions(target=args.target, timeout=CALL_TIMEOUT)
    keys = Path(args.keys).read_text().split()
    print(json.dumps({"kind": "timer", "floor_ns": _timer_floor_ns()}), flush=True)
    for kind in args.order.split(","):
        if kind.startswith("async-"):
            result = asyncio.run(_measure_async(kind, options, keys, args.duration))
        else:
            result = _measure_sync(kind, options, keys, args.duration)
        print(json.dumps({"kind": kind, **result}), flush=True)
    return 0


async def _hold_caching(options: ChannelOptions, count: int, command: Any) -> dict[str, Any]:
    clients = [AsyncCachingAuthorizeClient(options) for _ in range(count)]
    try:
        fresh = await asyncio.gather(*(c.wait_fresh(FRESH_TIMEOUT) for c in clients))
        if not all(fresh):
            raise RuntimeError(f"{fresh.count(False)} caching clients never got fresh")
        print("ready", flush=True)
        await command()
        return {"fresh_at_end": sum(c.fresh for c in clients)}
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def _hold_raw(options: ChannelOptions, count: int, command: Any) -> dict[str, Any]:
    """Raw streams, each on a connection of its own, counting what arrives."""
    channels = [create_aio_channel(options, own_connection=True) for _ in range(count)]
    counts = [0] * count
    opened = [asyncio.Event() for _ in range(count)]

    async def read(index: int, channel: grpc.aio.Channel) -> None:
        stub: Any = authorize_pb2_grpc.AuthorizeStub(channel)
        async for _ in stub.WatchChanges(authorize_pb2.WatchChangesRequest()):
            counts[index] += 1
            opened[index].set()

    readers = [asyncio.create_task(read(i, c)) for i, c in enumerate(channels)]
    try:
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in opened)), FRESH_TIMEOUT)
        began, before = time.monotonic(), sum(counts)
        print("ready", flush=True)
        await command()
        seconds = time.monotonic() - began
        return {"messages_per_s": (sum(counts) - before) / seconds}
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in channels))


async def _hold(args: argparse.Namespace) -> None:
    options = ChannelOptions(target=args.target)
    loop = asyncio.get_running_loop()

    async def command() -> str:
        line: str = await loop.run_in_executor(None, sys.stdin.readline)
        return line.strip()

    hold = _hold_caching if args.kind == "caching" else _hold_raw
    while await command() == "open":
        print(json.dumps(await hold(options, args.clients, command)), flush=True)


def hold_worker(args: argparse.Namespace) -> int:
    """On each ``open`` line: opens ``--clients`` watchers, prints ``ready``
    once every one has heard the server, holds them until the next line, then
    closes them and prints one JSON line. Ends at the end of its input."""
    asyncio.run(_hold(args))
    return 0


async def _trials(args: argparse.Namespace) -> None:
    method, path = ROUTE
    token = mint_dev_token(
        Path(args.signing_key),
        subject="bench",
        contact_center_id="cc-bench",
        role="admin",
        ttl_seconds=3600,
    )
    replica_a = ChannelOptions(target=args.deleting, timeout=CALL_TIMEOUT)
    replica_b = ChannelOptions(target=args.checking, timeout=CALL_TIMEOUT)
    async with (
        AsyncKeyAdminClient(replica_a, token=token) as admin,
        AsyncCachingAuthorizeClient(replica_b) as b,
    ):
        if not await b.wait_fresh(FRESH_TIMEOUT):
            raise RuntimeError("the caching client's stream to replica B did not open")
        for trial in range(args.trials):
            change = ("delete", "scopes")[trial % 2] if args.change == "both" else args.change
            key, secret = await admin.create_key("bench", "revocation trial", [SCOPE])
            # Until the client holds B's answer: B may answer before it has
            # applied the key's creation, and then the answer is not kept.
            warm_misses = b.misses
            for _ in range(200):
                hits = b.hits
                if not (await b.check(secret, method, path)).allowed:
                    raise RuntimeError("replica B refused a new key")
                if b.hits > hits:
                    break
                await asyncio.sleep(0.005)
            else:
                raise RuntimeError("the caching client never answered the key from memory")
            warm_misses = b.misses - warm_misses
            hits, misses = b.hits, b.misses
            sent = time.perf_counter()
            if change == "delete":
                await admin.delete_key(key.id)
            else:
                await admin.update_key(key.id, scopes=[OTHER_SCOPE])
            returned = time.perf_counter()
            while True:
                decision = await b.check(secret, method, path)
                refused = time.perf_counter()
                if not decision.allowed:
                    break
                if refused - sent > GIVE_UP_S:
                    raise RuntimeError(f"still allowed {GIVE_UP_S:g} s after the change")
                # A turn between checks, as a service's loop has between requests.
                await asyncio.sleep(0)
            if change == "scopes":
                await admin.delete_key(key.id)
            trial_result = {
                "change": change,
                "from_send_s": refused - sent,
                "from_return_s": refused - returned,
                "reason": str(decision.reason),
                "warm_misses": warm_misses,
                "hits_while_waiting": b.hits - hits,
                "misses_while_waiting": b.misses - misses,
            }
            print(json.dumps(trial_result), flush=True)


def revocation_worker(args: argparse.Namespace) -> int:
    """Runs ``--trials`` trials; one JSON line per trial."""
    asyncio.run(_trials(args))
    return 0


WORKERS: Final = {
    "decisions-worker": decisions_worker,
    "hold-worker": hold_worker,
    "revocation-worker": revocation_worker,
}


def _worker_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m bench.caching {argv[0]}")
    if argv[0] == "decisions-worker":
        parser.add_argument("--target", required=True)
        parser.add_argument("--keys", required=True)
        parser.add_argument("--order", required=True)
        parser.add_argument("--duration", type=float, required=True)
    elif argv[0] == "hold-worker":
        parser.add_argument("--target", required=True)
        parser.add_argument("--clients", type=int, required=True)
        parser.add_argument("--kind", choices=("caching", "raw"), required=True)
    else:
        parser.add_argument("--deleting", required=True)
        parser.add_argument("--checking", required=True)
        parser.add_argument("--signing-key", required=True)
        parser.add_argument("--trials", type=int, required=True)
        parser.add_argument("--change", choices=("delete", "scopes", "both"), required=True)
    return WORKERS[argv[0]](parser.parse_args(argv[1:]))


def _worker(name: str, *args: str, stdin: int | None = None) -> subprocess.Popen[str]:
    from bench.suite import LOAD_CPU

    command = [*h2.cpu_pinning(LOAD_CPU), sys.executable, "-m", "bench.caching", name, *args]
    return subprocess.Popen(command, stdin=stdin, stdout=subprocess.PIPE, text=True)


def _json_lines(process: subprocess.Popen[str], timeout: float) -> list[dict[str, Any]]:
    output, _ = process.communicate(timeout=timeout)
    if process.returncode != 0:
        raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


# --- the figures and the report ---------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Spread:
    """Values of several runs: their median and range."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def text(self, digits: int = 0, unit: str = "") -> str:
        low, high = min(self.values), max(self.values)
        return f"{self.median:,.{digits}f}{unit} ({low:,.{digits}f}-{high:,.{digits}f})"


def _spread(runs: Sequence[dict[str, Any]], kind: str, field: str) -> Spread:
    return Spread(values=tuple(float(run[kind][field]) for run in runs))


def decisions(report: Report, *, runs: int, duration: float) -> None:
    """Section 1: decisions/s and latency of each client kind, one server, alternating."""
    from bench.suite import create_key, started

    report.section(
        f"caching client: decisions/s and latency, {WORKING_SET} keys round-robin, one caller "
        f"(client on CPU 1, server on CPU 0, {duration:g} s untimed + {duration:g} s timed "
        "per kind and run)"
    )
    with started("real", variant="real") as server, tempfile.TemporaryDirectory() as scratch:
        keys = Path(scratch) / "keys"
        keys.write_text("\n".join(create_key(server, [SCOPE]) for _ in range(WORKING_SET)))
        results: list[dict[str, Any]] = []
        order = list(KINDS)
        floors = []
        for _ in range(runs):
            process = _worker(
                "decisions-worker",
                "--target",
                server.target,
                "--keys",
                str(keys),
                "--order",
                ",".join(order),
                "--duration",
                f"{duration:g}",
            )
            lines = _json_lines(process, timeout=len(KINDS) * (2 * duration + 30))
            floors.append(lines[0]["floor_ns"])
            results.append({line["kind"]: line for line in lines[1:]})
            order.reverse()
    _decision_rows(report, results, floors)


def _decision_rows(
    report: Report, results: Sequence[dict[str, Any]], floors: Sequence[float]
) -> None:
    for prefix, label in (("", "sync"), ("async-", "asyncio")):
        plain, caching = f"{prefix}plain", f"{prefix}caching"
        ratio = Spread(values=tuple(r[caching]["rps"] / r[plain]["rps"] for r in results))
        report.row(f"{label} client", "plain", "caching", "caching vs plain")
        report.row(
            "  decisions/s, median (min-max)",
            _rate(_spread(results, plain, "rps")),
            _rate(_spread(results, caching, "rps")),
            f"{ratio.text(0)} x",
        )
        for field, name in (("p50_us", "p50"), ("p99_us", "p99"), ("p999_us", "p99.9")):
            p, c = _spread(results, plain, field), _spread(results, caching, field)
            report.row(f"  {name} us", p.text(1), c.text(2), f"1/{p.median / c.median:,.0f} x")
        hits = sum(r[caching]["hits"] for r in results)
        misses = sum(r[caching]["misses"] for r in results)
        report.row("  answers from memory", "", f"{hits:,} hits, {misses:,} misses")
    report.note(
        f"timer floor (two perf_counter_ns reads, p50): {statistics.median(floors):.0f} ns, "
        "included in every timed call"
    )
    ratio = Spread(values=tuple(r[TARGET_KIND]["rps"] / r["plain"]["rps"] for r in results))
    report.target(
        f"cached decisions/s >= {TARGET_MULTIPLE:g} x plain client, same run "
        "(sync CachingAuthorizeClient)",
        ratio.median >= TARGET_MULTIPLE,
        f"{ratio.median:,.0f} x (per run {ratio.text(0)})",
    )
    p99 = _spread(results, TARGET_KIND, "p99_us")
    report.target(
        f"cached p99 < {TARGET_P99_US:g} us (sync CachingAuthorizeClient)",
        p99.median < TARGET_P99_US and max(p99.values) < TARGET_P99_US,
        f"{p99.text(2, ' us')}",
    )


def _rate(spread: Spread) -> str:
    """Decisions/s, in millions once they reach a million."""
    low, high = min(spread.values), max(spread.values)
    if spread.median < 1e6:
        return spread.text()
    return f"{spread.median / 1e6:.2f}M ({low / 1e6:.2f}-{high / 1e6:.2f}M)"


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU time of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are the 14th and 15th fields; the split starts at the 3rd.
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


class Holders:
    """Processes on the load CPU that open ``IDLE_WATCHERS`` watchers of one
    kind on ``server`` when told, and close them again. The processes are
    started once, so that their start-up is not repeated every run."""

    def __init__(self, server: BenchServer, kind: str, processes: int) -> None:
        self.kind = kind
        split = [
            IDLE_WATCHERS // processes + (i < IDLE_WATCHERS % processes) for i in range(processes)
        ]
        self._processes = [
            _worker(
                "hold-worker",
                "--target",
                server.target,
                "--clients",
                str(clients),
                "--kind",
                kind,
                stdin=subprocess.PIPE,
            )
            for clients in split
        ]

    def open(self) -> None:
        """Opens every watcher; returns once each has heard the server."""
        self._tell("open")
        for line in self._answers():
            if line != "ready":
                raise RuntimeError(f"a {self.kind} watcher process did not get ready: {line!r}")

    def close(self) -> list[dict[str, Any]]:
        """Closes every watcher; what each process reports of its watchers."""
        self._tell("close")
        return [json.loads(line) for line in self._answers()]

    def stop(self) -> None:
        """Ends the processes: the end of their input tells them to."""
        for process in self._processes:
            with contextlib.suppress(OSError):
                assert process.stdin is not None
                process.stdin.close()
        for process in self._processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _tell(self, command: str) -> None:
        for process in self._processes:
            assert process.stdin is not None
            process.stdin.write(command + "\n")
            process.stdin.flush()

    def _answers(self) -> list[str]:
        answers = []
        for process in self._processes:
            assert process.stdout is not None
            answers.append(process.stdout.readline().strip())
        return answers


@contextlib.contextmanager
def holding(server: BenchServer, kind: str, processes: int) -> Iterator[Holders]:
    """:class:`Holders` of ``kind``, stopped on leaving."""
    held = Holders(server, kind, processes)
    try:
        yield held
    finally:
        held.stop()


def idle_watchers(
    report: Report, *, runs: int, window: float, holders: int, server_args: Sequence[str] = ()
) -> None:
    """Section 2: the server's CPU over a window with no watcher, 100 idle
    caching clients and 100 raw streams, alternating within each run;
    ``server_args`` are further ``apikeys-server`` options."""
    from bench.suite import started

    report.section(
        f"server CPU with {IDLE_WATCHERS} idle watchers ({window:g} s windows, "
        "/proc/<pid>/stat utime+stime, fraction of one core)"
        + (f"; server {' '.join(server_args)}" if server_args else "")
    )
    usage: dict[str, list[float]] = {kind: [] for kind in IDLE_KINDS}
    system: dict[str, list[float]] = {kind: [] for kind in IDLE_KINDS}
    rates: list[float] = []
    order = list(IDLE_KINDS)
    with (
        started("idle", variant="real", server_args=server_args) as server,
        holding(server, "caching", holders) as caching,
        holding(server, "raw", 1) as raw,
    ):
        pid = server.process.pid
        kinds = {"caching": caching, "raw": raw}
        for _ in range(runs):
            for kind in order:
                if kind in kinds:
                    kinds[kind].open()
                time.sleep(SETTLE_S)
                began, (user, sys_) = time.monotonic(), cpu_seconds(pid)
                time.sleep(window)
                user_after, sys_after = cpu_seconds(pid)
                seconds = time.monotonic() - began
                usage[kind].append((user_after - user + sys_after - sys_) / seconds)
                system[kind].append((sys_after - sys_) / seconds)
                if kind in kinds:
                    held = kinds[kind].close()
                    rates.extend(h["messages_per_s"] for h in held if "messages_per_s" in h)
                    if kind == "caching" and sum(h["fresh_at_end"] for h in held) != IDLE_WATCHERS:
                        raise RuntimeError("an idle caching client went stale during the window")
                time.sleep(SETTLE_S)
            order.reverse()
    _idle_rows(report, usage, system, rates, holders)


def _idle_rows(
    report: Report,
    usage: dict[str, list[float]],
    system: dict[str, list[float]],
    rates: Sequence[float],
    holders: int,
) -> None:
    def over_none(figures: dict[str, list[float]], kind: str) -> Spread:
        values = zip(figures[kind], figures["none"], strict=True)
        return Spread(values=tuple(with_ - without for with_, without in values))

    extra = {kind: over_none(usage, kind) for kind in ("caching", "raw")}
    report.row("", "server CPU, % of a core", "extra over no watcher", "of which system")
    report.row("no watcher", _percent(usage["none"]), "", "")
    for kind, label in (
        ("caching", f"{IDLE_WATCHERS} caching clients ({holders} processes)"),
        ("raw", f"{IDLE_WATCHERS} raw streams (own connections)"),
    ):
        report.row(
            label,
            _percent(usage[kind]),
            _percent(list(extra[kind].values)),
            _percent(list(over_none(system, kind).values)),
        )
    if rates:
        rate = statistics.median(rates)
        per_message = extra["raw"].median / rate * 1e6 if rate else float("nan")
        report.note(
            f"raw streams received {rate:,.0f} messages/s in all (heartbeats); "
            f"extra server CPU per message: {per_message:,.1f} us"
        )
    report.note(
        f"caching clients: AsyncCachingAuthorizeClient, {IDLE_WATCHERS // holders} in each of "
        f"{holders} processes (the clients of one process share its connection); raw streams: "
        f"{IDLE_WATCHERS} WatchChanges calls in one process, each on a connection of its own"
    )
    report.target(
        f"server CPU for {IDLE_WATCHERS} idle caching clients <= {TARGET_IDLE_CORE:.0%} "
        "of a core extra",
        extra["caching"].median <= TARGET_IDLE_CORE,
        f"{extra['caching'].median:.2%} of a core "
        f"(per run {_percent(list(extra['caching'].values))})",
    )


def _percent(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.2%} ({min(values) * 100:.2f}-{max(values) * 100:.2f})"


def idle_profile(window: float, server_args: Sequence[str] = ()) -> None:
    """Where the server's time for idle watchers goes: cProfile of the server
    (``bench.serve --profile``) over ``window`` seconds with no watcher and
    with 100 raw streams on connections of their own, the functions whose own
    time grew the most, and the calls per heartbeat message."""
    from bench.suite import started

    profiles: dict[str, pstats.Stats] = {}
    with tempfile.TemporaryDirectory(prefix="bench-idle-profile-") as scratch:
        for kind in ("none", "raw"):
            output = Path(scratch) / f"{kind}.prof"
            with (
                started("profiled", variant="real", profile=output, server_args=server_args) as s,
                holding(s, "raw", 1) as raw,
            ):
                if kind == "raw":
                    raw.open()
                time.sleep(SETTLE_S)
                began, (user, sys_) = time.monotonic(), cpu_seconds(s.process.pid)
                time.sleep(window)
                user_after, sys_after = cpu_seconds(s.process.pid)
                seconds = time.monotonic() - began
                messages = raw.close()[0]["messages_per_s"] * seconds if kind == "raw" else 0
            print(
                f"{kind}: {(user_after - user + sys_after - sys_) / seconds:.2%} of a core "
                f"(system {(sys_after - sys_) / seconds:.2%}) under the profiler, "
                f"{messages:,.0f} messages in {seconds:.1f} s"
            )
            profiles[kind] = pstats.Stats(str(output), stream=io.StringIO())
            if kind == "raw":
                sent = messages
    # The profiles also hold start-up and shutdown, alike in both; the
    # difference is what the watchers cost.
    own: dict[str, dict[Any, tuple[int, float]]] = {
        kind: {
            where: (calls, tottime)
            for where, (_, calls, tottime, _, _) in stats.stats.items()  # type: ignore[attr-defined]
        }
        for kind, stats in profiles.items()
    }
    grown = sorted(
        own["raw"],
        key=lambda where: own["raw"][where][1] - own["none"].get(where, (0, 0.0))[1],
        reverse=True,
    )
    print(f"own time and calls with 100 raw streams minus without; per message of {sent:,.0f}")
    print(f"{'own s':>8} {'us/msg':>7} {'calls':>9} {'per msg':>7}  function")
    for where in grown[:PROFILE_TOP]:
        calls = own["raw"][where][0] - own["none"].get(where, (0, 0.0))[0]
        seconds = own["raw"][where][1] - own["none"].get(where, (0, 0.0))[1]
        print(
            f"{seconds:8.3f} {seconds / sent * 1e6:7.1f} {calls:9d} {calls / sent:7.2f}  "
            f"{_function(where)}"
        )


def idle_syscalls(window: float, server_args: Sequence[str] = ()) -> None:
    """The server's system calls (``strace -c -f``) over ``window`` seconds
    with no watcher and with 100 raw streams on connections of their own, and
    the difference per heartbeat message. Nothing when strace is missing."""
    from bench.suite import started

    strace = shutil.which("strace")
    if strace is None:
        print("strace not found: no system call counts")
        return
    counts: dict[str, dict[str, int]] = {}
    sent = 0.0
    for kind in ("none", "raw"):
        with (
            started("traced", variant="real", server_args=server_args) as server,
            holding(server, "raw", 1) as raw,
        ):
            if kind == "raw":
                raw.open()
            time.sleep(SETTLE_S)
            command = ["timeout", "-s", "INT", f"{window:g}", strace, "-c", "-f", "-p"]
            traced = subprocess.run(
                [*command, str(server.process.pid)],
                capture_output=True,
                text=True,
                check=False,
            )
            if kind == "raw":
                sent = raw.close()[0]["messages_per_s"] * window
        counts[kind] = _syscall_counts(traced.stderr)
    print(f"system calls with 100 raw streams minus without, per message of {sent:,.0f}:")
    grown = sorted(counts["raw"], key=lambda n: counts["raw"][n] - counts["none"].get(n, 0))
    for name in reversed(grown):
        extra = counts["raw"][name] - counts["none"].get(name, 0)
        if extra / sent >= 0.05:
            print(f"{extra:9,d} {extra / sent:6.2f}  {name}")
    total = sum(counts["raw"].values()) - sum(counts["none"].values())
    print(f"{total:9,d} {total / sent:6.2f}  in all")


def _syscall_counts(summary: str) -> dict[str, int]:
    """Calls per system call from ``strace -c`` output."""
    counts = {}
    for line in summary.splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
            counts[fields[-1]] = int(fields[3])
    return counts


def _function(where: tuple[str, int, str]) -> str:
    file, line, name = where
    if file == "~":
        return name
    for marker in ("site-packages/", "/bench/", "lib/python3.11/"):
        file = file.split(marker, 1)[-1]
    return f"{file}:{line}({name})"


@contextlib.contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A new PostgreSQL database on ``admin_url``'s server, as the server's
    ``--database-url``; dropped afterwards."""
    name = f"apikeys_bench_{secrets.token_hex(6)}"

    async def execute(statement: str) -> None:
        connection = await asyncpg.connect(admin_url, timeout=5)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(execute(f'CREATE DATABASE "{name}"'))
    try:
        url = make_url(admin_url).set(drivername="postgresql+asyncpg", database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        asyncio.run(execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _postgres_unreachable(admin_url: str) -> str | None:
    async def probe() -> None:
        connection = await asyncpg.connect(admin_url, timeout=5)
        await connection.close()

    try:
        asyncio.run(probe())
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def revocation(report: Report, *, trials: int, postgres: str, change: str = "both") -> None:
    """Section 3: revocation delay to a caching client on another replica."""
    from bench.suite import started

    report.section(
        f"revocation to a caching client on another replica: 2 servers on one fresh "
        f"PostgreSQL database, {trials} trials (change: {change}), client on replica B"
    )
    shown = make_url(postgres).render_as_string(hide_password=True)
    problem = _postgres_unreachable(postgres)
    if problem is not None:
        report.target(
            f"caching client on another replica refuses within {REVOCATION_BOUND_S:g} s",
            False,
            f"not measured: PostgreSQL at {shown} unreachable ({problem})",
        )
        return
    with (
        tempfile.TemporaryDirectory(prefix="bench-identity-") as identity,
        fresh_database(postgres) as database_url,
    ):
        public_key = ensure_dev_key_pair(Path(identity))
        server_args = [
            "--database-url",
            database_url,
            "--admin-public-keys",
            str(public_key),
            "--hmac-secret",
            base64.b64encode(secrets.token_bytes(32)).decode(),
            "--encryption-keys",
            "bench1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
        ]
        with (
            started("replica-a", variant="real", server_args=server_args) as a,
            started("replica-b", variant="real", server_args=server_args) as b,
        ):
            process = _worker(
                "revocation-worker",
                "--deleting",
                a.target,
                "--checking",
                b.target,
                "--signing-key",
                str(Path(identity) / DEV_SIGNING_KEY_FILE),
                "--trials",
                str(trials),
                "--change",
                change,
            )
            results = _json_lines(process, timeout=60 + trials * (GIVE_UP_S + 2))
    _revocation_rows(report, results)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def _delays(values: Sequence[float]) -> str:
    return (
        f"p50 {statistics.median(values) * 1000:.1f}, p99 {percentile(values, 0.99) * 1000:.1f}, "
        f"max {max(values) * 1000:.1f}"
    )


def _revocation_rows(report: Report, results: Sequence[dict[str, Any]]) -> None:
    report.row("", "ms from sending the change", "ms from its return", "trials")
    for change in ("delete", "scopes", "all"):
        chosen = [r for r in results if change in ("all", r["change"])]
        if not chosen:
            continue
        reasons = ", ".join(sorted({r["reason"].removeprefix("REASON_") for r in chosen}))
        report.row(
            f"{change} ({reasons})" if change != "all" else "all trials",
            _delays([r["from_send_s"] for r in chosen]),
            _delays([r["from_return_s"] for r in chosen]),
            str(len(chosen)),
        )
    hits = sum(r["hits_while_waiting"] for r in results)
    misses = sum(r["misses_while_waiting"] for r in results)
    warm = sum(r["warm_misses"] for r in results)
    report.note(
        f"while waiting the client answered {hits:,} checks from memory and sent {misses:,} "
        f"to replica B (one refusal per trial: {len(results):,}); holding each new key's "
        f"answer took {warm:,} checks sent to B"
    )
    worst = max(r["from_send_s"] for r in results)
    report.target(
        f"caching client on another replica refuses within {REVOCATION_BOUND_S:g} s, every trial",
        worst < REVOCATION_BOUND_S,
        f"max {worst * 1000:.1f} ms from sending the change over {len(results)} trials",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the three sections (or the ones named by ``--only``) and lists the targets."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in WORKERS:
        return _worker_main(argv)
    from bench.suite import Report

    parser = argparse.ArgumentParser(prog="python -m bench.caching")
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS, help="alternating runs")
    parser.add_argument(
        "--duration", type=float, default=DEFAULT_DURATION, help="seconds per client kind and loop"
    )
    parser.add_argument("--window", type=float, default=DEFAULT_WINDOW, help="CPU window, seconds")
    parser.add_argument(
        "--holders",
        type=int,
        default=DEFAULT_HOLDERS,
        help="processes the idle caching clients are spread over",
    )
    parser.add_argument(
        "--watch-heartbeat",
        help="the idle server's --watch-heartbeat (its default unless given)",
    )
    parser.add_argument("--trials", type=int, default=DEFAULT_TRIALS)
    parser.add_argument("--change", choices=("delete", "scopes", "both"), default="both")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("APIKEYS_TEST_POSTGRES", DEFAULT_POSTGRES),
        help="libpq URL of a PostgreSQL user allowed to create databases",
    )
    parser.add_argument(
        "--only",
        choices=("decisions", "idle", "revocation", "idle-profile"),
        action="append",
        default=[],
        help="the sections to run (repeatable); idle-profile runs only when named",
    )
    args = parser.parse_args(argv)
    only = set(args.only) or {"decisions", "idle", "revocation"}
    idle_args = [] if args.watch_heartbeat is None else ["--watch-heartbeat", args.watch_heartbeat]
    if "idle-profile" in only:
        idle_profile(args.window, idle_args)
        idle_syscalls(args.window, idle_args)
        only.discard("idle-profile")
        if not only:
            return 0
    report = Report()
    if "decisions" in only:
        decisions(report, runs=args.runs, duration=args.duration)
    if "idle" in only:
        idle_watchers(
            report, runs=args.runs, window=args.window, holders=args.holders, server_args=idle_args
        )
    if "revocation" in only:
        revocation(report, trials=args.trials, postgres=args.postgres, change=args.change)
    report.section("targets")
    for verdict in report.verdicts:
        report.note(verdict)
    return 0


if __name__ == "__main__":
    sys.exit(main())
