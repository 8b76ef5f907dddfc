"""``apikeys-server --workers 2``: two processes share the port, both
answer, a delete reaches both, and a killed worker is replaced."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from server.workers import PortReservation
from tests.replicas.processes import (
    AdminKeys,
    ServerProcess,
    delete_key,
    established_connections,
    free_port,
    new_key,
    server_process,
    wait_serving,
)
from voiso.apikeys.v1 import authorize_pb2 as az
from voiso.apikeys.v1 import authorize_pb2_grpc

FRESH_CHANNELS = 16
POLL_S = 0.25


async def _wait_for_workers(server: ServerProcess, count: int) -> list[int]:
    """The pids of the last ``count`` workers that logged "serving"."""
    deadline = time.monotonic() + 30
    while True:
        pids = [pid for pid in server.serving_pids() if _alive(pid)]
        if len(set(pids)) >= count:
            return sorted(set(pids))
        assert time.monotonic() < deadline, server.log.read_text()
        await asyncio.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _until_gone(pid: int) -> None:
    deadline = time.monotonic() + 10
    while _alive(pid):
        assert time.monotonic() < deadline, f"worker {pid} still running"
        time.sleep(0.01)


async def _check_over_fresh_channels(
    server: ServerProcess, key: str
) -> tuple[list[az.CheckResponse], list[int]]:
    """``key`` checked once over each of several new connections; the
    answers and, per worker pid, how many of those connections it accepted."""
    # A channel of its own subchannel pool opens its own TCP connection
    # instead of sharing the process-wide one.
    channels = [
        grpc.aio.insecure_channel(server.target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(FRESH_CHANNELS)
    ]
    try:
        answers = await asyncio.gather(
            *(
                authorize_pb2_grpc.AuthorizeStub(channel).Check(
                    az.CheckRequest(key=key, method="GET", path="/api/v4/users"), timeout=15
                )
                for channel in channels
            )
        )
        workers = await _wait_for_workers(server, 2)
        accepted = established_connections(workers, server.port)
        return list(answers), [accepted[pid] for pid in workers]
    finally:
        for channel in channels:
            await channel.close()


async def test_two_workers_share_the_port_revoke_together_and_are_restarted(
    tmp_path: Path,
) -> None:
    admin_keys = AdminKeys.make(tmp_path / "identity")
    async with server_process(
        tmp_path / "var",
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}",
        admin_keys=admin_keys,
        args=["--workers", "2", "--cache-ttl", "300", "--change-poll", str(POLL_S)],
    ) as server:
        workers = await _wait_for_workers(server, 2)
        assert len(workers) == 2 and server.process.pid not in workers
        key_id, secret = await new_key(server, admin_keys)

        answers, accepted = await _check_over_fresh_channels(server, secret)
        assert all(answer.allowed for answer in answers)
        # Each worker accepted some of the connections and answered on them.
        assert all(count > 0 for count in accepted), accepted

        since = time.perf_counter()
        await delete_key(server, admin_keys, key_id)
        while True:
            answers, accepted = await _check_over_fresh_channels(server, secret)
            if not any(answer.allowed for answer in answers):
                break
            assert time.perf_counter() - since < POLL_S + 1.0, "a worker still allows the key"
        assert all(answer.reason == az.REASON_KEY_NOT_FOUND for answer in answers)
        assert all(count > 0 for count in accepted), accepted

        os.kill(workers[0], signal.SIGKILL)
        await asyncio.to_thread(_until_gone, workers[0])
        replaced = await _wait_for_workers(server, 2)
        assert workers[0] not in replaced and workers[1] in replaced
        await wait_serving(server.target)
        _, fresh = await new_key(server, admin_keys)
        answers, accepted = await _check_over_fresh_channels(server, fresh)
        assert all(answer.allowed for answer in answers)
        assert all(count > 0 for count in accepted), accepted

    assert server.process.returncode == 0
    assert not any(_alive(pid) for pid in replaced)


def _start_second_server(data_dir: Path, port: int) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIKEYS_")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "server",
            "--workers",
            "2",
            "--listen",
            f"127.0.0.1:{port}",
            "--data-dir",
            str(data_dir),
            "--log-format",
            "text",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def _assert_refused(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 2, result.stderr
    assert "--listen" in result.stderr and "in use" in result.stderr, result.stderr
    assert "worker started" not in result.stderr


async def test_a_second_server_with_workers_on_the_same_port_exits_2(tmp_path: Path) -> None:
    admin_keys = AdminKeys.make(tmp_path / "identity")
    async with server_process(
        tmp_path / "var",
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}",
        admin_keys=admin_keys,
        args=["--workers", "2"],
    ) as server:
        await _wait_for_workers(server, 2)
        result = await asyncio.to_thread(_start_second_server, tmp_path / "second", server.port)
        _assert_refused(result)
        # Every new connection still reaches one of the first server's workers.
        answers, accepted = await _check_over_fresh_channels(server, "vsk_x")
        assert all(answer.reason == az.REASON_KEY_MALFORMED for answer in answers)
        assert sum(accepted) == FRESH_CHANNELS


@pytest.mark.parametrize("reuse_port", [False, True], ids=["plain", "reuse-port"])
async def test_a_socket_holding_the_port_makes_workers_exit_2(
    tmp_path: Path, reuse_port: bool
) -> None:
    with socket.socket() as holder:
        if reuse_port:
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = await asyncio.to_thread(_start_second_server, tmp_path / "var", port)
    _assert_refused(result)


async def test_a_reserved_port_refuses_a_server_while_no_worker_listens(tmp_path: Path) -> None:
    port = free_port()
    with contextlib.closing(PortReservation.claim({"--listen": ("127.0.0.1", port)})):
        result = await asyncio.to_thread(_start_second_server, tmp_path / "var", port)
        _assert_refused(result)
        # A plain bind is refused as well.
        with socket.socket() as stranger, pytest.raises(OSError, match="in use"):
            stranger.bind(("127.0.0.1", port))
        # A worker's bind, with SO_REUSEPORT, joins.
        with socket.socket() as worker:
            worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            worker.bind(("127.0.0.1", port))
            worker.listen()
