"""The attacked server and Envoy, each a process of its own.

The server runs as ``bench.serve`` pinned to the server CPU (as in the
benchmarks), so that its resident memory can be read and an attacker in
another process (``bench.attacks.attacker``) competes with it as a remote
client would.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench.envoy import EnvoyProcess, running_envoy
from bench.suite import BenchServer, create_key, free_port, started

ROOT = Path(__file__).resolve().parents[2]
ENVOY_CONFIG = ROOT / "deploy" / "envoy" / "grpc-front.yaml"
ENVOY_LISTEN_PORT = "port_value: 10000"
ENVOY_UPSTREAM_PORT = "port_value: 50051"
START_TIMEOUT = 60.0


@dataclass
class Attacked:
    """A started server and a key it allows."""

    server: BenchServer
    key: str

    @property
    def target(self) -> str:
        return self.server.target

    def resident_mib(self) -> float:
        """The server process's resident memory."""
        return self.server.resident_mib()


@contextmanager
def attacked_server(*server_args: str) -> Iterator[Attacked]:
    """The real server in a process of its own, with a key for legitimate checks."""
    with started("attacked", variant="real", server_args=server_args) as server:
        yield Attacked(server=server, key=create_key(server, ["campaigns.read"]))


@contextmanager
def envoy_in_front(upstream: str) -> Iterator[str]:
    """deploy/envoy/grpc-front.yaml on a free port, proxying to ``upstream``;
    yields Envoy's target once a call through it has been answered."""
    listen = free_port()
    config = ENVOY_CONFIG.read_text()
    assert ENVOY_LISTEN_PORT in config and ENVOY_UPSTREAM_PORT in config
    config = config.replace(ENVOY_LISTEN_PORT, f"port_value: {listen}").replace(
        ENVOY_UPSTREAM_PORT, f"port_value: {upstream.rpartition(':')[2]}"
    )
    with running_envoy(config) as envoy:
        target = f"127.0.0.1:{listen}"
        _wait_for_envoy(envoy, target)
        yield target


def _wait_for_envoy(envoy: EnvoyProcess, target: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if (exited := envoy.exited()) is not None:
            raise RuntimeError(exited)
        try:
            with grpc.insecure_channel(target) as channel:
                grpc.channel_ready_future(channel).result(timeout=0.5)
                channel.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=1)
            return
        except (grpc.FutureTimeoutError, grpc.RpcError):
            time.sleep(0.1)
    raise RuntimeError(f"envoy did not answer in {START_TIMEOUT:g} s:\n{envoy.log.read_text()}")
