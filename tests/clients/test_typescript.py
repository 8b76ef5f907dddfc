"""The TypeScript client (``clients/typescript``) against the real server.

The Node test runs as a subprocess while this event loop serves it; its
dependencies come from ``npm ci`` (``make test`` runs it). A machine without
Node fails here rather than skipping: the client is part of what CI proves.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from tests.harness import ALL_PERMISSIONS, Harness

PACKAGE = Path(__file__).resolve().parents[2] / "clients" / "typescript"
NODE_TEST_TIMEOUT = 60.0


async def test_the_node_client_creates_lists_and_checks_keys(harness: Harness) -> None:
    node = shutil.which("node")
    assert node is not None, "node (20 or later) is needed for the TypeScript client's test"
    assert (PACKAGE / "node_modules" / "tsx").is_dir(), (
        f"run 'npm ci' in {PACKAGE} (make test does)"
    )
    env = {
        **os.environ,
        "APIKEYS_SERVER": harness.target,
        "APIKEYS_TOKEN": harness.token(permissions=ALL_PERMISSIONS),
    }
    process = await asyncio.create_subprocess_exec(
        node,
        "--import",
        "tsx",
        "--test",
        "--test-reporter=tap",
        "test/client.test.ts",
        cwd=PACKAGE,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), NODE_TEST_TIMEOUT)
    report = output.decode()
    assert process.returncode == 0, report
    assert "# pass 3" in report, report
    assert "# fail 0" in report, report
    assert "# skipped 0" in report, report
