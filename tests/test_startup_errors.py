"""A bad option stops the server at start: one line naming the option,
exit status 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def _start(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("APIKEYS_")}
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **(env or {})},
        check=False,
    )


def _assert_one_line_error(result: subprocess.CompletedProcess[str], option: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert option in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "env", "option"),
    [
        (["--listen", "127.0.0.1:70000"], {}, "--listen"),
        (["--listen", "127.0.0.1:http"], {}, "--listen"),
        (["--listen", "nohostport"], {}, "--listen"),
        ([], {"APIKEYS_LISTEN": "127.0.0.1:-1"}, "--listen"),
        (["--database-url", "mysql://localhost/db"], {}, "--database-url"),
        (["--database-url", "not a url"], {}, "--database-url"),
        (["--database-url", "postgresql+asyncpg://"], {}, "--database-url"),
        (["--cache-ttl", "soon"], {}, "--cache-ttl"),
        (["--cache-size", "0"], {}, "--cache-size"),
        (["--hmac-secret", "c2hvcnQ="], {}, "--hmac-secret"),
        (["--encryption-keys", "k1:bm90MzJieXRlcw=="], {}, "--encryption-keys"),
        (["--routes", "/nonexistent/routes.txt"], {}, "--routes"),
        (["--admin-public-keys", "/nonexistent/keys.pem"], {}, "--admin-public-keys"),
        (["--log-level", "loud"], {}, "--log-level"),
        (["--workers", "0"], {}, "--workers"),
        (["--workers", "2", "--listen", "127.0.0.1:0"], {}, "--workers"),
    ],
)
def test_bad_values_stop_the_server_naming_the_option(
    tmp_path: Path, args: list[str], env: dict[str, str], option: str
) -> None:
    result = _start("--data-dir", str(tmp_path / "var"), *args, env=env)
    _assert_one_line_error(result, option)


def test_unknown_flag_is_one_line_and_status_2(tmp_path: Path) -> None:
    result = _start("--data-dir", str(tmp_path / "var"), "--no-such-flag")
    _assert_one_line_error(result, "--no-such-flag")


def test_data_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    _assert_one_line_error(_start("--data-dir", str(not_a_dir)), "--data-dir")
    _assert_one_line_error(_start("--data-dir", str(not_a_dir / "below")), "--data-dir")


def test_postgres_without_secrets_is_refused(tmp_path: Path) -> None:
    result = _start(
        "--data-dir",
        str(tmp_path / "var"),
        "--database-url",
        "postgresql+asyncpg://postgres@127.0.0.1:5432/test",
    )
    _assert_one_line_error(result, "--hmac-secret")


def test_malformed_route_file_names_file_and_line(tmp_path: Path) -> None:
    routes = tmp_path / "routes.txt"
    routes.write_text(
        "GET /api/v4/users users.read confirmed\nGET /api/v4/x no.such.scope confirmed\n"
    )
    result = _start("--data-dir", str(tmp_path / "var"), "--routes", str(routes))
    _assert_one_line_error(result, "--routes")
    assert f"{routes}:2" in result.stderr
