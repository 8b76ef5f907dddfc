"""``apikeys loadtest`` against the real server: every answer counted, by the right reason.

The command runs in a worker thread with its own event loop, as from a shell,
while the server keeps serving on the test's loop.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest

from clients.cli import main
from tests.harness import Harness
from voiso.apikeys.v1 import key_admin_pb2


async def _loadtest(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = await asyncio.to_thread(main, list(argv))
    return status, capsys.readouterr().out


async def test_every_answer_is_counted_under_its_kind_and_reason(
    harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    token = harness.token(contact_center="cc-load")
    status, out = await _loadtest(
        capsys,
        "--server",
        harness.target,
        "--token",
        token,
        "--json",
        "loadtest",
        "--requests",
        "400",
        "--concurrency",
        "16",
        "--unknown-keys",
        "5",
        "--mix",
        "valid=1,revoked=1,unknown=1,malformed=1",
    )
    assert status == 0
    report: dict[str, Any] = json.loads(out)
    assert report["sent"] == report["answered"] == 400
    assert report["errors"] == {}
    assert report["sent_by_kind"] == {
        "malformed": 100,
        "revoked": 100,
        "unknown": 100,
        "valid": 100,
    }
    assert report["decisions_by_kind"] == {
        "malformed": {"REASON_KEY_MALFORMED": 100},
        "revoked": {"REASON_KEY_NOT_FOUND": 100},
        "unknown": {"REASON_KEY_NOT_FOUND": 100},
        "valid": {"REASON_ALLOWED": 100},
    }
    assert report["decisions"] == {
        "REASON_ALLOWED": 100,
        "REASON_KEY_MALFORMED": 100,
        "REASON_KEY_NOT_FOUND": 200,
    }
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p99.9"]
    # The keys it created for the run are gone again.
    listed = await harness.admin.ListKeys(
        key_admin_pb2.ListKeysRequest(), metadata=harness.auth(token)
    )
    assert listed.total_size == 0


async def test_given_keys_for_a_duration_print_a_table(
    harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    created = await harness.admin.CreateKey(
        key_admin_pb2.CreateKeyRequest(name="given", scopes=["users.read"]),
        metadata=harness.auth(),
    )
    status, out = await _loadtest(
        capsys,
        "--server",
        harness.target,
        "loadtest",
        "--duration",
        "1",
        "--concurrency",
        "8",
        "--key",
        created.secret,
        "--mix",
        "given=1",
        "--route",
        "GET /api/v4/users",
        "--route",
        "GET /api/v4/campaigns",
    )
    assert status == 0
    rows = {
        fields[0]: fields[1:] for fields in (line.split() for line in out.splitlines()) if fields
    }
    answered = int(rows["answered"][0])
    assert answered > 0
    # users.read covers the first route only; the two alternate.
    allowed = int(rows["REASON_ALLOWED"][0])
    missing = int(rows["REASON_SCOPE_MISSING"][0])
    assert allowed + missing == answered
    assert abs(allowed - missing) <= 8
    assert "none" in out.split("errors by gRPC code", 1)[1].splitlines()[1]


async def test_failed_calls_are_counted_by_code(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    status, out = await _loadtest(
        capsys,
        "--server",
        f"127.0.0.1:{closed_port}",
        "--json",
        "loadtest",
        "--requests",
        "5",
        "--concurrency",
        "1",
        "--key",
        "vsk_anything",
    )
    assert status == 0
    report = json.loads(out)
    assert report["answered"] == 5
    assert report["errors"] == {"UNAVAILABLE": 5}
    assert report["decisions"] == {}


def test_without_keys_or_token_it_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("APIKEYS_TOKEN", raising=False)
    assert main(["loadtest", "--requests", "1"]) == 2
    assert "give --key, or an admin token" in capsys.readouterr().err
