"""``Check`` and ``CheckBatch`` agree with the reference model in
``tests.property.model`` for arbitrary keys, methods and paths, on each
backend: route matching, scope implication and the order of reasons, with
every key answered as its own contact center's."""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from server.domain.scopes import SCOPE_CATALOG
from tests.harness import Harness
from tests.property import model
from tests.property.strategies import key_shaped, text_values, weighted
from voiso.apikeys.v1 import authorize_pb2 as pb
from voiso.apikeys.v1 import key_admin_pb2

ROUTES = model.packaged_routes()
MAX_BATCH = 100
# Each contact center's keys, by scope set: manage scopes (which imply their
# read), unrelated scopes, the whole catalog, and scopes both centers hold.
KEY_SCOPES = {
    "cc-a": [
        ["campaigns.manage"],
        ["users.read", "tasks.webhooks.manage"],
        ["billing.balance.read"],
    ],
    "cc-b": [["campaigns.read"], ["messaging.conversations.manage"], sorted(SCOPE_CATALOG)],
}


@dataclass
class Keys:
    """Live keys by secret, and secrets of deleted keys."""

    live: dict[str, model.Key] = field(repr=False)
    deleted: list[str] = field(repr=False)


@pytest.fixture
async def keys(harness_on: Harness) -> Keys:
    live: dict[str, model.Key] = {}
    for center, scope_sets in KEY_SCOPES.items():
        auth = harness_on.auth(contact_center=center)
        for scopes in scope_sets:
            created = await harness_on.admin.CreateKey(
                key_admin_pb2.CreateKeyRequest(name="k", scopes=scopes), metadata=auth
            )
            live[created.secret] = model.Key(created.key.id, center, frozenset(scopes))
    auth = harness_on.auth(contact_center="cc-a")
    gone = await harness_on.admin.CreateKey(
        key_admin_pb2.CreateKeyRequest(name="gone", scopes=["users.read"]), metadata=auth
    )
    await harness_on.admin.DeleteKey(key_admin_pb2.DeleteKeyRequest(id=gone.key.id), metadata=auth)
    return Keys(live=live, deleted=[gone.secret])


def secrets(keys: Keys) -> st.SearchStrategy[str]:
    """Issued keys, deleted keys, look-alikes with one character changed,
    well-formed keys no one issued, and anything else."""
    issued = st.sampled_from(sorted(keys.live))
    return weighted(
        (8, issued),
        (1, st.sampled_from(keys.deleted)),
        (
            1,
            st.builds(
                lambda key, at, char: key[:at] + char + key[at + 1 :],
                issued,
                st.integers(0, 52),
                st.sampled_from(model.BASE62 + "_-é\x00"),
            ),
        ),
        (1, key_shaped()),
        (1, st.sampled_from(["", "Bearer x", "vsk_"])),
        (1, text_values(long=False)),
    )


METHODS = weighted(
    (8, st.sampled_from(["GET", "HEAD", "POST", "DELETE"])),
    (
        1,
        st.sampled_from(
            ["PUT", "PATCH", "get", "Get", "head", "OPTIONS", "TRACE", " GET", "GET\x00"]
        ),
    ),
    (1, st.text(max_size=8)),
)

# One request-path segment: plain, percent-encoded (allowed, aliasing, once
# or twice), dot segments, separators, ";" and anything at all.
SEGMENTS = weighted(
    (6, st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=1, max_size=12)),
    (2, st.text(alphabet="".join(sorted(model.PCHAR - {"%"})), min_size=1, max_size=8)),
    (
        2,
        st.sampled_from(
            [
                ".",
                "..",
                "%2e",
                "%2E%2E",
                "%252e",
                "%2F",
                "%2f",
                "%5C",
                "\\",
                "%00",
                "%41",
                "%20",
                "%3B",
                "a;b",
                "%zz",
                "%",
                "%4",
                "é",
                "%C3%A9",
                "{id}",
                "a b",
                "a#b",
                "a?b",
                "%7E",
                "%25",
            ]
        ),
    ),
    (1, st.text(max_size=6)),
)

QUERIES = weighted(
    (6, st.just("")),
    (2, st.text(alphabet="".join(chr(c) for c in range(0x21, 0x7F)), max_size=20).map("?".__add__)),
    (1, st.text(max_size=10).map("?".__add__)),
    (1, st.sampled_from(["#frag", "?a=1#frag", "?", "??", "?a b"])),
)


