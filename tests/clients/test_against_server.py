"""The client library and the ``apikeys`` CLI against the real server.

The sync client and the CLI run in a worker thread so that the in-process
server's event loop keeps serving while they block.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest

from clients import (
    AsyncAuthorizeClient,
    AsyncKeyAdminClient,
    AuthorizeClient,
    ChannelOptions,
    InvalidArgument,
    KeyAdminClient,
    NotFound,
    PermissionDenied,
    Reason,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from clients.cli import main
from tests.harness import Harness


def options(h: Harness) -> ChannelOptions:
    return ChannelOptions(target=h.target)


async def test_async_clients_round_trip(harness: Harness) -> None:
    async with AsyncKeyAdminClient(options(harness), token=harness.token()) as admin:
        key, secret = await admin.create_key("crm", "nightly", ["campaigns.manage"])
        async with AsyncAuthorizeClient(options(harness)) as authorize:
            decision = await authorize.check(secret, "GET", "/api/v4/campaigns")
            assert decision.allowed
            assert decision.reason is Reason.ALLOWED
            assert decision.key_id == key.id
            header = await authorize.check(f"bearer  {secret} ", "GET", "/api/v4/campaigns")
            assert header.allowed
            basic = await authorize.check(f"Basic {secret}", "GET", "/api/v4/campaigns")
            assert basic.reason is Reason.KEY_MALFORMED
            many = await authorize.check_many(
                [(secret, "GET", "/api/v4/campaigns"), (secret, "GET", "/api/v4/users")] * 60
            )
            assert [d.reason for d in many] == [Reason.ALLOWED, Reason.SCOPE_MISSING] * 60
            await admin.delete_key(key.id)
            after = await authorize.check(secret, "GET", "/api/v4/campaigns")
            assert after.reason is Reason.KEY_NOT_FOUND
        with pytest.raises(NotFound):
            await admin.get_key(key.id)


async def test_typed_errors(harness: Harness) -> None:
    async with AsyncKeyAdminClient(options(harness), token=harness.token()) as admin:
        with pytest.raises(InvalidArgument) as bad:
            await admin.create_key("", "", ["no.such.scope"])
        fields = [field for field, _ in bad.value.field_violations]
        assert fields == ["name", "scopes[0]"]
        for index in range(50):
            await admin.create_key(f"k{index}", "", ["users.read"])
        with pytest.raises(ResourceExhausted) as full:
            await admin.create_key("k50", "", ["users.read"])
        assert full.value.quota_violations
    async with AsyncKeyAdminClient(options(harness), token="not-a-token") as anonymous:
        with pytest.raises(Unauthenticated):
            await anonymous.list_scopes()
    viewer = harness.token(role="agent", permissions=["api_keys.view"], sag=True)
    async with AsyncKeyAdminClient(options(harness), token=viewer) as admin:
        with pytest.raises(PermissionDenied):
            await admin.create_key("x", "", ["users.read"])


async def test_sync_clients_in_a_thread(harness: Harness) -> None:
    def work() -> tuple[bool, bool]:
        with KeyAdminClient(options(harness), token=harness.token()) as admin:
            key, secret = admin.create_key("sync", "", ["users.read"])
            with AuthorizeClient(options(harness)) as authorize:
                before = authorize.check(secret, "GET", "/api/v4/users").allowed
                admin.delete_key(key.id)
                after = authorize.check(secret, "GET", "/api/v4/users").allowed
        return before, after

    assert await asyncio.to_thread(work) == (True, False)


async def test_unreachable_server_is_unavailable_after_retries() -> None:
    async with AsyncAuthorizeClient(ChannelOptions(target="127.0.0.1:1", timeout=2)) as client:
        with pytest.raises(Unavailable):
            await client.check("vsk_x", "GET", "/api/v4/users", timeout=2)


def run_cli(h: Harness, *args: str) -> int:
    return main(["--server", h.target, "--token", h.token(), *args])


async def test_cli_admin_session(harness: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    async def cli(*args: str) -> tuple[int, str, str]:
        code = await asyncio.to_thread(run_cli, harness, *args)
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = await cli(
        "--json", "keys", "create", "--name", "CRM sync", "--scope", "campaigns.read"
    )
    assert code == 0
    created = json.loads(out)
    key_id, secret = created["key"]["id"], created["secret"]

    code, out, _ = await cli("keys", "list")
    assert code == 0
    assert "CRM sync" in out and secret not in out and secret[-4:] in out

    code, out, _ = await cli("check", secret, "GET", "/api/v4/campaigns")
    assert code == 0 and "REASON_ALLOWED" in out
    code, out, _ = await cli("keys", "reveal", key_id)
    assert code == 0 and secret in out
    code, out, _ = await cli("keys", "delete", key_id)
    assert code == 0
    code, out, _ = await cli("check", secret, "GET", "/api/v4/campaigns")
    assert code == 1 and "REASON_KEY_NOT_FOUND" in out

    code, out, err = await cli("keys", "get", key_id)
    assert code == 1
    assert err.strip().count("\n") == 0 and "NOT_FOUND" in err and "Traceback" not in err
    code, out, err = await cli("keys", "create", "--name", "x", "--scope", "nope")
    assert code == 1 and "scopes[0]" in err and err.strip().count("\n") == 0
    code, out, _ = await cli("--json", "audit", "--key-id", key_id)
    actions = [event["action"] for event in json.loads(out)["events"]]
    assert actions == ["AUDIT_ACTION_DELETED", "AUDIT_ACTION_REVEALED", "AUDIT_ACTION_CREATED"]


async def test_cli_lifecycle_session(harness: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    async def cli(*args: str) -> tuple[int, str, str]:
        code = await asyncio.to_thread(run_cli, harness, *args)
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = await cli(
        "--json",
        "keys",
        "create",
        "--name",
        "Office only",
        "--scope",
        "campaigns.read",
        "--expires",
        "30d",
        "--allow-cidr",
        "203.0.113.0/24",
    )
    assert code == 0
    created = json.loads(out)
    key_id, secret = created["key"]["id"], created["secret"]
    assert created["key"]["allowed_cidrs"] == ["203.0.113.0/24"]
    assert created["key"]["state"] == "STATE_ACTIVE" and "expire_time" in created["key"]

    code, out, _ = await cli("check", secret, "GET", "/api/v4/campaigns")
    assert code == 1 and "REASON_IP_NOT_ALLOWED" in out
    code, out, _ = await cli(
        "check", "--client-ip", "203.0.113.9", secret, "GET", "/api/v4/campaigns"
    )
    assert code == 0 and "REASON_ALLOWED" in out

    code, out, _ = await cli("keys", "disable", key_id)
    assert code == 0 and "disabled" in out
    code, out, _ = await cli("keys", "list")
    assert code == 0 and "STATE" in out and "disabled" in out
    code, out, _ = await cli(
        "check", "--client-ip", "203.0.113.9", secret, "GET", "/api/v4/campaigns"
    )
    assert code == 1 and "REASON_KEY_DISABLED" in out
    code, out, _ = await cli("keys", "enable", key_id)
    assert code == 0 and "active" in out

    code, out, _ = await cli("keys", "update", key_id, "--expires", "never", "--any-address")
    assert code == 0 and "never" in out and "any address" in out
    code, out, _ = await cli("keys", "roll", key_id, "--overlap", "0s")
    assert code == 0 and "no longer works" in out
    [rolled] = [line.strip() for line in out.splitlines() if line.strip().startswith("vsk_")]
    code, out, _ = await cli("check", secret, "GET", "/api/v4/campaigns")
    assert code == 1 and "REASON_KEY_NOT_FOUND" in out
    code, out, _ = await cli("check", rolled, "GET", "/api/v4/campaigns")
    assert code == 0

    with pytest.raises(SystemExit) as usage:
        await cli("keys", "roll", key_id)
    assert usage.value.code == 2 and "--overlap" in capsys.readouterr().err
    code, out, _ = await cli("--json", "audit", "--key-id", key_id)
    actions = [event["action"] for event in json.loads(out)["events"]]
    assert actions == [
        "AUDIT_ACTION_ROLLED",
        "AUDIT_ACTION_UPDATED",
        "AUDIT_ACTION_ENABLED",
        "AUDIT_ACTION_DISABLED",
        "AUDIT_ACTION_CREATED",
    ]


async def test_async_clients_disable_enable_and_roll(harness: Harness) -> None:
    async with AsyncKeyAdminClient(options(harness), token=harness.token()) as admin:
        key, secret = await admin.create_key("crm", scopes=["users.read"])
        async with AsyncAuthorizeClient(options(harness)) as authorize:
            await admin.disable_key(key.id)
            disabled = await authorize.check(secret, "GET", "/api/v4/users")
            assert disabled.reason is Reason.KEY_DISABLED and not disabled.allowed
            await admin.enable_key(key.id)
            rolled, new_secret = await admin.roll_key(key.id, overlap=timedelta(hours=1))
            assert rolled.masked_key.endswith(new_secret[-4:])
            for usable in (secret, new_secret):
                assert (await authorize.check(usable, "GET", "/api/v4/users")).allowed
            limited = await admin.update_key(key.id, allowed_cidrs=["2001:db8::/32"])
            assert list(limited.allowed_cidrs) == ["2001:db8::/32"]
            outside = await authorize.check(new_secret, "GET", "/api/v4/users", client_ip="::1")
            assert outside.reason is Reason.IP_NOT_ALLOWED
            inside = await authorize.check(
                new_secret, "GET", "/api/v4/users", client_ip="2001:db8::5"
            )
            assert inside.allowed
        with pytest.raises(InvalidArgument):
            await admin.create_key(
                "late", scopes=["users.read"], expire_time=datetime.now(UTC) - timedelta(1)
            )
