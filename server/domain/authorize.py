"""``Check``: does this key exist, and do its scopes cover this route?

The order is what keeps it cheap and safe: the key's format and checksum
first (a look-alike costs no lookup), then the route (a bad path costs no
lookup), then the key by its HMAC lookup hash through the cache, then the
scopes. ``allowed`` is true only when every step proved it; a store that
cannot answer raises ``StoreUnavailable`` rather than guess.
"""

from __future__ import annotations

from server.domain.decisions import KEY_MALFORMED, ROUTE_NOT_FOUND, Decision, Reason
from server.domain.errors import FieldViolation, InvalidArgument
from server.domain.keys import KeyHasher, is_well_formed
from server.domain.routes import RouteMatch, RouteTable
from server.domain.scopes import implied_scopes
from server.domain.store import KeyStore
from server.domain.usage import UsageRecorder

_GRANT_MEMO_LIMIT = 4096


class Authorizer:
    """Decides checks against the route table and the key store."""

    def __init__(
        self,
        *,
        store: KeyStore,
        hasher: KeyHasher,
        routes: RouteTable,
        usage: UsageRecorder,
    ) -> None:
        self._store = store
        self._hasher = hasher
        self._routes = routes
        self._usage = usage
        # Keys share few distinct scope sets; expanding one once saves the
        # work on every later check of any key that has it.
        self._grants: dict[tuple[str, ...], tuple[frozenset[str], tuple[str, ...]]] = {}

    async def check(self, key: str, method: str, path: str) -> Decision:
        """Decides one check. Raises ``InvalidArgument`` for an empty method
        or path and ``StoreUnavailable`` when the key cannot be looked up."""
        if not method or not path:
            violations = []
            if not method:
                violations.append(FieldViolation(field="method", description="must not be empty"))
            if not path:
                violations.append(FieldViolation(field="path", description="must not be empty"))
            raise InvalidArgument(violations)
        if not is_well_formed(key):
            return KEY_MALFORMED
        match = self._routes.match(method, path)
        if match is None:
            return ROUTE_NOT_FOUND
        record = await self._store.find_by_lookup_hash(self._hasher.lookup_hash(key))
        if record is None:
            return Decision(
                allowed=False,
                reason=Reason.KEY_NOT_FOUND,
                required_scopes=match.required_scopes,
                route=match.route,
            )
        granted, granted_sorted = self._grant(record.scopes)
        allowed = _covers(granted, match)
        if allowed:
            self._usage.record(record.id)
        return Decision(
            allowed=allowed,
            reason=Reason.ALLOWED if allowed else Reason.SCOPE_MISSING,
            key_id=record.id,
            contact_center_id=record.contact_center_id,
            granted_scopes=granted_sorted,
            required_scopes=match.required_scopes,
            route=match.route,
        )

    def _grant(self, scopes: tuple[str, ...]) -> tuple[frozenset[str], tuple[str, ...]]:
        grant = self._grants.get(scopes)
        if grant is None:
            expanded = implied_scopes(scopes)
            grant = (expanded, tuple(sorted(expanded)))
            if len(self._grants) >= _GRANT_MEMO_LIMIT:
                self._grants.clear()
            self._grants[scopes] = grant
        return grant


def _covers(granted: frozenset[str], match: RouteMatch) -> bool:
    return any(scope in granted for scope in match.required_scopes)
