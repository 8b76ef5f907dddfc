"""Domain errors: what went wrong, in the domain's words.

The gRPC edge (``server.api.errors``) is the only place that turns these into
status codes; nothing here knows about transports or databases.

    DomainError
    ├── InvalidArgument       bad input, one FieldViolation per bad field
    ├── Unauthenticated       no or bad admin token
    ├── PermissionDenied      the actor lacks the permission
    ├── KeyNotFound           no such key in the actor's contact center
    ├── KeyLimitExceeded      the contact center already has its maximum
    ├── KeyUnreadable         no configured key-encryption key opens the secret
    └── StoreUnavailable      the store cannot answer right now
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True, slots=True)
class FieldViolation:
    """One bad field of a request and what is wrong with it."""

    field: str
    description: str


class DomainError(Exception):
    """Base of every error the domain raises on purpose."""


class InvalidArgument(DomainError):
    """The request is malformed; ``violations`` names each bad field."""

    def __init__(self, violations: list[FieldViolation]) -> None:
        self.violations = tuple(violations)
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations))


class Unauthenticated(DomainError):
    """The caller presented no admin token or one that does not verify."""


class PermissionDenied(DomainError):
    """The actor is authenticated but lacks the permission for the call."""

    def __init__(self, permission: str) -> None:
        self.permission = permission
        super().__init__(f"missing permission {permission}")


class KeyNotFound(DomainError):
    """No such key in the actor's contact center (or it was deleted)."""

    def __init__(self, key_id: str) -> None:
        self.key_id = key_id
        # The id is the caller's input (it may be a secret pasted into the
        # wrong field), so it stays out of the text a log line would show.
        super().__init__("key not found")


class KeyLimitExceeded(DomainError):
    """Creating one more key would exceed the per-contact-center limit."""

    def __init__(self, contact_center_id: str, limit: int) -> None:
        self.contact_center_id = contact_center_id
        self.limit = limit
        super().__init__(f"contact center already has its maximum of {limit} keys")


class KeyUnreadable(DomainError):
    """A key's stored secret cannot be decrypted: its key-encryption key is
    no longer configured (rotated out too early) or the ciphertext is damaged."""

    def __init__(self, encryption_key_id: str) -> None:
        self.encryption_key_id = encryption_key_id
        super().__init__(f"secret encrypted under key-encryption key {encryption_key_id!r}")


class StoreUnavailable(DomainError):
    """The key store cannot answer now; callers must not guess."""


class KeyCollision(DomainError):
    """A new key's id or lookup hash is already used or retired; the key must
    be generated again (a 96- or 256-bit collision, so in practice never)."""


class WatchingOff(DomainError):
    """This server does not serve ``WatchChanges``."""


class WatchersExhausted(DomainError):
    """As many watchers are open as this process takes."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"at most {limit} watchers")
        self.limit = limit


class WatcherCutOff(DomainError):
    """A watcher fell too far behind the events sent to it and was cut off."""
