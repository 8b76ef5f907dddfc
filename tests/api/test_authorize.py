"""Authorize.Check over a real channel: routes, scopes, reasons, path
canonicality, revocation and the cache's effect on store queries."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from sqlalchemy import event

from server.domain.keys import KEY_PREFIX, generate_key
from server.domain.routes import RouteTable
from server.domain.scopes import SCOPE_CATALOG, implied_scopes
from server.store import SqlKeyStore
from tests.api.rpc import bad_fields, rpc_error
from tests.domain.test_routes import CONFIRMED, concrete
from tests.harness import Harness, running_server
from voiso.apikeys.v1 import authorize_pb2 as az
from voiso.apikeys.v1 import key_admin_pb2 as pb


async def new_key(h: Harness, scopes: list[str], contact_center: str = "cc-1") -> tuple[str, str]:
    created = await h.admin.CreateKey(
        pb.CreateKeyRequest(name="integration", scopes=scopes),
        metadata=h.auth(contact_center=contact_center),
    )
    return created.key.id, created.secret


async def check(h: Harness, key: str, method: str, path: str) -> az.CheckResponse:
    return await h.authorize.Check(az.CheckRequest(key=key, method=method, path=path))


@contextlib.contextmanager
def counted_queries(h: Harness) -> Iterator[list[str]]:
    """Every SQL query the server's store executes inside the block for the
    calls (transaction control such as BEGIN is not a query, and the change
    feed's background reads and the health probe's writes are not the
    calls')."""
    store = h.server.parts.store
    assert isinstance(store, SqlKeyStore)
    engine = store.engine.sync_engine
    statements: list[str] = []

    def on_execute(*args: Any) -> None:
        statement = args[2]
        if "key_changes" in statement or "write_probes" in statement:
            return
        if statement.split(None, 1)[0].upper() not in ("BEGIN", "COMMIT", "ROLLBACK"):
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", on_execute)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", on_execute)


@pytest.mark.parametrize(("method", "template", "scope"), CONFIRMED)
async def test_confirmed_route_allows_its_scope_and_denies_the_others(
    harness: Harness, method: str, template: str, scope: str
) -> None:
    key_id, secret = await new_key(harness, [scope])
    allowed = await check(harness, secret, method, concrete(template))
    assert allowed.allowed and allowed.reason == az.REASON_ALLOWED
    assert allowed.route == f"{method} {template}"
    assert scope in allowed.required_scopes
    assert allowed.key_id == key_id and allowed.contact_center_id == "cc-1"
    assert scope in allowed.granted_scopes

    others = [s for s in SCOPE_CATALOG if scope not in implied_scopes([s])]
    _, other_secret = await new_key(harness, others)
    denied = await check(harness, other_secret, method, concrete(template))
    assert not denied.allowed and denied.reason == az.REASON_SCOPE_MISSING
    assert denied.route == f"{method} {template}"


async def test_every_scope_reaches_a_route_and_manage_implies_read(harness: Harness) -> None:
    table = RouteTable.load(known_scopes=SCOPE_CATALOG.keys())
    reachable = {scope for route in table.routes for scope in route.required_scopes}
    assert reachable == set(SCOPE_CATALOG)
    _, manage = await new_key(harness, ["campaigns.manage"])
    read = await check(harness, manage, "GET", "/api/v4/campaigns")
    assert read.allowed
    assert list(read.granted_scopes) == ["campaigns.manage", "campaigns.read"]
    _, reader = await new_key(harness, ["campaigns.read"])
    write = await check(harness, reader, "POST", "/api/v4/campaigns/7/pause")
    assert write.reason == az.REASON_SCOPE_MISSING


async def test_each_reason_is_produced_by_a_real_request(harness: Harness) -> None:
    _, secret = await new_key(harness, ["users.read"])
    cases = {
        az.REASON_ALLOWED: (secret, "GET", "/api/v4/users"),
        az.REASON_KEY_MALFORMED: (
            secret[:-1] + ("a" if secret[-1] != "a" else "b"),
            "GET",
            "/api/v4/users",
        ),
        az.REASON_KEY_NOT_FOUND: (generate_key(), "GET", "/api/v4/users"),
        az.REASON_SCOPE_MISSING: (secret, "GET", "/api/v4/campaigns"),
        az.REASON_ROUTE_NOT_FOUND: (secret, "GET", "/api/v4/nothing-here"),
    }
    for reason, (key, method, path) in cases.items():
        response = await check(harness, key, method, path)
        assert response.reason == reason
        assert response.allowed == (reason == az.REASON_ALLOWED)


async def test_head_follows_get_and_the_query_string_is_ignored(harness: Harness) -> None:
    _, secret = await new_key(harness, ["users.read"])
    head = await check(harness, secret, "HEAD", "/api/v4/users")
    assert head.allowed and head.route == "GET /api/v4/users"
    query = await check(harness, secret, "GET", "/api/v4/users?page=2&per_page=50")
    assert query.allowed


