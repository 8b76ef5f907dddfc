"""``Check``: does this key exist, may it be used now and from here, and do
its scopes cover this route?

The order is what keeps it cheap and safe. The key's format comes first (a
string that is not even shaped like a key costs nothing more), then its HMAC
lookup hash and the cache. A key the cache holds is proven: its hash is the
HMAC of a key this service generated, checksum and all. Any other key must
pass its checksum before the route is matched and the store is asked, so a
look-alike never costs a store query. ``allowed`` is true only when every
step proved it; a store that cannot answer raises ``StoreUnavailable`` rather
than guess.

Reasons are decided in this order: malformed, route not found, key not
found (including a rolled key's previous secret once its overlap ended),
disabled, expired, address not allowed, scope missing. Time and address
enter only for keys whose record is ``restricted``, so most keys never read
the clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final, Protocol

from server.domain.decisions import KEY_MALFORMED, ROUTE_NOT_FOUND, Decision, Reason
from server.domain.errors import FieldViolation, InvalidArgument, StoreUnavailable
from server.domain.keys import KeyHasher, checksum_matches, has_key_format
from server.domain.memo import IdentityMemo
from server.domain.networks import Address, NetworkSet, parse_client_ip
from server.domain.records import KeyRecord, Mark
from server.domain.routes import RouteMatch, RouteTable
from server.domain.scopes import implied_scopes
from server.domain.store import KeyLookup
from server.domain.usage import UsageRecorder

_MEMO_LIMIT = 4096


class Checks(Protocol):
    """What answers checks: the ``Authorizer``, or a wrapper around it."""

    async def check(
        self,
        key: str,
        method: str,
        path: str,
        *,
        client_ip: str = "",
        time_left: float | None = None,
    ) -> Decision:
        """Decides one check (see ``Authorizer.check``)."""
        ...


class Marks(Protocol):
    """Where the process's change-feed mark is read (the change follower)."""

    @property
    def mark(self) -> Mark:
        """The process's mark now."""
        ...


class FixedMark:
    """A mark that never moves: a process that follows no change feed."""

    def __init__(self, mark: Mark) -> None:
        self.mark = mark


NO_FEED: Final = FixedMark(Mark(0))


