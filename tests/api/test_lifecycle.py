"""Key lifecycle over real channels, on SQLite and PostgreSQL: expiry, disable
and enable, roll with an overlap, address allowlists, the order of reasons,
their audit events, and what another replica on the same database does
within the cross-replica bound.

Time is the servers' injected clock, moved by the test: nothing sleeps
through an expiry or an overlap.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from server.app import Wiring
from tests.api.rpc import bad_fields, rpc_error
from tests.harness import SHARED_SECRETS, Harness, running_server
from voiso.apikeys.v1 import api_key_pb2
from voiso.apikeys.v1 import authorize_pb2 as az
from voiso.apikeys.v1 import key_admin_pb2 as pb

# Within which another replica must follow a change (the README's bound).
REPLICA_BOUND_S = 1.0
USERS = ("GET", "/api/v4/users")
CAMPAIGNS = ("GET", "/api/v4/campaigns")


class Clock:
    """The wall clock both servers read, moved only by the test."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Replicas:
    """Two servers on one database: admin calls go to ``a``; ``b`` holds
    keys in its cache for 300 s, so only the change feed makes it forget."""

    a: Harness
    b: Harness
    clock: Clock

    async def create(
        self,
        *,
        scopes: tuple[str, ...] = ("users.read",),
        expire_in: float | None = None,
        allowed_cidrs: tuple[str, ...] = (),
    ) -> pb.CreateKeyResponse:
        request = pb.CreateKeyRequest(
            name="integration", scopes=scopes, allowed_cidrs=allowed_cidrs
        )
        if expire_in is not None:
            request.expire_time.CopyFrom(self.timestamp(expire_in))
        return await self.a.admin.CreateKey(request, metadata=self.a.auth())

    def timestamp(self, seconds_from_now: float) -> Timestamp:
        stamp = Timestamp()
        stamp.FromDatetime(self.clock.now + timedelta(seconds=seconds_from_now))
        return stamp

    async def roll(self, key_id: str, overlap_s: int) -> pb.RollKeyResponse:
        return await self.a.admin.RollKey(
            pb.RollKeyRequest(id=key_id, overlap=Duration(seconds=overlap_s)),
            metadata=self.a.auth(),
        )

    async def get(self, key_id: str) -> api_key_pb2.ApiKey:
        response = await self.a.admin.GetKey(pb.GetKeyRequest(id=key_id), metadata=self.a.auth())
        return response.key

    async def actions(self, key_id: str) -> list[int]:
        """The key's audit actions, oldest first."""
        listed = await self.a.admin.ListAuditEvents(
            pb.ListAuditEventsRequest(key_id=key_id), metadata=self.a.auth()
        )
        return [event.action for event in reversed(listed.events)]


async def check(
    h: Harness, key: str, route: tuple[str, str] = USERS, client_ip: str = ""
) -> az.CheckResponse:
    method, path = route
    return await h.authorize.Check(
        az.CheckRequest(key=key, method=method, path=path, client_ip=client_ip)
    )


async def reason(h: Harness, key: str, route: tuple[str, str] = USERS, client_ip: str = "") -> int:
    return (await check(h, key, route, client_ip)).reason


async def within_bound(h: Harness, key: str, expected: int) -> float:
    """Seconds until ``h`` answers ``key`` with ``expected``; fails past the
    bound."""
    started = time.monotonic()
    while (got := await reason(h, key)) != expected:
        elapsed = time.monotonic() - started
        assert elapsed < REPLICA_BOUND_S, (got, expected)
        await asyncio.sleep(0.01)
    return time.monotonic() - started


@pytest.fixture
async def replicas(tmp_path: Path, migrated_database_url: str) -> AsyncIterator[Replicas]:
    clock = Clock()
    args = [
        "--database-url",
        migrated_database_url,
        *SHARED_SECRETS,
        "--cache-ttl",
        "300",
        "--change-poll",
        "0.2",
    ]
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(
            running_server(tmp_path / "a", args=args, wiring=Wiring(clock=clock))
        )
        b = await stack.enter_async_context(
            running_server(tmp_path / "b", args=args, wiring=Wiring(clock=clock))
        )
        yield Replicas(a=a, b=b, clock=clock)


