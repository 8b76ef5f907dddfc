"""The benchmark suite behind ``make bench``: every figure next to the no-op baseline.

The servers run pinned to CPU 0 and the load generators to CPU 1 (with
``taskset`` when it exists), each server in a process of its own. Both
variants of a comparison are started together and measured in alternation,
run after run, so slow phases of a noisy machine hit both alike; each figure
is the median of ``--runs`` runs, with its spread (min-max). ``--quick`` makes
every run short and single, to see that the suite works, not to measure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import grpc
from google.protobuf.internal import api_implementation

from bench import h2
from clients._channel import ChannelOptions
from clients._key_admin import KeyAdminClient
from clients._keys import well_formed_key
from clients.devtoken import dev_signing_key_path, mint_dev_token
from voiso.apikeys.v1 import authorize_pb2

SERVER_CPU = 0
LOAD_CPU = 1
CHECK = "/voiso.apikeys.v1.Authorize/Check"
CHECK_BATCH = "/voiso.apikeys.v1.Authorize/CheckBatch"
BATCH_SIZE = 100
ROUTE = ("GET", "/api/v4/campaigns")
# Enough streams in flight to keep one Python core busy without queueing
# whole seconds of work in the server.
CLIENTS = 4
STREAMS = 16
START_TIMEOUT = 20.0
MALFORMED_KEY = "vsk_" + "A" * 49
DEFAULT_RUNS: Final = 3
DEFAULT_SATURATION_RUNS: Final = 6
DEFAULT_DURATION: Final = 3.0
DEFAULT_DISTINCT_UNKNOWN: Final = 2000
DEFAULT_MEMORY_KEYS: Final = 100_000
DEFAULT_ATTACK_CALLS: Final = 200
DEFAULT_IDLE_WINDOW: Final = 10.0
DEFAULT_IDLE_HOLDERS: Final = 100
DEFAULT_REVOCATION_TRIALS: Final = 100
# --quick: one short run of everything, enough to see every section print.
QUICK_SIZES: Final = {
    "runs": 1,
    "saturation_runs": 1,
    "duration": 1.0,
    "distinct_unknown": 200,
    "memory_keys": 10_000,
    "attack_calls": 40,
    "idle_window": 2.0,
    "idle_holders": 10,
    "revocation_trials": 10,
}


@dataclass(frozen=True, kw_only=True, slots=True)
class SuiteOptions:
    """How many runs the suite makes, how long each lasts, and what it skips."""

    runs: int = DEFAULT_RUNS
    saturation_runs: int = DEFAULT_SATURATION_RUNS
    duration: float = DEFAULT_DURATION
    distinct_unknown: int = DEFAULT_DISTINCT_UNKNOWN
    memory_keys: int = DEFAULT_MEMORY_KEYS
    attack_calls: int = DEFAULT_ATTACK_CALLS
    idle_window: float = DEFAULT_IDLE_WINDOW
    idle_holders: int = DEFAULT_IDLE_HOLDERS
    revocation_trials: int = DEFAULT_REVOCATION_TRIALS
    profile: bool = True
    only_metrics: bool = False
    only_caching: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class Headline:
    """Median saturated req/s of cached-key ``Check``, real server and no-op
    baseline (uvloop, interceptor on): what later sections are set against."""

    check_rps: float
    base_rps: float


@dataclass(frozen=True, kw_only=True, slots=True)
class FloodRun:
    """Legitimate checks measured during a flood, and the floods' own req/s."""

    legit: h2.H2Result
    flood_rps: float


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class BenchServer:
    """A server process started by ``bench.serve``."""

    name: str
    port: int
    data_dir: Path
    stats: Path
    process: subprocess.Popen[bytes]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, method: str) -> str:
        return f"http://{self.target}{method}"

    def resident_mib(self) -> float:
        """The server process's resident memory."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024

    def statements(self) -> int:
        """SQL statements the store has run so far."""
        time.sleep(3 * 0.1)
        return int(self.stats.read_text() or 0)


@contextmanager
def started(
    name: str,
    *,
    variant: str,
    uvloop: bool = True,
    interceptor: bool = True,
    profile: Path | None = None,
    data_dir: Path | None = None,
    source: Path | None = None,
    server_args: Sequence[str] = (),
) -> Iterator[BenchServer]:
    """Starts one server on a free port, pinned to the server CPU, and stops it
    afterwards. With ``source``, the server runs from that source tree of this
    repository instead of this one; ``server_args`` are further
    ``apikeys-server`` options."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as scratch:
        port = free_port()
        data_dir = data_dir or Path(scratch) / "var"
        stats = Path(scratch) / "statements"
        command = [
            *h2.cpu_pinning(SERVER_CPU),
            sys.executable,
            "-m",
            "bench.serve",
            "--variant",
            variant,
            "--stats",
            str(stats),
            *([] if interceptor else ["--no-interceptor"]),
            *([] if profile is None else ["--profile", str(profile)]),
            "--",
            "--listen",
            f"127.0.0.1:{port}",
            "--data-dir",
            str(data_dir),
            "--log-level",
            "warning",
            "--uvloop",
            "true" if uvloop else "false",
            *server_args,
        ]
        env = {key: value for key, value in os.environ.items() if not key.startswith("APIKEYS_")}
        if source is not None:
            env["PYTHONPATH"] = os.pathsep.join((str(source), str(source / "generated")))
        log = Path(scratch) / "server.log"
        with log.open("wb") as output:
            process = subprocess.Popen(command, env=env, cwd=source, stdout=output, stderr=output)
        server = BenchServer(name=name, port=port, data_dir=data_dir, stats=stats, process=process)
        try:
            try:
                _wait_ready(server)
            except RuntimeError:
                sys.stderr.write(log.read_text())
                raise
            yield server
        finally:
            stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    """Terminates ``process``, killing it if it is still running 10 s later."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _wait_ready(server: BenchServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} server exited with {server.process.returncode}")
        try:
            with grpc.insecure_channel(server.target) as channel:
                grpc.channel_ready_future(channel).result(timeout=0.5)
            if server.stats.exists():
                return
        except grpc.FutureTimeoutError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{server.name} server did not start in {START_TIMEOUT:g} s")


def admin_token(server: BenchServer) -> str:
    return mint_dev_token(
        dev_signing_key_path(server.data_dir),
        subject="bench",
        contact_center_id="cc-bench",
        role="admin",
        permissions=[],
        sag=False,
        ttl_seconds=3600,
    )


def create_key(server: BenchServer, scopes: Sequence[str]) -> str:
    """A new key on ``server``, created through KeyAdmin."""
    options = ChannelOptions(target=server.target, timeout=10.0)
    with KeyAdminClient(options, token=admin_token(server)) as admin:
        _, secret = admin.create_key("bench", "benchmark key", list(scopes))
    return secret


def check_body(key: str, method: str = ROUTE[0], path: str = ROUTE[1]) -> bytes:
    return h2.grpc_body(authorize_pb2.CheckRequest(key=key, method=method, path=path))


def batch_body(key: str) -> bytes:
    check = authorize_pb2.CheckRequest(key=key, method=ROUTE[0], path=ROUTE[1])
    return h2.grpc_body(authorize_pb2.CheckBatchRequest(checks=[check] * BATCH_SIZE))


def verify_check(server: BenchServer, body: bytes, reason: int) -> None:
    """The body answers grpc-status 0 with the expected reason through a real channel."""
    response = authorize_pb2.CheckResponse.FromString(h2.verify_body(server.target, CHECK, body))
    if response.reason != reason:
        raise RuntimeError(
            f"{server.name}: expected {authorize_pb2.Reason.Name(reason)}, got "  # type: ignore[arg-type]
            f"{authorize_pb2.Reason.Name(response.reason)}"
        )


# --- reporting -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Figure:
    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def spread(self, digits: int = 0) -> str:
        return f"{min(self.values):,.{digits}f}-{max(self.values):,.{digits}f}"

    def described(self, digits: int = 0) -> str:
        """The median and, in brackets, the spread."""
        return f"{self.median:,.{digits}f} ({self.spread(digits)})"


def _fmt(figure: Figure, digits: int = 0) -> str:
    return figure.described(digits)


class Report:
    """Collects the rows of the final table and prints each section as it completes."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.verdicts: list[str] = []

    def section(self, title: str) -> None:
        self._say("")
        self._say(f"== {title}")

    def row(self, label: str, *cells: str) -> None:
        self._say(f"  {label:<34}" + "".join(f" {cell:>29}" for cell in cells))

    def note(self, text: str) -> None:
        self._say(f"  {text}")

    def target(self, what: str, ok: bool, detail: str) -> None:
        verdict = f"{'MET    ' if ok else 'NOT MET'}  {what}: {detail}"
        self.verdicts.append(verdict)
        self._say(f"  -> {verdict}")

    def _say(self, line: str) -> None:
        self.lines.append(line)
        print(line, flush=True)


