"""Who is using the page: the admin token of the request and what it allows.

The console never decides who may do what: every action goes to ``KeyAdmin``
with the admin's own token, and the server verifies it. The console reads the
token's claims, unverified, only to offer the controls the admin may use,
with the server's rule: with Security Access Groups (``sag``) only the listed
permissions count; without them the role ``admin`` has all four and any other
role none.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import jwt

from clients.devtoken import dev_signing_key_path, mint_dev_token

__all__ = [
    "ADMIN_ROLE",
    "DEV_CONTACT_CENTER",
    "PERMISSIONS",
    "Admin",
    "DevSignIn",
]

VIEW: Final = "api_keys.view"
CREATE: Final = "api_keys.create"
EDIT: Final = "api_keys.edit"
DELETE: Final = "api_keys.delete"
PERMISSIONS: Final = (VIEW, CREATE, EDIT, DELETE)
ADMIN_ROLE: Final = "admin"
DEV_CONTACT_CENTER: Final = "cc-dev"
DEV_SUBJECT: Final = "dev-admin"
DEV_ROLES: Final = (ADMIN_ROLE, "supervisor", "agent")
# A development token this close to its expiry is replaced rather than sent.
_RENEW_BEFORE_SECONDS: Final = 60


@dataclass(frozen=True, kw_only=True, slots=True)
class Admin:
    """The signed-in admin as the token's claims describe them."""

    # Kept out of repr: a token in a log line or traceback could be replayed.
    token: str = field(repr=False)
    subject: str
    contact_center_id: str
    role: str
    listed_permissions: frozenset[str]
    sag: bool
    expires_at: float | None

    @classmethod
    def from_token(cls, token: str) -> Admin | None:
        """The claims of ``token``, or ``None`` when it is not a JWT at all
        (the server would refuse it; there is nothing to offer)."""
        try:
            claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            return None
        permissions = claims.get("permissions")
        expires_at = claims.get("exp")
        return cls(
            token=token,
            subject=str(claims.get("sub", "")),
            contact_center_id=str(claims.get("contact_center_id", "")),
            role=str(claims.get("role", "")),
            listed_permissions=frozenset(
                p for p in permissions if isinstance(p, str) and p in PERMISSIONS
            )
            if isinstance(permissions, list)
            else frozenset(),
            sag=claims.get("sag") is True,
            expires_at=float(expires_at) if isinstance(expires_at, int | float) else None,
        )

    def may(self, permission: str) -> bool:
        """Whether the server's permission rule grants ``permission``."""
        if self.sag:
            return permission in self.listed_permissions
        return self.role == ADMIN_ROLE

    @property
    def may_view(self) -> bool:
        """May list, open and show keys again."""
        return self.may(VIEW)

    @property
    def may_create(self) -> bool:
        """May add keys."""
        return self.may(CREATE)

    @property
    def may_edit(self) -> bool:
        """May rename, describe and re-scope keys."""
        return self.may(EDIT)

    @property
    def may_delete(self) -> bool:
        """May delete (revoke) keys."""
        return self.may(DELETE)

    def expires_soon(self, now: float) -> bool:
        """Whether the token is expired or about to be."""
        return self.expires_at is None or self.expires_at - now < _RENEW_BEFORE_SECONDS


class DevSignIn:
    """Development sign-in: tokens for contact center ``cc-dev`` signed with
    the development key pair of the server whose data directory is given,
    as ``apikeys dev-token`` mints them."""

    def __init__(self, data_dir: Path) -> None:
        self.signing_key = dev_signing_key_path(data_dir)

    def sign_in(
        self, *, role: str = ADMIN_ROLE, permissions: Collection[str] = (), sag: bool = False
    ) -> Admin:
        """A fresh token with these claims; ``OSError`` or ``ValueError`` when
        the server has not written its key pair (yet)."""
        token = mint_dev_token(
            self.signing_key,
            subject=DEV_SUBJECT,
            contact_center_id=DEV_CONTACT_CENTER,
            role=role,
            permissions=[p for p in PERMISSIONS if p in permissions],
            sag=sag,
        )
        admin = Admin.from_token(token)
        assert admin is not None, "a minted token is a JWT"
        return admin

    def renewed(self, admin: Admin | None) -> Admin:
        """``admin`` while their token is good for a while, else a new token
        with the same role, permissions and SAG (the default admin when none)."""
        if admin is not None and not admin.expires_soon(time.time()):
            return admin
        if admin is None or admin.contact_center_id != DEV_CONTACT_CENTER:
            return self.sign_in()
        return self.sign_in(role=admin.role, permissions=admin.listed_permissions, sag=admin.sag)
