"""Every KeyAdmin RPC, driven with arbitrary input by arbitrary actors
against the real server on each backend: nothing fails internally, no error
repeats what the caller sent, and no tenant ever sees, changes or reveals
another tenant's key."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from hypothesis import event, given
from hypothesis import strategies as st

from server.domain.scopes import SCOPE_CATALOG
from tests.api.rpc import error_bytes
from tests.harness import ALL_PERMISSIONS, Harness
from tests.property.strategies import (
    claim_values,
    mask_paths,
    page_sizes,
    scope_lists,
    text_values,
    weighted,
)
from voiso.apikeys.v1 import api_key_pb2
from voiso.apikeys.v1 import key_admin_pb2 as pb

OWNER = "cc-owner"
FUZZ_CENTERS = ("cc-fuzz", "cc-fuzz-2")
# Server-authored words a caller may also happen to send: field names, scope
# names and the updatable fields an update_mask error lists.
FIELD_WORDS = " ".join(
    [
        "name, description, scopes",
        "update_mask.paths page_token page_size query key_id id",
        *SCOPE_CATALOG,
    ]
)
VISIBLE_ASCII = "".join(chr(code) for code in range(0x20, 0x7F))
# The shortest value whose appearance in an error counts as an echo.
ECHO_MIN_LENGTH = 8
# Codes an admin call may end with; INTERNAL, UNKNOWN or UNAVAILABLE (a
# healthy store) would be a bug.
CALLER_CODES = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)


@dataclass
class Tenants:
    """What each contact center owns, as the test saw it created."""

    # Kept out of the repr, which hypothesis prints with a failing example.
    owner_key: pb.CreateKeyResponse = field(repr=False)
    live: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set), repr=False)
    ever: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set), repr=False)
    secrets: dict[str, str] = field(default_factory=dict, repr=False)

    def ids(self) -> list[str]:
        return sorted({self.owner_key.key.id, *self.secrets})


@pytest.fixture
async def tenants(harness_on: Harness) -> Tenants:
    """A key of ``OWNER``'s, which no fuzzed actor belongs to."""
    created = await harness_on.admin.CreateKey(
        pb.CreateKeyRequest(name="owner's key", scopes=["campaigns.read"]),
        metadata=harness_on.auth(contact_center=OWNER),
    )
    return Tenants(owner_key=created)


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    response: Any = None
    error: grpc.aio.AioRpcError | None = None


async def outcome(call: Awaitable[Any]) -> Outcome:
    try:
        return Outcome(grpc.StatusCode.OK, response=await call)
    except grpc.aio.AioRpcError as exc:
        return Outcome(exc.code(), error=exc)


def actors() -> st.SearchStrategy[dict[str, Any]]:
    """Claims of admin tokens of any tenant but ``OWNER``."""
    return st.fixed_dictionaries(
        {
            # Mostly tokens that verify, so that most calls reach the domain.
            "contact_center": weighted(
                (4, st.sampled_from(FUZZ_CENTERS)), (1, claim_values())
            ).filter(lambda center: center != OWNER),
            "subject": weighted((4, st.just("admin-1")), (1, claim_values())),
            "role": st.sampled_from(["admin", "admin", "admin", "viewer", "Admin"]),
            "sag": st.sampled_from([False, False, True]),
            "permissions": st.lists(st.sampled_from(ALL_PERMISSIONS), unique=True),
        }
    )


def key_ids(tenants: Tenants) -> st.SearchStrategy[str]:
    """Ids of keys (the owner's among them) and anything else."""
    # Drawn as an index, so that the choices hypothesis makes do not depend
    # on how many keys earlier examples created.
    known = st.integers(0, 1000).map(lambda index: tenants.ids()[index % len(tenants.ids())])
    return weighted((3, known), (2, text_values()))


