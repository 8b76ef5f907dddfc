"""Under overload every connection gets its share: legitimate checks on their
own connection keep succeeding, and calls past a connection's share are
refused at once instead of waiting for their deadline."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc

from bench import attacks
from bench.under_attack import overloaded
from tests.attacks.processes import attacked_server
from tests.harness import running_server
from voiso.apikeys.v1 import authorize_pb2 as az

OVERLOAD_SECONDS = 6.0
LEGIT_CHECKS = 100


def test_checks_on_their_own_connection_succeed_while_h2load_saturates_the_server() -> None:
    with attacked_server() as attacked:
        legit, flooded = overloaded(
            attacked.server,
            attacked.key,
            OVERLOAD_SECONDS,
            lambda: attacks.legit_checks(
                attacked.target, attacked.key, calls=LEGIT_CHECKS, interval=0.03
            ),
        )
    assert flooded.succeeded > 10_000
    # A legitimate call waits behind the flood's 400 open calls in grpc-core's
    # queue (docs/LIMITS.md), so the flood's rate says how long that took.
    assert legit.success_rate >= 0.9, (legit.codes, f"{flooded.rps:,.0f} flood req/s")


async def test_a_connection_past_its_share_is_refused_at_once_while_another_is_served(
    tmp_path: Path,
) -> None:
    async with running_server(tmp_path / "var", args=["--max-concurrent-rpcs", "2"]) as harness:
        # One connection takes its two places with requests it never finishes.
        opened, _ = await asyncio.to_thread(
            attacks.partial_streams,
            harness.target,
            connections=1,
            streams=2,
            announce=1000,
            unsent=100,
        )
        [greedy] = opened
        try:
            third = await asyncio.to_thread(_one_more_call, greedy)
            started = time.perf_counter()
            answer = await harness.authorize.Check(
                az.CheckRequest(key="x", method="GET", path="/"), timeout=1
            )
            other_took = time.perf_counter() - started
        finally:
            greedy.close()
    assert third == (str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]), True)
    assert answer.reason == az.REASON_KEY_MALFORMED
    assert other_took < 0.5


def _one_more_call(connection: attacks.Connection) -> tuple[str, bool]:
    """The grpc-status of one more Check on ``connection``, and whether it
    came within 100 ms."""
    stream_id = connection.h2.get_next_available_stream_id()
    connection.h2.send_headers(
        stream_id, attacks.grpc_request_headers(connection.target, attacks.CHECK)
    )
    connection.flush()
    started = time.perf_counter()
    while time.perf_counter() - started < 2:
        status = connection.trailers.get(stream_id, {}).get("grpc-status")
        if status is not None:
            return status, time.perf_counter() - started < 0.1
        connection.receive(0.05)
    return "none", False
