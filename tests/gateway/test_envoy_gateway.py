"""deploy/envoy/envoy.yaml run by the real Envoy, in front of a small upstream
that records what reaches it, authorizing each request with the real service
(in-process): every answer is checked as an HTTP client and the API behind
the gateway see it."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from bench.envoy import running_envoy
from server.domain.keys import generate_key
from tests.harness import Harness, running_server
from tests.replicas.processes import free_port
from voiso.apikeys.v1 import key_admin_pb2 as pb

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "envoy" / "envoy.yaml"
LISTEN_PORT, UPSTREAM_PORT, SERVICE_PORT = (
    "port_value: 8000",
    "port_value: 8080",
    "port_value: 50051",
)
READY_TIMEOUT_S = 15.0

pytestmark = pytest.mark.timeout(30)


class Upstream:
    """An HTTP server answering 200 to everything, keeping each request's headers."""

    def __init__(self) -> None:
        self.received: list[dict[str, list[str]]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                headers: dict[str, list[str]] = {}
                for name, value in self.headers.items():
                    headers.setdefault(name.lower(), []).append(value)
                received.append(headers)
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])


@contextmanager
def upstream() -> Iterator[Upstream]:
    api = Upstream()
    thread = threading.Thread(target=api.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        api.server.shutdown()
        api.server.server_close()


def gateway_config(listen: int, api: int, service: int) -> str:
    config = CONFIG.read_text()
    for line in (LISTEN_PORT, UPSTREAM_PORT, SERVICE_PORT):
        assert config.count(line) == 1, line
    return (
        config.replace(LISTEN_PORT, f"port_value: {listen}")
        .replace(UPSTREAM_PORT, f"port_value: {api}")
        .replace(SERVICE_PORT, f"port_value: {service}")
    )


async def new_key(h: Harness, scopes: list[str]) -> tuple[str, str]:
    created = await h.admin.CreateKey(
        pb.CreateKeyRequest(name="gateway", scopes=scopes), metadata=h.auth(contact_center="cc-7")
    )
    return created.key.id, created.secret


def assert_denied(
    response: httpx.Response, status: int, reason: str, *, challenge: bool = False
) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = json.loads(response.content)
    assert set(body) == {"error"}
    assert body["error"]["status"] == status
    assert body["error"]["reason"] == reason
    assert body["error"]["message"]
    assert (response.headers.get("www-authenticate") == "Bearer") is challenge


async def wait_until_ready(client: httpx.AsyncClient, envoy_exited: object) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            await client.get("/api/v4/campaigns")
            return
        except httpx.TransportError:
            assert callable(envoy_exited)
            exited = envoy_exited()
            assert exited is None, exited
            assert time.monotonic() < deadline, "envoy did not answer in time"
            await asyncio.sleep(0.1)


async def test_envoy_authorizes_each_request_through_the_service(tmp_path: Path) -> None:
    listen = free_port()
    async with running_server(tmp_path / "var") as h:
        key_id, key = await new_key(h, ["campaigns.read", "users.read"])
        _, other_key = await new_key(h, ["users.read"])
        with (
            upstream() as api,
            running_envoy(gateway_config(listen, api.port, h.port)) as envoy,
        ):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{listen}") as client:
                await wait_until_ready(client, envoy.exited)
                api.received.clear()

                allowed = await client.get(
                    "/api/v4/campaigns?page=2",
                    headers={
                        "authorization": f"Bearer {key}",
                        "x-apikey-id": "key_forged",
                        "x-contact-center-id": "cc-forged",
                        "x-apikey-scopes": "admin",
                    },
                )
                assert allowed.status_code == 200
                assert allowed.text == "ok"
                [seen] = api.received
                assert seen["x-apikey-id"] == [key_id]
                assert seen["x-contact-center-id"] == ["cc-7"]
                assert seen["x-apikey-scopes"] == ["campaigns.read,users.read"]
                assert "authorization" not in seen

                denials = [
                    ("/api/v4/campaigns", {}, 401, "REASON_KEY_MALFORMED"),
                    (
                        "/api/v4/campaigns",
                        {"authorization": f"Basic {key}"},
                        401,
                        "REASON_KEY_MALFORMED",
                    ),
                    (
                        "/api/v4/campaigns",
                        {"authorization": "Bearer not-a-key"},
                        401,
                        "REASON_KEY_MALFORMED",
                    ),
                    (
                        "/api/v4/campaigns",
                        {"authorization": f"Bearer {generate_key()}", "x-apikey-id": key_id},
                        401,
                        "REASON_KEY_NOT_FOUND",
                    ),
                    (
                        "/api/v4/campaigns",
                        {"authorization": f"Bearer {other_key}"},
                        403,
                        "REASON_SCOPE_MISSING",
                    ),
                    (
                        "/api/v4/no-such-thing",
                        {"authorization": f"Bearer {key}"},
                        404,
                        "REASON_ROUTE_NOT_FOUND",
                    ),
                ]
                for path, headers, status, reason in denials:
                    assert_denied(
                        await client.get(path, headers=headers),
                        status,
                        reason,
                        challenge=status == 401,
                    )
                # Only the one allowed request ever reached the API.
                assert len(api.received) == 1