def _alternate(
    runs: int, servers: Sequence[BenchServer], measure: Callable[[BenchServer], h2.H2Result]
) -> dict[str, list[h2.H2Result]]:
    """``runs`` measurements of each server, in turns; results by server name."""
    results: dict[str, list[h2.H2Result]] = {server.name: [] for server in servers}
    order = list(servers)
    for _ in range(runs):
        for server in order:
            results[server.name].append(measure(server))
        # A-B, B-A, A-B, ...: a machine slowing down or speeding up through
        # the runs favours neither variant.
        order.reverse()
    return results


def saturate_together(
    servers: Sequence[BenchServer], bodies: Mapping[str, bytes], duration: float
) -> dict[str, h2.H2Result]:
    """One run of every server saturated at once, each by its own h2load on
    the load CPU, started in the order given; results by server name."""
    running = {
        server.name: h2.start(
            server.url(CHECK),
            bodies[server.name],
            clients=CLIENTS,
            streams=STREAMS,
            duration=duration,
            warm_up=1,
            cpu=LOAD_CPU,
        )
        for server in servers
    }
    return {name: h2.finish(run, timeout=duration + 30) for name, run in running.items()}


def _side_by_side(
    real: BenchServer, noop: BenchServer, body: bytes, options: SuiteOptions
) -> Figure:
    """Real / no-op req/s with both servers driven at once; which one starts
    first alternates."""
    ratios = []
    pair = [real, noop]
    for _ in range(options.saturation_runs):
        done = saturate_together(pair, {real.name: body, noop.name: body}, options.duration)
        ratios.append(done[real.name].rps / done[noop.name].rps)
        pair.reverse()
    return Figure(values=tuple(ratios))


