"""The client library, the ``apikeys`` CLI and its load tester against a
server that requires mutual TLS."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from clients import (
    AsyncAuthorizeClient,
    AsyncKeyAdminClient,
    AuthorizeClient,
    ChannelOptions,
    Reason,
    Unavailable,
)
from clients.cli import main
from tests.harness import Harness, running_server
from tests.tls_files import Authority, Pair


@dataclass
class MutualTls:
    """A server requiring client certificates, and what a client needs."""

    harness: Harness
    ca: Authority
    client: Pair

    def options(self, **overrides: Any) -> ChannelOptions:
        options = ChannelOptions(
            target=self.harness.target,
            tls=True,
            root_certificates=self.ca.cert,
            client_certificate=self.client.cert,
            client_key=self.client.key,
            timeout=5.0,
        )
        return dataclasses.replace(options, **overrides)

    def cli_tls(self) -> list[str]:
        return [
            "--ca-cert",
            str(self.ca.cert),
            "--client-cert",
            str(self.client.cert),
            "--client-key",
            str(self.client.key),
        ]


@pytest.fixture
async def mtls(tmp_path: Path) -> AsyncIterator[MutualTls]:
    ca = Authority.create(tmp_path / "pki")
    server = ca.issue("server", client=False)
    args = [
        "--tls-cert",
        str(server.cert),
        "--tls-key",
        str(server.key),
        "--tls-client-ca",
        str(ca.cert),
    ]
    async with running_server(tmp_path / "var", args=args) as harness:
        yield MutualTls(harness=harness, ca=ca, client=ca.issue("client", server=False))


async def test_the_async_clients_call_over_mutual_tls(mtls: MutualTls) -> None:
    async with AsyncKeyAdminClient(mtls.options(), token=mtls.harness.token()) as admin:
        key, secret = await admin.create_key("tls", "", ["users.read"])
    async with AsyncAuthorizeClient(mtls.options()) as authorize:
        decision = await authorize.check(secret, "GET", "/api/v4/users")
    assert decision.allowed and decision.key_id == key.id


async def test_the_blocking_client_calls_over_mutual_tls(mtls: MutualTls) -> None:
    def check() -> Reason:
        with AuthorizeClient(mtls.options()) as authorize:
            return authorize.check("vsk_x", "GET", "/api/v4/users").reason

    assert await asyncio.to_thread(check) is Reason.KEY_MALFORMED


async def test_a_client_without_its_certificate_is_refused(mtls: MutualTls) -> None:
    options = mtls.options(client_certificate=None, client_key=None, max_attempts=1)
    async with AsyncAuthorizeClient(options) as authorize:
        with pytest.raises(Unavailable):
            await authorize.check("vsk_x", "GET", "/api/v4/users")


async def test_the_server_name_override_checks_the_certificate_against_that_name(
    tmp_path: Path,
) -> None:
    ca = Authority.create(tmp_path / "pki")
    server = ca.issue("server", client=False, hosts=("apikeys.internal",))
    args = ["--tls-cert", str(server.cert), "--tls-key", str(server.key)]
    async with running_server(tmp_path / "var", args=args) as harness:
        plain = ChannelOptions(
            target=harness.target, tls=True, root_certificates=ca.cert, max_attempts=1
        )
        async with AsyncAuthorizeClient(plain) as authorize:
            with pytest.raises(Unavailable):
                await authorize.check("vsk_x", "GET", "/api/v4/users")
        named = ChannelOptions(
            target=harness.target,
            tls=True,
            root_certificates=ca.cert,
            tls_server_name="apikeys.internal",
        )
        async with AsyncAuthorizeClient(named) as authorize:
            decision = await authorize.check("vsk_x", "GET", "/api/v4/users")
        assert decision.reason is Reason.KEY_MALFORMED


async def test_the_cli_checks_and_administers_over_mutual_tls(
    mtls: MutualTls, capsys: pytest.CaptureFixture[str]
) -> None:
    server = ["--server", mtls.harness.target, "--token", mtls.harness.token(), "--json"]
    status = await asyncio.to_thread(main, [*server, *mtls.cli_tls(), "scopes"])
    assert status == 0
    assert json.loads(capsys.readouterr().out)["scopes"]

    status = await asyncio.to_thread(
        main, [*server, *mtls.cli_tls(), "check", "vsk_x", "GET", "/api/v4/users"]
    )
    assert status == 1
    assert json.loads(capsys.readouterr().out)["reason"] == "REASON_KEY_MALFORMED"

    # Without the client certificate the handshake fails: one line, status 1.
    status = await asyncio.to_thread(
        main, [*server, "--ca-cert", str(mtls.ca.cert), "check", "vsk_x", "GET", "/api/v4/users"]
    )
    assert status == 1
    assert "unavailable" in capsys.readouterr().err


async def test_the_load_tester_runs_over_mutual_tls(
    mtls: MutualTls, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "--server",
        mtls.harness.target,
        "--token",
        mtls.harness.token(contact_center="cc-load"),
        "--json",
        *mtls.cli_tls(),
        "loadtest",
        "--requests",
        "60",
        "--connections",
        "2",
        "--concurrency",
        "4",
        "--unknown-keys",
        "2",
    ]
    status = await asyncio.to_thread(main, argv)
    assert status == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sent"] == report["answered"] == 60
    assert report["errors"] == {}
    assert report["decisions"].get("REASON_ALLOWED", 0) > 0