class Authorizer:
    """Decides checks against the route table and the key store.

    Every decision carries the revision it was made at (the process's mark
    before the key was read, or when a cached key was used) and the seconds
    a caller may reuse it for: ``cache_ttl``, or less when the key expires or
    a rolled key's previous secret stops working sooner.
    """

    def __init__(
        self,
        *,
        keys: KeyLookup,
        hasher: KeyHasher,
        routes: RouteTable,
        usage: UsageRecorder,
        store_timeout: float,
        cache_ttl: float = 0.0,
        marks: Marks = NO_FEED,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """``store_timeout`` bounds, in seconds, how long a check waits for
        the store on a cache miss; ``clock`` tells expiry and overlap ends;
        ``cache_ttl`` caps how long a caller may reuse a decision."""
        self._keys = keys
        self._marks = marks
        self._cache_ttl = cache_ttl
        self._clock = clock
        self._store_timeout = store_timeout
        self._hasher = hasher
        self._routes = routes
        self._usage = usage
        # Keys share few distinct scope sets; expanding one once saves the
        # work on every later check of any key that has it.
        self._grants: dict[tuple[str, ...], tuple[frozenset[str], tuple[str, ...]]] = {}
        # A cached key is the same record object until the cache drops it,
        # and a route is the table's own object, so the decision for the
        # pair is derived from the two alone.
        self._decisions: IdentityMemo[Decision] = IdentityMemo(_MEMO_LIMIT)
        # A refusal of a found key is its scope decision with another reason:
        # derived from that decision object and the reason alone.
        self._refusals: IdentityMemo[Decision] = IdentityMemo(_MEMO_LIMIT)
        # A decision stamped with a mark and the full TTL is derived from
        # the two objects alone (the mark is a new object whenever it moves).
        self._stamped: IdentityMemo[Decision] = IdentityMemo(_MEMO_LIMIT)
        self._allowlists: dict[tuple[str, ...], NetworkSet] = {}
        # Routes are the table's own objects for the server's lifetime.
        self._not_found = {
            id(match): Decision(
                allowed=False,
                reason=Reason.KEY_NOT_FOUND,
                required_scopes=match.required_scopes,
                route=match.route,
            )
            for match in routes.routes
        }

    async def check(
        self,
        key: str,
        method: str,
        path: str,
        *,
        client_ip: str = "",
        time_left: float | None = None,
    ) -> Decision:
        """Decides one check. ``client_ip`` is the caller's address (empty:
        unknown, which no allowlist contains). Raises ``InvalidArgument`` for
        an empty method or path or an unparsable ``client_ip``, and
        ``StoreUnavailable`` when the key cannot be looked up within the store
        timeout or ``time_left`` (the seconds left until the caller's
        deadline, if it has one), whichever ends first."""
        client = None
        if not method or not path or client_ip:
            client = _validate(method, path, client_ip)
        # Taken before the key is read: every change up to it is in what the
        # read (or the cache, which drops a key before the mark passes its
        # change) returns.
        revision = self._marks.mark
        if not has_key_format(key):
            return self._stamp(KEY_MALFORMED, revision)
        lookup_hash = self._hasher.lookup_hash(key)
        record = self._keys.cached(lookup_hash)
        # A cached key passed its checksum when it was made; any other key
        # proves it here, before anything else is spent on it.
        if record is None and not checksum_matches(key):
            return self._stamp(KEY_MALFORMED, revision)
        match = self._routes.match(method, path)
        if match is None:
            return self._stamp(ROUTE_NOT_FOUND, revision)
        if record is None:
            record = await self._look_up(lookup_hash, time_left)
            if record is None:
                return self._stamp(self._not_found[id(match)], revision)
        if record.restricted:
            return self._restricted(record, lookup_hash, match, client, revision)
        decision = self._decide(record, match)
        if decision.allowed:
            self._usage.record(record.id)
        return self._stamp(decision, revision)

    def _restricted(
        self,
        record: KeyRecord,
        lookup_hash: bytes,
        match: RouteMatch,
        client: Address | None,
        revision: Mark,
    ) -> Decision:
        """The decision for a key whose time, address or secret matter; its
        TTL ends when the answer could change with no write."""
        now = self._clock()
        ends = []
        if lookup_hash != record.lookup_hash and record.previous_expire_time is not None:
            ends.append(record.previous_expire_time)
        if record.expire_time is not None and now < record.expire_time:
            ends.append(record.expire_time)
        decision = self._refuse(record, lookup_hash, match, client, now)
        if decision is None:
            decision = self._decide(record, match)
            if decision.allowed:
                self._usage.record(record.id)
        left = (min(ends) - now).total_seconds() if ends else self._cache_ttl
        if left >= self._cache_ttl:
            return self._stamp(decision, revision)
        return dataclasses.replace(decision, revision=revision.sequence, cache_ttl=max(0.0, left))

    def _stamp(self, decision: Decision, revision: Mark) -> Decision:
        stamped = self._stamped.get(decision, revision)
        if stamped is None:
            stamped = self._stamped.put(
                dataclasses.replace(
                    decision, revision=revision.sequence, cache_ttl=self._cache_ttl
                ),
                decision,
                revision,
            )
        return stamped

    async def _look_up(self, lookup_hash: bytes, time_left: float | None) -> KeyRecord | None:
        timeout = self._store_timeout
        if time_left is not None and time_left < timeout:
            timeout = time_left
        # Only this caller's wait ends: concurrent misses of one hash share a
        # lookup that the others may still be waiting for.
        try:
            async with asyncio.timeout(timeout):
                return await self._keys.find_by_lookup_hash(lookup_hash)
        except TimeoutError:
            raise StoreUnavailable(f"the key store did not answer within {timeout:g} s") from None

    def _refuse(
        self,
        record: KeyRecord,
        lookup_hash: bytes,
        match: RouteMatch,
        client: Address | None,
        now: datetime,
    ) -> Decision | None:
        """The refusal of a key found but not usable at ``now`` or from
        ``client``, or ``None`` when only its scopes remain to decide."""
        if lookup_hash != record.lookup_hash and (
            record.previous_expire_time is None or now >= record.previous_expire_time
        ):
            # A rolled key's previous secret after its overlap.
            return self._not_found[id(match)]
        if record.disabled:
            reason = Reason.KEY_DISABLED
        elif record.expire_time is not None and now >= record.expire_time:
            reason = Reason.KEY_EXPIRED
        elif record.allowed_cidrs and client not in self._allowlist(record.allowed_cidrs):
            reason = Reason.IP_NOT_ALLOWED
        else:
            return None
        decision = self._decide(record, match)
        refusal = self._refusals.get(decision, reason)
        if refusal is None:
            refusal = self._refusals.put(
                dataclasses.replace(decision, allowed=False, reason=reason), decision, reason
            )
        return refusal

    def _allowlist(self, cidrs: tuple[str, ...]) -> NetworkSet:
        allowlist = self._allowlists.get(cidrs)
        if allowlist is None:
            allowlist = NetworkSet(cidrs)
            if len(self._allowlists) >= _MEMO_LIMIT:
                self._allowlists.clear()
            self._allowlists[cidrs] = allowlist
        return allowlist

    def _decide(self, record: KeyRecord, match: RouteMatch) -> Decision:
        decision = self._decisions.get(record, match)
        if decision is not None:
            return decision
        granted, granted_sorted = self._grant(record.scopes)
        allowed = not granted.isdisjoint(match.required_scopes)
        decision = Decision(
            allowed=allowed,
            reason=Reason.ALLOWED if allowed else Reason.SCOPE_MISSING,
            key_id=record.id,
            contact_center_id=record.contact_center_id,
            granted_scopes=granted_sorted,
            required_scopes=match.required_scopes,
            route=match.route,
        )
        return self._decisions.put(decision, record, match)

    def _grant(self, scopes: tuple[str, ...]) -> tuple[frozenset[str], tuple[str, ...]]:
        grant = self._grants.get(scopes)
        if grant is None:
            expanded = implied_scopes(scopes)
            grant = (expanded, tuple(sorted(expanded)))
            if len(self._grants) >= _MEMO_LIMIT:
                self._grants.clear()
            self._grants[scopes] = grant
        return grant


def _validate(method: str, path: str, client_ip: str) -> Address | None:
    """The client's address, if given; ``InvalidArgument`` naming every bad
    field."""
    violations = []
    if not method:
        violations.append(FieldViolation(field="method", description="must not be empty"))
    if not path:
        violations.append(FieldViolation(field="path", description="must not be empty"))
    client = None
    if client_ip:
        try:
            client = parse_client_ip(client_ip)
        except ValueError:
            violations.append(
                FieldViolation(field="client_ip", description="is not an IPv4 or IPv6 address")
            )
    if violations:
        raise InvalidArgument(violations)
    return client
