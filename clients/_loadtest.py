"""``apikeys loadtest``: many concurrent ``Check`` calls, counted by what the server answered.

A run sends a mix of key kinds (valid, revoked, unknown, malformed, and keys
given on the command line) across a set of routes from ``concurrency``
coroutines sharing one or more channels, for a duration or a request count.
Every answer is counted: decisions by reason (also per key kind, so a run shows
whether each kind was decided as it should be), failed calls by gRPC code, and
the latency of each answered call in an HdrHistogram. Calls go out on raw
``grpc.aio`` stubs without client retries, so each request is exactly one call.
With ``cache`` each connection is an :class:`~clients.AsyncCachingAuthorizeClient`
(still without retries) that its workers share, and the result also counts
the answers that came from its memory.

This module is the library side (plan, run, result, table); the command line
that builds a plan from its options is ``clients._loadtest_cli``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple, TextIO

import grpc
from hdrh.histogram import HdrHistogram

from clients._caching import AsyncCachingAuthorizeClient
from clients._channel import ChannelOptions, create_aio_channel
from clients._exceptions import ApiKeysError
from clients._key_admin import AsyncKeyAdminClient
from clients._keys import KEY_LENGTH, KEY_PREFIX
from voiso.apikeys.v1 import authorize_pb2, authorize_pb2_grpc

__all__ = [
    "DEFAULT_CALL_TIMEOUT",
    "DEFAULT_DURATION",
    "DEFAULT_MIX",
    "DEFAULT_ROUTES",
    "KINDS",
    "MALFORMED_KEYS",
    "LoadPlan",
    "LoadResult",
    "PlanError",
    "PreparedKeys",
    "Route",
    "ScheduledCheck",
    "delete_keys",
    "format_table",
    "prepare_keys",
    "run_load",
]


class Route(NamedTuple):
    """An HTTP method and path of the v4 API that a run checks keys against."""

    method: str
    path: str


KINDS: Final = ("valid", "revoked", "unknown", "malformed", "given")
DEFAULT_MIX: Final = {"valid": 7, "revoked": 1, "unknown": 1, "malformed": 1, "given": 7}
DEFAULT_ROUTES: Final = (
    Route("GET", "/api/v4/campaigns"),
    Route("GET", "/api/v4/reporting/cdrs"),
    Route("GET", "/api/v4/users"),
)
# The scopes of the keys a run creates: they cover every default route.
LOADTEST_SCOPES: Final = ("campaigns.read", "reporting.cdrs.read", "users.read")
PERCENTILES: Final = (50.0, 90.0, 99.0, 99.9)
DEFAULT_CALL_TIMEOUT: Final = 1.0
DEFAULT_DURATION: Final = 10.0

MALFORMED_KEYS: Final = (
    "",
    "vsk_short",
    "not-a-key",
    # Right length and alphabet, wrong checksum: the look-alike a scanner rejects.
    KEY_PREFIX + "A" * (KEY_LENGTH - len(KEY_PREFIX)),
)
# Latencies are recorded in microseconds, up to a minute, to 3 significant digits.
_HISTOGRAM_MAX_US = 60_000_000
_PROGRESS_INTERVAL = 0.2
# How long a cached run waits for its streams to speak before it starts sending.
_FRESH_WAIT = 2.0
_PROGRESS_WIDTH = 30


class PlanError(ValueError):
    """The command line asks for a run that cannot be made."""


class ScheduledCheck(NamedTuple):
    """One ``Check`` of a run's schedule and the kind of key it sends."""

    kind: str
    request: authorize_pb2.CheckRequest