NON_CANONICAL = [
    ("GET", "/api/v4/users/"),
    ("GET", "/api/v4//users"),
    ("GET", "//api/v4/users"),
    ("GET", "/api/v4/./users"),
    ("GET", "/api/v4/campaigns/../users"),
    ("GET", "/api/v4/campaigns/%2e%2e/users"),
    ("GET", "/api/v4/campaigns/%2E%2E/users"),
    ("GET", "/api/v4/campaigns/%252e%252e/users"),
    ("GET", "/api/v4/routing/queues/1%2Fusers"),
    ("GET", "/api/v4/routing/queues/1%2fusers"),
    ("GET", "/api/v4/routing/queues/1%5cusers"),
    ("GET", "/api/v4/routing/queues/1\\users"),
    ("GET", "/api/v4/users#fragment"),
    ("GET", "api/v4/users"),
    ("GET", "/api/v4/users\x00"),
    ("GET", "/api/v4/users\n"),
    ("GET", "/api/v4/routing/queues/é"),
    ("GET", "/api/v4/routing/queues/%c3%a9"),
    ("GET", "/api/v4/routing/queues/" + "a" * 5000),
    ("get", "/api/v4/users"),
    ("Get", "/api/v4/users"),
    ("TRACE", "/api/v4/users"),
]


@pytest.mark.parametrize(("method", "path"), NON_CANONICAL)
async def test_non_canonical_requests_are_never_allowed(
    harness: Harness, method: str, path: str
) -> None:
    _, secret = await new_key(harness, list(SCOPE_CATALOG))
    response = await check(harness, secret, method, path)
    assert not response.allowed
    assert response.reason == az.REASON_ROUTE_NOT_FOUND


@pytest.mark.parametrize(
    "key",
    ["", "vsk_", KEY_PREFIX + "a" * 49, "x" * 60_000, "vsk_é" + "a" * 48, "Bearer vsk_abc"],
)
async def test_odd_keys_are_malformed_denials_not_errors(harness: Harness, key: str) -> None:
    response = await check(harness, key, "GET", "/api/v4/users")
    assert not response.allowed and response.reason == az.REASON_KEY_MALFORMED


async def test_empty_method_or_path_is_invalid_argument(harness: Harness) -> None:
    key = generate_key()
    assert bad_fields(await rpc_error(check(harness, key, "", "/api/v4/users"))) == ["method"]
    assert bad_fields(await rpc_error(check(harness, key, "GET", ""))) == ["path"]
    assert bad_fields(await rpc_error(check(harness, key, "", ""))) == ["method", "path"]


async def test_delete_then_check_is_denied_every_time(harness: Harness) -> None:
    auth = harness.auth()
    for _ in range(1000):
        key_id, secret = await new_key(harness, ["users.read"])
        assert (await check(harness, secret, "GET", "/api/v4/users")).allowed
        await harness.admin.DeleteKey(pb.DeleteKeyRequest(id=key_id), metadata=auth)
        after = await check(harness, secret, "GET", "/api/v4/users")
        assert not after.allowed and after.reason == az.REASON_KEY_NOT_FOUND


async def test_updated_scopes_apply_to_the_next_check(harness: Harness) -> None:
    key_id, secret = await new_key(harness, ["users.read"])
    assert (await check(harness, secret, "GET", "/api/v4/users")).allowed
    await harness.admin.UpdateKey(
        pb.UpdateKeyRequest(
            id=key_id, scopes=["campaigns.read"], update_mask=FieldMask(paths=["scopes"])
        ),
        metadata=harness.auth(),
    )
    assert (await check(harness, secret, "GET", "/api/v4/users")).reason == az.REASON_SCOPE_MISSING
    assert (await check(harness, secret, "GET", "/api/v4/campaigns")).allowed


async def test_cached_key_costs_no_store_queries(harness: Harness) -> None:
    _, secret = await new_key(harness, ["users.read"])
    # The change feed brings this server's own create back round and drops
    # the key from the cache; once it has, nothing evicts the key cached next.
    await harness.server.sync_changes()
    assert (await check(harness, secret, "GET", "/api/v4/users")).allowed
    with counted_queries(harness) as statements:
        for _ in range(200):
            assert (await check(harness, secret, "GET", "/api/v4/users")).allowed
    assert statements == []


