"""How ``Authorizer`` decides keys with a lifecycle: time and address are read
only for keys that have conditions, the memoised decisions never outlive
what they depended on, and address rules treat IPv4-mapped IPv6 as IPv4."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest

from server.domain.authorize import Authorizer
from server.domain.decisions import Reason
from server.domain.keys import KeyHasher, generate_key, last4
from server.domain.networks import NetworkSet, parse_client_ip, parse_network
from server.domain.records import KeyRecord
from server.domain.routes import RouteTable
from server.domain.scopes import SCOPE_CATALOG
from server.domain.usage import UsageRecorder
from tests.conftest import BASE_TIME, KeyFactory

HASHER = KeyHasher(b"lifecycle-decisions-secret".ljust(32, b"."))
ROUTES = RouteTable.load(known_scopes=SCOPE_CATALOG.keys())


class Keys:
    """The storage Protocol's lookup side, over records held in memory."""

    def __init__(self) -> None:
        self.records: dict[bytes, KeyRecord] = {}

    def cached(self, lookup_hash: bytes) -> KeyRecord | None:
        return self.records.get(lookup_hash)

    async def find_by_lookup_hash(self, lookup_hash: bytes) -> KeyRecord | None:
        return self.cached(lookup_hash)

    async def record_last_used(self, uses: Mapping[str, datetime]) -> None:
        return None


class CountingClock:
    """A clock the test moves, counting how often it is read."""

    def __init__(self) -> None:
        self.now = BASE_TIME
        self.reads = 0

    def __call__(self) -> datetime:
        self.reads += 1
        return self.now


def _setup() -> tuple[Keys, CountingClock, Authorizer]:
    keys, clock = Keys(), CountingClock()
    lookup: Any = keys
    authorizer = Authorizer(
        keys=lookup,
        hasher=HASHER,
        routes=ROUTES,
        usage=UsageRecorder(lookup, interval=3600),
        store_timeout=1.0,
        clock=clock,
    )
    return keys, clock, authorizer


def _key(keys: Keys, **fields: Any) -> str:
    secret = generate_key()
    record = KeyFactory()(lookup_hash=HASHER.lookup_hash(secret), last4=last4(secret), **fields)
    keys.records[record.lookup_hash] = record
    return secret


async def test_a_key_without_conditions_never_reads_the_clock() -> None:
    keys, clock, authorizer = _setup()
    secret = _key(keys)

    for _ in range(3):
        decision = await authorizer.check(secret, "GET", "/api/v4/campaigns", client_ip="::1")
        assert decision.reason is Reason.ALLOWED

    assert clock.reads == 0


async def test_a_memoised_allow_is_not_served_past_the_expiry() -> None:
    keys, clock, authorizer = _setup()
    secret = _key(keys, expire_time=BASE_TIME + timedelta(seconds=10))

    allowed = await authorizer.check(secret, "GET", "/api/v4/campaigns")
    assert allowed is await authorizer.check(secret, "GET", "/api/v4/campaigns")
    clock.now += timedelta(seconds=10)
    expired = await authorizer.check(secret, "GET", "/api/v4/campaigns")

    assert (allowed.reason, expired.reason) == (Reason.ALLOWED, Reason.KEY_EXPIRED)
    assert expired.key_id == allowed.key_id and expired.route == allowed.route
    # Refusals are memoised too: the response memo finds them again.
    assert expired is await authorizer.check(secret, "GET", "/api/v4/campaigns")


async def test_the_decision_follows_the_client_address_not_the_first_caller() -> None:
    keys, _, authorizer = _setup()
    secret = _key(keys, allowed_cidrs=("192.0.2.0/24",))

    inside = await authorizer.check(secret, "GET", "/api/v4/campaigns", client_ip="192.0.2.1")
    outside = await authorizer.check(secret, "GET", "/api/v4/campaigns", client_ip="192.0.3.1")
    again = await authorizer.check(secret, "GET", "/api/v4/campaigns", client_ip="192.0.2.9")

    assert [inside.reason, outside.reason, again.reason] == [
        Reason.ALLOWED,
        Reason.IP_NOT_ALLOWED,
        Reason.ALLOWED,
    ]


async def test_a_rolled_away_secret_is_not_found_from_the_end_of_its_overlap() -> None:
    keys, clock, authorizer = _setup()
    old = generate_key()
    new = _key(keys)
    [record] = keys.records.values()
    rolled = replace(
        record,
        previous_lookup_hash=HASHER.lookup_hash(old),
        previous_expire_time=BASE_TIME + timedelta(seconds=5),
    )
    keys.records = {rolled.lookup_hash: rolled, HASHER.lookup_hash(old): rolled}

    during = [await authorizer.check(s, "GET", "/api/v4/campaigns") for s in (old, new)]
    clock.now += timedelta(seconds=5)
    after = [await authorizer.check(s, "GET", "/api/v4/campaigns") for s in (old, new)]

    assert [d.reason for d in during] == [Reason.ALLOWED, Reason.ALLOWED]
    assert [d.reason for d in after] == [Reason.KEY_NOT_FOUND, Reason.ALLOWED]
    assert after[0].key_id == ""


def test_ipv4_mapped_addresses_and_networks_are_their_ipv4() -> None:
    assert parse_client_ip("::ffff:192.0.2.7") == ipaddress.IPv4Address("192.0.2.7")
    assert parse_network("::ffff:192.0.2.0/120") == ipaddress.IPv4Network("192.0.2.0/24")
    assert parse_network("2001:db8::/32") == ipaddress.IPv6Network("2001:db8::/32")
    assert parse_network("192.0.2.7") == ipaddress.IPv4Network("192.0.2.7/32")
    allowlist = NetworkSet(["192.0.2.0/24", "2001:db8::/32"])
    assert parse_client_ip("::ffff:192.0.2.7") in allowlist
    assert parse_client_ip("2001:db8::7") in allowlist
    assert parse_client_ip("192.0.3.7") not in allowlist
    assert None not in allowlist


@pytest.mark.parametrize("text", ["192.0.2.1/24", "192.0.2.0/33", "2001:db8::/129", "x", ""])
def test_a_network_with_bits_past_its_prefix_or_no_network_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"network|host bits|prefix|address"):
        parse_network(text)
