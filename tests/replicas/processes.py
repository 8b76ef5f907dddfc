"""Server processes for the replica tests: ``python -m server`` subprocesses
sharing one database, one set of secrets and one admin key pair, as replicas
of one cluster do in production."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.devtoken import DEV_SIGNING_KEY_FILE, mint_dev_token
from server.admin_tokens import ensure_dev_key_pair
from tests.harness import SHARED_SECRETS, Stubs
from voiso.apikeys.v1 import authorize_pb2 as az
from voiso.apikeys.v1 import key_admin_pb2 as pb

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
SERVING_PID = re.compile(r"server\.app: serving .*\bpid=(\d+)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class AdminKeys:
    """The identity service's key pair, shared by every replica."""

    public_keys: Path
    signing_key: Path

    @classmethod
    def make(cls, directory: Path) -> AdminKeys:
        public = ensure_dev_key_pair(directory)
        return cls(public_keys=public, signing_key=directory / DEV_SIGNING_KEY_FILE)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        token = mint_dev_token(
            self.signing_key, subject="admin-1", contact_center_id="cc-1", role="admin"
        )
        return (("authorization", f"Bearer {token}"),)


@dataclass
class ServerProcess(Stubs):
    """One running ``apikeys-server`` and a channel to it."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path
    channel: grpc.aio.Channel

    async def check(self, key: str) -> az.CheckResponse:
        return await self.authorize.Check(
            az.CheckRequest(key=key, method="GET", path="/api/v4/users"), timeout=15
        )

    def serving_pids(self) -> list[int]:
        """Pids from the "serving" log lines, in order."""
        return [int(m.group(1)) for m in SERVING_PID.finditer(self.log.read_text())]


async def wait_serving(target: str) -> None:
    """Until the gRPC health check at ``target`` says SERVING."""
    deadline = time.monotonic() + START_TIMEOUT_S
    async with grpc.aio.insecure_channel(target) as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{target} not serving after {START_TIMEOUT_S:g} s")
            await asyncio.sleep(0.05)


@asynccontextmanager
async def server_process(
    data_dir: Path,
    *,
    database_url: str,
    admin_keys: AdminKeys,
    args: Sequence[str] = (),
    port: int | None = None,
) -> AsyncIterator[ServerProcess]:
    """Starts ``python -m server`` on a free port, waits until it is SERVING,
    and stops it with SIGTERM afterwards."""
    port = free_port() if port is None else port
    log = data_dir / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIKEYS_")}
    command = [
        sys.executable,
        "-m",
        "server",
        "--listen",
        f"127.0.0.1:{port}",
        "--data-dir",
        str(data_dir),
        "--database-url",
        database_url,
        "--admin-public-keys",
        str(admin_keys.public_keys),
        "--log-format",
        "text",
        *SHARED_SECRETS,
        *args,
    ]
    process = await asyncio.to_thread(_spawn, command, env, log)
    try:
        try:
            await wait_serving(f"127.0.0.1:{port}")
        except TimeoutError:
            raise AssertionError(f"server did not start:\n{log.read_text()}") from None
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield ServerProcess(process=process, port=port, log=log, channel=channel)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)


def _spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as log_file:
        return subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)


async def new_key(server: ServerProcess, admin_keys: AdminKeys) -> tuple[str, str]:
    """(id, secret) of a new key allowed ``GET /api/v4/users``."""
    created = await server.admin.CreateKey(
        pb.CreateKeyRequest(name="replica test", scopes=["users.read"]),
        metadata=admin_keys.metadata(),
        timeout=15,
    )
    return created.key.id, created.secret


async def delete_key(server: ServerProcess, admin_keys: AdminKeys, key_id: str) -> None:
    await server.admin.DeleteKey(
        pb.DeleteKeyRequest(id=key_id), metadata=admin_keys.metadata(), timeout=15
    )


async def seconds_until_denied(
    server: ServerProcess, key: str, since: float, *, give_up: float = 10.0
) -> float:
    """Checks ``key`` in a tight loop until ``server`` denies it; the time
    from ``since`` (a ``time.perf_counter``) to that answer."""
    while True:
        response = await server.check(key)
        elapsed = time.perf_counter() - since
        if not response.allowed:
            assert response.reason == az.REASON_KEY_NOT_FOUND
            return elapsed
        assert elapsed < give_up, f"still allowed {elapsed:.1f} s after the delete"


async def revocation_latencies(
    deleting: ServerProcess,
    checking: ServerProcess,
    admin_keys: AdminKeys,
    repetitions: int,
    *,
    before_delete: Any = None,
    from_return: bool = False,
) -> list[float]:
    """For each repetition: a key created through ``deleting`` is allowed
    (and so cached) by ``checking``, deleted through ``deleting``, and
    checked on ``checking`` until denied. The seconds from sending the delete
    (from its return, once committed, with ``from_return``) to the deny."""
    latencies = []
    for _ in range(repetitions):
        key_id, secret = await new_key(deleting, admin_keys)
        assert (await checking.check(secret)).allowed
        assert (await checking.check(secret)).allowed
        if before_delete is not None:
            await before_delete()
        since = time.perf_counter()
        await delete_key(deleting, admin_keys, key_id)
        if from_return:
            since = time.perf_counter()
        latencies.append(await seconds_until_denied(checking, secret, since))
    return latencies


def summary(latencies: Sequence[float], changes: str = "deletes") -> str:
    return (
        f"revocation over {len(latencies)} {changes}: "
        f"p50 {statistics.median(latencies) * 1000:.1f} ms, "
        f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms"
    )


def percentile(latencies: Sequence[float], fraction: float) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def established_connections(pids: Sequence[int], port: int) -> Counter[int]:
    """How many established TCP connections to ``port`` each of ``pids``
    holds open, read from /proc: who accepted which connection."""
    owners = {inode: pid for pid in pids for inode in _socket_inodes(pid)}
    counts: Counter[int] = Counter()
    for local_port, state, inode in _tcp_sockets():
        if state == "01" and local_port == port and inode in owners:
            counts[owners[inode]] += 1
    return counts


def local_ports(pid: int) -> set[int]:
    """The local ports of the TCP connections process ``pid`` holds open:
    on the other end, the client port a server reports for it."""
    inodes = _socket_inodes(pid)
    return {local_port for local_port, _, inode in _tcp_sockets() if inode in inodes}


def _socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets process ``pid`` holds open."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(fd_dir / fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def _tcp_sockets() -> Iterator[tuple[int, str, str]]:
    """``(local port, state, inode)`` of every TCP socket on the machine."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            yield int(fields[1].rsplit(":", 1)[1], 16), fields[3], fields[9]
