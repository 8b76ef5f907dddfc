"""The development admin key pair, kept in the data directory.

Without configured public keys the server verifies tokens signed with this
pair's private half, which ``apikeys dev-token`` uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from server.files import PRIVATE_MODE, publish_new_file, replace_file

DEV_SIGNING_KEY_FILE: Final = "dev-admin-signing-key.pem"
"""File name of the development signing key in the data directory (PKCS8 PEM, mode 0600)."""

DEV_PUBLIC_KEY_FILE: Final = "dev-admin-public-key.pem"
"""File name of the development public key in the data directory."""


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
        pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        publish_new_file(signing_path, pem)
    private_key = serialization.load_pem_private_key(signing_path.read_bytes(), password=None)
    if not isinstance(private_key, ed25519.Ed25519PrivateKey):
        raise ValueError(f"{signing_path}: not an Ed25519 private key")
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if not public_path.exists() or public_path.read_bytes() != public_pem:
        replace_file(public_path, public_pem, mode=PRIVATE_MODE)
    return public_path