async def test_an_expiring_key_is_allowed_before_and_expired_from_its_second_cached_or_not(
    replicas: Replicas,
) -> None:
    cached = await replicas.create(expire_in=60)
    uncached = await replicas.create(expire_in=60)
    assert await reason(replicas.b, cached.secret) == az.REASON_ALLOWED
    assert cached.key.state == api_key_pb2.ApiKey.STATE_ACTIVE
    assert cached.key.expire_time == replicas.timestamp(60)

    replicas.clock.advance(59.999)
    assert await reason(replicas.b, cached.secret) == az.REASON_ALLOWED
    replicas.clock.advance(0.001)

    expired = await check(replicas.b, cached.secret)
    assert (expired.allowed, expired.reason) == (False, az.REASON_KEY_EXPIRED)
    assert expired.key_id == cached.key.id
    assert await reason(replicas.b, uncached.secret) == az.REASON_KEY_EXPIRED
    assert await reason(replicas.a, uncached.secret) == az.REASON_KEY_EXPIRED
    assert (await replicas.get(cached.key.id)).state == api_key_pb2.ApiKey.STATE_EXPIRED


async def test_an_expiry_must_be_in_the_future_and_can_be_extended_or_cleared(
    replicas: Replicas,
) -> None:
    error = await rpc_error(replicas.create(expire_in=0))
    assert bad_fields(error) == ["expire_time"]
    created = await replicas.create(expire_in=10)
    replicas.clock.advance(20)
    assert await reason(replicas.b, created.secret) == az.REASON_KEY_EXPIRED

    extend = pb.UpdateKeyRequest(
        id=created.key.id,
        expire_time=replicas.timestamp(3600),
        update_mask=FieldMask(paths=["expire_time"]),
    )
    extended = await replicas.a.admin.UpdateKey(extend, metadata=replicas.a.auth())
    assert extended.key.state == api_key_pb2.ApiKey.STATE_ACTIVE
    await within_bound(replicas.b, created.secret, az.REASON_ALLOWED)

    clear = pb.UpdateKeyRequest(id=created.key.id, update_mask=FieldMask(paths=["expire_time"]))
    cleared = await replicas.a.admin.UpdateKey(clear, metadata=replicas.a.auth())
    assert not cleared.key.HasField("expire_time")
    replicas.clock.advance(86400 * 365)
    await within_bound(replicas.b, created.secret, az.REASON_ALLOWED)

    listed = await replicas.a.admin.ListAuditEvents(
        pb.ListAuditEventsRequest(key_id=created.key.id), metadata=replicas.a.auth()
    )
    extended_event, cleared_event = listed.events[1], listed.events[0]
    assert extended_event.new_expire_time == extended.key.expire_time
    assert cleared_event.old_expire_time == extended_event.new_expire_time
    assert not cleared_event.HasField("new_expire_time")


async def test_a_disabled_key_is_refused_by_the_other_replica_within_a_second_and_enabled_again(
    replicas: Replicas,
) -> None:
    created = await replicas.create()
    assert await reason(replicas.b, created.secret) == az.REASON_ALLOWED

    disabled = await replicas.a.admin.DisableKey(
        pb.DisableKeyRequest(id=created.key.id), metadata=replicas.a.auth()
    )
    assert disabled.key.state == api_key_pb2.ApiKey.STATE_DISABLED
    assert await reason(replicas.a, created.secret) == az.REASON_KEY_DISABLED
    await within_bound(replicas.b, created.secret, az.REASON_KEY_DISABLED)

    enabled = await replicas.a.admin.EnableKey(
        pb.EnableKeyRequest(id=created.key.id), metadata=replicas.a.auth()
    )
    assert enabled.key.state == api_key_pb2.ApiKey.STATE_ACTIVE
    await within_bound(replicas.b, created.secret, az.REASON_ALLOWED)

    # Kept with its history all along.
    assert await replicas.actions(created.key.id) == [
        api_key_pb2.AUDIT_ACTION_CREATED,
        api_key_pb2.AUDIT_ACTION_DISABLED,
        api_key_pb2.AUDIT_ACTION_ENABLED,
    ]


