"""KeyAdmin over a real channel: every RPC's success path, every error of
docs/API.md's "KeyAdmin errors", permissions alone with SAG on and off, tenancy, limits,
paging and secrecy."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from google.protobuf.field_mask_pb2 import FieldMask

from clients.devtoken import DEV_SIGNING_KEY_FILE
from server.domain.keys import is_well_formed
from tests.api.rpc import bad_fields, error_bytes, quota_subjects, rpc_error
from tests.harness import ALL_PERMISSIONS, Harness
from voiso.apikeys.v1 import api_key_pb2
from voiso.apikeys.v1 import key_admin_pb2 as pb

Call = Callable[[Harness, Any, str], Awaitable[Any]]


async def create(h: Harness, name: str = "CRM sync", **kwargs: Any) -> pb.CreateKeyResponse:
    claims = kwargs.pop("claims", {})
    request = pb.CreateKeyRequest(
        name=name,
        description=kwargs.pop("description", ""),
        scopes=kwargs.pop("scopes", ["campaigns.read"]),
    )
    return await h.admin.CreateKey(request, metadata=h.auth(**claims))


async def test_create_returns_the_secret_once_and_a_masked_key(harness: Harness) -> None:
    created = await create(
        harness,
        description="nightly export",
        scopes=["reporting.cdrs.read", "campaigns.manage", "reporting.cdrs.read"],
    )
    assert is_well_formed(created.secret)
    key = created.key
    assert key.masked_key == "••••" + created.secret[-4:]
    assert created.secret[:-4] not in key.masked_key
    assert list(key.scopes) == ["campaigns.manage", "reporting.cdrs.read"]
    assert key.name == "CRM sync" and key.description == "nightly export"
    assert key.created_by == "admin-1"
    assert key.create_time.seconds > 0 and key.update_time == key.create_time
    assert not key.HasField("last_used_time")


async def test_get_update_reveal_delete_and_audit(harness: Harness) -> None:
    auth = harness.auth()
    created = await create(harness)
    key_id = created.key.id

    got = await harness.admin.GetKey(pb.GetKeyRequest(id=key_id), metadata=auth)
    assert got.key == created.key

    renamed = await harness.admin.UpdateKey(
        pb.UpdateKeyRequest(id=key_id, name="Renamed", update_mask=FieldMask(paths=["name"])),
        metadata=auth,
    )
    assert renamed.key.name == "Renamed"
    assert list(renamed.key.scopes) == ["campaigns.read"]  # untouched: not in the mask

    everything = await harness.admin.UpdateKey(
        pb.UpdateKeyRequest(
            id=key_id, name="All", description="three fields", scopes=["users.read"]
        ),
        metadata=auth,
    )
    assert (everything.key.name, everything.key.description, list(everything.key.scopes)) == (
        "All",
        "three fields",
        ["users.read"],
    )

    revealed = await harness.admin.RevealKey(pb.RevealKeyRequest(id=key_id), metadata=auth)
    assert revealed.secret == created.secret

    await harness.admin.DeleteKey(pb.DeleteKeyRequest(id=key_id), metadata=auth)
    missing = await rpc_error(harness.admin.GetKey(pb.GetKeyRequest(id=key_id), metadata=auth))
    assert missing.code() == grpc.StatusCode.NOT_FOUND

    audit = await harness.admin.ListAuditEvents(
        pb.ListAuditEventsRequest(key_id=key_id), metadata=auth
    )
    actions = [event.action for event in audit.events]
    assert actions == [
        api_key_pb2.AUDIT_ACTION_DELETED,
        api_key_pb2.AUDIT_ACTION_REVEALED,
        api_key_pb2.AUDIT_ACTION_UPDATED,
        api_key_pb2.AUDIT_ACTION_UPDATED,
        api_key_pb2.AUDIT_ACTION_CREATED,
    ]
    second_update = audit.events[2]
    assert (second_update.old_name, second_update.new_name) == ("Renamed", "All")
    assert list(second_update.old_scopes) == ["campaigns.read"]
    assert list(second_update.new_scopes) == ["users.read"]
    assert all(event.actor_id == "admin-1" for event in audit.events)
    assert created.secret not in str(audit)


# The product's published scope table, as admins read it (domain, scope,
# definition), in its own order.
PUBLISHED_SCOPES = [
    ("Voice", "voice.call.manage", "Start and stop voice calls."),
    ("Campaigns", "campaigns.read", "View information about existing Dialer campaigns."),
    ("Campaigns", "campaigns.manage", "Create, start, update, and stop Dialer campaigns."),
    ("Reporting", "reporting.cdrs.read", "View Call Detail Records."),
    ("Messaging", "messaging.sms.send", "Send an SMS to a phone number."),
    ("Messaging", "messaging.conversations.read", "View digital channels messages."),
    (
        "Messaging",
        "messaging.conversations.manage",
        "Create digital channels conversations and messages.",
    ),
    ("Messaging", "messaging.channels.read", "View digital channels profiles."),
    (
        "Messaging",
        "messaging.canned_messages.read",
        "Read digital channels and SMS message templates.",
    ),
    ("Messaging", "messaging.whatsapp_templates.read", "Read WhatsApp message templates."),
    ("Users", "users.read", "View user and deleted user information."),
    (
        "Users",
        "users.teams.read",
        "View team information, including users and supervisors assigned to teams.",
    ),
    (
        "Tasks",
        "tasks.scheduled_callbacks.read",
        "View a list of scheduled callback interactions.",
    ),
    ("Tasks", "tasks.scheduled_callbacks.manage", "Create and view callback interactions."),
    ("Tasks", "tasks.webhooks.read", "View information about failing webhooks."),
    ("Tasks", "tasks.webhooks.manage", "Retrigger failing webhooks."),
    ("Numbers", "numbers.read", "View information about contact center numbers."),
    ("Routing", "routing.queues.read", "View information about contact center queues."),
    ("Routing", "routing.skills.read", "View information about contact center skills."),
    (
        "Contact Center",
        "contact_center.wrapup_codes.read",
        "View information about contact center wrap-up codes.",
    ),
    (
        "Billing",
        "billing.balance.read",
        "View information about your contact center billing balance.",
    ),
]


async def test_list_scopes_is_the_published_table_word_for_word(harness: Harness) -> None:
    response = await harness.admin.ListScopes(pb.ListScopesRequest(), metadata=harness.auth())
    names = [scope.name for scope in response.scopes]
    assert names == sorted(names)
    assert sorted((s.domain, s.name, s.description) for s in response.scopes) == sorted(
        PUBLISHED_SCOPES
    )


async def test_list_is_newest_first_and_searches_name_and_description(harness: Harness) -> None:
    auth = harness.auth()
    await create(harness, "Alpha export", description="to the warehouse")
    await create(harness, "Beta", description="CRM bridge")
    await create(harness, "gamma crm", description="")
    listed = await harness.admin.ListKeys(pb.ListKeysRequest(), metadata=auth)
    assert [key.name for key in listed.keys] == ["gamma crm", "Beta", "Alpha export"]
    assert listed.total_size == 3 and listed.next_page_token == ""

    found = await harness.admin.ListKeys(pb.ListKeysRequest(query="CRM"), metadata=auth)
    assert [key.name for key in found.keys] == ["gamma crm", "Beta"]
    assert found.total_size == 2
    literal = await harness.admin.ListKeys(pb.ListKeysRequest(query="%"), metadata=auth)
    assert literal.total_size == 0


async def test_paging_has_no_duplicates_or_gaps_while_keys_change(harness: Harness) -> None:
    auth = harness.auth()
    originals = [(await create(harness, f"key {i:02}")).key.id for i in range(12)]
    seen: list[str] = []
    token = ""
    deleted: set[str] = set()
    for page_number in range(10):
        page = await harness.admin.ListKeys(
            pb.ListKeysRequest(page_size=5, page_token=token), metadata=auth
        )
        seen.extend(key.id for key in page.keys)
        # Churn between pages: a new key (newer than everything listed) and a
        # deletion of one not yet listed.
        await create(harness, f"new {page_number}")
        unseen = [key_id for key_id in originals if key_id not in seen and key_id not in deleted]
        if unseen:
            await harness.admin.DeleteKey(pb.DeleteKeyRequest(id=unseen[0]), metadata=auth)
            deleted.add(unseen[0])
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)), "a key was listed twice"
    expected = [key_id for key_id in reversed(originals) if key_id not in deleted]
    assert [key_id for key_id in seen if key_id in originals] == expected


async def test_page_tokens_are_tamper_evident_and_bound_to_the_query(harness: Harness) -> None:
    auth = harness.auth()
    for i in range(3):
        await create(harness, f"key {i}")
    page = await harness.admin.ListKeys(pb.ListKeysRequest(page_size=1), metadata=auth)
    token = page.next_page_token
    assert token
    tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    for request in (
        pb.ListKeysRequest(page_size=1, page_token=tampered),
        pb.ListKeysRequest(page_size=1, page_token=token, query="key"),
        pb.ListKeysRequest(page_size=1, page_token="not-a-token"),
    ):
        exc = await rpc_error(harness.admin.ListKeys(request, metadata=auth))
        assert bad_fields(exc) == ["page_token"]
    other_tenant = await rpc_error(
        harness.admin.ListKeys(
            pb.ListKeysRequest(page_size=1, page_token=token),
            metadata=harness.auth(contact_center="cc-2"),
        )
    )
    assert bad_fields(other_tenant) == ["page_token"]


async def test_audit_events_page(harness: Harness) -> None:
    auth = harness.auth()
    for i in range(3):
        await create(harness, f"key {i}")
    first = await harness.admin.ListAuditEvents(
        pb.ListAuditEventsRequest(page_size=2), metadata=auth
    )
    second = await harness.admin.ListAuditEvents(
        pb.ListAuditEventsRequest(page_size=2, page_token=first.next_page_token), metadata=auth
    )
    names = [event.new_name for event in (*first.events, *second.events)]
    assert names == ["key 2", "key 1", "key 0"]
    assert second.next_page_token == ""


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (pb.CreateKeyRequest(name="  ", scopes=["users.read"]), ["name"]),
        (pb.CreateKeyRequest(name="x" * 101, scopes=["users.read"]), ["name"]),
        (pb.CreateKeyRequest(name="bad\x07name", scopes=["users.read"]), ["name"]),
        (
            pb.CreateKeyRequest(name="ok", description="d" * 501, scopes=["users.read"]),
            ["description"],
        ),
        (pb.CreateKeyRequest(name="ok"), ["scopes"]),
        (pb.CreateKeyRequest(name="ok", scopes=["users.read", "root.all"]), ["scopes[1]"]),
        (
            pb.CreateKeyRequest(name="", description="d" * 501, scopes=[]),
            ["name", "description", "scopes"],
        ),
    ],
)
async def test_create_validation_names_each_bad_field(
    harness: Harness, request_: pb.CreateKeyRequest, fields: list[str]
) -> None:
    exc = await rpc_error(harness.admin.CreateKey(request_, metadata=harness.auth()))
    assert bad_fields(exc) == fields
    listed = await harness.admin.ListKeys(pb.ListKeysRequest(), metadata=harness.auth())
    assert listed.total_size == 0, "a rejected create left a key behind"


async def test_other_bad_input_is_invalid_argument(harness: Harness) -> None:
    auth = harness.auth()
    key_id = (await create(harness)).key.id
    cases: list[tuple[Awaitable[Any], list[str]]] = [
        (harness.admin.GetKey(pb.GetKeyRequest(id=""), metadata=auth), ["id"]),
        (harness.admin.ListKeys(pb.ListKeysRequest(page_size=101), metadata=auth), ["page_size"]),
        (harness.admin.ListKeys(pb.ListKeysRequest(page_size=-1), metadata=auth), ["page_size"]),
        (harness.admin.ListKeys(pb.ListKeysRequest(query="q" * 101), metadata=auth), ["query"]),
        (
            harness.admin.UpdateKey(
                pb.UpdateKeyRequest(id=key_id, update_mask=FieldMask(paths=["secret"])),
                metadata=auth,
            ),
            ["update_mask.paths[0]"],
        ),
        (
            harness.admin.UpdateKey(
                pb.UpdateKeyRequest(id=key_id, update_mask=FieldMask(paths=["scopes"])),
                metadata=auth,
            ),
            ["scopes"],
        ),
        (
            harness.admin.ListAuditEvents(pb.ListAuditEventsRequest(page_size=1000), metadata=auth),
            ["page_size"],
        ),
    ]
    for call, fields in cases:
        assert bad_fields(await rpc_error(call)) == fields
    unchanged = await harness.admin.GetKey(pb.GetKeyRequest(id=key_id), metadata=auth)
    assert list(unchanged.key.scopes) == ["campaigns.read"]


async def test_no_bad_or_expired_token_is_unauthenticated(harness: Harness) -> None:
    request = pb.ListKeysRequest()
    cases = [
        (),
        (("authorization", "Basic abc"),),
        (("authorization", "Bearer not.a.jwt"),),
        harness.auth(expired_token(harness)),
        # Longer-lived than APIKEYS_ADMIN_MAX_TOKEN_LIFETIME (default an hour).
        harness.auth(ttl_seconds=3601),
    ]
    for metadata in cases:
        exc = await rpc_error(harness.admin.ListKeys(request, metadata=metadata))
        assert exc.code() == grpc.StatusCode.UNAUTHENTICATED, metadata


async def test_token_signed_by_another_key_is_unauthenticated(
    harness: Harness, tmp_path: Path
) -> None:
    from server.admin_tokens import ensure_dev_key_pair
    from tests.harness import running_server

    ensure_dev_key_pair(tmp_path / "other")
    async with running_server(tmp_path / "other") as other:
        foreign = other.token()
    exc = await rpc_error(
        harness.admin.ListKeys(pb.ListKeysRequest(), metadata=harness.auth(foreign))
    )
    assert exc.code() == grpc.StatusCode.UNAUTHENTICATED


def expired_token(h: Harness) -> str:
    signing_key = serialization.load_pem_private_key(
        (h.data_dir / DEV_SIGNING_KEY_FILE).read_bytes(), password=None
    )
    now = int(time.time())
    claims = {
        "sub": "admin-1",
        "contact_center_id": "cc-1",
        "role": "admin",
        "permissions": [],
        "sag": False,
        "iat": now - 3600,
        "exp": now - 120,
    }
    return jwt.encode(claims, signing_key, algorithm="EdDSA")  # type: ignore[arg-type]


async def _call_create(h: Harness, metadata: Any, key_id: str) -> Any:
    return await h.admin.CreateKey(
        pb.CreateKeyRequest(name="n", scopes=["users.read"]), metadata=metadata
    )


async def _call_get(h: Harness, metadata: Any, key_id: str) -> Any:
    return await h.admin.GetKey(pb.GetKeyRequest(id=key_id), metadata=metadata)


async def _call_list(h: Harness, metadata: Any, key_id: str) -> Any:
    return await h.admin.ListKeys(pb.ListKeysRequest(), metadata=metadata)


async def _call_update(h: Harness, metadata: Any, key_id: str) -> Any:
    return await h.admin.UpdateKey(
        pb.UpdateKeyRequest(id=key_id, name="renamed", update_mask=FieldMask(paths=["name"])),
        metadata=metadata,
    )


async def _call_delete(h: Harness, metadata: Any, key_id: str) -> Any:
    return await h.admin.DeleteKey(pb.DeleteKeyRequest(id=key_id), metadata=metadata)


async def _call_reveal(h: Harness, metadata: Any, key_id: str) -> Any:
    return await h.admin.RevealKey(pb.RevealKeyRequest(id=key_id), metadata=metadata)


async def _call_scopes(h: Harness, metadata: Any, key_id: str) -> Any:
    return await h.admin.ListScopes(pb.ListScopesRequest(), metadata=metadata)


async def _call_audit(h: Harness, metadata: Any, key_id: str) -> Any:
    return await h.admin.ListAuditEvents(pb.ListAuditEventsRequest(), metadata=metadata)


RPC_PERMISSIONS: list[tuple[str, Call, str]] = [
    ("CreateKey", _call_create, "api_keys.create"),
    ("GetKey", _call_get, "api_keys.view"),
    ("ListKeys", _call_list, "api_keys.view"),
    ("UpdateKey", _call_update, "api_keys.edit"),
    ("DeleteKey", _call_delete, "api_keys.delete"),
    ("RevealKey", _call_reveal, "api_keys.view"),
    ("ListScopes", _call_scopes, "api_keys.view"),
    ("ListAuditEvents", _call_audit, "api_keys.view"),
]


@pytest.mark.parametrize(
    ("rpc", "call", "needed"), RPC_PERMISSIONS, ids=[r[0] for r in RPC_PERMISSIONS]
)
async def test_each_permission_alone_with_sag(
    harness: Harness, rpc: str, call: Call, needed: str
) -> None:
    for permission in ALL_PERMISSIONS:
        key_id = (await create(harness)).key.id
        metadata = harness.auth(role="agent", permissions=[permission], sag=True)
        if permission == needed:
            await call(harness, metadata, key_id)
        else:
            exc = await rpc_error(call(harness, metadata, key_id))
            assert exc.code() == grpc.StatusCode.PERMISSION_DENIED, (rpc, permission)
            assert needed in (exc.details() or "")


@pytest.mark.parametrize(
    ("rpc", "call", "needed"), RPC_PERMISSIONS, ids=[r[0] for r in RPC_PERMISSIONS]
)
async def test_without_sag_admin_role_has_all_and_other_roles_none(
    harness: Harness, rpc: str, call: Call, needed: str
) -> None:
    key_id = (await create(harness)).key.id
    await call(harness, harness.auth(role="admin", sag=False), key_id)
    key_id = (await create(harness)).key.id
    exc = await rpc_error(
        call(
            harness, harness.auth(role="supervisor", permissions=ALL_PERMISSIONS, sag=False), key_id
        )
    )
    assert exc.code() == grpc.StatusCode.PERMISSION_DENIED
    # With SAG the admin role alone grants nothing.
    exc = await rpc_error(call(harness, harness.auth(role="admin", sag=True), key_id))
    assert exc.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    ("rpc", "call"),
    [
        (rpc, call)
        for rpc, call, _ in RPC_PERMISSIONS
        if rpc in ("GetKey", "UpdateKey", "DeleteKey", "RevealKey")
    ],
)
async def test_another_contact_centers_key_is_not_found(
    harness: Harness, rpc: str, call: Call
) -> None:
    theirs = (await create(harness, claims={"contact_center": "cc-other"})).key.id
    exc = await rpc_error(call(harness, harness.auth(contact_center="cc-1"), theirs))
    never = await rpc_error(call(harness, harness.auth(contact_center="cc-1"), "key_doesnotexist"))
    assert exc.code() == never.code() == grpc.StatusCode.NOT_FOUND
    assert exc.details() == never.details()
    mine = await harness.admin.ListKeys(pb.ListKeysRequest(), metadata=harness.auth())
    assert mine.total_size == 0
    still_there = await harness.admin.GetKey(
        pb.GetKeyRequest(id=theirs), metadata=harness.auth(contact_center="cc-other")
    )
    assert still_there.key.name == "CRM sync"


async def test_the_51st_key_is_resource_exhausted(harness: Harness) -> None:
    for i in range(50):
        await create(harness, f"key {i}")
    exc = await rpc_error(create(harness, "one too many"))
    assert quota_subjects(exc) == ["contact_center:cc-1"]
    # Another contact center has its own allowance, and deleting frees one.
    await create(harness, "elsewhere", claims={"contact_center": "cc-2"})
    listed = await harness.admin.ListKeys(pb.ListKeysRequest(page_size=1), metadata=harness.auth())
    await harness.admin.DeleteKey(
        pb.DeleteKeyRequest(id=listed.keys[0].id), metadata=harness.auth()
    )
    await create(harness, "fits again")


async def test_100_concurrent_creates_make_exactly_50_keys(harness_on: Harness) -> None:
    results = await asyncio.gather(
        *(create(harness_on, f"key {i}") for i in range(100)), return_exceptions=True
    )
    created = [r for r in results if isinstance(r, pb.CreateKeyResponse)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(created) == 50
    assert len(refused) == 50
    assert {exc.code() for exc in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    listed = await harness_on.admin.ListKeys(
        pb.ListKeysRequest(page_size=100), metadata=harness_on.auth()
    )
    assert listed.total_size == 50


async def test_plaintext_key_is_in_no_table_log_or_error(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    created = await create(harness)
    secret = created.secret
    auth = harness.auth()
    await harness.admin.RevealKey(pb.RevealKeyRequest(id=created.key.id), metadata=auth)
    errors = [
        await rpc_error(create(harness, name=secret * 3)),
        await rpc_error(create(harness, scopes=[secret])),
        await rpc_error(harness.admin.GetKey(pb.GetKeyRequest(id=secret), metadata=auth)),
    ]
    for exc in errors:
        assert secret.encode() not in error_bytes(exc)
    await harness.server.stop(1)  # flush and checkpoint everything to disk
    for path in harness.data_dir.iterdir():
        if path.is_file():
            content = path.read_bytes()
            assert secret.encode() not in content, path
            assert secret[4:-6].encode() not in content, path
    assert secret not in caplog.text


async def test_admin_calls_are_logged_with_actor_and_outcome(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="server.api.auth")
    created = await create(harness)
    await rpc_error(
        harness.admin.GetKey(pb.GetKeyRequest(id="key_missing"), metadata=harness.auth())
    )
    # The server logs a call once its status is on the way, which the
    # client can see first.
    for _ in range(100):
        calls = [
            (r.rpc, r.actor, r.contact_center, r.code)  # type: ignore[attr-defined]
            for r in caplog.records
            if r.getMessage() == "admin call"
        ]
        if len(calls) == 2:
            break
        await asyncio.sleep(0.01)
    assert calls == [
        ("CreateKey", "admin-1", "cc-1", "OK"),
        ("GetKey", "admin-1", "cc-1", "NOT_FOUND"),
    ]
    assert created.secret not in caplog.text


async def test_key_encryption_key_rotation_keeps_old_secrets_revealable(tmp_path: Path) -> None:
    import base64

    from tests.harness import running_server

    old = "old:" + base64.b64encode(b"o" * 32).decode()
    new = "new:" + base64.b64encode(b"n" * 32).decode()
    data_dir = tmp_path / "var"

    async with running_server(data_dir, args=["--encryption-keys", old]) as before:
        created = await create(before)
    async with running_server(data_dir, args=["--encryption-keys", f"{new},{old}"]) as rotated:
        revealed = await rotated.admin.RevealKey(
            pb.RevealKeyRequest(id=created.key.id), metadata=rotated.auth()
        )
        assert revealed.secret == created.secret
        fresh = await create(rotated, "after rotation")
    async with running_server(data_dir, args=["--encryption-keys", new]) as retired:
        exc = await rpc_error(
            retired.admin.RevealKey(pb.RevealKeyRequest(id=created.key.id), metadata=retired.auth())
        )
        assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "'old'" in (exc.details() or "")
        still = await retired.admin.RevealKey(
            pb.RevealKeyRequest(id=fresh.key.id), metadata=retired.auth()
        )
        assert still.secret == fresh.secret
        audit = await retired.admin.ListAuditEvents(
            pb.ListAuditEventsRequest(key_id=created.key.id), metadata=retired.auth()
        )
        actions = [event.action for event in audit.events]
        assert actions == [api_key_pb2.AUDIT_ACTION_REVEALED, api_key_pb2.AUDIT_ACTION_CREATED]
