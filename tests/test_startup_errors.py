"""A bad option stops the server at start: one line naming the option,
exit status 2, no traceback.

The cases call the entry point in this process; two run ``python -m server``
to prove that the real command exits the same way."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from server.cli import main
from tests.harness import SHARED_SECRETS
from tests.tls_files import Authority


@dataclass(frozen=True)
class Exit:
    """How a start ended: its exit status and what it wrote to stderr."""

    status: object
    stderr: str


Start = Callable[..., Exit]


@pytest.fixture
def start(capsys: pytest.CaptureFixture[str]) -> Iterator[Start]:
    """Runs the entry point with the given arguments and only the given
    ``APIKEYS_*`` variables, so a developer's own cannot change the case."""

    def run(*args: str, env: dict[str, str] | None = None) -> Exit:
        try:
            status: object = main(list(args), environ=env or {})
        except SystemExit as exc:
            # argparse refuses an unknown flag by exiting.
            status = exc.code
        return Exit(status=status, stderr=capsys.readouterr().err)

    # The entry point sends the root logger to stderr; later tests keep theirs.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield run
    root.handlers[:] = handlers
    root.setLevel(level)


def _start_process(*args: str) -> Exit:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("APIKEYS_")}
    result = subprocess.run(
        [sys.executable, "-m", "server", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean,
        check=False,
    )
    return Exit(status=result.returncode, stderr=result.stderr)


def _assert_one_line_error(result: Exit, option: str) -> None:
    assert result.status == 2, result.stderr
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
        (["--workers", "2", "--admin-listen", "127.0.0.1:0"], {}, "--workers"),
        (["--admin-listen", "nohostport"], {}, "--admin-listen"),
        ([], {"APIKEYS_REFLECTION": "maybe"}, "--reflection"),
        (["--tls-cert", "/nonexistent/cert.pem"], {}, "--tls-cert"),
    ],
)
def test_bad_values_stop_the_server_naming_the_option(
    start: Start, tmp_path: Path, args: list[str], env: dict[str, str], option: str
) -> None:
    result = start("--data-dir", str(tmp_path / "var"), *args, env=env)
    _assert_one_line_error(result, option)


def test_unknown_flag_is_one_line_and_status_2(start: Start, tmp_path: Path) -> None:
    result = start("--data-dir", str(tmp_path / "var"), "--no-such-flag")
    _assert_one_line_error(result, "--no-such-flag")


def test_data_dir_that_is_a_file_is_refused(start: Start, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    _assert_one_line_error(start("--data-dir", str(not_a_dir)), "--data-dir")
    _assert_one_line_error(start("--data-dir", str(not_a_dir / "below")), "--data-dir")


@pytest.mark.parametrize("secret", ["hmac-secret", "encryption-keys"])
@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_a_data_dir_with_secrets_but_no_database_is_refused(
    start: Start, tmp_path: Path, secret: str, command: str
) -> None:
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    (data_dir / secret).write_text("generated before the database vanished\n")

    result = start(command, "--data-dir", str(data_dir))

    _assert_one_line_error(result, "--database-url")
    assert str(data_dir / "apikeys.db") in result.stderr
    assert not (data_dir / "apikeys.db").exists()


def test_postgres_without_secrets_is_refused(start: Start, tmp_path: Path) -> None:
    result = start(
        "--data-dir",
        str(tmp_path / "var"),
        "--database-url",
        "postgresql+asyncpg://postgres@127.0.0.1:5432/test",
    )
    _assert_one_line_error(result, "--hmac-secret")


def test_postgres_without_admin_public_keys_is_refused(start: Start, tmp_path: Path) -> None:
    result = start(
        "--data-dir",
        str(tmp_path / "var"),
        "--database-url",
        "postgresql+asyncpg://postgres@127.0.0.1:5432/test",
        *SHARED_SECRETS,
    )

    _assert_one_line_error(result, "--admin-public-keys")
    assert list((tmp_path / "var").iterdir()) == []


def test_malformed_route_file_names_file_and_line(start: Start, tmp_path: Path) -> None:
    routes = tmp_path / "routes.txt"
    routes.write_text(
        "GET /api/v4/users users.read confirmed\nGET /api/v4/x no.such.scope confirmed\n"
    )
    result = start("--data-dir", str(tmp_path / "var"), "--routes", str(routes))
    _assert_one_line_error(result, "--routes")
    assert f"{routes}:2" in result.stderr


def test_the_command_exits_2_with_one_line_for_a_bad_value(tmp_path: Path) -> None:
    result = _start_process("--data-dir", str(tmp_path / "var"), "--listen", "127.0.0.1:70000")
    _assert_one_line_error(result, "--listen")


def test_the_command_exits_2_with_one_line_for_an_unknown_flag(tmp_path: Path) -> None:
    result = _start_process("--data-dir", str(tmp_path / "var"), "--no-such-flag")
    _assert_one_line_error(result, "--no-such-flag")


@pytest.mark.parametrize(
    ("broken", "option"),
    [
        ("mismatched key", "--tls-key"),
        ("garbage certificate", "--tls-cert"),
        ("no key", "--tls-key"),
    ],
)
def test_a_certificate_pair_that_cannot_be_served_stops_the_start(
    start: Start, tmp_path: Path, broken: str, option: str
) -> None:
    ca = Authority.create(tmp_path / "pki")
    server, other = ca.issue("server"), ca.issue("other")
    args = ["--tls-cert", str(server.cert), "--tls-key", str(other.key)]
    if broken == "garbage certificate":
        server.cert.write_text("not a certificate\n")
        args[3] = str(server.key)
    elif broken == "no key":
        args = args[:2]
    result = start("--data-dir", str(tmp_path / "var"), *args)
    _assert_one_line_error(result, option)
    assert "PRIVATE KEY" not in result.stderr


def test_a_client_ca_without_a_server_pair_is_refused(start: Start, tmp_path: Path) -> None:
    ca = Authority.create(tmp_path / "pki")
    result = start("--data-dir", str(tmp_path / "var"), "--tls-client-ca", str(ca.cert))
    _assert_one_line_error(result, "--tls-client-ca")
