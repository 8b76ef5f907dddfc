"""The answer to ``Check``: allowed or not, and why."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Reason(enum.Enum):
    """Why a check was decided as it was; mirrors the proto enum by name."""

    ALLOWED = "REASON_ALLOWED"
    KEY_MALFORMED = "REASON_KEY_MALFORMED"
    KEY_NOT_FOUND = "REASON_KEY_NOT_FOUND"
    SCOPE_MISSING = "REASON_SCOPE_MISSING"
    ROUTE_NOT_FOUND = "REASON_ROUTE_NOT_FOUND"
    KEY_DISABLED = "REASON_KEY_DISABLED"
    KEY_EXPIRED = "REASON_KEY_EXPIRED"
    IP_NOT_ALLOWED = "REASON_IP_NOT_ALLOWED"


@dataclass(frozen=True, kw_only=True, slots=True)
class Decision:
    """One check's outcome. ``allowed`` is true only for ``Reason.ALLOWED``.

    ``revision`` is the deciding process's change-feed mark when it read the
    key (every change up to it is reflected); ``cache_ttl`` the seconds for
    which a caller may reuse the answer at most.
    """

    allowed: bool
    reason: Reason
    key_id: str = ""
    contact_center_id: str = ""
    granted_scopes: tuple[str, ...] = ()
    required_scopes: tuple[str, ...] = ()
    route: str = ""
    revision: int = 0
    cache_ttl: float = 0.0


KEY_MALFORMED = Decision(allowed=False, reason=Reason.KEY_MALFORMED)
ROUTE_NOT_FOUND = Decision(allowed=False, reason=Reason.ROUTE_NOT_FOUND)