def _figure(results: list[h2.H2Result], field: str) -> Figure:
    return Figure(values=tuple(float(getattr(result, field)) for result in results))


def _saturate(
    server: BenchServer, body: bytes, duration: float, method: str = CHECK
) -> h2.H2Result:
    return h2.run(
        server.url(method), body, clients=CLIENTS, streams=STREAMS, duration=duration, cpu=LOAD_CPU
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class RateComparison:
    """Saturated req/s of the real server and the baseline, and their ratio per run pair."""

    real_rps: Figure
    base_rps: Figure
    ratio: Figure


def _ratio_rows(
    report: Report, results: dict[str, list[h2.H2Result]], real: str, base: str
) -> RateComparison:
    real_rps, base_rps = _figure(results[real], "rps"), _figure(results[base], "rps")
    ratio = Figure(
        values=tuple(r.rps / b.rps for r, b in zip(results[real], results[base], strict=True))
    )
    report.row("", f"{real}", f"{base}", "ratio (per run)")
    report.row("Check req/s, median (min-max)", _fmt(real_rps), _fmt(base_rps), _fmt(ratio, 3))
    for field, label in (("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("p999_ms", "p99.9 ms")):
        real_f, base_f = _figure(results[real], field), _figure(results[base], field)
        report.row(label, _fmt(real_f, 2), _fmt(base_f, 2), f"{real_f.median / base_f.median:.2f}")
    return RateComparison(real_rps=real_rps, base_rps=base_rps, ratio=ratio)


# --- the scenarios ----------------------------------------------------------------------


def header(report: Report) -> None:
    import google.protobuf
    import uvloop

    report.section("environment")
    report.row("python", platform.python_version())
    report.row("grpcio", grpc.__version__)
    report.row("protobuf", f"{google.protobuf.__version__} ({api_implementation.Type()})")
    report.row("uvloop", uvloop.__version__)
    h2load = subprocess.run(["h2load", "--version"], capture_output=True, text=True, check=True)
    report.row("h2load", h2load.stdout.split()[-1])
    report.row("cpus", str(os.cpu_count()))
    pinned = "taskset: server on CPU 0, load on CPU 1" if h2.cpu_pinning(0) else "not pinned"
    report.row("pinning", pinned)
    report.row("load", f"h2load -c {CLIENTS} -m {STREAMS} (unless stated)")


def saturation(report: Report, options: SuiteOptions) -> Headline:
    """Saturated throughput and latency of the real server against the baseline,
    CheckBatch, a flood and ``apikeys loadtest``, all on one pair of servers."""
    with started("real", variant="real") as real, started("noop", variant="noop") as noop:
        key = create_key(real, ["campaigns.read"])
        body = check_body(key)
        verify_check(real, body, authorize_pb2.REASON_ALLOWED)
        verify_check(noop, body, authorize_pb2.REASON_ALLOWED)
        headline = _cached_check(report, options, real, noop, body)
        _half_rate(report, options, real, noop, body, headline.base_rps)
        _check_batch(report, options, real, noop, key, headline.check_rps)
        flood(report, options, real, key, headline.check_rps)
        loadtest(report, options, real)
    return headline


def _cached_check(
    report: Report, options: SuiteOptions, real: BenchServer, noop: BenchServer, body: bytes
) -> Headline:
    report.section(
        "cached-key Check at saturation (uvloop, interceptor on); body verified: "
        "grpc-status 0, REASON_ALLOWED"
    )
    results = _alternate(
        options.saturation_runs,
        (real, noop),
        lambda server: _saturate(server, body, options.duration),
    )
    rates = _ratio_rows(report, results, "real", "noop")
    ratio = rates.ratio.median
    report.target("Check throughput >= 0.90 x baseline", ratio >= 0.9, f"{ratio:.3f}")
    together = _side_by_side(real, noop, body, options)
    report.row("both at once on the server CPU", "", "", _fmt(together, 3))
    report.note(
        "(the two servers saturated together, sharing CPU 0: a slow phase of the machine "
        "hits both alike, so this ratio of costs per call moves far less between runs)"
    )
    return Headline(check_rps=rates.real_rps.median, base_rps=rates.base_rps.median)


def _half_rate(
    report: Report,
    options: SuiteOptions,
    real: BenchServer,
    noop: BenchServer,
    body: bytes,
    base_rps: float,
) -> None:
    half = base_rps / 2
    report.section(
        f"latency at half the baseline's saturated rate ({half:,.0f} req/s: "
        f"h2load -c {CLIENTS} --rps {half / CLIENTS:,.0f} per client)"
    )
    paced = _alternate(
        options.runs,
        (real, noop),
        lambda server: h2.run(
            server.url(CHECK),
            body,
            clients=CLIENTS,
            streams=STREAMS,
            duration=options.duration,
            rps_per_client=half / CLIENTS,
            cpu=LOAD_CPU,
        ),
    )
    _ratio_rows(report, paced, "real", "noop")
    p99 = _figure(paced["real"], "p99_ms").median / _figure(paced["noop"], "p99_ms").median
    report.target("p99 at half rate within 1.5 x baseline", p99 <= 1.5, f"{p99:.2f} x")


def _check_batch(
    report: Report,
    options: SuiteOptions,
    real: BenchServer,
    noop: BenchServer,
    key: str,
    check_rps: float,
) -> None:
    report.section(f"CheckBatch ({BATCH_SIZE} cached-key checks per call)")
    batch = batch_body(key)
    batches = _alternate(
        options.runs,
        (real, noop),
        lambda server: _saturate(server, batch, options.duration, CHECK_BATCH),
    )
    decisions = Figure(values=tuple(r.rps * BATCH_SIZE for r in batches["real"]))
    base_decisions = Figure(values=tuple(r.rps * BATCH_SIZE for r in batches["noop"]))
    multiple = decisions.median / check_rps
    report.row("", "real", "noop", "real / unary Check")
    report.row(
        "decisions/s, median (min-max)",
        _fmt(decisions),
        _fmt(base_decisions),
        f"{multiple:.1f} x",
    )
    report.target("CheckBatch decisions/s >= 10 x unary Check", multiple >= 10, f"{multiple:.1f} x")


def metrics_cost(report: Report, options: SuiteOptions) -> None:
    """Cached-key ``Check`` with metrics on against metrics off, both real
    servers saturated at once on the server CPU."""
    report.section(
        "cached-key Check, metrics on (--metrics-listen) / off, both saturated at once; "
        "tracing is off in both (no OTEL_* variables: no interceptor installed)"
    )
    with (
        started("metrics-off", variant="real") as off,
        started(
            "metrics-on", variant="real", server_args=["--metrics-listen", "127.0.0.1:0"]
        ) as on,
    ):
        bodies = {
            server.name: check_body(create_key(server, ["campaigns.read"])) for server in (off, on)
        }
        for server in (off, on):
            verify_check(server, bodies[server.name], authorize_pb2.REASON_ALLOWED)
        ratios = []
        pair = [off, on]
        for _ in range(options.saturation_runs):
            done = saturate_together(pair, bodies, options.duration)
            ratios.append(done[on.name].rps / done[off.name].rps)
            report.row(
                "req/s off, on, on / off",
                f"{done[off.name].rps:,.0f}",
                f"{done[on.name].rps:,.0f}",
                f"{ratios[-1]:.3f}",
            )
            pair.reverse()
    ratio = Figure(values=tuple(ratios))
    report.row("on / off, median (min-max)", "", "", _fmt(ratio, 3))
    report.target(
        "Check throughput with metrics on >= 0.97 x off",
        ratio.median >= 0.97,
        f"{ratio.median:.3f}",
    )


def variants(report: Report, options: SuiteOptions, headline: Headline) -> None:
    """The cached-key saturation again, with the asyncio loop and without the
    admin interceptor, each also set against the headline figures."""
    # Without the interceptor KeyAdmin has no actor, so that server reuses the
    # database (and the key) of the one before it.
    with tempfile.TemporaryDirectory(prefix="bench-shared-") as shared:
        data_dir = Path(shared) / "var"
        key = ""
        for label, uvloop, interceptor in (
            ("asyncio event loop (--uvloop false)", False, True),
            ("without the admin interceptor", True, False),
        ):
            with (
                started(
                    "real",
                    variant="real",
                    uvloop=uvloop,
                    interceptor=interceptor,
                    data_dir=data_dir,
                ) as real,
                started("noop", variant="noop", uvloop=uvloop, interceptor=interceptor) as noop,
            ):
                key = key or create_key(real, ["campaigns.read"])
                _variant(report, options, headline, label, real, noop, key)


def _variant(
    report: Report,
    options: SuiteOptions,
    headline: Headline,
    label: str,
    real: BenchServer,
    noop: BenchServer,
    key: str,
) -> None:
    body = check_body(key)
    verify_check(real, body, authorize_pb2.REASON_ALLOWED)
    report.section(f"cached-key Check at saturation, {label}")
    results = _alternate(
        options.runs, (real, noop), lambda server: _saturate(server, body, options.duration)
    )
    rates = _ratio_rows(report, results, "real", "noop")
    real_change = rates.real_rps.median / headline.check_rps
    noop_change = rates.base_rps.median / headline.base_rps
    report.note(f"vs uvloop + interceptor: real {real_change:.3f} x, noop {noop_change:.3f} x")


def flood(
    report: Report, options: SuiteOptions, real: BenchServer, key: str, check_rps: float
) -> None:
    """Legitimate checks mixed into a flood of malformed and unknown keys, then
    distinct unknown keys twice against the negative cache."""
    legit = check_body(key)
    malformed = check_body(MALFORMED_KEY)
    unknown = check_body(well_formed_key())
    verify_check(real, malformed, authorize_pb2.REASON_KEY_MALFORMED)
    verify_check(real, unknown, authorize_pb2.REASON_KEY_NOT_FOUND)
    report.section(
        "flood: malformed and unknown keys at full rate (2 h2load each: -c 2 -m 16), "
        "legitimate checks mixed in"
    )
    # Legitimate traffic at a quarter of the server's saturated rate: what an
    # API gateway offers, while the flood takes every cycle that is left.
    rate = check_rps / 4

    def legit_run(paced: bool) -> h2.H2Result:
        return h2.run(
            real.url(CHECK),
            legit,
            clients=2,
            streams=STREAMS,
            duration=options.duration,
            rps_per_client=rate / 2 if paced else None,
            cpu=LOAD_CPU,
        )

    def with_flood(paced: bool) -> FloodRun:
        length = options.duration + 2
        floods = [
            h2.start(real.url(CHECK), body, clients=2, streams=16, duration=length, cpu=LOAD_CPU)
            for body in (malformed, unknown)
        ]
        time.sleep(1.0)
        result = legit_run(paced)
        flood_malformed, flood_unknown = (h2.finish(one, timeout=length + 30) for one in floods)
        return FloodRun(legit=result, flood_rps=flood_malformed.rps + flood_unknown.rps)

    before = real.statements()
    for paced, label in ((True, f"paced at {rate:,.0f} req/s"), (False, "closed loop, -c 2 -m 16")):
        alone: list[float] = []
        mixed: list[float] = []
        floods: list[float] = []
        for _ in range(options.runs):
            alone.append(legit_run(paced).rps)
            run = with_flood(paced)
            mixed.append(run.legit.rps)
            floods.append(run.flood_rps)
        _flood_rows(report, label, paced, alone, mixed, floods)
    statements = real.statements() - before
    report.row("SQL statements during the floods", str(statements))
    alive = True
    try:
        verify_check(real, legit, authorize_pb2.REASON_ALLOWED)
    except (grpc.RpcError, RuntimeError):
        alive = False
    report.target("server up and allowing after the flood", alive, "Check answered REASON_ALLOWED")
    _unknown_keys_twice(report, real, options.distinct_unknown)


def _flood_rows(
    report: Report,
    label: str,
    paced: bool,
    alone: Sequence[float],
    mixed: Sequence[float],
    floods: Sequence[float],
) -> None:
    kept = Figure(values=tuple(m / a for m, a in zip(mixed, alone, strict=True)))
    report.row(f"legit req/s, {label}", "alone", "in the flood", "kept")
    report.row(
        "  median (min-max)",
        _fmt(Figure(values=tuple(alone))),
        _fmt(Figure(values=tuple(mixed))),
        _fmt(kept, 3),
    )
    report.row("  flood req/s (both floods)", "", _fmt(Figure(values=tuple(floods))))
    if paced:
        report.target(
            "legit checks keep >= 80% of their throughput in the flood",
            kept.median >= 0.8,
            f"{kept.median:.3f} (legit paced at a quarter of saturation)",
        )
    else:
        report.note(
            "closed loop: the server shares its one core between connections, so "
            "legit's share follows its share of the connections (2 of 6)"
        )


def _unknown_keys_twice(report: Report, real: BenchServer, distinct: int) -> None:
    # The same distinct unknown keys twice, each pass inside the negative TTL:
    # the first pass looks each key up once, the second should not touch the store.
    keys = [well_formed_key() for _ in range(distinct)]
    given = [part for key in keys for part in ("--key", key)]
    passes: list[int] = []
    for _ in range(2):
        before = real.statements()
        _loadtest_json(real, ["--mix", "given=1", "--requests", str(distinct), *given])
        passes.append(real.statements() - before)
    report.row(
        f"{distinct:,} distinct unknown keys, 2 passes",
        f"1st: {passes[0]:,} SQL statements",
        f"2nd: {passes[1]:,} SQL statements",
    )
    report.target(
        "store queries for the flood near zero after the first pass",
        passes[1] <= distinct // 100,
        f"{passes[1]:,} statements on the second pass of {distinct:,} unknown keys "
        f"(first pass {passes[0]:,})",
    )


def _loadtest_json(server: BenchServer, extra: Sequence[str]) -> dict[str, object]:
    apikeys = Path(sys.executable).with_name("apikeys")
    command = [
        *h2.cpu_pinning(LOAD_CPU),
        str(apikeys),
        "--server",
        server.target,
        "--json",
        "loadtest",
        "--concurrency",
        "64",
        *extra,
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120)
    document: dict[str, object] = json.loads(output.stdout)
    return document


def loadtest(report: Report, options: SuiteOptions, real: BenchServer) -> None:
    """``apikeys loadtest`` with its default mix against the real server."""
    apikeys = Path(sys.executable).with_name("apikeys")
    command = [
        *h2.cpu_pinning(LOAD_CPU),
        str(apikeys),
        "--server",
        real.target,
        "--token",
        admin_token(real),
        "loadtest",
        "--concurrency",
        "64",
        "--duration",
        f"{options.duration:g}",
    ]
    report.section(
        f"apikeys loadtest --concurrency 64 --duration {options.duration:g} "
        "(default mix valid=7,revoked=1,unknown=1,malformed=1; Python client on CPU 1)"
    )
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120)
    for line in output.stdout.splitlines():
        report.note(line)


def memory(report: Report, options: SuiteOptions) -> None:
    """The key cache's memory per entry (``bench.memory``)."""
    command = [sys.executable, "-m", "bench.memory", "--keys", str(options.memory_keys)]
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=300)
    figures = json.loads(output.stdout)
    report.section(f"key cache memory, {options.memory_keys:,} distinct cached keys (bench.memory)")
    report.row("cached entries", f"{figures['entries']:,}")
    report.row(
        "RSS before / after",
        f"{figures['rss_before_mib']:.1f} MiB",
        f"{figures['rss_after_mib']:.1f} MiB",
    )
    report.row("RSS delta per entry", f"{figures['rss_per_entry_bytes']:,.0f} B")
    report.row("traced (tracemalloc) per entry", f"{figures['traced_per_entry_bytes']:,.0f} B")
    report.row(
        "at the default bound (100,000 + 100,000)",
        f"~{figures['bound_mib']:.0f} MiB",
    )


def hotpath(report: Report) -> None:
    command = [*h2.cpu_pinning(SERVER_CPU), sys.executable, "-m", "bench.hotpath"]
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120)
    report.section("cached-key Check in-process, step by step (bench.hotpath, warm caches)")
    for line in output.stdout.splitlines():
        report.note(line)