@dataclass(frozen=True, kw_only=True, slots=True)
class PreparedKeys:
    """The keys ``prepare_keys`` created for a run.

    ``valid_ids`` are the ids of the ``valid`` keys, which ``delete_keys``
    removes afterwards; the ``revoked`` ones are deleted already.
    """

    valid: tuple[str, ...] = ()
    revoked: tuple[str, ...] = ()
    valid_ids: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class LoadPlan:
    """What to send: keys by kind, how often each kind is picked, and the routes."""

    keys: dict[str, tuple[str, ...]]
    mix: dict[str, int]
    routes: tuple[Route, ...] = DEFAULT_ROUTES
    concurrency: int = 50
    connections: int = 1
    duration: float | None = DEFAULT_DURATION
    requests: int | None = None
    timeout: float = DEFAULT_CALL_TIMEOUT
    cache: bool = False

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.connections < 1:
            raise PlanError("concurrency and connections must be at least 1")
        if (self.duration is None) == (self.requests is None):
            raise PlanError("give either a duration or a request count")
        if not self.routes:
            raise PlanError("give at least one route")
        if not any(self.mix.get(kind, 0) > 0 and self.keys.get(kind) for kind in KINDS):
            raise PlanError("the mix selects no keys: give --key, or --token to create keys")

    def schedule(self) -> list[ScheduledCheck]:
        """One cycle of checks, each kind repeated by its weight, kinds
        interleaved, so any prefix of the cycle keeps roughly the mix."""
        per_kind = {
            kind: itertools.cycle(
                [
                    authorize_pb2.CheckRequest(key=key, method=method, path=path)
                    for key in self.keys[kind]
                    for method, path in self.routes
                ]
            )
            for kind in KINDS
            if self.mix.get(kind, 0) > 0 and self.keys.get(kind)
        }
        longest = max(len(self.keys[kind]) * len(self.routes) for kind in per_kind)
        cycle: list[ScheduledCheck] = []
        # Enough rounds that every distinct key and route of every kind is sent once per cycle.
        for _ in range(max(1, longest)):
            for weight_round in range(max(self.mix[kind] for kind in per_kind)):
                for kind, requests in per_kind.items():
                    if weight_round < self.mix[kind]:
                        cycle.append(ScheduledCheck(kind, next(requests)))
        return cycle


