"""What the store keeps: keys, their audit history and the change feed."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import NewType

DEFAULT_MAX_KEYS_PER_CONTACT_CENTER = 50


class AuditAction(enum.Enum):
    """What an audit event records; values are stored in the database."""

    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"
    REVEALED = "revealed"
    DISABLED = "disabled"
    ENABLED = "enabled"
    ROLLED = "rolled"


class ChangeKind(enum.Enum):
    """Which mutation a change-feed entry records; values are stored."""

    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"
    DISABLED = "disabled"
    ENABLED = "enabled"
    ROLLED = "rolled"


class KeyState(enum.Enum):
    """What ``Check`` makes of a key now, apart from its scopes and addresses."""

    ACTIVE = "active"
    DISABLED = "disabled"
    EXPIRED = "expired"


class Unchanged(enum.Enum):
    """Marks a field an update leaves alone where ``None`` is a value."""

    UNCHANGED = "unchanged"


UNCHANGED = Unchanged.UNCHANGED


@dataclass(frozen=True, kw_only=True, slots=True)
class KeyRecord:
    """One stored API key. Holds no plaintext: only the lookup hash, the last
    four characters and the encrypted secret."""

    id: str
    contact_center_id: str
    name: str
    description: str
    scopes: tuple[str, ...]
    lookup_hash: bytes
    last4: str
    secret_ciphertext: bytes
    encryption_key_id: str
    create_time: datetime
    update_time: datetime
    last_used_time: datetime | None
    created_by: str
    expire_time: datetime | None = None
    disabled: bool = False
    allowed_cidrs: tuple[str, ...] = ()
    # A rolled key's previous secret, which works until its overlap ends.
    previous_lookup_hash: bytes | None = None
    previous_expire_time: datetime | None = None
    # Whether a check of this key depends on more than its scopes (state,
    # time, address or which secret was presented): false for most keys,
    # which then take the shortest path through ``Check``.
    restricted: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "restricted",
            self.disabled
            or self.expire_time is not None
            or bool(self.allowed_cidrs)
            or self.previous_lookup_hash is not None,
        )

    @property
    def lookup_hashes(self) -> tuple[bytes, ...]:
        """Every lookup hash that finds this key: a rolled key has two until
        its next roll or deletion."""
        if self.previous_lookup_hash is None:
            return (self.lookup_hash,)
        return (self.lookup_hash, self.previous_lookup_hash)

    def state(self, now: datetime) -> KeyState:
        """Disabled before expired, as ``Check`` decides them."""
        if self.disabled:
            return KeyState.DISABLED
        if self.expire_time is not None and now >= self.expire_time:
            return KeyState.EXPIRED
        return KeyState.ACTIVE


@dataclass(frozen=True, kw_only=True, slots=True)
class AuditRecord:
    """One entry of a key's append-only history. ``id`` is assigned by the
    store and grows with every event, so it orders events newest-first."""

    id: int
    contact_center_id: str
    key_id: str
    action: AuditAction
    actor_id: str
    time: datetime
    old_name: str = ""
    new_name: str = ""
    old_description: str = ""
    new_description: str = ""
    old_scopes: tuple[str, ...] = ()
    new_scopes: tuple[str, ...] = ()
    old_expire_time: datetime | None = None
    new_expire_time: datetime | None = None
    old_allowed_cidrs: tuple[str, ...] = ()
    new_allowed_cidrs: tuple[str, ...] = ()
    # Rolled: when the secret replaced by the roll stops working.
    previous_secret_expire_time: datetime | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class KeyChanges:
    """The fields an update sets; ``None`` (``UNCHANGED`` for the expiry,
    where ``None`` means "never") leaves a field as it is."""

    name: str | None = None
    description: str | None = None
    scopes: tuple[str, ...] | None = None
    expire_time: datetime | Unchanged | None = UNCHANGED
    allowed_cidrs: tuple[str, ...] | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Roll:
    """A new secret for a key: its lookup hash, display characters and
    ciphertext, and when the secret it replaces stops working."""

    lookup_hash: bytes
    last4: str
    secret_ciphertext: bytes
    encryption_key_id: str
    previous_expire_time: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class KeyCursor:
    """Position after the last key of a page (keys are ordered newest first,
    ties broken by id)."""

    create_time: datetime
    key_id: str


@dataclass(frozen=True, kw_only=True, slots=True)
class KeyPage:
    """One page of keys and how many keys match the query in all."""

    keys: tuple[KeyRecord, ...]
    total_size: int
    has_more: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class AuditPage:
    """One page of audit events, newest first."""

    events: tuple[AuditRecord, ...]
    has_more: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class KeyChange:
    """One entry of the change feed: a key was created, updated or deleted.

    ``seq`` grows with every entry taken, but entries may become visible out
    of order (a transaction can commit after one that took a later ``seq``),
    which is why readers follow the feed by ``FeedPosition``, not by ``seq``.
    ``sequence`` places the entry against a page's ``mark`` (on PostgreSQL
    its transaction's id, on SQLite its ``seq``); a mutation's entries share
    it on PostgreSQL. Carries the lookup hash (what caches are keyed by) and
    the key's id, which entries written before ids were recorded lack.
    """

    seq: int
    sequence: int
    key_id: str | None
    lookup_hash: bytes
    kind: ChangeKind
    time: datetime


@dataclass(frozen=True, slots=True)
class Mark:
    """A process's mark: the change sequence up to which it has applied
    every change that can ever commit. A new object whenever it moves, so
    that answers derived from it can be remembered by its identity."""

    sequence: int


# Where a reader of the change feed stands: opaque to the reader, which only
# hands it back to the feed to read on from there.
FeedPosition = NewType("FeedPosition", str)


@dataclass(frozen=True, kw_only=True, slots=True)
class ChangePage:
    """Change-feed entries committed after a reader's position, oldest
    ``seq`` first, and the position to read on from.

    ``more`` says further entries are ready at ``position`` now. ``missed``
    says entries committed after the old position were pruned before this
    read: the reader may have lost some. ``reset`` says the database is not
    the one the old position came from (a failover to a standby that had not
    received every commit, or a replaced database): whatever the reader
    derived from the database may be wrong, and ``position`` starts afresh at
    the feed's current end.

    ``mark`` is the sequence up to which a reader at ``position`` has seen
    every entry that can ever commit: an entry still to come has a higher
    ``sequence``. It only grows along one database's feed.
    """

    changes: tuple[KeyChange, ...]
    position: FeedPosition
    mark: int
    more: bool = False
    missed: bool = False
    reset: bool = False