def profile(report: Report, options: SuiteOptions) -> None:
    """A cProfile of the real server at saturation (``bench.profile``)."""
    command = [sys.executable, "-m", "bench.profile", "--duration", f"{options.duration:g}"]
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120)
    report.section(
        f"profile: real server under saturated cached-key Check ({options.duration:g} s, cProfile)"
    )
    for line in output.stdout.splitlines():
        report.note(line)


def attacked(report: Report, options: SuiteOptions) -> None:
    """Legitimate checks during each attack of ``bench.attacks`` (see ``bench.under_attack``)."""
    # Imported here: bench.under_attack builds on this module's servers and report.
    from bench.under_attack import under_attack

    under_attack(report, calls=options.attack_calls)


def caching(report: Report, options: SuiteOptions) -> None:
    """The caching clients: decisions/s and latency against the plain ones,
    the server's CPU for idle watchers, revocation through another replica
    (see ``bench.caching``)."""
    # Imported here: bench.caching builds on this module's servers and report.
    from bench import caching as cached

    cached.decisions(report, runs=options.runs, duration=options.duration)
    cached.idle_watchers(
        report, runs=options.runs, window=options.idle_window, holders=options.idle_holders
    )
    cached.revocation(
        report,
        trials=options.revocation_trials,
        postgres=os.environ.get("APIKEYS_TEST_POSTGRES", cached.DEFAULT_POSTGRES),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the suite; prints the table and the list of targets."""
    options = parse_options(argv)
    began = time.monotonic()
    report = Report()
    header(report)
    if options.only_metrics or options.only_caching:
        if options.only_metrics:
            metrics_cost(report, options)
        if options.only_caching:
            caching(report, options)
        report.section("targets")
        for verdict in report.verdicts:
            report.note(verdict)
        return 0
    headline = saturation(report, options)
    metrics_cost(report, options)
    variants(report, options, headline)
    attacked(report, options)
    caching(report, options)
    memory(report, options)
    hotpath(report)
    if options.profile:
        profile(report, options)
    report.section("targets")
    for verdict in report.verdicts:
        report.note(verdict)
    report.note(f"suite took {time.monotonic() - began:.0f} s")
    return 0


def parse_options(argv: Sequence[str] | None = None) -> SuiteOptions:
    """The suite's options from its command line."""
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument(
        "--runs", type=int, default=DEFAULT_RUNS, help="runs per figure (median and spread)"
    )
    parser.add_argument(
        "--saturation-runs",
        type=int,
        default=DEFAULT_SATURATION_RUNS,
        help="run pairs for the cached-key saturation ratio, the figure closest to its target",
    )
    parser.add_argument(
        "--duration", type=float, default=DEFAULT_DURATION, help="seconds per h2load run"
    )
    parser.add_argument("--distinct-unknown", type=int, default=DEFAULT_DISTINCT_UNKNOWN)
    parser.add_argument("--memory-keys", type=int, default=DEFAULT_MEMORY_KEYS)
    parser.add_argument(
        "--attack-calls",
        type=int,
        default=DEFAULT_ATTACK_CALLS,
        help="legitimate checks measured during each attack",
    )
    parser.add_argument(
        "--idle-window",
        type=float,
        default=DEFAULT_IDLE_WINDOW,
        help="seconds of server CPU measured per idle-watchers run",
    )
    parser.add_argument(
        "--idle-holders",
        type=int,
        default=DEFAULT_IDLE_HOLDERS,
        help="processes the 100 idle caching clients are spread over (100: one each)",
    )
    parser.add_argument(
        "--revocation-trials",
        type=int,
        default=DEFAULT_REVOCATION_TRIALS,
        help="changes timed to a caching client on another replica (PostgreSQL)",
    )
    parser.add_argument("--skip-profile", action="store_true")
    parser.add_argument(
        "--only-metrics",
        action="store_true",
        help="run the metrics on/off section alone",
    )
    parser.add_argument(
        "--only-caching",
        action="store_true",
        help="run the caching-client sections alone (with --only-metrics: both)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: "
        + ", ".join(f"--{name.replace('_', '-')} {value:g}" for name, value in QUICK_SIZES.items())
        + " unless given; its figures are not measurements",
    )
    args = parser.parse_args(argv)
    if args.quick:
        # Options given on the command line still win over the quick sizes.
        parser.set_defaults(**QUICK_SIZES)
        args = parser.parse_args(argv)
    return SuiteOptions(
        runs=args.runs,
        saturation_runs=args.saturation_runs,
        duration=args.duration,
        distinct_unknown=args.distinct_unknown,
        memory_keys=args.memory_keys,
        attack_calls=args.attack_calls,
        idle_window=args.idle_window,
        idle_holders=args.idle_holders,
        revocation_trials=args.revocation_trials,
        profile=not args.skip_profile,
        only_metrics=args.only_metrics,
        only_caching=args.only_caching,
    )
