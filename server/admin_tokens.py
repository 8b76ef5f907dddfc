"""Verification of the admin tokens that authenticate KeyAdmin calls (contract section 5).

The platform's identity service signs a JWT for the acting user with EdDSA
(Ed25519), ES256 (P-256) or RS256 (RSA, at least 2048 bits); this module checks
it against the public keys of a PEM or JWKS file and turns its claims into an
:class:`~server.domain.permissions.Actor`.

Without configured public keys the server runs on a development key pair that
:func:`ensure_dev_key_pair` keeps in its data directory; ``apikeys dev-token``
signs tokens with the private half.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeAlias

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from server.domain.errors import Unauthenticated
from server.domain.permissions import Actor
from server.domain.validation import has_control_characters

DEV_SIGNING_KEY_FILE: Final = "dev-admin-signing-key.pem"
"""File name of the development signing key in the data directory (PKCS8 PEM, mode 0600)."""

DEV_PUBLIC_KEY_FILE: Final = "dev-admin-public-key.pem"
"""File name of the development public key in the data directory."""

DEFAULT_LEEWAY_SECONDS: Final = 30
"""Clock skew tolerated between the identity service and this server."""

MIN_RSA_KEY_BITS: Final = 2048

MAX_ID_CLAIM_LENGTH: Final = 128
"""Longest ``sub`` and ``contact_center_id`` accepted: what the store keeps."""

PublicKey: TypeAlias = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey

_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\s*(.*?)\s*-----END \1-----", re.DOTALL)
_JWK_ALGORITHMS: Final[Mapping[tuple[object, object], str]] = {
    ("OKP", "Ed25519"): "EdDSA",
    ("EC", "P-256"): "ES256",
    ("RSA", None): "RS256",
}


@dataclass(frozen=True, kw_only=True, slots=True)
class VerificationKey:
    """One public key a token may be signed with, and the one algorithm it verifies."""

    public_key: PublicKey
    algorithm: str
    kid: str | None = None

    @classmethod
    def of(cls, public_key: object, *, kid: str | None = None) -> VerificationKey:
        """Wraps a public key, refusing key types and sizes tokens may not use."""
        if isinstance(public_key, ed25519.Ed25519PublicKey):
            return cls(public_key=public_key, algorithm="EdDSA", kid=kid)
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            if not isinstance(public_key.curve, ec.SECP256R1):
                raise ValueError(f"EC curve {public_key.curve.name} is not P-256")
            return cls(public_key=public_key, algorithm="ES256", kid=kid)
        if isinstance(public_key, rsa.RSAPublicKey):
            if public_key.key_size < MIN_RSA_KEY_BITS:
                raise ValueError(
                    f"RSA key of {public_key.key_size} bits is shorter than {MIN_RSA_KEY_BITS}"
                )
            return cls(public_key=public_key, algorithm="RS256", kid=kid)
        raise ValueError(f"unsupported key type {type(public_key).__name__}")


class AdminTokenVerifier:
    """Verifies admin JWTs against a fixed set of public keys."""

    def __init__(
        self,
        keys: Sequence[VerificationKey],
        *,
        leeway: int = DEFAULT_LEEWAY_SECONDS,
        audience: str | None = None,
        issuer: str | None = None,
    ) -> None:
        if not keys:
            raise ValueError("at least one public key is required")
        self._keys = tuple(keys)
        self._leeway = leeway
        self._audience = audience
        self._issuer = issuer
        # With an audience or issuer configured, tokens must carry and match
        # it; without, those claims are not checked, so tokens that carry one
        # are still accepted.
        self._required = ["exp", *(["aud"] if audience else []), *(["iss"] if issuer else [])]
        self._algorithms = frozenset(key.algorithm for key in self._keys)
        # A kid header selects one JWKS key; PEM keys carry no kid and are all tried.
        self._selects_by_kid = any(key.kid is not None for key in self._keys)

    @classmethod
    def from_file(
        cls, path: Path, *, audience: str | None = None, issuer: str | None = None
    ) -> AdminTokenVerifier:
        """Loads the public keys of a PEM file (``PUBLIC KEY`` blocks) or a JWKS JSON file.

        Raises ``ValueError("<path>: <reason>")`` when the file cannot be read or
        holds no usable key, or any key of an unsupported type or size.
        """
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: cannot read: {exc}") from exc
        try:
            keys = _parse_pem(text) if "-----BEGIN" in text else _parse_jwks(text)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
        return cls(keys, audience=audience, issuer=issuer)

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
            return _actor_from_claims(claims)
        raise Unauthenticated("admin token signature does not verify")


def ensure_dev_key_pair(data_dir: Path) -> Path:
    """Makes (or reuses) the development Ed25519 key pair in ``data_dir``.

    The private key is written as PKCS8 PEM with mode 0600 and published under
    its final name only once complete, so a concurrently starting server either
    sees no key or the whole key, and never replaces one another made. The
    public key is always derived from the private one. Returns the public key
    file's path.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    signing_path = data_dir / DEV_SIGNING_KEY_FILE
    public_path = data_dir / DEV_PUBLIC_KEY_FILE
    if not signing_path.exists():
        _publish_private_key(signing_path, ed25519.Ed25519PrivateKey.generate())
    private_key = serialization.load_pem_private_key(signing_path.read_bytes(), password=None)
    if not isinstance(private_key, ed25519.Ed25519PrivateKey):
        raise ValueError(f"{signing_path}: not an Ed25519 private key")
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if not public_path.exists() or public_path.read_bytes() != public_pem:
        _replace_file(public_path, public_pem)
    return public_path


