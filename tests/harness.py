"""The real server, started in-process on port 0 for tests."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from clients.devtoken import DEV_SIGNING_KEY_FILE, mint_dev_token
from server.admin_tokens import ensure_dev_key_pair
from server.app import ApiKeysServer, Wiring, prepare
from server.settings import load_settings
from voiso.apikeys.v1 import authorize_pb2_grpc, key_admin_pb2_grpc

# What replicas sharing one PostgreSQL database are given in production.
SHARED_SECRETS = (
    "--hmac-secret",
    base64.b64encode(b"h" * 32).decode(),
    "--encryption-keys",
    "test1:" + base64.b64encode(b"k" * 32).decode(),
)

ALL_PERMISSIONS = ("api_keys.view", "api_keys.create", "api_keys.edit", "api_keys.delete")


class Stubs:
    """Stubs of both services over a server's channel."""

    channel: grpc.aio.Channel
    port: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def admin(self) -> key_admin_pb2_grpc.KeyAdminStub:
        return key_admin_pb2_grpc.KeyAdminStub(self.channel)

    @property
    def authorize(self) -> authorize_pb2_grpc.AuthorizeStub:
        return authorize_pb2_grpc.AuthorizeStub(self.channel)


@dataclass
class Harness(Stubs):
    """A started server and what a test needs to talk to it."""

    server: ApiKeysServer
    data_dir: Path
    channel: grpc.aio.Channel

    @property
    def port(self) -> int:
        return self.server.port

    def token(
        self,
        *,
        contact_center: str = "cc-1",
        role: str = "admin",
        permissions: Sequence[str] = (),
        sag: bool = False,
        subject: str = "admin-1",
        ttl_seconds: int = 600,
    ) -> str:
        return mint_dev_token(
            self.data_dir / DEV_SIGNING_KEY_FILE,
            subject=subject,
            contact_center_id=contact_center,
            role=role,
            permissions=list(permissions),
            sag=sag,
            ttl_seconds=ttl_seconds,
        )

    def auth(self, token: str | None = None, **claims: Any) -> tuple[tuple[str, str], ...]:
        """Call metadata carrying ``token`` (or one minted from ``claims``)."""
        return (("authorization", f"Bearer {token or self.token(**claims)}"),)


@asynccontextmanager
async def running_server(
    data_dir: Path,
    *,
    args: Sequence[str] = (),
    wiring: Wiring | None = None,
    **overrides: Any,
) -> AsyncIterator[Harness]:
    """Starts the real server on 127.0.0.1:0 and stops it afterwards.

    The environment is ignored so that a developer's ``APIKEYS_*`` variables
    cannot change what a test runs against. ``wiring`` replaces parts of the
    server, as the benchmarks do.
    """
    settings = load_settings(
        ["--listen", "127.0.0.1:0", "--data-dir", str(data_dir), "--log-format", "text", *args],
        environ={},
    )
    if settings.is_postgres and settings.admin_public_keys is None:
        # What the identity service's key file is in production; tokens are
        # still minted with the pair's private half, as on SQLite.
        settings = dataclasses.replace(settings, admin_public_keys=ensure_dev_key_pair(data_dir))
    if overrides:
        settings = dataclasses.replace(settings, **overrides)
    server = ApiKeysServer(prepare(settings), wiring=wiring)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield Harness(server=server, data_dir=data_dir, channel=channel)
    finally:
        await channel.close()
        await server.stop(0)


async def eventually(condition: Callable[[], bool], within: float, step: float = 0.01) -> None:
    """Returns once ``condition()`` holds; ``AssertionError`` if it still
    does not after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition still false after {within:g} s")
        await asyncio.sleep(step)
