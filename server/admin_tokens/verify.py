"""Checks admin tokens against the identity service's public keys and turns
their claims into the acting user."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import jwt

from server.admin_tokens.public_keys import VerificationKey, load_public_keys
from server.domain.errors import Unauthenticated
from server.domain.permissions import Actor
from server.domain.validation import has_control_characters

DEFAULT_LEEWAY_SECONDS: Final = 30
"""Clock skew tolerated between the identity service and this server."""

MAX_ID_CLAIM_LENGTH: Final = 128
"""Longest ``sub`` and ``contact_center_id`` accepted: what the store keeps."""

DEFAULT_MAX_LIFETIME_SECONDS: Final = 3600
"""Longest lifetime (``exp`` - ``iat``) of a token accepted by default."""

_TIME_CLAIMS: Final = ("exp", "iat", "nbf")


class AdminTokenVerifier:
    """Verifies admin JWTs against a fixed set of public keys."""

    def __init__(
        self,
        keys: Sequence[VerificationKey],
        *,
        leeway: int = DEFAULT_LEEWAY_SECONDS,
        audience: str | None = None,
        issuer: str | None = None,
        max_lifetime: float = DEFAULT_MAX_LIFETIME_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``max_lifetime`` is the longest a token may live, in seconds:
        ``exp`` - ``iat``, or ``exp`` - now (by ``clock``) without ``iat``.
        A stolen token is worth no more than that."""
        if not keys:
            raise ValueError("at least one public key is required")
        self._keys = tuple(keys)
        self._leeway = leeway
        self._audience = audience
        self._issuer = issuer
        self._max_lifetime = max_lifetime
        self._clock = clock
        # With an audience or issuer configured, tokens must carry and match
        # it; without, those claims are not checked, so tokens that carry one
        # are still accepted.
        self._required = ["exp", *(["aud"] if audience else []), *(["iss"] if issuer else [])]
        self._algorithms = frozenset(key.algorithm for key in self._keys)
        # A kid header selects one JWKS key; PEM keys carry no kid and are all tried.
        self._selects_by_kid = any(key.kid is not None for key in self._keys)

    @classmethod
    def from_file(
        cls,
        path: Path,
        *,
        audience: str | None = None,
        issuer: str | None = None,
        max_lifetime: float = DEFAULT_MAX_LIFETIME_SECONDS,
    ) -> AdminTokenVerifier:
        """Loads the public keys of a PEM file (``PUBLIC KEY`` blocks) or a JWKS JSON file.

        Raises ``ValueError("<path>: <reason>")`` when the file cannot be read or
        holds no usable key, or any key of an unsupported type or size.
        """
        keys = load_public_keys(path)
        return cls(keys, audience=audience, issuer=issuer, max_lifetime=max_lifetime)

    def verify(self, token: str) -> Actor:
        """Returns the actor of a valid token; raises ``Unauthenticated`` otherwise.

        The error messages never contain the token or any of its claims' values.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("malformed admin token") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self._algorithms:
            # Only the asymmetric algorithms of the loaded keys; refusing here also
            # refuses "none" and HS256 signed with a public key's bytes as secret.
            raise Unauthenticated("admin token algorithm not accepted")
        candidates = [key for key in self._keys if key.algorithm == algorithm]
        kid = header.get("kid")
        if kid is not None and self._selects_by_kid:
            candidates = [key for key in candidates if key.kid == kid]
        for key in candidates:
            try:
                claims = jwt.decode(
                    token,
                    key.public_key,
                    algorithms=[key.algorithm],
                    audience=self._audience,
                    issuer=self._issuer,
                    options={
                        "require": self._required,
                        "verify_aud": self._audience is not None,
                        "verify_iss": self._issuer is not None,
                    },
                    leeway=self._leeway,
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.ExpiredSignatureError:
                raise Unauthenticated("admin token expired") from None
            except jwt.ImmatureSignatureError:
                raise Unauthenticated("admin token not yet valid") from None
            except jwt.MissingRequiredClaimError as exc:
                raise Unauthenticated(f"admin token has no {exc.claim} claim") from None
            except jwt.InvalidAudienceError:
                raise Unauthenticated("admin token is for another audience") from None
            except jwt.InvalidIssuerError:
                raise Unauthenticated("admin token is from another issuer") from None
            except jwt.PyJWTError:
                raise Unauthenticated("malformed admin token") from None
            self._check_lifetime(claims)
            return _actor_from_claims(claims)
        raise Unauthenticated("admin token signature does not verify")

    def _check_lifetime(self, claims: Mapping[str, Any]) -> None:
        # PyJWT takes a numeric string, and any number, for a time.
        for name in _TIME_CLAIMS:
            if name in claims and not _is_time(claims[name]):
                raise Unauthenticated(f"admin token claim {name} must be a number of seconds")
        issued = claims.get("iat")
        lifetime = claims["exp"] - (self._clock() if issued is None else issued)
        if lifetime > self._max_lifetime:
            raise Unauthenticated(
                f"admin token lives longer than the {self._max_lifetime:g} s accepted"
            )


def _is_time(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _actor_from_claims(claims: Mapping[str, Any]) -> Actor:
    subject = claims.get("sub")
    if not isinstance(subject, str) or not 1 <= len(subject) <= MAX_ID_CLAIM_LENGTH:
        raise Unauthenticated(
            f"admin token claim sub must be a string of 1 to {MAX_ID_CLAIM_LENGTH} characters"
        )
    contact_center_id = claims.get("contact_center_id")
    if (
        not isinstance(contact_center_id, str)
        or not 1 <= len(contact_center_id) <= MAX_ID_CLAIM_LENGTH
    ):
        raise Unauthenticated(
            "admin token claim contact_center_id must be a string of 1 to "
            f"{MAX_ID_CLAIM_LENGTH} characters"
        )
    role = claims.get("role")
    if not isinstance(role, str):
        raise Unauthenticated("admin token claim role must be a string")
    permissions = claims.get("permissions", [])
    if not isinstance(permissions, list) or not all(isinstance(p, str) for p in permissions):
        raise Unauthenticated("admin token claim permissions must be a list of strings")
    sag = claims.get("sag", False)
    if not isinstance(sag, bool):
        raise Unauthenticated("admin token claim sag must be a boolean")
    if has_control_characters(subject) or has_control_characters(contact_center_id):
        raise Unauthenticated("admin token claims sub and contact_center_id must be plain text")
    return Actor(
        actor_id=subject,
        contact_center_id=contact_center_id,
        role=role,
        permissions=frozenset(permissions),
        sag=sag,
    )