@dataclass(kw_only=True, slots=True)
class LoadResult:
    """What the server answered during one run."""

    sent: Counter[str] = field(default_factory=Counter)
    decisions: Counter[str] = field(default_factory=Counter)
    by_kind: dict[str, Counter[str]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    latency: HdrHistogram = field(default_factory=lambda: HdrHistogram(1, _HISTOGRAM_MAX_US, 3))
    elapsed: float = 0.0
    from_memory: int | None = None
    """Answers the caching clients gave from memory; ``None`` when the run did not cache."""

    @property
    def answered(self) -> int:
        """Calls that ended with a decision or a gRPC error."""
        return sum(self.decisions.values()) + sum(self.errors.values())

    @property
    def throughput(self) -> float:
        """Answered calls per second."""
        return self.answered / self.elapsed if self.elapsed > 0 else 0.0

    def percentile_ms(self, percentile: float) -> float:
        """Latency of answered decisions at ``percentile``, in milliseconds."""
        return float(self.latency.get_value_at_percentile(percentile)) / 1000.0

    def as_dict(self) -> dict[str, Any]:
        """The JSON form of ``--json``."""
        cached = {} if self.from_memory is None else {"from_memory": self.from_memory}
        return {
            "elapsed_seconds": round(self.elapsed, 3),
            "sent": sum(self.sent.values()),
            "answered": self.answered,
            "throughput_per_second": round(self.throughput, 1),
            **cached,
            "latency_ms": {
                f"p{percentile:g}": self.percentile_ms(percentile) for percentile in PERCENTILES
            }
            | {"max": float(self.latency.get_max_value()) / 1000.0},
            "decisions": dict(sorted(self.decisions.items())),
            "errors": dict(sorted(self.errors.items())),
            "sent_by_kind": dict(sorted(self.sent.items())),
            "decisions_by_kind": {
                kind: dict(sorted(reasons.items()))
                for kind, reasons in sorted(self.by_kind.items())
            },
        }


async def prepare_keys(
    options: ChannelOptions, token: str, *, valid: int, revoked: int
) -> PreparedKeys:
    """Creates ``valid`` keys and ``revoked`` keys (created, then deleted)."""
    valid_keys: list[str] = []
    revoked_keys: list[str] = []
    ids: list[str] = []
    admin = AsyncKeyAdminClient(options, token=token)
    try:
        for index in range(valid + revoked):
            key, secret = await admin.create_key(
                f"loadtest-{index}", "created by apikeys loadtest", LOADTEST_SCOPES
            )
            if index < valid:
                valid_keys.append(secret)
                ids.append(key.id)
            else:
                await admin.delete_key(key.id)
                revoked_keys.append(secret)
    except BaseException:
        await _delete(admin, ids)
        raise
    finally:
        await admin.close()
    return PreparedKeys(valid=tuple(valid_keys), revoked=tuple(revoked_keys), valid_ids=tuple(ids))


async def delete_keys(options: ChannelOptions, token: str, ids: Sequence[str]) -> None:
    """Deletes the keys ``prepare_keys`` created."""
    admin = AsyncKeyAdminClient(options, token=token)
    try:
        await _delete(admin, ids)
    finally:
        await admin.close()


async def _delete(admin: AsyncKeyAdminClient, ids: Sequence[str]) -> None:
    for key_id in ids:
        await admin.delete_key(key_id)


async def run_load(
    plan: LoadPlan, options: ChannelOptions, *, progress: TextIO | None = None
) -> LoadResult:
    """Sends the plan's checks and counts the answers; ``progress`` (a TTY)
    gets a progress bar."""
    schedule = plan.schedule()
    result = LoadResult()
    by_kind = result.by_kind
    reason_names = {
        value: authorize_pb2.Reason.Name(value) for value in authorize_pb2.Reason.values()
    }
    channels: list[grpc.aio.Channel] = []
    cached: list[AsyncCachingAuthorizeClient] = []
    if plan.cache:
        # Without retries, as the raw stubs: a miss is exactly one call.
        single_attempt = dataclasses.replace(options, max_attempts=1)
        cached = [AsyncCachingAuthorizeClient(single_attempt) for _ in range(plan.connections)]
        # Until its stream has spoken a client keeps nothing; a run that
        # started sooner would measure the server instead.
        await asyncio.gather(*(client.wait_fresh(_FRESH_WAIT) for client in cached))
    else:
        channels = [
            create_aio_channel(options, own_connection=True) for _ in range(plan.connections)
        ]
    stubs = [authorize_pb2_grpc.AuthorizeStub(channel) for channel in channels]
    remaining = plan.requests
    started = time.perf_counter()
    deadline = None if plan.duration is None else started + plan.duration
    position = itertools.count()
    length = len(schedule)
    timeout = plan.timeout
    record = result.latency.record_value
    perf_counter = time.perf_counter

    def take() -> int | None:
        nonlocal remaining
        if remaining is not None:
            if remaining <= 0:
                return None
            remaining -= 1
        elif deadline is not None and perf_counter() >= deadline:
            return None
        return next(position)

    def count(kind: str, reason: str) -> None:
        result.decisions[reason] += 1
        reasons = by_kind.get(kind)
        if reasons is None:
            reasons = by_kind[kind] = Counter()
        reasons[reason] += 1

    async def worker(stub: authorize_pb2_grpc.AuthorizeStub) -> None:
        check: Any = stub.Check
        while (index := take()) is not None:
            scheduled = schedule[index % length]
            kind = scheduled.kind
            result.sent[kind] += 1
            begin = perf_counter()
            try:
                response = await check(scheduled.request, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                result.errors[exc.code().name] += 1
                continue
            record(max(1, int((perf_counter() - begin) * 1_000_000)))
            count(kind, reason_names.get(response.reason, str(response.reason)))

    async def cached_worker(client: AsyncCachingAuthorizeClient) -> None:
        while (index := take()) is not None:
            scheduled = schedule[index % length]
            kind = scheduled.kind
            request = scheduled.request
            result.sent[kind] += 1
            begin = perf_counter()
            try:
                decision = await client.check(
                    request.key, request.method, request.path, timeout=timeout
                )
            except ApiKeysError as exc:
                result.errors[exc.code.name] += 1
                continue
            record(max(1, int((perf_counter() - begin) * 1_000_000)))
            count(kind, decision.reason.value)
            # A hit suspends only every few milliseconds; a turn per check
            # keeps the workers' shares of the loop even.
            await asyncio.sleep(0)

    reporter = None
    if progress is not None:
        reporter = asyncio.create_task(_report_progress(plan, result, started, progress))
    try:
        if cached:
            await asyncio.gather(
                *(cached_worker(cached[index % len(cached)]) for index in range(plan.concurrency))
            )
        else:
            await asyncio.gather(
                *(worker(stubs[index % len(stubs)]) for index in range(plan.concurrency))
            )
    finally:
        result.elapsed = perf_counter() - started
        if reporter is not None:
            reporter.cancel()
            progress_end = "\r" + " " * (_PROGRESS_WIDTH + 50) + "\r"
            assert progress is not None
            progress.write(progress_end)
            progress.flush()
        for channel in channels:
            await channel.close()
        if cached:
            result.from_memory = sum(client.hits for client in cached)
        for client in cached:
            await client.close()
    return result


async def _report_progress(plan: LoadPlan, result: LoadResult, started: float, out: TextIO) -> None:
    while True:
        await asyncio.sleep(_PROGRESS_INTERVAL)
        elapsed = time.perf_counter() - started
        answered = result.answered
        if plan.requests is not None:
            done = answered / plan.requests
        else:
            done = elapsed / plan.duration if plan.duration else 1.0
        done = min(1.0, done)
        filled = int(done * _PROGRESS_WIDTH)
        bar = "#" * filled + "." * (_PROGRESS_WIDTH - filled)
        rate = answered / elapsed if elapsed > 0 else 0.0
        out.write(f"\r[{bar}] {done:4.0%} {answered} answered, {rate:,.0f}/s")
        out.flush()


def format_table(result: LoadResult) -> str:
    """The final report: throughput, latency percentiles, decisions and errors."""
    lines = [
        f"{'answered':<24}{result.answered:>12} in {result.elapsed:.2f} s "
        f"({sum(result.sent.values())} sent)",
        f"{'throughput':<24}{result.throughput:>12,.1f} /s",
    ]
    if result.from_memory is not None:
        lines.append(f"{'from memory':<24}{result.from_memory:>12}")
    lines += [
        "",
        "latency (ms)",
    ]
    for percentile in PERCENTILES:
        lines.append(f"  {f'p{percentile:g}':<22}{result.percentile_ms(percentile):>12.3f}")
    lines.append(f"  {'max':<22}{result.latency.get_max_value() / 1000.0:>12.3f}")
    lines += ["", "decisions by reason"]
    lines += [f"  {reason:<22}{count:>12}" for reason, count in sorted(result.decisions.items())]
    if not result.decisions:
        lines.append("  none")
    lines += ["", "errors by gRPC code"]
    lines += [f"  {code:<22}{count:>12}" for code, count in sorted(result.errors.items())]
    if not result.errors:
        lines.append("  none")
    lines += ["", "by key kind (sent: answered reasons)"]
    for kind, sent in sorted(result.sent.items()):
        reasons = ", ".join(
            f"{reason} {count}" for reason, count in sorted(result.by_kind.get(kind, {}).items())
        )
        lines.append(f"  {kind:<10}{sent:>10} sent: {reasons or 'no decisions'}")
    return "\n".join(lines)
