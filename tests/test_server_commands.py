"""``apikeys-server migrate`` and ``apikeys-server health`` as an operator
or a container runtime runs them."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import time
from pathlib import Path

from server.app import AUTHORIZE_SERVICE, KEY_ADMIN_SERVICE
from tests.api.test_health import remove_database_files
from tests.harness import Harness, running_server
from tests.tls_files import Authority


async def _run(*args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIKEYS_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_migrate_creates_the_schema_and_exits(tmp_path: Path) -> None:
    code, _, err = await _run("migrate", "--data-dir", str(tmp_path), "--log-format", "text")
    assert code == 0, err
    with sqlite3.connect(tmp_path / "apikeys.db") as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"api_keys", "audit_events", "key_changes"} <= tables
    again, _, err = await _run("migrate", "--data-dir", str(tmp_path), "--log-format", "text")
    assert again == 0, err


async def test_health_reports_a_serving_server(harness: Harness) -> None:
    code, out, _ = await _run("health", "--listen", harness.target)
    assert code == 0
    assert "SERVING" in out


async def test_health_fails_when_nothing_listens() -> None:
    code, _, err = await _run("health", "--listen", "127.0.0.1:1")
    assert code == 1
    assert "not healthy" in err


async def test_health_speaks_the_servers_tls_and_presents_its_pair_to_a_client_ca(
    tmp_path: Path,
) -> None:
    ca = Authority.create(tmp_path / "pki")
    # The server's pair may serve as a client certificate: the probe shows it.
    pair = ca.issue("server", hosts=("apikeys.internal",))
    tls = [
        "--tls-cert",
        str(pair.cert),
        "--tls-key",
        str(pair.key),
        "--tls-client-ca",
        str(ca.cert),
    ]
    async with running_server(tmp_path / "var", args=tls) as harness:
        listen = ["--listen", harness.target, "--log-format", "text"]
        trusted = ["--health-ca", str(ca.cert), "--health-server-name", "apikeys.internal"]
        code, out, err = await _run("health", *listen, *tls, *trusted)
        assert code == 0, err
        assert "SERVING" in out

        code, _, err = await _run("health", *listen)
        assert code == 1
        assert "not healthy" in err
        code, _, err = await _run("health", *listen, *tls, "--health-ca", str(ca.cert))
        assert code == 1
        assert "not healthy" in err


async def test_health_asks_about_one_service_and_the_whole_follows_authorize(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "var"
    async with running_server(data_dir, health_probe=0.1) as h:
        code, out, _ = await _run("health", "--listen", h.target, "--service", KEY_ADMIN_SERVICE)
        assert (code, out.split()[-1]) == (0, "SERVING")

        await asyncio.to_thread(remove_database_files, data_dir)
        give_up = time.monotonic() + 10
        while code == 0 and time.monotonic() < give_up:
            code, out, _ = await _run(
                "health", "--listen", h.target, "--service", KEY_ADMIN_SERVICE
            )
        assert (code, out.split()[-1]) == (1, "NOT_SERVING")

        for service in (AUTHORIZE_SERVICE, ""):
            code, out, _ = await _run("health", "--listen", h.target, "--service", service)
            assert (code, out.split()[-1]) == (0, "SERVING")


async def test_health_of_an_unknown_service_fails(harness: Harness) -> None:
    code, _, err = await _run("health", "--listen", harness.target, "--service", "no.such.Service")
    assert code == 1
    assert "NOT_FOUND" in err