async def test_disable_and_roll_need_the_edit_permission_and_a_key_of_the_contact_center(
    replicas: Replicas,
) -> None:
    created = await replicas.create()
    viewer = replicas.a.auth(sag=True, permissions=["api_keys.view"])
    calls: list[Callable[[tuple[tuple[str, str], ...]], Awaitable[object]]] = [
        lambda auth: replicas.a.admin.DisableKey(
            pb.DisableKeyRequest(id=created.key.id), metadata=auth
        ),
        lambda auth: replicas.a.admin.EnableKey(
            pb.EnableKeyRequest(id=created.key.id), metadata=auth
        ),
        lambda auth: replicas.a.admin.RollKey(
            pb.RollKeyRequest(id=created.key.id, overlap=Duration()), metadata=auth
        ),
    ]
    for call in calls:
        assert (await rpc_error(call(viewer))).code() == grpc.StatusCode.PERMISSION_DENIED
        other = replicas.a.auth(contact_center="cc-2")
        assert (await rpc_error(call(other))).code() == grpc.StatusCode.NOT_FOUND
    assert await reason(replicas.b, created.secret) == az.REASON_ALLOWED


async def test_both_secrets_work_during_the_overlap_and_the_old_one_stops_at_its_end(
    replicas: Replicas,
) -> None:
    created = await replicas.create()
    assert await reason(replicas.b, created.secret) == az.REASON_ALLOWED

    rolled = await replicas.roll(created.key.id, 60)
    assert rolled.key.id == created.key.id and rolled.secret != created.secret
    assert rolled.key.masked_key.endswith(rolled.secret[-4:])
    revealed = await replicas.a.admin.RevealKey(
        pb.RevealKeyRequest(id=created.key.id), metadata=replicas.a.auth()
    )
    assert revealed.secret == rolled.secret
    for server in (replicas.a, replicas.b):
        assert await reason(server, created.secret) == az.REASON_ALLOWED
        assert await reason(server, rolled.secret) == az.REASON_ALLOWED

    # No further write: the end of the overlap alone refuses the old secret
    # (on the other replica once it has heard of the roll, within the bound).
    replicas.clock.advance(60)
    await within_bound(replicas.b, created.secret, az.REASON_KEY_NOT_FOUND)
    for server in (replicas.a, replicas.b):
        assert await reason(server, created.secret) == az.REASON_KEY_NOT_FOUND
        assert await reason(server, rolled.secret) == az.REASON_ALLOWED

    listed = await replicas.a.admin.ListAuditEvents(
        pb.ListAuditEventsRequest(key_id=created.key.id), metadata=replicas.a.auth()
    )
    roll_event = listed.events[1]
    assert roll_event.action == api_key_pb2.AUDIT_ACTION_ROLLED
    assert roll_event.previous_secret_expire_time == replicas.timestamp(0)
    assert created.secret not in str(listed) and rolled.secret not in str(listed)


async def test_an_overlap_of_zero_refuses_the_old_secret_at_once_on_every_replica(
    replicas: Replicas,
) -> None:
    created = await replicas.create()
    assert await reason(replicas.b, created.secret) == az.REASON_ALLOWED

    rolled = await replicas.roll(created.key.id, 0)

    assert await reason(replicas.a, created.secret) == az.REASON_KEY_NOT_FOUND
    await within_bound(replicas.b, created.secret, az.REASON_KEY_NOT_FOUND)
    assert await reason(replicas.b, rolled.secret) == az.REASON_ALLOWED


async def test_a_second_roll_ends_the_first_overlap_at_once(replicas: Replicas) -> None:
    created = await replicas.create()
    assert await reason(replicas.b, created.secret) == az.REASON_ALLOWED
    first = await replicas.roll(created.key.id, 3600)
    assert await reason(replicas.b, first.secret) == az.REASON_ALLOWED

    second = await replicas.roll(created.key.id, 3600)

    await within_bound(replicas.b, created.secret, az.REASON_KEY_NOT_FOUND)
    for server in (replicas.a, replicas.b):
        assert await reason(server, created.secret) == az.REASON_KEY_NOT_FOUND
        assert await reason(server, first.secret) == az.REASON_ALLOWED
        assert await reason(server, second.secret) == az.REASON_ALLOWED