def requests(tenants: Tenants) -> dict[str, st.SearchStrategy[tuple[Any, list[str]]]]:
    """Per RPC: a request and the strings it carries."""
    ids = key_ids(tenants)
    return {
        "CreateKey": st.builds(
            lambda name, description, scopes: (
                pb.CreateKeyRequest(name=name, description=description, scopes=scopes),
                [name, description, *scopes],
            ),
            st.one_of(st.just("CRM sync"), text_values()),
            st.one_of(st.just(""), text_values()),
            st.one_of(st.just(["users.read"]), scope_lists()),
        ),
        "GetKey": ids.map(lambda key_id: (pb.GetKeyRequest(id=key_id), [key_id])),
        "ListKeys": st.builds(
            lambda query, size, token: (
                pb.ListKeysRequest(query=query, page_size=size, page_token=token),
                [query, token],
            ),
            st.one_of(st.just(""), text_values()),
            page_sizes(),
            st.one_of(st.just(""), text_values()),
        ),
        "UpdateKey": st.builds(
            lambda key_id, name, description, scopes, paths: (
                pb.UpdateKeyRequest(
                    id=key_id,
                    name=name,
                    description=description,
                    scopes=scopes,
                    update_mask=FieldMask(paths=paths),
                ),
                [key_id, name, description, *scopes, *paths],
            ),
            ids,
            st.one_of(st.just("renamed"), text_values()),
            st.one_of(st.just(""), text_values()),
            st.one_of(st.just(["users.read"]), scope_lists()),
            mask_paths(),
        ),
        "DeleteKey": ids.map(lambda key_id: (pb.DeleteKeyRequest(id=key_id), [key_id])),
        "RevealKey": ids.map(lambda key_id: (pb.RevealKeyRequest(id=key_id), [key_id])),
        "ListScopes": st.just((pb.ListScopesRequest(), [])),
        "ListAuditEvents": st.builds(
            lambda key_id, size, token: (
                pb.ListAuditEventsRequest(key_id=key_id, page_size=size, page_token=token),
                [key_id, token],
            ),
            st.one_of(st.just(""), ids),
            page_sizes(),
            st.one_of(st.just(""), text_values()),
        ),
    }


def assert_nothing_echoed(error: grpc.aio.AioRpcError, sent: list[str]) -> None:
    carried = error_bytes(error)
    for value in sent:
        for form in {value, value.strip()}:
            if len(form) >= ECHO_MIN_LENGTH and form not in FIELD_WORDS:
                assert form.encode() not in carried, f"the error repeats {form!r}"


def assert_tenancy(tenants: Tenants, center: str, rpc: str, request: Any, got: Outcome) -> None:
    """An actor succeeds only on its own contact center's keys."""
    own = tenants.live[center]
    if rpc in ("GetKey", "UpdateKey", "DeleteKey", "RevealKey"):
        if request.id == tenants.owner_key.key.id:
            assert got.code in (
                grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.PERMISSION_DENIED,
            ), got.code
        if got.code == grpc.StatusCode.OK:
            assert request.id in own, "an actor reached a key of another contact center"
    if got.code != grpc.StatusCode.OK:
        return
    if rpc == "CreateKey":
        tenants.live[center].add(got.response.key.id)
        tenants.ever[center].add(got.response.key.id)
        tenants.secrets[got.response.key.id] = got.response.secret
    elif rpc == "DeleteKey":
        own.discard(request.id)
    elif rpc == "RevealKey":
        assert got.response.secret == tenants.secrets[request.id]
    elif rpc == "ListKeys":
        assert {key.id for key in got.response.keys} <= own
        assert got.response.total_size <= len(own)
    elif rpc == "ListAuditEvents":
        assert {audit.key_id for audit in got.response.events} <= tenants.ever[center]
    elif rpc == "ListScopes":
        assert sorted(scope.name for scope in got.response.scopes) == sorted(SCOPE_CATALOG)


async def assert_owner_key_untouched(h: Harness, tenants: Tenants) -> None:
    auth = h.auth(contact_center=OWNER)
    key = tenants.owner_key.key
    now = await h.admin.GetKey(pb.GetKeyRequest(id=key.id), metadata=auth)
    assert (now.key.name, list(now.key.scopes), now.key.update_time) == (
        key.name,
        list(key.scopes),
        key.update_time,
    )
    audit = await h.admin.ListAuditEvents(pb.ListAuditEventsRequest(key_id=key.id), metadata=auth)
    assert [event.action for event in audit.events] == [api_key_pb2.AUDIT_ACTION_CREATED], (
        "someone else acted on the key"
    )