def _publish_private_key(path: Path, key: ed25519.Ed25519PrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    staging = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(pem)
            file.flush()
            os.fsync(file.fileno())
        # link() refuses an existing target: the first server to publish wins.
        with contextlib.suppress(FileExistsError):
            os.link(staging, path)
    finally:
        staging.unlink(missing_ok=True)


def _replace_file(path: Path, content: bytes) -> None:
    fd, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(content)
        os.chmod(staging, 0o644)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def _parse_pem(text: str) -> list[VerificationKey]:
    keys = []
    for number, match in enumerate(_PEM_BLOCK.finditer(text), start=1):
        label = match.group(1)
        if label != "PUBLIC KEY":
            raise ValueError(f"PEM block {number} is a {label}, expected PUBLIC KEY")
        try:
            public_key = serialization.load_pem_public_key(match.group(0).encode("ascii"))
            keys.append(VerificationKey.of(public_key))
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise ValueError(f"PEM block {number}: {exc}") from exc
    if not keys:
        raise ValueError("no PUBLIC KEY blocks")
    return keys


def _parse_jwks(text: str) -> list[VerificationKey]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"neither PEM nor JSON: {exc.msg}") from exc
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError('a JWKS must be an object with a non-empty "keys" list')
    keys = []
    for number, entry in enumerate(entries, start=1):
        try:
            keys.append(_parse_jwk(entry))
        except ValueError as exc:
            raise ValueError(f"key {number}: {exc}") from exc
    return keys


def _parse_jwk(entry: object) -> VerificationKey:
    if not isinstance(entry, dict):
        raise ValueError("not a JSON object")
    kty, crv = entry.get("kty"), entry.get("crv")
    algorithm = _JWK_ALGORITHMS.get((kty, crv if kty != "RSA" else None))
    if algorithm is None:
        raise ValueError(f"unsupported key type kty={kty!r} crv={crv!r}")
    if entry.get("alg", algorithm) != algorithm:
        raise ValueError(f"alg {entry.get('alg')!r} does not match a {kty} key")
    if entry.get("use", "sig") != "sig":
        raise ValueError("not a signing key (use is not sig)")
    if "d" in entry:
        raise ValueError("a private key does not belong in a public key file")
    kid = entry.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise ValueError("kid must be a string")
    try:
        public_key = jwt.PyJWK(entry, algorithm=algorithm).key
    except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"invalid {kty} key") from exc
    return VerificationKey.of(public_key, kid=kid)


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
