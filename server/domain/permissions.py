"""Who is calling KeyAdmin and what they may do (docs/API.md, "Admin tokens")."""

from __future__ import annotations

import enum
from dataclasses import dataclass

ADMIN_ROLE = "admin"


class Permission(enum.Enum):
    """The four API-key permissions; values are the token's claim strings."""

    VIEW = "api_keys.view"
    CREATE = "api_keys.create"
    EDIT = "api_keys.edit"
    DELETE = "api_keys.delete"


@dataclass(frozen=True, kw_only=True, slots=True)
class Actor:
    """The verified identity behind an admin token."""

    actor_id: str
    contact_center_id: str
    role: str
    permissions: frozenset[str]
    sag: bool

    def may(self, permission: Permission) -> bool:
        """With Security Access Groups only the listed permissions count;
        without them the admin role has all four and any other role none."""
        if self.sag:
            return permission.value in self.permissions
        return self.role == ADMIN_ROLE
