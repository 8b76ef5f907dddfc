"""The ``Check`` path sends one prebuilt response to every caller of the same
decision: it must be derived from the decision alone, and nothing may change it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from server.api import convert
from server.api.authorize import AuthorizeServicer
from server.domain.authorize import Authorizer
from server.domain.decisions import Decision
from server.domain.keys import KeyHasher, generate_key, last4
from server.domain.records import KeyRecord
from server.domain.routes import RouteTable
from server.domain.scopes import SCOPE_CATALOG
from server.domain.usage import UsageRecorder
from tests.conftest import KeyFactory
from voiso.apikeys.v1 import authorize_pb2 as az

HASHER = KeyHasher(b"response-memo-secret".ljust(32, b"."))
KEY = generate_key()
RECORD = KeyFactory()(lookup_hash=HASHER.lookup_hash(KEY), last4=last4(KEY))


class OneKey:
    """The storage Protocol's lookup side, holding one key in memory."""

    def cached(self, lookup_hash: bytes) -> KeyRecord | None:
        return RECORD if lookup_hash == RECORD.lookup_hash else None

    async def find_by_lookup_hash(self, lookup_hash: bytes) -> KeyRecord | None:
        return self.cached(lookup_hash)

    async def record_last_used(self, uses: Mapping[str, datetime]) -> None:
        return None


class NoDeadline:
    """The servicer context of a call without a deadline."""

    def time_remaining(self) -> float | None:
        return None


def authorizer() -> Authorizer:
    keys: Any = OneKey()
    return Authorizer(
        keys=keys,
        hasher=HASHER,
        routes=RouteTable.load(known_scopes=SCOPE_CATALOG.keys()),
        usage=UsageRecorder(keys, interval=3600),
        store_timeout=1.0,
    )


def test_every_response_field_comes_from_the_decision() -> None:
    # The memo finds a response by its decision; a response field that the
    # decision does not hold (a revision, a TTL) would be sent to callers it
    # does not belong to.
    decision_fields = {field.name for field in dataclasses.fields(Decision)}
    assert {field.name for field in az.CheckResponse.DESCRIPTOR.fields} <= decision_fields


async def test_repeated_checks_share_one_response_that_nothing_changes() -> None:
    checks = AuthorizeServicer(authorizer())
    request = az.CheckRequest(key=KEY, method="GET", path="/api/v4/campaigns")
    context: Any = NoDeadline()
    first = await checks.Check(request, context)
    sent = first.SerializeToString()
    batch = await checks.CheckBatch(az.CheckBatchRequest(checks=[request] * 3), context)
    batch.results[0].allowed = False
    batch.results[1].granted_scopes.append("users.read")
    again = await checks.Check(request, context)
    assert again is first
    assert again.SerializeToString() == sent
    assert again.allowed
    assert list(again.granted_scopes) == ["campaigns.read"]


async def test_the_shared_response_is_the_decisions_wire_form() -> None:
    checks = AuthorizeServicer(authorizer())
    context: Any = NoDeadline()
    for method, path in (("GET", "/api/v4/campaigns"), ("GET", "/api/v4/users"), ("GET", "/x")):
        request = az.CheckRequest(key=KEY, method=method, path=path)
        response = await checks.Check(request, context)
        decision = await authorizer().check(request.key, request.method, request.path)
        assert response == convert.check_response(decision)
