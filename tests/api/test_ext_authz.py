"""envoy.service.auth.v3.Authorization/Check over a real channel: the answer
for each outcome, including a store that cannot answer, which a gateway in
front cannot provoke on demand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
from google.rpc import code_pb2

from server.api.ext_authz import DENIALS
from server.app import Storage, Wiring
from server.domain.decisions import Reason
from server.domain.errors import StoreUnavailable
from server.domain.keys import generate_key
from server.store import open_store
from tests.harness import Harness, running_server
from voiso.apikeys.v1 import key_admin_pb2 as pb

CHECK = "/envoy.service.auth.v3.Authorization/Check"


def envoy_check(
    method: str, path: str, headers: dict[str, str], address: str = "203.0.113.9"
) -> external_auth_pb2.CheckRequest:
    return external_auth_pb2.CheckRequest(
        attributes=attribute_context_pb2.AttributeContext(
            source=attribute_context_pb2.AttributeContext.Peer(
                address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(address=address, port_value=41000)
                )
            ),
            request=attribute_context_pb2.AttributeContext.Request(
                http=attribute_context_pb2.AttributeContext.HttpRequest(
                    method=method, path=path, headers=headers
                )
            ),
        )
    )


async def call(
    h: Harness, request: external_auth_pb2.CheckRequest
) -> external_auth_pb2.CheckResponse:
    send = h.channel.unary_unary(
        CHECK,
        request_serializer=external_auth_pb2.CheckRequest.SerializeToString,
        response_deserializer=external_auth_pb2.CheckResponse.FromString,
    )
    response: external_auth_pb2.CheckResponse = await send(request, timeout=10)
    return response


def headers_of(options: Any) -> dict[str, str]:
    assert all(
        option.append_action == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
        for option in options
    )
    return {option.header.key: option.header.value for option in options}


def denial(
    response: external_auth_pb2.CheckResponse,
) -> tuple[int, int, dict[str, Any], dict[str, str]]:
    assert response.WhichOneof("http_response") == "denied_response"
    denied = response.denied_response
    return (
        response.status.code,
        denied.status.code,
        json.loads(denied.body),
        headers_of(denied.headers),
    )


async def test_an_allowed_request_goes_upstream_with_the_keys_identity(tmp_path: Path) -> None:
    async with running_server(tmp_path / "var") as h:
        created = await h.admin.CreateKey(
            pb.CreateKeyRequest(name="gw", scopes=["users.read", "campaigns.manage"]),
            metadata=h.auth(),
        )
        response = await call(
            h,
            envoy_check(
                "GET",
                "/api/v4/users?page=2&fields=name",
                {"authorization": f"bearer {created.secret}"},
            ),
        )
    assert response.status.code == code_pb2.OK
    assert response.WhichOneof("http_response") == "ok_response"
    assert headers_of(response.ok_response.headers) == {
        "x-apikey-id": created.key.id,
        "x-contact-center-id": "cc-1",
        "x-apikey-scopes": "campaigns.manage,campaigns.read,users.read",
    }
    assert list(response.ok_response.headers_to_remove) == ["authorization"]


async def test_each_denial_has_its_code_status_and_json_body(tmp_path: Path) -> None:
    async with running_server(tmp_path / "var") as h:
        created = await h.admin.CreateKey(
            pb.CreateKeyRequest(name="gw", scopes=["users.read"]), metadata=h.auth()
        )
        bearer = {"authorization": f"Bearer {created.secret}"}
        cases = {
            "missing": (envoy_check("GET", "/api/v4/users", {}), 16, 401, "REASON_KEY_MALFORMED"),
            "empty bearer": (
                envoy_check("GET", "/api/v4/users", {"authorization": "Bearer "}),
                16,
                401,
                "REASON_KEY_MALFORMED",
            ),
            "unknown": (
                envoy_check("GET", "/api/v4/users", {"authorization": f"Bearer {generate_key()}"}),
                16,
                401,
                "REASON_KEY_NOT_FOUND",
            ),
            "scope": (
                envoy_check("GET", "/api/v4/campaigns", bearer),
                7,
                403,
                "REASON_SCOPE_MISSING",
            ),
            "route": (
                envoy_check("GET", "/api/v4/nothing", bearer),
                5,
                404,
                "REASON_ROUTE_NOT_FOUND",
            ),
        }
        for name, (request, code, http_status, reason) in cases.items():
            got_code, got_status, body, headers = denial(await call(h, request))
            assert (got_code, got_status) == (code, http_status), name
            assert body["error"]["status"] == http_status, name
            assert body["error"]["reason"] == reason, name
            assert body["error"]["message"], name
            assert headers["content-type"] == "application/json", name
            assert ("www-authenticate" in headers) is (http_status == 401), name
            if http_status == 401:
                assert headers["www-authenticate"] == "Bearer"


class OutageStore:
    """The real store, whose key lookups fail while ``down``."""

    def __init__(self, store: Storage) -> None:
        self._store = store
        self.down = False

    async def find_by_lookup_hash(self, lookup_hash: bytes) -> Any:
        if self.down:
            raise StoreUnavailable("the database is down")
        return await self._store.find_by_lookup_hash(lookup_hash)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


async def test_a_store_that_cannot_answer_is_a_503(tmp_path: Path) -> None:
    stores: list[OutageStore] = []

    async def opening(url: str) -> Storage:
        stores.append(OutageStore(await open_store(url)))
        return stores[-1]  # type: ignore[return-value]

    async with running_server(tmp_path / "var", wiring=Wiring(open_store=opening)) as h:
        created = await h.admin.CreateKey(
            pb.CreateKeyRequest(name="gw", scopes=["users.read"]), metadata=h.auth()
        )
        stores[0].down = True
        code, status, body, headers = denial(
            await call(
                h,
                envoy_check("GET", "/api/v4/users", {"authorization": f"Bearer {created.secret}"}),
            )
        )
    assert (code, status) == (code_pb2.UNAVAILABLE, 503)
    assert body["error"]["status"] == 503
    assert body["error"]["reason"] == "REASON_UNSPECIFIED"
    assert headers["content-type"] == "application/json"
    assert "www-authenticate" not in headers


def test_every_denying_reason_has_an_answer() -> None:
    denying = {reason for reason in Reason if reason is not Reason.ALLOWED}
    assert set(DENIALS) == denying
