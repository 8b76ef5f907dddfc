"""The identity service's public keys, from a PEM or JWKS file.

Only the key types and sizes admin tokens may be signed with are accepted;
each key is paired with the one algorithm it verifies.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeAlias

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

MIN_RSA_KEY_BITS: Final = 2048

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


def load_public_keys(path: Path) -> list[VerificationKey]:
    """The public keys of a PEM file (``PUBLIC KEY`` blocks) or a JWKS JSON file.

    Raises ``ValueError("<path>: <reason>")`` when the file cannot be read or
    holds no usable key, or any key of an unsupported type or size.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read: {exc}") from exc
    try:
        return _parse_pem(text) if "-----BEGIN" in text else _parse_jwks(text)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


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
