"""What admins do with their contact center's keys (docs/API.md, "KeyAdmin").

Each operation checks the actor's permission, validates its input (every bad
field reported at once), and scopes every store call by the actor's contact
center, so another tenant's key is indistinguishable from one that never
existed.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from server.domain.errors import (
    FieldViolation,
    InvalidArgument,
    KeyCollision,
    KeyNotFound,
    KeyUnreadable,
    PermissionDenied,
)
from server.domain.keys import KeyCipher, KeyHasher, SecretUnreadable, generate_key, last4
from server.domain.networks import parse_network
from server.domain.paging import PageTokens, resolve_page_size
from server.domain.permissions import Actor, Permission
from server.domain.records import (
    DEFAULT_MAX_KEYS_PER_CONTACT_CENTER,
    UNCHANGED,
    AuditRecord,
    KeyChanges,
    KeyCursor,
    KeyRecord,
    Roll,
)
from server.domain.scopes import SCOPE_CATALOG, Scope
from server.domain.store import KeyStore
from server.domain.validation import has_control_characters

MAX_NAME_LENGTH = 100
MAX_DESCRIPTION_LENGTH = 500
MAX_QUERY_LENGTH = 100
MAX_ID_LENGTH = 64
# Far more scopes than the catalog has, or mask paths than there are
# fields: past this a list is refused whole, so a 1 MB request of junk
# entries cannot cost a violation (and CPU time) per entry.
MAX_LIST_ENTRIES = 100
UPDATABLE_FIELDS = ("name", "description", "scopes", "expire_time", "allowed_cidrs")
# What an empty update mask changes: the fields every key had before
# expiry and allowlists existed, so an older client's update never clears
# them.
DEFAULT_UPDATE_FIELDS = ("name", "description", "scopes")
MAX_ROLL_OVERLAP = timedelta(days=7)
_KEY_ID_PREFIX = "key_"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ALLOWED_CONTROL_IN_DESCRIPTION = frozenset("\n\t")


@dataclass(frozen=True, kw_only=True, slots=True)
class KeyListing:
    """One page of keys for ``ListKeys``."""

    keys: tuple[KeyRecord, ...]
    next_page_token: str
    total_size: int


@dataclass(frozen=True, kw_only=True, slots=True)
class AuditListing:
    """One page of audit events for ``ListAuditEvents``."""

    events: tuple[AuditRecord, ...]
    next_page_token: str


@dataclass(frozen=True, kw_only=True, slots=True)
class _IssuedSecret:
    """What the store keeps of a new secret: never the secret itself."""

    lookup_hash: bytes
    last4: str
    secret_ciphertext: bytes
    encryption_key_id: str


class KeyAdministration:
    """Creates, lists, edits, reveals and deletes a contact center's keys."""

    def __init__(
        self,
        *,
        store: KeyStore,
        hasher: KeyHasher,
        cipher: KeyCipher,
        page_tokens: PageTokens,
        max_keys: int = DEFAULT_MAX_KEYS_PER_CONTACT_CENTER,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._hasher = hasher
        self._cipher = cipher
        self._page_tokens = page_tokens
        self._max_keys = max_keys
        self._clock = clock

    def now(self) -> datetime:
        """The administration's clock, by which key states are told."""
        return self._clock()

    async def create_key(
        self,
        actor: Actor,
        *,
        name: str,
        description: str,
        scopes: Sequence[str],
        expire_time: datetime | None = None,
        allowed_cidrs: Sequence[str] = (),
    ) -> tuple[KeyRecord, str]:
        """Creates a key; returns it and its plaintext secret (shown once).
        ``expire_time`` (must be in the future) ends its use; a non-empty
        ``allowed_cidrs`` limits the addresses it may be used from."""
        _require(actor, Permission.CREATE)
        violations: list[FieldViolation] = []
        name = _name(name, violations)
        description = _description(description, violations)
        scope_names = _scopes(scopes, violations)
        expiry = self._expire_time(expire_time, violations)
        networks = _allowed_cidrs(allowed_cidrs, violations)
        _raise_if(violations)
        for _attempt in range(3):
            key_id = _KEY_ID_PREFIX + secrets.token_hex(12)
            secret, issued = self._issue(key_id)
            now = self._clock()
            record = KeyRecord(
                id=key_id,
                contact_center_id=actor.contact_center_id,
                name=name,
                description=description,
                scopes=scope_names,
                lookup_hash=issued.lookup_hash,
                last4=issued.last4,
                secret_ciphertext=issued.secret_ciphertext,
                encryption_key_id=issued.encryption_key_id,
                create_time=now,
                update_time=now,
                last_used_time=None,
                created_by=actor.actor_id,
                expire_time=expiry,
                allowed_cidrs=networks,
            )
            try:
                return await self._store.create_key(record, max_keys=self._max_keys), secret
            except KeyCollision:
                continue
        raise KeyCollision("could not generate an unused key")

    async def get_key(self, actor: Actor, key_id: str) -> KeyRecord:
        """The key, or ``KeyNotFound``."""
        _require(actor, Permission.VIEW)
        key_id = _key_id(key_id)
        record = await self._store.get_key(actor.contact_center_id, key_id)
        if record is None:
            raise KeyNotFound(key_id)
        return record

    async def list_keys(
        self, actor: Actor, *, query: str, page_size: int, page_token: str
    ) -> KeyListing:
        """A page of keys whose name or description contains ``query``."""
        _require(actor, Permission.VIEW)
        violations: list[FieldViolation] = []
        if has_control_characters(query):
            violations.append(
                FieldViolation(field="query", description="must not contain control characters")
            )
        query = query.strip()
        if len(query) > MAX_QUERY_LENGTH:
            violations.append(
                FieldViolation(
                    field="query", description=f"must be at most {MAX_QUERY_LENGTH} characters"
                )
            )
        limit = resolve_page_size(page_size, violations)
        _raise_if(violations)
        binding = f"{actor.contact_center_id}\0{query.casefold()}"
        after = None
        if page_token:
            position = self._page_tokens.decode(page_token, kind="keys", binding=binding)
            after = _key_cursor(position)
        page = await self._store.list_keys(
            actor.contact_center_id, query=query, after=after, limit=limit
        )
        next_token = ""
        if page.has_more and page.keys:
            last = page.keys[-1]
            next_token = self._page_tokens.encode(
                kind="keys",
                binding=binding,
                position={"t": _micros(last.create_time), "i": last.id},
            )
        return KeyListing(keys=page.keys, next_page_token=next_token, total_size=page.total_size)

    async def update_key(
        self,
        actor: Actor,
        key_id: str,
        *,
        name: str,
        description: str,
        scopes: Sequence[str],
        update_mask: Collection[str],
        expire_time: datetime | None = None,
        allowed_cidrs: Sequence[str] = (),
    ) -> KeyRecord:
        """Changes the fields named by ``update_mask``; an empty mask means
        name, description and scopes. Naming ``expire_time`` or
        ``allowed_cidrs`` with an empty value clears it."""
        _require(actor, Permission.EDIT)
        violations: list[FieldViolation] = []
        _check_key_id(key_id, "id", violations)
        paths = set(update_mask) or set(DEFAULT_UPDATE_FIELDS)
        if not _too_long(update_mask, "update_mask.paths", violations):
            violations.extend(
                # Named by position, never echoed: a pasted secret must not
                # come back in an error.
                FieldViolation(
                    field=f"update_mask.paths[{index}]",
                    description="is not an updatable field; "
                    f"allowed: {', '.join(UPDATABLE_FIELDS)}",
                )
                for index, path in enumerate(update_mask)
                if path not in UPDATABLE_FIELDS
            )
        changes = KeyChanges(
            name=_name(name, violations) if "name" in paths else None,
            description=_description(description, violations) if "description" in paths else None,
            scopes=_scopes(scopes, violations) if "scopes" in paths else None,
            expire_time=(
                self._expire_time(expire_time, violations) if "expire_time" in paths else UNCHANGED
            ),
            allowed_cidrs=(
                _allowed_cidrs(allowed_cidrs, violations) if "allowed_cidrs" in paths else None
            ),
        )
        _raise_if(violations)
        result = await self._store.update_key(
            actor.contact_center_id, key_id, changes, actor_id=actor.actor_id, time=self._clock()
        )
        if result is None:
            raise KeyNotFound(key_id)
        return result[1]

    async def delete_key(self, actor: Actor, key_id: str) -> None:
        """Deletes (revokes) the key."""
        _require(actor, Permission.DELETE)
        key_id = _key_id(key_id)
        deleted = await self._store.delete_key(
            actor.contact_center_id, key_id, actor_id=actor.actor_id, time=self._clock()
        )
        if deleted is None:
            raise KeyNotFound(key_id)

    async def disable_key(self, actor: Actor, key_id: str) -> KeyRecord:
        """Disables the key: kept with its history, refused by ``Check``."""
        return await self._set_disabled(actor, key_id, disabled=True)

    async def enable_key(self, actor: Actor, key_id: str) -> KeyRecord:
        """Enables a disabled key again."""
        return await self._set_disabled(actor, key_id, disabled=False)

    async def _set_disabled(self, actor: Actor, key_id: str, *, disabled: bool) -> KeyRecord:
        _require(actor, Permission.EDIT)
        key_id = _key_id(key_id)
        result = await self._store.set_key_disabled(
            actor.contact_center_id, key_id, disabled, actor_id=actor.actor_id, time=self._clock()
        )
        if result is None:
            raise KeyNotFound(key_id)
        return result[1]

    async def roll_key(
        self, actor: Actor, key_id: str, *, overlap: timedelta | None
    ) -> tuple[KeyRecord, str]:
        """Gives the key a new secret, returned once; the old one keeps
        working for ``overlap`` (zero: not at all, at most seven days; it
        must be given). A secret replaced by an earlier roll stops at once."""
        _require(actor, Permission.EDIT)
        violations: list[FieldViolation] = []
        _check_key_id(key_id, "id", violations)
        if overlap is None:
            violations.append(
                FieldViolation(field="overlap", description="must be set; 0 ends the old secret")
            )
        elif not timedelta(0) <= overlap <= MAX_ROLL_OVERLAP:
            violations.append(FieldViolation(field="overlap", description="must be 0 to 7 days"))
        _raise_if(violations)
        assert overlap is not None
        for _attempt in range(3):
            secret, issued = self._issue(key_id)
            now = self._clock()
            roll = Roll(
                lookup_hash=issued.lookup_hash,
                last4=issued.last4,
                secret_ciphertext=issued.secret_ciphertext,
                encryption_key_id=issued.encryption_key_id,
                previous_expire_time=now + overlap,
            )
            try:
                result = await self._store.roll_key(
                    actor.contact_center_id, key_id, roll, actor_id=actor.actor_id, time=now
                )
            except KeyCollision:
                continue
            if result is None:
                raise KeyNotFound(key_id)
            return result[1], secret
        raise KeyCollision("could not generate an unused key")

    def _issue(self, key_id: str) -> tuple[str, _IssuedSecret]:
        """A new secret for ``key_id`` and what the store keeps of it."""
        secret = generate_key()
        encryption_key_id, ciphertext = self._cipher.encrypt(
            secret, associated_data=key_id.encode()
        )
        return secret, _IssuedSecret(
            lookup_hash=self._hasher.lookup_hash(secret),
            last4=last4(secret),
            secret_ciphertext=ciphertext,
            encryption_key_id=encryption_key_id,
        )

    def _expire_time(
        self, expire_time: datetime | None, violations: list[FieldViolation]
    ) -> datetime | None:
        if expire_time is not None and expire_time <= self._clock():
            violations.append(
                FieldViolation(field="expire_time", description="must be in the future")
            )
        return expire_time

    async def reveal_key(self, actor: Actor, key_id: str) -> str:
        """The key's plaintext secret. Decrypted first and audited only once
        it can be shown, so the log never records a reveal that failed."""
        _require(actor, Permission.VIEW)
        key_id = _key_id(key_id)
        record = await self._store.get_key(actor.contact_center_id, key_id)
        if record is None:
            raise KeyNotFound(key_id)
        try:
            secret = self._cipher.decrypt(
                record.encryption_key_id,
                record.secret_ciphertext,
                associated_data=record.id.encode(),
            )
        except SecretUnreadable as exc:
            raise KeyUnreadable(record.encryption_key_id) from exc
        audited = await self._store.reveal_key(
            actor.contact_center_id, key_id, actor_id=actor.actor_id, time=self._clock()
        )
        if audited is None:
            raise KeyNotFound(key_id)
        return secret

    def list_scopes(self, actor: Actor) -> tuple[Scope, ...]:
        """The scope catalog, sorted by name."""
        _require(actor, Permission.VIEW)
        return tuple(SCOPE_CATALOG[name] for name in sorted(SCOPE_CATALOG))

    async def list_audit_events(
        self, actor: Actor, *, key_id: str, page_size: int, page_token: str
    ) -> AuditListing:
        """A page of audit events, newest first, optionally of one key."""
        _require(actor, Permission.VIEW)
        violations: list[FieldViolation] = []
        if key_id:
            _check_key_id(key_id, "key_id", violations)
        limit = resolve_page_size(page_size, violations)
        _raise_if(violations)
        binding = f"{actor.contact_center_id}\0{key_id}"
        before_id = None
        if page_token:
            position = self._page_tokens.decode(page_token, kind="audit", binding=binding)
            before_id = position.get("b")
            if not isinstance(before_id, int):
                raise _bad_page_token()
        page = await self._store.list_audit_events(
            actor.contact_center_id, key_id=key_id or None, before_id=before_id, limit=limit
        )
        next_token = ""
        if page.has_more and page.events:
            next_token = self._page_tokens.encode(
                kind="audit", binding=binding, position={"b": page.events[-1].id}
            )
        return AuditListing(events=page.events, next_page_token=next_token)


def _require(actor: Actor, permission: Permission) -> None:
    if not actor.may(permission):
        raise PermissionDenied(permission.value)


def _raise_if(violations: list[FieldViolation]) -> None:
    if violations:
        raise InvalidArgument(violations)


def _key_id(key_id: str, *, field: str = "id") -> str:
    violations: list[FieldViolation] = []
    _check_key_id(key_id, field, violations)
    _raise_if(violations)
    return key_id


def _check_key_id(key_id: str, field: str, violations: list[FieldViolation]) -> None:
    if not key_id:
        violations.append(FieldViolation(field=field, description="must not be empty"))
    elif len(key_id) > MAX_ID_LENGTH or not key_id.isascii() or not key_id.isprintable():
        violations.append(FieldViolation(field=field, description="is not a key id"))


def _name(value: str, violations: list[FieldViolation]) -> str:
    name = value.strip()
    if not 1 <= len(name) <= MAX_NAME_LENGTH:
        violations.append(
            FieldViolation(field="name", description=f"must be 1 to {MAX_NAME_LENGTH} characters")
        )
    elif has_control_characters(value):
        violations.append(
            FieldViolation(field="name", description="must not contain control characters")
        )
    return name


def _description(value: str, violations: list[FieldViolation]) -> str:
    description = value.strip()
    if len(description) > MAX_DESCRIPTION_LENGTH:
        violations.append(
            FieldViolation(
                field="description",
                description=f"must be at most {MAX_DESCRIPTION_LENGTH} characters",
            )
        )
    elif has_control_characters(value, allowed=_ALLOWED_CONTROL_IN_DESCRIPTION):
        violations.append(
            FieldViolation(
                field="description",
                description="must not contain control characters other than newline and tab",
            )
        )
    return description


def _scopes(values: Sequence[str], violations: list[FieldViolation]) -> tuple[str, ...]:
    if _too_long(values, "scopes", violations):
        return ()
    scopes = tuple(sorted(set(values)))
    if not scopes:
        violations.append(FieldViolation(field="scopes", description="must name at least one"))
    for index, scope in enumerate(values):
        if scope not in SCOPE_CATALOG:
            violations.append(
                FieldViolation(
                    field=f"scopes[{index}]",
                    # Never echoed: a pasted secret must not come back in an error.
                    description="is not a scope of the catalog; see ListScopes",
                )
            )
    return scopes


def _allowed_cidrs(values: Sequence[str], violations: list[FieldViolation]) -> tuple[str, ...]:
    """The networks in canonical form, each once, in the order given."""
    if _too_long(values, "allowed_cidrs", violations):
        return ()
    networks: dict[str, None] = {}
    for index, value in enumerate(values):
        try:
            networks[str(parse_network(value))] = None
        except ValueError:
            violations.append(
                FieldViolation(
                    field=f"allowed_cidrs[{index}]",
                    # Never echoed: a pasted secret must not come back in an error.
                    description="is not an IPv4 or IPv6 network (address/prefix, "
                    "no bits set past the prefix)",
                )
            )
    return tuple(networks)


def _too_long(values: Collection[str], field: str, violations: list[FieldViolation]) -> bool:
    if len(values) <= MAX_LIST_ENTRIES:
        return False
    violations.append(
        FieldViolation(field=field, description=f"must hold at most {MAX_LIST_ENTRIES} entries")
    )
    return True


def _key_cursor(position: dict[str, object]) -> KeyCursor:
    micros, key_id = position.get("t"), position.get("i")
    if not isinstance(micros, int) or not isinstance(key_id, str):
        raise _bad_page_token()
    return KeyCursor(
        create_time=_EPOCH + timedelta(microseconds=micros),
        key_id=key_id,
    )


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _bad_page_token() -> InvalidArgument:
    return InvalidArgument(
        [FieldViolation(field="page_token", description="is not a token this server issued")]
    )
