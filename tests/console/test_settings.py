"""``apikeys-console`` settings: flags over variables over defaults, one line
and exit status 2 for a bad value, ``--dev`` on loopback only, and the
README's table as the declarations say."""

from __future__ import annotations

import ast
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from console import SettingsError, load_settings
from console._settings import README_TABLE_END, README_TABLE_START, with_markdown_table
from console.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"


def test_defaults_listen_on_loopback_8080_and_reach_the_default_server() -> None:
    settings = load_settings([], environ={})
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.channel.target == "127.0.0.1:50051"
    assert not settings.channel.tls
    assert not settings.dev


def test_a_flag_wins_over_its_variable_and_an_empty_variable_is_unset() -> None:
    environ = {
        "APIKEYS_CONSOLE_LISTEN": "127.0.0.1:9000",
        "APIKEYS_SERVER": "admin.internal:50052",
        "APIKEYS_CONSOLE_TIMEOUT": "",
    }
    settings = load_settings(["--listen", "127.0.0.1:9001"], environ=environ)
    assert settings.port == 9001
    assert settings.channel.target == "admin.internal:50052"
    assert settings.channel.timeout == 5.0


def test_a_ca_file_turns_tls_on(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked until a connection is made")
    settings = load_settings([], environ={"APIKEYS_SERVER_CA_CERT": str(ca)})
    assert settings.channel.tls
    assert settings.channel.root_certificates == ca


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--dev", "--listen", "0.0.0.0:8080"], "--listen (APIKEYS_CONSOLE_LISTEN)"),
        (["--dev", "--listen", "192.0.2.7:8080"], "--listen (APIKEYS_CONSOLE_LISTEN)"),
        (["--listen", "8080"], "--listen (APIKEYS_CONSOLE_LISTEN)"),
        (["--timeout", "-1"], "--timeout (APIKEYS_CONSOLE_TIMEOUT)"),
        (["--ca-cert", "/nonexistent/ca.pem"], "--ca-cert (APIKEYS_SERVER_CA_CERT)"),
        (["--server", "no-port"], "--server (APIKEYS_SERVER)"),
        (["--no-such-flag"], "--no-such-flag"),
    ],
)
def test_a_bad_value_is_one_line_and_exit_status_2(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("apikeys-console: ")
    assert named in err


def test_dev_refuses_every_address_but_loopback() -> None:
    for address in ("127.0.0.1:0", "[::1]:0", "localhost:0", "127.0.0.2:0"):
        assert load_settings(["--dev", "--listen", address], environ={}).dev
    with pytest.raises(SettingsError, match="loopback address only"):
        load_settings(["--listen", "[::]:8080"], environ={"APIKEYS_CONSOLE_DEV": "true"})


def test_readme_console_settings_table_matches_the_declarations() -> None:
    readme = README.read_text()
    assert README_TABLE_START in readme and README_TABLE_END in readme
    assert with_markdown_table(readme) == readme, "run `make settings-table` and commit README.md"


def test_an_address_in_use_is_one_line_and_exit_status_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["--listen", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"apikeys-console: cannot listen on 127.0.0.1:{port}: ")
    assert err.count("\n") == 1


def test_apikeys_console_dev_serves_the_page_and_says_where(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "console.cli", "--dev", "--listen", "127.0.0.1:0"],
        env={**os.environ, "APIKEYS_DATA_DIR": str(tmp_path)},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        url = re.search(r"the API keys page is at (http://127\.0\.0\.1:\d+) ", line)
        assert url, line
        page = httpx.get(f"{url.group(1)}/keys", timeout=10)
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()
    # No server has written a development key pair into this directory yet.
    assert page.status_code == 503
    assert "make serve" in page.text


def test_the_console_imports_nothing_of_the_server() -> None:
    package = Path(__file__).resolve().parents[2] / "console"
    for module in package.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert (node.module or "").partition(".")[0] != "server", module.name
            elif isinstance(node, ast.Import):
                assert all(a.name.partition(".")[0] != "server" for a in node.names), module.name
