"""``Check``: does this key exist, and do its scopes cover this route?

The order is what keeps it cheap and safe. The key's format comes first (a
string that is not even shaped like a key costs nothing more), then its HMAC
lookup hash and the cache. A key the cache holds is proven: its hash is the
HMAC of a key this service generated, checksum and all. Any other key must
pass its checksum before the route is matched and the store is asked, so a
look-alike never costs a store query. ``allowed`` is true only when every
step proved it; a store that cannot answer raises ``StoreUnavailable`` rather
than guess.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from server.domain.decisions import KEY_MALFORMED, ROUTE_NOT_FOUND, Decision, Reason
from server.domain.errors import FieldViolation, InvalidArgument, StoreUnavailable
from server.domain.keys import KeyHasher, checksum_matches, has_key_format
from server.domain.memo import IdentityMemo
from server.domain.records import KeyRecord
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


class Authorizer:
    """Decides checks against the route table and the key store."""

    def __init__(
        self,
        *,
        keys: KeyLookup,
        hasher: KeyHasher,
        routes: RouteTable,
        usage: UsageRecorder,
        store_timeout: float,
    ) -> None:
        """``store_timeout`` bounds, in seconds, how long a check waits for
        the store on a cache miss."""
        self._keys = keys
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
        """Decides one check. Raises ``InvalidArgument`` for an empty method
        or path and ``StoreUnavailable`` when the key cannot be looked up
        within the store timeout or ``time_left`` (the seconds left until
        the caller's deadline, if it has one), whichever ends first.
        ``client_ip`` is the address the request came from, which no key
        is limited by yet."""
        if not method or not path:
            violations = []
            if not method:
                violations.append(FieldViolation(field="method", description="must not be empty"))
            if not path:
                violations.append(FieldViolation(field="path", description="must not be empty"))
            raise InvalidArgument(violations)
        if not has_key_format(key):
            return KEY_MALFORMED
        lookup_hash = self._hasher.lookup_hash(key)
        record = self._keys.cached(lookup_hash)
        # A cached key passed its checksum when it was made; any other key
        # proves it here, before anything else is spent on it.
        if record is None and not checksum_matches(key):
            return KEY_MALFORMED
        match = self._routes.match(method, path)
        if match is None:
            return ROUTE_NOT_FOUND
        if record is None:
            record = await self._look_up(lookup_hash, time_left)
            if record is None:
                return self._not_found[id(match)]
        decision = self._decide(record, match)
        if decision.allowed:
            self._usage.record(record.id)
        return decision

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