@given(data=st.data())
async def test_key_admin_answers_every_input_safely_and_within_its_tenant(
    harness_on: Harness, tenants: Tenants, data: st.DataObject
) -> None:
    claims = data.draw(actors(), label="claims")
    by_rpc = requests(tenants)
    rpc = data.draw(st.sampled_from(sorted(by_rpc)), label="rpc")
    request, sent = data.draw(by_rpc[rpc], label="request")
    # Now and then a header that is no token at all (metadata values are
    # visible ASCII).
    header = data.draw(
        weighted((19, st.none()), (1, st.text(alphabet=VISIBLE_ASCII, max_size=80))),
        label="raw authorization",
    )
    metadata = harness_on.auth(**claims) if header is None else (("authorization", header),)
    method: Callable[..., Awaitable[Any]] = getattr(harness_on.admin, rpc)
    got = await outcome(method(request, metadata=metadata))
    event(rpc)
    event(f"{rpc}: {got.code.name}")
    # The token is judged when the call opens, before its message arrives;
    # past the server's message limit gRPC then refuses the message unread.
    if header is not None:
        assert got.code == grpc.StatusCode.UNAUTHENTICATED, got.code
        assert got.error is not None
        assert_nothing_echoed(got.error, [header])
        return
    if request.ByteSize() > harness_on.server.settings.max_message_bytes:
        if got.code == grpc.StatusCode.UNAUTHENTICATED:
            small = await outcome(
                harness_on.admin.ListScopes(pb.ListScopesRequest(), metadata=metadata)
            )
            assert small.code == grpc.StatusCode.UNAUTHENTICATED, "a good token was refused"
        else:
            assert got.code == grpc.StatusCode.RESOURCE_EXHAUSTED, got.code
        return
    allowed = CALLER_CODES | (
        {grpc.StatusCode.RESOURCE_EXHAUSTED} if rpc == "CreateKey" else frozenset()
    )
    assert got.code in allowed, got.error
    if got.error is not None:
        assert_nothing_echoed(got.error, [*sent, claims["subject"]])
    assert_tenancy(tenants, claims["contact_center"], rpc, request, got)
    await assert_owner_key_untouched(harness_on, tenants)


SEARCH_CENTERS = itertools.count()
# Letters whose case folding is not one-to-one, LIKE wildcards and their
# escape, combining marks and astral characters.
SEARCH_ALPHABET = "aAbBsSßẞİIi\u0131Σ\u03c3ςﬁ%_\\ -é\u0301😀"


@st.composite
def searches(draw: st.DrawFn) -> tuple[list[tuple[str, str]], str]:
    """A few keys' names and descriptions, and a query: a piece of one of
    them with its case changed, or anything in the same alphabet."""
    name = st.text(alphabet=SEARCH_ALPHABET, min_size=1, max_size=10).filter(str.strip)
    keys = draw(
        st.lists(st.tuples(name, st.text(alphabet=SEARCH_ALPHABET, max_size=10)), max_size=4)
    )
    pieces = [text for pair in keys for text in pair if text]
    if pieces and draw(st.booleans()):
        piece = draw(st.sampled_from(pieces))
        start = draw(st.integers(0, len(piece)))
        end = draw(st.integers(start, len(piece)))
        query = piece[start:end]
        if draw(st.booleans()):
            query = query.swapcase()
    else:
        query = draw(st.text(alphabet=SEARCH_ALPHABET, max_size=4))
    return keys, query


def matches(query: str, name: str, description: str) -> bool:
    """The contract's search: a case-insensitive substring of the name or
    the description (both trimmed as stored), with no wildcards."""
    folded = query.strip().casefold()
    return folded in name.strip().casefold() or folded in description.strip().casefold()


@given(search=searches())
async def test_list_keys_finds_exactly_the_keys_whose_text_contains_the_query(
    harness_on: Harness, search: tuple[list[tuple[str, str]], str]
) -> None:
    keys, query = search
    # A contact center of the example's own, so earlier examples' keys
    # cannot match.
    auth = harness_on.auth(contact_center=f"cc-search-{next(SEARCH_CENTERS)}")
    expected = set()
    for name, description in keys:
        created = await harness_on.admin.CreateKey(
            pb.CreateKeyRequest(name=name, description=description, scopes=["users.read"]),
            metadata=auth,
        )
        if matches(query, name, description):
            expected.add(created.key.id)
    listed = await harness_on.admin.ListKeys(pb.ListKeysRequest(query=query), metadata=auth)
    assert {key.id for key in listed.keys} == expected
    assert listed.total_size == len(expected)
    paged, token = [], ""
    while True:
        page = await harness_on.admin.ListKeys(
            pb.ListKeysRequest(query=query, page_size=1, page_token=token), metadata=auth
        )
        paged.extend(key.id for key in page.keys)
        token = page.next_page_token
        if not token:
            break
    assert paged == [key.id for key in listed.keys]
