"""h2load as a gRPC load generator, and its per-request log as percentiles.

A gRPC unary call is an HTTP/2 POST whose body is a 5-byte prefix (a zero
compression flag and the big-endian message length) followed by the message,
with ``content-type: application/grpc`` and ``te: trailers``. h2load sends the
same body on every request and counts any HTTP 200 as a success, even when the
gRPC status in the trailers is an error, so the suite checks the same bytes
through a real gRPC channel before trusting a run (``verify_body``).
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf.message import Message
from hdrh.histogram import HdrHistogram

GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")
# Latency in microseconds, up to a minute, to 3 significant digits.
_HISTOGRAM_MAX_US = 60_000_000
_FINISHED = re.compile(r"finished in [\d.]+s, ([\d.]+) req/s")
_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout"
)


def grpc_body(message: Message) -> bytes:
    """The length-prefixed gRPC frame h2load sends as the request body."""
    payload = message.SerializeToString()
    return b"\0" + struct.pack(">I", len(payload)) + payload


def verify_body(target: str, method: str, body: bytes) -> bytes:
    """Sends ``body`` exactly as h2load will, through a real gRPC channel;
    returns the serialized response (raises ``grpc.RpcError`` on a non-OK status)."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(method)
        response: bytes = call(body[5:], timeout=5)
        return response


def cpu_pinning(cpu: int) -> list[str]:
    """The ``taskset`` prefix that pins a process to ``cpu``, if taskset exists."""
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") else []


@dataclass(frozen=True, kw_only=True, slots=True)
class H2Result:
    """One h2load run."""

    rps: float
    succeeded: int
    failed: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float


def run(
    url: str,
    body: bytes | None,
    *,
    clients: int,
    streams: int,
    duration: float,
    warm_up: float = 1.0,
    rps_per_client: float | None = None,
    cpu: int | None = 1,
    headers: Sequence[str] = GRPC_HEADERS,
) -> H2Result:
    """Runs h2load against ``url`` for ``duration`` seconds after ``warm_up``:
    POSTs of ``body`` with ``headers`` (a gRPC call by default), or GETs
    when ``body`` is ``None``."""
    with tempfile.TemporaryDirectory(prefix="bench-h2-") as scratch:
        extra = ["--warm-up-time", f"{warm_up:g}"]
        if rps_per_client is not None:
            extra += ["--rps", f"{rps_per_client:.2f}"]
        command = _command(
            url,
            body,
            Path(scratch),
            clients=clients,
            streams=streams,
            duration=duration,
            cpu=cpu,
            extra=extra,
            headers=headers,
        )
        output = subprocess.run(
            command, capture_output=True, text=True, check=True, timeout=duration + warm_up + 30
        ).stdout
        return _parse(output, (Path(scratch) / "log").read_text())


def _command(
    url: str,
    body: bytes | None,
    scratch: Path,
    *,
    clients: int,
    streams: int,
    duration: float,
    cpu: int | None,
    extra: Sequence[str] = (),
    headers: Sequence[str] = GRPC_HEADERS,
) -> list[str]:
    """The h2load command line, with the body and the per-request log in
    ``scratch`` and ``extra`` options before ``url``."""
    sending: list[str] = []
    if body is not None:
        body_file = scratch / "body"
        body_file.write_bytes(body)
        sending = ["-d", str(body_file)]
    return [
        *(cpu_pinning(cpu) if cpu is not None else []),
        "h2load",
        "-c",
        str(clients),
        "-m",
        str(streams),
        "-D",
        f"{duration:g}",
        *sending,
        "--log-file",
        str(scratch / "log"),
        *(part for header in headers for part in ("-H", header)),
        *extra,
        url,
    ]


def _parse(output: str, log: str) -> H2Result:
    finished = _FINISHED.search(output)
    requests = _REQUESTS.search(output)
    if finished is None or requests is None:
        raise RuntimeError(f"unexpected h2load output:\n{output}")
    histogram = HdrHistogram(1, _HISTOGRAM_MAX_US, 3)
    for line in log.splitlines():
        fields = line.split("\t")
        if len(fields) == 3 and fields[1] == "200":
            histogram.record_value(max(1, int(fields[2])))
    return H2Result(
        rps=float(finished.group(1)),
        succeeded=int(requests.group(4)),
        failed=int(requests.group(5)) + int(requests.group(6)) + int(requests.group(7)),
        p50_ms=histogram.get_value_at_percentile(50) / 1000.0,
        p90_ms=histogram.get_value_at_percentile(90) / 1000.0,
        p99_ms=histogram.get_value_at_percentile(99) / 1000.0,
        p999_ms=histogram.get_value_at_percentile(99.9) / 1000.0,
    )


def start(
    url: str,
    body: bytes,
    *,
    clients: int,
    streams: int,
    duration: float,
    warm_up: int = 0,
    cpu: int | None = 1,
) -> tuple[subprocess.Popen[str], tempfile.TemporaryDirectory[str]]:
    """Starts a background h2load; ``finish`` collects it."""
    scratch = tempfile.TemporaryDirectory(prefix="bench-h2-")
    command = _command(
        url,
        body,
        Path(scratch.name),
        clients=clients,
        streams=streams,
        duration=duration,
        cpu=cpu,
        extra=["--warm-up-time", str(warm_up)] if warm_up else [],
    )
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    return process, scratch


def finish(
    started: tuple[subprocess.Popen[str], tempfile.TemporaryDirectory[str]], timeout: float
) -> H2Result:
    """Waits for a background h2load and parses its output."""
    process, scratch = started
    try:
        output, _ = process.communicate(timeout=timeout)
        return _parse(output, (Path(scratch.name) / "log").read_text())
    finally:
        scratch.cleanup()