def one_in(draw: st.DrawFn, count: int) -> bool:
    """True about once in ``count`` draws (and shrinking towards False)."""
    return draw(st.sampled_from([False] * (count - 1) + [True]))


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str]:
    """A method and path built from a route of the table (parameters filled
    with arbitrary segments, literals and the method sometimes changed),
    then perhaps made hostile; or anything at all."""
    if one_in(draw, 10):
        return draw(METHODS), draw(st.sampled_from(["", "/"]) | text_values(long=False))
    route = draw(st.sampled_from(ROUTES))
    method = route.method
    if one_in(draw, 4):
        method = draw(METHODS)
    elif method == "GET" and one_in(draw, 3):
        method = "HEAD"
    parts = []
    for part in route.segments:
        if part is None or one_in(draw, 20):
            parts.append(draw(SEGMENTS))
        elif one_in(draw, 30):
            parts.append(part.upper())
        else:
            parts.append(part)
    if one_in(draw, 6):
        extra = draw(st.sampled_from(["", ".", "..", "x", "%2e%2e"]))
        parts.insert(draw(st.integers(0, len(parts))), extra)
    path = "/" + "/".join(parts)
    if one_in(draw, 10):
        path = draw(st.sampled_from(["", "/", "//"])) + path + draw(st.sampled_from(["", "/"]))
    if one_in(draw, 50):
        path = path + "x" * draw(st.integers(2000, 2100))
    return method, path + draw(QUERIES)


def assert_agrees(response: pb.CheckResponse, expected: model.Expected) -> None:
    assert pb.Reason.Name(response.reason) == expected.reason
    assert response.allowed == expected.allowed
    assert response.route == expected.route
    assert list(response.required_scopes) == list(expected.required_scopes)
    if expected.key is None:
        assert (response.key_id, response.contact_center_id) == ("", "")
    else:
        assert response.key_id == expected.key.id
        assert response.contact_center_id == expected.key.contact_center_id
        assert set(response.granted_scopes) >= expected.key.scopes


async def check(h: Harness, request: Any, rpc: str) -> tuple[grpc.StatusCode, Any]:
    try:
        return grpc.StatusCode.OK, await getattr(h.authorize, rpc)(request)
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc


@given(data=st.data())
async def test_check_agrees_with_the_reference_model(
    harness_on: Harness, keys: Keys, data: st.DataObject
) -> None:
    key = data.draw(secrets(keys), label="key")
    method, path = data.draw(requests(), label="request")
    code, answer = await check(
        harness_on, pb.CheckRequest(key=key, method=method, path=path), "Check"
    )
    event("Check")
    if not method or not path:
        assert code == grpc.StatusCode.INVALID_ARGUMENT, answer
        return
    assert code == grpc.StatusCode.OK, answer
    expected = model.expect(ROUTES, keys.live, key, method, path)
    event(f"Check: {expected.reason}")
    assert_agrees(answer, expected)


@given(data=st.data())
async def test_check_batch_agrees_with_the_reference_model(
    harness_on: Harness, keys: Keys, data: st.DataObject
) -> None:
    items = data.draw(
        st.one_of(
            st.lists(
                st.tuples(secrets(keys), requests()).map(lambda item: (item[0], *item[1])),
                min_size=1,
                max_size=12,
            ),
            st.lists(
                st.tuples(secrets(keys), requests()).map(lambda item: (item[0], *item[1])),
                max_size=0,
            ),
            st.integers(MAX_BATCH + 1, 3 * MAX_BATCH).map(
                lambda count: [("", "GET", "/api/v4/users")] * count
            ),
        ),
        label="checks",
    )
    request = pb.CheckBatchRequest(
        checks=[pb.CheckRequest(key=key, method=method, path=path) for key, method, path in items]
    )
    code, answer = await check(harness_on, request, "CheckBatch")
    event("CheckBatch")
    if not 1 <= len(items) <= MAX_BATCH or any(not m or not p for _, m, p in items):
        assert code == grpc.StatusCode.INVALID_ARGUMENT, answer
        return
    assert code == grpc.StatusCode.OK, answer
    assert len(answer.results) == len(items)
    for result, (key, method, path) in zip(answer.results, items, strict=True):
        assert_agrees(result, model.expect(ROUTES, keys.live, key, method, path))
