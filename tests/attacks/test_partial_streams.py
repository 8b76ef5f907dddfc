"""Streams that announce a large request and never finish sending it cannot
exhaust the server's memory or its places for calls."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from bench import attacks
from bench.attacks import attacker, report_of
from server.settings import load_settings
from tests.attacks.processes import attacked_server
from tests.harness import running_server

LARGEST_REQUEST = load_settings([], environ={}).max_message_bytes
ANNOUNCED = LARGEST_REQUEST - 1024
UNSENT = 10 * 1024
MEMORY_BOUND_MIB = 150
LEGIT_CHECKS = 20


@pytest.mark.parametrize("connections", [10, 100])
def test_partly_sent_streams_hold_little_memory_and_checks_still_answer(connections: int) -> None:
    with attacked_server() as attacked:
        before = attacked.resident_mib()
        with attacker(
            attacked.target,
            "partial",
            "--connections",
            str(connections),
            "--streams",
            "100",
            "--announce",
            str(ANNOUNCED),
            "--unsent",
            str(UNSENT),
            "--duration",
            "30",
        ) as attack:
            sent = report_of(attack)
            legit = attacks.legit_checks(attacked.target, attacked.key, calls=LEGIT_CHECKS)
            grown = attacked.resident_mib() - before
    assert sent["streams_opened"] == connections * 100
    # The attack really sent its bytes: every stream was either refused or
    # given all but the unsent tail.
    assert sent["bytes_sent"] >= (connections * 100 - sent["streams_reset"]) * (ANNOUNCED - UNSENT)
    assert grown < MEMORY_BOUND_MIB, f"resident memory grew {grown:.0f} MiB"
    assert legit.success_rate >= 0.9, legit.codes


async def test_a_request_that_does_not_arrive_in_time_ends_its_call(tmp_path: Path) -> None:
    async with running_server(tmp_path / "var", args=["--request-timeout", "0.5"]) as harness:
        opened, report = await asyncio.to_thread(
            attacks.partial_streams,
            harness.target,
            connections=1,
            streams=5,
            announce=ANNOUNCED,
            unsent=UNSENT,
        )
        [connection] = opened
        try:
            for _ in range(30):
                await asyncio.to_thread(connection.receive, 0.1)
                if len(connection.ended_by_server | connection.reset_by_server) == 5:
                    break
            ended = connection.ended_by_server | connection.reset_by_server
            statuses = {trailers.get("grpc-status") for trailers in connection.trailers.values()}
        finally:
            connection.close()
        # A check on the same server still answers: the late calls gave their places back.
        response = await harness.authorize.Check(
            attacks.authorize_pb2.CheckRequest(key="x", method="GET", path="/"), timeout=1
        )
    assert report.streams_opened == 5
    assert len(ended) == 5
    assert statuses == {str(grpc.StatusCode.DEADLINE_EXCEEDED.value[0])}
    assert response.reason == attacks.authorize_pb2.REASON_KEY_MALFORMED


async def test_the_server_offers_no_window_larger_than_http2s_default(tmp_path: Path) -> None:
    """The server offers HTTP/2's default 64 KiB windows, never the megabytes
    that bandwidth probes would grow them to, so the calls still waiting in
    grpc-core to be refused or read hold little of their callers' bytes."""
    async with running_server(tmp_path / "var") as harness:
        connection = await asyncio.to_thread(attacks.Connection, harness.target)
        try:
            for _ in range(5):
                await asyncio.to_thread(connection.receive, 0.1)
            stream_window = connection.h2.remote_settings.initial_window_size
            connection_window = connection.h2.outbound_flow_control_window
        finally:
            connection.close()
    assert stream_window == 65_535
    assert connection_window == 65_535
