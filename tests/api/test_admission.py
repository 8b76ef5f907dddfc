"""Calls are admitted up to a fair share per connection; unparseable requests
are logged once per interval."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.api.admission import CallAdmission
from server.api.parsing import LogBudget
from tests.harness import running_server
from voiso.apikeys.v1 import authorize_pb2 as az


def test_a_lone_connection_may_take_every_place() -> None:
    admission = CallAdmission(4, request_timeout=1)
    assert [admission.admit("a") for _ in range(5)] == [True, True, True, True, False]


def test_a_new_connection_is_admitted_while_a_greedy_one_is_held_to_its_share() -> None:
    admission = CallAdmission(4, request_timeout=1)
    for _ in range(4):
        admission.admit("greedy")
    assert admission.admit("newcomer")
    # Two connections now share four places: the greedy one gets no more
    # until it is back under two.
    assert not admission.admit("greedy")
    admission.release("greedy")
    admission.release("greedy")
    assert not admission.admit("greedy")
    admission.release("greedy")
    assert admission.admit("greedy")
    assert admission.in_progress == 3


def test_when_the_server_is_full_only_connections_holding_nothing_get_in() -> None:
    admission = CallAdmission(4, request_timeout=1)
    assert all(admission.admit(connection) for connection in "abcd")
    assert admission.admit("e")
    assert not admission.admit("a")
    assert admission.in_progress == 5


def test_a_released_connection_is_forgotten() -> None:
    admission = CallAdmission(2, request_timeout=1)
    admission.admit("a")
    admission.release("a")
    assert admission.in_progress == 0
    assert [admission.admit("b"), admission.admit("b"), admission.admit("b")] == [
        True,
        True,
        False,
    ]


async def test_a_request_late_past_the_timeout_cancels_its_call() -> None:
    admission = CallAdmission(2, request_timeout=0.05)
    never = asyncio.get_running_loop().create_future()

    async def waiting() -> bool:
        task: asyncio.Task[object] = asyncio.current_task()  # type: ignore[assignment]
        admission.expect_request(task)
        try:
            await never
        except asyncio.CancelledError:
            return admission.request_arrived(task)
        return True

    arrived_in_time = await asyncio.wait_for(asyncio.create_task(waiting()), timeout=2)
    assert arrived_in_time is False


def test_the_log_budget_lets_one_line_through_per_interval_and_counts_the_rest() -> None:
    now = [0.0]
    budget = LogBudget(60, clock=lambda: now[0])
    assert budget.spend() == 0
    assert [budget.spend() for _ in range(3)] == [None, None, None]
    now[0] = 60.0
    assert budget.spend() == 3
    assert budget.spend() is None


async def test_a_request_over_the_message_bound_is_resource_exhausted(tmp_path: Path) -> None:
    async with running_server(tmp_path / "var", args=["--max-message-bytes", "2048"]) as harness:
        try:
            await harness.authorize.Check(
                az.CheckRequest(key="k" * 4096, method="GET", path="/"), timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
        else:
            code = grpc.StatusCode.OK
        small = await harness.authorize.Check(
            az.CheckRequest(key="k" * 1000, method="GET", path="/"), timeout=5
        )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert small.reason == az.REASON_KEY_MALFORMED


async def test_a_watcher_holds_no_place_once_its_request_has_arrived(tmp_path: Path) -> None:
    async with running_server(tmp_path / "var", args=["--max-concurrent-rpcs", "1"]) as harness:
        health = health_pb2_grpc.HealthStub(harness.channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        first = await watch.read()
        # Same connection, bound of one: the watcher no longer holds it.
        checks = [
            await harness.authorize.Check(
                az.CheckRequest(key="x", method="GET", path="/"), timeout=2
            )
            for _ in range(3)
        ]
        watch.cancel()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    assert [c.reason for c in checks] == [az.REASON_KEY_MALFORMED] * 3
