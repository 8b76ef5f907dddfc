"""TLS and mutual TLS on the server's ports: plaintext callers and callers
without a client certificate are refused, and certificate files replaced on
disk are served to new connections without a restart."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from tests.api.rpc import rpc_error
from tests.harness import Harness, running_server
from tests.tls_files import Authority, Pair
from voiso.apikeys.v1 import authorize_pb2 as az
from voiso.apikeys.v1 import authorize_pb2_grpc, key_admin_pb2_grpc
from voiso.apikeys.v1 import key_admin_pb2 as pb

CHECK = az.CheckRequest(key="vsk_not-a-key", method="GET", path="/api/v4/users")


@pytest.fixture
def ca(tmp_path: Path) -> Authority:
    return Authority.create(tmp_path / "pki")


@pytest.fixture
def server_pair(ca: Authority) -> Pair:
    return ca.issue("server", client=False)


@asynccontextmanager
async def tls_server(
    tmp_path: Path, pair: Pair, *, client_ca: Path | None = None, args: tuple[str, ...] = ()
) -> AsyncIterator[Harness]:
    args = (*args, "--tls-cert", str(pair.cert), "--tls-key", str(pair.key))
    if client_ca is not None:
        args = (*args, "--tls-client-ca", str(client_ca))
    async with running_server(tmp_path / "var", args=args) as harness:
        yield harness


def tls_channel(port: int, ca: Authority, client: Pair | None = None) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.cert.read_bytes(),
        private_key=None if client is None else client.key.read_bytes(),
        certificate_chain=None if client is None else client.cert.read_bytes(),
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials)


async def check(channel: grpc.aio.Channel) -> az.CheckResponse:
    return await authorize_pb2_grpc.AuthorizeStub(channel).Check(CHECK, timeout=5)


def _served_serial(port: int, ca: Path, client: Pair | None = None) -> int:
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2"])
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as connection,
    ):
        der = connection.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


async def served_serial(port: int, ca: Authority) -> int:
    """The serial of the certificate a new connection to ``port`` is shown."""
    return await asyncio.to_thread(_served_serial, port, ca.cert)


async def served_serial_with(port: int, ca: Authority, client: Pair) -> int:
    """``served_serial`` for a port that asks for a client certificate."""
    return await asyncio.to_thread(_served_serial, port, ca.cert, client)


def replace_pair(target: Pair, replacement: Pair) -> None:
    """Moves ``replacement``'s files over ``target``'s, as a rotation does."""
    os.replace(replacement.key, target.key)
    os.replace(replacement.cert, target.cert)


async def test_a_plaintext_client_cannot_call_a_tls_port(tmp_path: Path, server_pair: Pair) -> None:
    async with tls_server(tmp_path, server_pair) as harness:
        error = await rpc_error(harness.authorize.Check(CHECK, timeout=5))
        assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_client_trusting_the_ca_calls_the_tls_port(
    tmp_path: Path, ca: Authority, server_pair: Pair
) -> None:
    async with (
        tls_server(tmp_path, server_pair) as harness,
        tls_channel(harness.port, ca) as channel,
    ):
        assert (await check(channel)).reason == az.REASON_KEY_MALFORMED


async def test_with_a_client_ca_only_a_client_with_a_certificate_it_signed_is_served(
    tmp_path: Path, ca: Authority, server_pair: Pair
) -> None:
    stranger = Authority.create(tmp_path / "other", "other-ca").issue("stranger")
    async with tls_server(tmp_path, server_pair, client_ca=ca.cert) as harness:
        async with tls_channel(harness.port, ca) as anonymous:
            error = await rpc_error(check(anonymous))
            assert error.code() == grpc.StatusCode.UNAVAILABLE
        async with tls_channel(harness.port, ca, stranger) as unknown:
            error = await rpc_error(check(unknown))
            assert error.code() == grpc.StatusCode.UNAVAILABLE
        async with tls_channel(harness.port, ca, ca.issue("client", server=False)) as client:
            assert (await check(client)).reason == az.REASON_KEY_MALFORMED


async def test_replaced_certificate_files_are_served_to_new_connections(
    tmp_path: Path, ca: Authority, server_pair: Pair
) -> None:
    async with tls_server(tmp_path, server_pair) as harness:
        assert await served_serial(harness.port, ca) == server_pair.serial
        rotated = ca.issue("rotated", client=False)
        replace_pair(server_pair, rotated)
        assert await served_serial(harness.port, ca) == rotated.serial
        async with tls_channel(harness.port, ca) as channel:
            assert (await check(channel)).reason == az.REASON_KEY_MALFORMED


async def test_a_broken_replacement_is_ignored_with_one_warning_and_the_old_pair_serves(
    tmp_path: Path, ca: Authority, server_pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    async with tls_server(tmp_path, server_pair) as harness:
        assert await served_serial(harness.port, ca) == server_pair.serial
        # A certificate of another pair next to the old key: they do not match.
        other = ca.issue("other", client=False)
        key_text = server_pair.key.read_bytes()
        with caplog.at_level(logging.WARNING, logger="server.tls"):
            os.replace(other.cert, server_pair.cert)
            for _ in range(3):
                assert await served_serial(harness.port, ca) == server_pair.serial
            warnings = [r for r in caplog.records if r.name == "server.tls"]
            assert len(warnings) == 1, warnings
            assert key_text.decode() not in caplog.text

            server_pair.cert.write_text("not a certificate\n")
            assert await served_serial(harness.port, ca) == server_pair.serial
            assert len([r for r in caplog.records if r.name == "server.tls"]) == 2

        async with tls_channel(harness.port, ca) as channel:
            assert (await check(channel)).reason == az.REASON_KEY_MALFORMED
        # A good pair afterwards is picked up as usual.
        fixed = ca.issue("fixed", client=False)
        replace_pair(server_pair, fixed)
        assert await served_serial(harness.port, ca) == fixed.serial


async def test_the_admin_port_serves_the_same_tls(
    tmp_path: Path, ca: Authority, server_pair: Pair
) -> None:
    client = ca.issue("client", server=False)
    args = ("--admin-listen", "127.0.0.1:0")
    async with tls_server(tmp_path, server_pair, client_ca=ca.cert, args=args) as harness:
        port = harness.server.admin_port
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plaintext:
            error = await rpc_error(
                key_admin_pb2_grpc.KeyAdminStub(plaintext).ListScopes(
                    pb.ListScopesRequest(), metadata=harness.auth(), timeout=5
                )
            )
            assert error.code() == grpc.StatusCode.UNAVAILABLE
        async with tls_channel(port, ca) as anonymous:
            error = await rpc_error(
                key_admin_pb2_grpc.KeyAdminStub(anonymous).ListScopes(
                    pb.ListScopesRequest(), metadata=harness.auth(), timeout=5
                )
            )
            assert error.code() == grpc.StatusCode.UNAVAILABLE
        async with tls_channel(port, ca, client) as channel:
            scopes = await key_admin_pb2_grpc.KeyAdminStub(channel).ListScopes(
                pb.ListScopesRequest(), metadata=harness.auth(), timeout=5
            )
            assert scopes.scopes
        assert await served_serial_with(port, ca, client) == server_pair.serial


async def test_a_replaced_client_ca_decides_which_new_clients_are_served(
    tmp_path: Path, ca: Authority, server_pair: Pair
) -> None:
    client_ca = tmp_path / "client-ca.pem"
    client_ca.write_bytes(ca.cert.read_bytes())
    successor = Authority.create(tmp_path / "successor", "successor-ca")
    old_client, new_client = ca.issue("old-client"), successor.issue("new-client")
    async with tls_server(tmp_path, server_pair, client_ca=client_ca) as harness:
        async with tls_channel(harness.port, ca, new_client) as channel:
            assert (await rpc_error(check(channel))).code() == grpc.StatusCode.UNAVAILABLE
        replacement = tmp_path / "client-ca.new"
        replacement.write_bytes(successor.cert.read_bytes())
        os.replace(replacement, client_ca)
        async with tls_channel(harness.port, ca, new_client) as channel:
            assert (await check(channel)).reason == az.REASON_KEY_MALFORMED
        async with tls_channel(harness.port, ca, old_client) as channel:
            assert (await rpc_error(check(channel))).code() == grpc.StatusCode.UNAVAILABLE
