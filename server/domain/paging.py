"""Opaque, tamper-evident page tokens.

A token is the position after the last item of a page, signed with an HMAC
key derived from the server secret. The signature also covers the contact
center and the request's filter, so a token cannot be replayed against
another tenant or another query, and a client cannot forge a position.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from typing import Any

from server.domain.errors import FieldViolation, InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
_MAC_BYTES = 16
_MAX_TOKEN_LENGTH = 1024
_TOKEN = re.compile(r"[A-Za-z0-9_-]*")


class PageTokens:
    """Encodes and verifies page tokens."""

    def __init__(self, secret: bytes) -> None:
        self._key = hmac.new(secret, b"voiso.apikeys page tokens v1", hashlib.sha256).digest()

    def __repr__(self) -> str:
        return "PageTokens()"

    def encode(self, *, kind: str, binding: str, position: dict[str, Any]) -> str:
        """A token for ``position`` valid only for the same kind and binding."""
        body = json.dumps(position, separators=(",", ":"), sort_keys=True).encode()
        mac = self._mac(kind, binding, body)
        return base64.urlsafe_b64encode(mac + body).decode().rstrip("=")

    def decode(self, token: str, *, kind: str, binding: str) -> dict[str, Any]:
        """The position in ``token``; ``InvalidArgument`` naming
        ``page_token`` if it was not issued for this kind and binding."""
        try:
            # The decoder would skip characters outside the alphabet, so a
            # token with a NUL or a space added would still be accepted.
            if len(token) > _MAX_TOKEN_LENGTH or _TOKEN.fullmatch(token) is None:
                raise ValueError
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            mac, body = raw[:_MAC_BYTES], raw[_MAC_BYTES:]
            if not hmac.compare_digest(mac, self._mac(kind, binding, body)):
                raise ValueError
            position = json.loads(body)
            if not isinstance(position, dict):
                raise ValueError
        except (ValueError, binascii.Error):
            raise InvalidArgument(
                [
                    FieldViolation(
                        field="page_token",
                        description="is not a token this server issued for this request",
                    )
                ]
            ) from None
        return position

    def _mac(self, kind: str, binding: str, body: bytes) -> bytes:
        message = b"\0".join((kind.encode(), binding.encode(), body))
        return hmac.new(self._key, message, hashlib.sha256).digest()[:_MAC_BYTES]


def resolve_page_size(value: int, violations: list[FieldViolation]) -> int:
    """0 means the default; 1-100 as given; anything else is a violation."""
    if value == 0:
        return DEFAULT_PAGE_SIZE
    if not 1 <= value <= MAX_PAGE_SIZE:
        violations.append(
            FieldViolation(field="page_size", description=f"must be 0 to {MAX_PAGE_SIZE}")
        )
        return DEFAULT_PAGE_SIZE
    return value
