"""Connections cannot be held or pinged without end."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench import attacks
from tests.harness import Harness, running_server

ENHANCE_YOUR_CALM = 11


async def test_a_client_pinging_without_calls_is_sent_away(harness: Harness) -> None:
    closed = await asyncio.to_thread(
        attacks.ping_flood, harness.target, pings=50, interval=0.02, timeout=5
    )
    assert closed.error_code == ENHANCE_YOUR_CALM
    assert closed.pings <= 5


async def test_an_idle_connection_is_closed_after_the_idle_limit(tmp_path: Path) -> None:
    async with running_server(tmp_path / "var", args=["--connection-idle", "1"]) as harness:
        closed = await asyncio.to_thread(
            attacks.ping_flood, harness.target, pings=0, interval=0.0, timeout=10
        )
    # A GOAWAY came (whatever its code), not just a dropped socket.
    assert closed.error_code is not None and closed.error_code >= 0
    assert closed.seconds < 5


async def test_a_connection_past_its_age_is_closed_after_the_grace(tmp_path: Path) -> None:
    async with running_server(
        tmp_path / "var",
        args=[
            "--connection-max-age",
            "1",
            "--connection-age-grace",
            "0",
            "--connection-idle",
            "60",
        ],
    ) as harness:
        closed = await asyncio.to_thread(
            attacks.ping_flood, harness.target, pings=0, interval=0.0, timeout=10
        )
    # A GOAWAY came (whatever its code), not just a dropped socket.
    assert closed.error_code is not None and closed.error_code >= 0
    assert closed.seconds < 5