async def test_a_roll_needs_an_explicit_overlap_of_at_most_seven_days(replicas: Replicas) -> None:
    created = await replicas.create()
    for request in (
        pb.RollKeyRequest(id=created.key.id),
        pb.RollKeyRequest(id=created.key.id, overlap=Duration(seconds=7 * 86400 + 1)),
        pb.RollKeyRequest(id=created.key.id, overlap=Duration(seconds=-1)),
    ):
        error = await rpc_error(replicas.a.admin.RollKey(request, metadata=replicas.a.auth()))
        assert bad_fields(error) == ["overlap"]
    seven_days = await replicas.roll(created.key.id, 7 * 86400)
    assert await reason(replicas.b, seven_days.secret) == az.REASON_ALLOWED
    assert await reason(replicas.b, created.secret) == az.REASON_ALLOWED


async def test_a_delete_or_disable_during_the_overlap_refuses_both_secrets_on_every_replica(
    replicas: Replicas,
) -> None:
    paused = await replicas.create()
    deleted = await replicas.create()
    rolled: dict[str, pb.RollKeyResponse] = {}
    for created in (paused, deleted):
        rolled[created.key.id] = await replicas.roll(created.key.id, 3600)
        for secret in (created.secret, rolled[created.key.id].secret):
            assert await reason(replicas.b, secret) == az.REASON_ALLOWED

    await replicas.a.admin.DisableKey(
        pb.DisableKeyRequest(id=paused.key.id), metadata=replicas.a.auth()
    )
    await replicas.a.admin.DeleteKey(
        pb.DeleteKeyRequest(id=deleted.key.id), metadata=replicas.a.auth()
    )

    for secret in (paused.secret, rolled[paused.key.id].secret):
        await within_bound(replicas.b, secret, az.REASON_KEY_DISABLED)
    for secret in (deleted.secret, rolled[deleted.key.id].secret):
        await within_bound(replicas.b, secret, az.REASON_KEY_NOT_FOUND)
    assert await replicas.actions(deleted.key.id) == [
        api_key_pb2.AUDIT_ACTION_CREATED,
        api_key_pb2.AUDIT_ACTION_ROLLED,
        api_key_pb2.AUDIT_ACTION_DELETED,
    ]


async def test_an_allowlisted_key_is_allowed_only_from_inside_its_networks(
    replicas: Replicas,
) -> None:
    created = await replicas.create(
        allowed_cidrs=("203.0.113.0/24", "2001:db8::/32", "::ffff:198.51.100.0/120")
    )
    assert list(created.key.allowed_cidrs) == ["203.0.113.0/24", "2001:db8::/32", "198.51.100.0/24"]
    cases = {
        "203.0.113.7": az.REASON_ALLOWED,
        "2001:db8::1": az.REASON_ALLOWED,
        "2001:db8:ffff::1": az.REASON_ALLOWED,
        # IPv4-mapped IPv6 compares as the IPv4 it carries, both ways.
        "::ffff:203.0.113.7": az.REASON_ALLOWED,
        "198.51.100.9": az.REASON_ALLOWED,
        "203.0.114.7": az.REASON_IP_NOT_ALLOWED,
        "2001:db9::1": az.REASON_IP_NOT_ALLOWED,
        "::ffff:192.0.2.1": az.REASON_IP_NOT_ALLOWED,
        "": az.REASON_IP_NOT_ALLOWED,
    }
    for server in (replicas.a, replicas.b):
        for client_ip, expected in cases.items():
            assert await reason(server, created.secret, client_ip=client_ip) == expected, client_ip

    anywhere = await replicas.create()
    assert await reason(replicas.b, anywhere.secret) == az.REASON_ALLOWED
    assert await reason(replicas.b, anywhere.secret, client_ip="192.0.2.1") == az.REASON_ALLOWED