async def test_unknown_keys_are_looked_up_once_then_remembered(tmp_path: Path) -> None:
    # Remembered for the negative TTL, here long enough that a slow machine
    # cannot outlast it between the two passes.
    async with running_server(tmp_path / "var", args=["--negative-cache-ttl", "300"]) as harness:
        unknown = [generate_key() for _ in range(1000)]
        with counted_queries(harness) as first_pass:
            for key in unknown:
                assert (
                    await check(harness, key, "GET", "/api/v4/users")
                ).reason == az.REASON_KEY_NOT_FOUND
        assert 0 < len(first_pass) <= 1000
        with counted_queries(harness) as second_pass:
            for key in unknown:
                assert (
                    await check(harness, key, "GET", "/api/v4/users")
                ).reason == az.REASON_KEY_NOT_FOUND
        assert second_pass == []


async def test_malformed_keys_cost_no_store_queries(harness: Harness) -> None:
    with counted_queries(harness) as statements:
        for _ in range(500):
            look_alike = KEY_PREFIX + secrets.token_urlsafe(40)[:49]
            response = await check(harness, look_alike, "GET", "/api/v4/users")
            assert response.reason == az.REASON_KEY_MALFORMED
    assert statements == []


async def test_a_bad_checksum_outranks_an_unknown_route(harness: Harness) -> None:
    _, secret = await new_key(harness, ["users.read"])
    near_miss = secret[:-1] + ("a" if secret[-1] != "a" else "b")
    for key in (near_miss, KEY_PREFIX + "A" * 49):
        response = await check(harness, key, "GET", "/api/v4/nothing-here")
        assert response.reason == az.REASON_KEY_MALFORMED


async def test_a_look_alike_of_a_cached_key_is_malformed_without_a_query(
    harness: Harness,
) -> None:
    _, secret = await new_key(harness, ["users.read"])
    # The change feed brings this server's own create back round and drops
    # the key from the cache; once it has, nothing evicts the key cached next.
    await harness.server.sync_changes()
    assert (await check(harness, secret, "GET", "/api/v4/users")).allowed
    with counted_queries(harness) as statements:
        for position in range(len(KEY_PREFIX), len(secret)):
            replacement = "a" if secret[position] != "a" else "b"
            look_alike = secret[:position] + replacement + secret[position + 1 :]
            response = await check(harness, look_alike, "GET", "/api/v4/users")
            assert response.reason == az.REASON_KEY_MALFORMED, position
        assert (await check(harness, secret, "GET", "/api/v4/users")).allowed
    assert statements == []


async def test_a_key_of_one_contact_center_is_reported_with_its_center(harness: Harness) -> None:
    key_id, secret = await new_key(harness, ["users.read"], contact_center="cc-9")
    response = await check(harness, secret, "GET", "/api/v4/users")
    assert (response.key_id, response.contact_center_id) == (key_id, "cc-9")


async def test_check_batch_answers_each_item_as_check_would(harness: Harness) -> None:
    _, secret = await new_key(harness, ["users.read"])
    # The creation moves the server's mark, which answers carry.
    await harness.server.sync_changes()
    items = [
        az.CheckRequest(key=secret, method="GET", path="/api/v4/users"),
        az.CheckRequest(key=secret, method="GET", path="/api/v4/campaigns"),
        az.CheckRequest(key="nope", method="GET", path="/api/v4/users"),
        az.CheckRequest(key=generate_key(), method="GET", path="/api/v4/users"),
    ]
    batch = await harness.authorize.CheckBatch(az.CheckBatchRequest(checks=items))
    singles = [await harness.authorize.Check(item) for item in items]
    assert list(batch.results) == singles
    too_many = await rpc_error(
        harness.authorize.CheckBatch(az.CheckBatchRequest(checks=items * 26))
    )
    assert bad_fields(too_many) == ["checks"]
    empty_path = await rpc_error(
        harness.authorize.CheckBatch(
            az.CheckBatchRequest(checks=[items[0], az.CheckRequest(key=secret, method="GET")])
        )
    )
    assert bad_fields(empty_path) == ["checks[1].path"]


async def test_last_used_time_is_recorded_within_a_flush(harness: Harness) -> None:
    key_id, secret = await new_key(harness, ["users.read"])
    assert (await check(harness, secret, "GET", "/api/v4/users")).allowed
    await harness.server.flush_usage()
    key = (await harness.admin.GetKey(pb.GetKeyRequest(id=key_id), metadata=harness.auth())).key
    assert key.HasField("last_used_time")
    assert key.last_used_time.seconds >= key.create_time.seconds


async def test_odd_but_valid_grpc_calls_do_not_break_the_server(harness: Harness) -> None:
    # A raw, undecodable request body is the caller's problem, answered as an
    # error; the server keeps serving.
    call = harness.channel.unary_unary(
        "/voiso.apikeys.v1.Authorize/Check",
        request_serializer=lambda raw: raw,
        response_deserializer=az.CheckResponse.FromString,
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await call(b"\xff\xff\xff\xff")
    assert (
        await check(harness, generate_key(), "GET", "/api/v4/users")
    ).reason == az.REASON_KEY_NOT_FOUND
