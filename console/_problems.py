"""What the page says when ``KeyAdmin`` refuses or fails: a sentence a person
can act on and an HTTP status, never a traceback or a gRPC code.

The server's messages never quote what was sent (a secret pasted into the
wrong field must not come back); only field names and fixed descriptions
from its ``BadRequest`` detail are shown.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from clients import (
    ApiKeysError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    TransportError,
    Unauthenticated,
)

__all__ = ["Problem", "not_permitted", "problem_of"]

_FIELD_LABELS: Final = {"name": "Name", "description": "Description", "scopes": "Scopes"}
_LIMIT: Final = re.compile(r"\b(\d+)\b")


@dataclass(frozen=True, kw_only=True, slots=True)
class Problem:
    """Why an action did not happen: ``message`` for the page, ``fields``
    maps a form field to what is wrong with it."""

    status: int
    message: str
    fields: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


_NO_SUCH_KEY: Final = Problem(
    status=404, message="This key does not exist; it may have been deleted."
)


def problem_of(exc: ApiKeysError, *, attempted: str) -> Problem:
    """How to tell the admin that ``attempted`` (e.g. "create keys") failed with ``exc``."""
    if isinstance(exc, InvalidArgument) and {f for f, _ in exc.field_violations} == {"id"}:
        # An address that cannot name a key, e.g. edited by hand.
        return _NO_SUCH_KEY
    if isinstance(exc, InvalidArgument):
        fields: dict[str, str] = {}
        for name, description in exc.field_violations:
            form_field = name.partition("[")[0]
            label = _FIELD_LABELS.get(form_field, form_field.replace("_", " ").capitalize())
            fields.setdefault(form_field, f"{label}: {description}.")
        message = "Please correct the highlighted fields." if fields else "The form was not valid."
        return Problem(status=400, message=message, fields=MappingProxyType(fields))
    if isinstance(exc, ResourceExhausted):
        limits = [_LIMIT.search(description) for _, description in exc.quota_violations]
        found = next((match.group(1) for match in limits if match is not None), None)
        how_many = f"{found} keys, the most it can have" if found else "as many keys as it can have"
        return Problem(
            status=409,
            message=f"This contact center already has {how_many}. "
            "Delete a key it no longer needs, then add the new one.",
        )
    if isinstance(exc, PermissionDenied):
        return not_permitted(attempted)
    if isinstance(exc, NotFound):
        return _NO_SUCH_KEY
    if isinstance(exc, Unauthenticated):
        return Problem(
            status=401, message="Your sign-in has expired or is not valid. Sign in again."
        )
    if isinstance(exc, TransportError):
        return Problem(
            status=503,
            message="The API key service cannot be reached right now. Try again in a moment.",
        )
    return Problem(
        status=502,
        message="The API key service could not do this. Try again; if it keeps failing, "
        "contact support.",
    )


def not_permitted(attempted: str) -> Problem:
    """How to tell the admin that they may not do ``attempted``."""
    return Problem(
        status=403,
        message=f"You don't have permission to {attempted}. "
        "An admin of your contact center can grant it.",
    )
