"""Prometheus metrics: ``--metrics-listen`` serves them at ``/metrics``.

The ``Check`` path only adds to plain integers (``CheckCounts``,
``MethodStats``); ``ServiceMetrics`` is a custom collector that turns them,
and what the cache and change follower already know, into metric families
when they are read. A single server serves them from its own event loop.

With ``--workers`` the numbers of every worker are served at one address by
a process of its own (``MetricsProcess``), forked by the supervisor before
the workers (so no process that forks has a thread). Each worker writes its
numbers every ``EXPORT_INTERVAL_S`` into files of its own in a directory the
supervisor made (prometheus-client's multiprocess format, which
``MultiProcessCollector`` reads and sums); the supervisor removes an exited
worker's gauges and, at the end, the directory.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sized
from pathlib import Path
from typing import Any, Final, Protocol

import grpc
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from server.domain.authorize import Checks
from server.domain.decisions import Decision, Reason
from server.settings import SettingsError, split_address
from server.workers import fork

log = logging.getLogger(__name__)

EXPORT_INTERVAL_S = 0.5
HANDLING_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_CODES: Final = {status.value[0]: status.name for status in grpc.StatusCode}
_REQUEST_LIMIT_BYTES = 8192
_REQUEST_TIMEOUT_S = 5.0
# A worker's metrics file can be caught between being created and sized, or
# between being listed and removed: rendering is tried again a moment later.
_RENDER_ATTEMPTS = 3
_RENDER_RETRY_S = 0.01
# How the workers' gauges combine: summed over the live workers, or the
# largest of them.
_GAUGE_MODES: Final = {
    "apikeys_cache_entries": "livesum",
    "apikeys_watchers": "livesum",
    "apikeys_change_feed_lag_seconds": "livemax",
}


class CheckCounts:
    """Checks decided, by ``Reason``."""

    def __init__(self) -> None:
        self.by_reason = dict.fromkeys(Reason, 0)


class CountedChecks:
    """``Checks`` that count every decision in ``counts``."""

    def __init__(self, checks: Checks, counts: CheckCounts) -> None:
        self._check = checks.check
        self._by_reason = counts.by_reason

    async def check(
        self,
        key: str,
        method: str,
        path: str,
        *,
        client_ip: str = "",
        time_left: float | None = None,
    ) -> Decision:
        """Decides a check with the wrapped ``Checks`` and counts it."""
        decision = await self._check(key, method, path, client_ip=client_ip, time_left=time_left)
        self._by_reason[decision.reason] += 1
        return decision


class MethodStats:
    """One RPC method's calls: how many ended with each status code, and
    how long they took (a histogram over ``HANDLING_BUCKETS``)."""

    __slots__ = ("buckets", "handled", "method", "seconds", "service")

    def __init__(self, service: str, method: str) -> None:
        self.service, self.method = service, method
        self.handled = [0] * len(_CODES)
        self.buckets = [0] * (len(HANDLING_BUCKETS) + 1)
        self.seconds = 0.0

    def record(self, code: int, seconds: float) -> None:
        """Counts a call that ended with ``code`` after ``seconds``."""
        self.handled[code] += 1
        self.buckets[bisect.bisect_left(HANDLING_BUCKETS, seconds)] += 1
        self.seconds += seconds


class CallTimer:
    """Wraps each served method's behaviour so that its calls are recorded
    in a ``MethodStats`` of their own."""

    def __init__(self) -> None:
        self.methods: list[MethodStats] = []

    def timed(
        self, service: str, method: str, behavior: Callable[[Any, Any], Awaitable[Any]]
    ) -> Callable[[Any, Any], Awaitable[Any]]:
        """``behavior`` (a grpc.aio method behaviour) recording its calls."""
        stats = MethodStats(service, method)
        self.methods.append(stats)
        record = stats.record
        clock = time.perf_counter

        async def timed(requests: Any, context: Any) -> Any:
            started = clock()
            code = 0
            try:
                return await behavior(requests, context)
            except grpc.aio.AbortError:
                code = _code_number(context.code())
                raise
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED.value[0]
                raise
            except BaseException:
                code = grpc.StatusCode.UNKNOWN.value[0]
                raise
            finally:
                record(code, clock() - started)

        return timed


def _code_number(code: object) -> int:
    if isinstance(code, grpc.StatusCode):
        return int(code.value[0])
    if isinstance(code, int) and code in _CODES:
        return code
    return int(grpc.StatusCode.UNKNOWN.value[0])


class CacheCounts(Protocol):
    """What the metrics read of the key cache."""

    hits: int
    misses: int

    def __len__(self) -> int: ...


class FeedPosition(Protocol):
    """What the metrics read of the change follower."""

    def lag(self) -> float:
        """Seconds since the change feed was last read in full."""
        ...


class ServiceMetrics:
    """The process's metrics, as a prometheus-client collector."""

    def __init__(
        self, *, cache: CacheCounts, follower: FeedPosition, watchers: Sized | None = None
    ) -> None:
        """``watchers`` ``None``: watching is off (the gauge stays 0)."""
        self.checks = CheckCounts()
        self.calls = CallTimer()
        self._cache = cache
        self._follower = follower
        self._watchers = watchers

    def collect(self) -> Iterator[Metric]:
        """The metric families as they stand now."""
        checks = CounterMetricFamily(
            "apikeys_checks",
            "Checks decided (Check, CheckBatch items, Envoy checks), by reason",
            labels=["reason"],
        )
        for reason, count in self.checks.by_reason.items():
            checks.add_metric([reason.value], count)
        yield checks
        handled = CounterMetricFamily(
            "grpc_server_handled",
            "RPCs completed on the server, by method and status code",
            labels=["grpc_service", "grpc_method", "grpc_code"],
        )
        seconds = HistogramMetricFamily(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its answer",
            labels=["grpc_service", "grpc_method"],
        )
        for method in self.calls.methods:
            for code, count in enumerate(method.handled):
                if count:
                    handled.add_metric([method.service, method.method, _CODES[code]], count)
            if any(method.buckets):
                cumulative, buckets = 0, []
                for bound, count in zip(
                    (*HANDLING_BUCKETS, float("inf")), method.buckets, strict=True
                ):
                    cumulative += count
                    buckets.append((_bound(bound), cumulative))
                seconds.add_metric([method.service, method.method], buckets, method.seconds)
        yield handled
        yield seconds
        yield CounterMetricFamily(
            "apikeys_cache_hits", "Key lookups answered from memory", value=self._cache.hits
        )
        yield CounterMetricFamily(
            "apikeys_cache_misses", "Key lookups sent to the store", value=self._cache.misses
        )
        yield GaugeMetricFamily(
            "apikeys_cache_entries", "Keys held in the cache", value=len(self._cache)
        )
        yield GaugeMetricFamily(
            "apikeys_change_feed_lag_seconds",
            "Seconds since the change feed was last read in full",
            value=self._follower.lag(),
        )
        yield GaugeMetricFamily(
            "apikeys_watchers",
            "Open WatchChanges streams",
            value=0 if self._watchers is None else len(self._watchers),
        )

    def registry(self) -> CollectorRegistry:
        """A registry holding these metrics alone."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        return registry


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class MultiprocessExport:
    """Writes one worker's metrics into ``directory`` for the metrics
    process to read (prometheus-client's multiprocess files)."""

    def __init__(self, metrics: ServiceMetrics, directory: Path) -> None:
        self._metrics = metrics
        self._directory = directory
        self._files: dict[str, MmapedDict] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Writes every ``EXPORT_INTERVAL_S`` until stopped."""
        self._task = asyncio.create_task(self._export_forever(), name="metrics-export")

    async def stop(self) -> None:
        """Writes a last time and closes the files."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.write()
        for file in self._files.values():
            file.close()
        self._files.clear()

    async def _export_forever(self) -> None:
        while True:
            await asyncio.sleep(EXPORT_INTERVAL_S)
            try:
                self.write()
            except OSError:
                log.exception("cannot write metrics for the metrics process")

    def write(self) -> None:
        """Writes the metrics as they stand now."""
        for family in self._metrics.collect():
            kind = family.type
            if kind == "gauge":
                kind = f"gauge_{_GAUGE_MODES[family.name]}"
            file = self._file(kind)
            for sample in _file_samples(family):
                key = mmap_key(
                    family.name,
                    sample.name,
                    list(sample.labels),
                    list(sample.labels.values()),
                    family.documentation,
                )
                file.write_value(key, sample.value, 0)

    def _file(self, kind: str) -> MmapedDict:
        file = self._files.get(kind)
        if file is None:
            file = MmapedDict(str(self._directory / f"{kind}_{os.getpid()}.db"))
            self._files[kind] = file
        return file


def _file_samples(family: Metric) -> Iterable[Any]:
    """The samples as the multiprocess files hold them: histogram buckets
    each on its own (not cumulative), and no ``_count`` (derived from them)."""
    if family.type != "histogram":
        return family.samples
    samples: list[Any] = []
    previous: dict[tuple[tuple[str, str], ...], float] = {}
    for sample in family.samples:
        if sample.name.endswith("_count"):
            continue
        if sample.name.endswith("_bucket"):
            series = tuple((k, v) for k, v in sample.labels.items() if k != "le")
            cumulative = sample.value
            sample = sample._replace(value=cumulative - previous.get(series, 0))
            previous[series] = cumulative
        samples.append(sample)
    return samples


async def serve_metrics(
    render: Callable[[], bytes], *, sock: Any = None, host: str = "", port: int = 0
) -> asyncio.Server:
    """An HTTP/1.1 server on the running loop answering ``GET /metrics`` with
    ``render()``; on ``sock`` if given, else bound to ``host``:``port``."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.close()
            return
        method, _, rest = head.partition(b" ")
        target = rest.partition(b" ")[0].partition(b"?")[0]
        if method not in (b"GET", b"HEAD"):
            status, body = b"405 Method Not Allowed", b""
        elif target != b"/metrics":
            status, body = b"404 Not Found", b""
        elif (rendered := await _rendered(render)) is None:
            status, body = b"500 Internal Server Error", b""
        else:
            status, body = b"200 OK", rendered
        writer.write(
            b"HTTP/1.1 " + status + b"\r\n"
            b"Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n"
            b"Connection: close\r\n\r\n" + (body if method == b"GET" else b"")
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    if sock is not None:
        return await asyncio.start_server(answer, sock=sock, limit=_REQUEST_LIMIT_BYTES)
    return await asyncio.start_server(answer, host, port, limit=_REQUEST_LIMIT_BYTES)


async def _rendered(render: Callable[[], bytes]) -> bytes | None:
    """``render()``, tried up to ``_RENDER_ATTEMPTS`` times; ``None`` (logged)
    if every attempt failed."""
    for attempt in range(1, _RENDER_ATTEMPTS + 1):
        try:
            return render()
        except Exception:
            if attempt == _RENDER_ATTEMPTS:
                log.exception("cannot render the metrics", extra={"attempts": attempt})
                return None
        await asyncio.sleep(_RENDER_RETRY_S)
    return None


def render_registry(registry: CollectorRegistry) -> Callable[[], bytes]:
    """What ``serve_metrics`` answers for ``registry``."""
    return lambda: generate_latest(registry)


def workers_registry(directory: Path) -> CollectorRegistry:
    """A registry summing what every worker wrote into ``directory``."""
    registry = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(registry, path=str(directory))
    return registry


class MetricsProcess:
    """The process that serves the metrics of all ``--workers``, and the
    directory the workers write them into. Made by the supervisor before it
    forks any worker."""

    def __init__(self, address: str) -> None:
        """Binds ``address`` (``SettingsError`` if it cannot) and makes the
        directory; ``start`` forks the process."""
        host, port = split_address(address)
        try:
            self._socket = socket.create_server(
                (host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET
            )
        except OSError as exc:
            raise SettingsError("--metrics-listen", f"cannot bind {address}") from exc
        self.directory = Path(tempfile.mkdtemp(prefix="apikeys-metrics-"))
        self._pid: int | None = None

    def start(self) -> None:
        """Forks the process serving the directory's metrics."""
        self._pid = fork(self._serve)

    def _serve(self) -> int:
        async def serve_until_stopped() -> None:
            stopping = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stopping.set)
            registry = workers_registry(self.directory)
            server = await serve_metrics(render_registry(registry), sock=self._socket)
            await stopping.wait()
            server.close()

        asyncio.run(serve_until_stopped())
        return 0

    def leave_to_the_metrics_process(self) -> None:
        """Closes this (worker) process's copy of the metrics socket."""
        self._socket.close()

    def worker_exited(self, pid: int) -> None:
        """Drops an exited worker's gauges; its counters still count."""
        mark_process_dead(pid, str(self.directory))

    def close(self) -> None:
        """Stops the process and removes the directory."""
        self._socket.close()
        if self._pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGTERM)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._pid, 0)
        shutil.rmtree(self.directory, ignore_errors=True)
