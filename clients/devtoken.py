"""Development admin tokens, signed with the key pair a server makes for itself.

A server started without ``APIKEYS_ADMIN_PUBLIC_KEYS`` writes an Ed25519 key
pair into its data directory and trusts tokens signed with the private half,
``dev-admin-signing-key.pem``. That file name is shared by convention with the
server, which this package does not import.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

__all__ = [
    "DEFAULT_DEV_TOKEN_TTL_SECONDS",
    "DEV_SIGNING_KEY_FILE",
    "dev_signing_key_path",
    "mint_dev_token",
]

DEV_SIGNING_KEY_FILE: Final = "dev-admin-signing-key.pem"
"""File name of the development signing key in the server's data directory."""

DEFAULT_DEV_TOKEN_TTL_SECONDS: Final = 3600


def dev_signing_key_path(data_dir: Path) -> Path:
    """Where a server with data directory ``data_dir`` keeps its development signing key."""
    return data_dir / DEV_SIGNING_KEY_FILE


def mint_dev_token(
    signing_key_path: Path,
    *,
    subject: str,
    contact_center_id: str,
    role: str,
    permissions: Sequence[str] = (),
    sag: bool = False,
    ttl_seconds: int = DEFAULT_DEV_TOKEN_TTL_SECONDS,
) -> str:
    """An EdDSA admin token with the given claims, valid for ``ttl_seconds`` from now.

    Raises ``OSError`` when the key file cannot be read and ``ValueError`` when
    it is not an unencrypted Ed25519 private key in PEM or the claims are unusable.
    """
    if ttl_seconds <= 0:
        raise ValueError("ttl_seconds must be positive")
    if not subject or not contact_center_id:
        raise ValueError("subject and contact_center_id must not be empty")
    try:
        key = serialization.load_pem_private_key(signing_key_path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"{signing_key_path}: not an unencrypted PEM private key") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError(f"{signing_key_path}: not an Ed25519 private key")
    now = int(time.time())
    claims = {
        "sub": subject,
        "contact_center_id": contact_center_id,
        "role": role,
        "permissions": list(permissions),
        "sag": sag,
        "iat": now,
        "exp": now + ttl_seconds,
    }
    return jwt.encode(claims, key, algorithm="EdDSA")