async def test_an_unparsable_client_ip_is_invalid_whatever_the_key(replicas: Replicas) -> None:
    created = await replicas.create()
    for client_ip in ("not-an-ip", "203.0.113.0/24", "999.1.1.1", "203.0.113.7 "):
        error = await rpc_error(check(replicas.b, created.secret, client_ip=client_ip))
        assert bad_fields(error) == ["client_ip"]
    batch = az.CheckBatchRequest(
        checks=[
            az.CheckRequest(key=created.secret, method="GET", path="/a", client_ip="192.0.2.1"),
            az.CheckRequest(key=created.secret, method="GET", path="/a", client_ip="nope"),
        ]
    )
    error = await rpc_error(replicas.b.authorize.CheckBatch(batch))
    assert bad_fields(error) == ["checks[1].client_ip"]


async def test_bad_networks_are_refused_by_position_without_echoing_them(
    replicas: Replicas,
) -> None:
    error = await rpc_error(
        replicas.create(allowed_cidrs=("10.0.0.0/8", "10.0.0.1/8", "vsk_pasted", "10.0.0.0/33"))
    )
    assert bad_fields(error) == ["allowed_cidrs[1]", "allowed_cidrs[2]", "allowed_cidrs[3]"]
    assert "vsk_pasted" not in str(error.details())


async def test_an_empty_update_mask_leaves_expiry_and_networks_and_naming_them_clears_them(
    replicas: Replicas,
) -> None:
    created = await replicas.create(expire_in=3600, allowed_cidrs=("203.0.113.0/24",))
    everything = pb.UpdateKeyRequest(
        id=created.key.id, name="renamed", description="", scopes=["users.read"]
    )
    updated = await replicas.a.admin.UpdateKey(everything, metadata=replicas.a.auth())
    assert updated.key.name == "renamed"
    assert updated.key.expire_time == created.key.expire_time
    assert list(updated.key.allowed_cidrs) == ["203.0.113.0/24"]

    clear = pb.UpdateKeyRequest(
        id=created.key.id, update_mask=FieldMask(paths=["expire_time", "allowed_cidrs"])
    )
    cleared = await replicas.a.admin.UpdateKey(clear, metadata=replicas.a.auth())
    assert not cleared.key.HasField("expire_time") and not cleared.key.allowed_cidrs
    await within_bound(replicas.b, created.secret, az.REASON_ALLOWED)

    listed = await replicas.a.admin.ListAuditEvents(
        pb.ListAuditEventsRequest(key_id=created.key.id), metadata=replicas.a.auth()
    )
    assert list(listed.events[0].old_allowed_cidrs) == ["203.0.113.0/24"]
    assert not listed.events[0].new_allowed_cidrs
    assert not listed.events[1].old_allowed_cidrs and not listed.events[1].new_allowed_cidrs


async def test_reasons_come_in_the_documented_order(replicas: Replicas) -> None:
    created = await replicas.create(
        scopes=("users.read",), expire_in=10, allowed_cidrs=("203.0.113.0/24",)
    )
    outside, inside = "192.0.2.1", "203.0.113.1"
    nowhere = ("GET", "/api/v4/nothing-here")
    # Scope missing comes last.
    assert await reason(replicas.b, created.secret, CAMPAIGNS, inside) == az.REASON_SCOPE_MISSING
    # An address outside comes before a missing scope.
    assert await reason(replicas.b, created.secret, CAMPAIGNS, outside) == az.REASON_IP_NOT_ALLOWED
    # Expiry comes before the address.
    replicas.clock.advance(10)
    assert await reason(replicas.b, created.secret, CAMPAIGNS, outside) == az.REASON_KEY_EXPIRED
    # Disabled comes before expiry.
    await replicas.a.admin.DisableKey(
        pb.DisableKeyRequest(id=created.key.id), metadata=replicas.a.auth()
    )
    await within_bound(replicas.b, created.secret, az.REASON_KEY_DISABLED)
    assert await reason(replicas.b, created.secret, CAMPAIGNS, outside) == az.REASON_KEY_DISABLED
    assert (await replicas.get(created.key.id)).state == api_key_pb2.ApiKey.STATE_DISABLED
    # An unknown route comes before everything about the key.
    assert await reason(replicas.b, created.secret, nowhere, outside) == az.REASON_ROUTE_NOT_FOUND
    # A rolled-away secret is not found before it is disabled.
    await replicas.roll(created.key.id, 0)
    await within_bound(replicas.b, created.secret, az.REASON_KEY_NOT_FOUND)
