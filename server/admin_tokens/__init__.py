"""Verification of the admin tokens that authenticate KeyAdmin calls.

The platform's identity service signs a JWT for the acting user with EdDSA
(Ed25519), ES256 (P-256) or RS256 (RSA, at least 2048 bits). Three parts,
one purpose each:

- ``verify``: :class:`AdminTokenVerifier` checks a token and turns its claims
  into an :class:`~server.domain.permissions.Actor`;
- ``public_keys``: the identity service's public keys, read from a PEM or
  JWKS file;
- ``dev_keys``: without configured public keys the server runs on a
  development key pair kept in its data directory, whose private half
  ``apikeys dev-token`` signs with.
"""

from server.admin_tokens.dev_keys import (
    DEV_PUBLIC_KEY_FILE,
    DEV_SIGNING_KEY_FILE,
    ensure_dev_key_pair,
)
from server.admin_tokens.public_keys import (
    MIN_RSA_KEY_BITS,
    PublicKey,
    VerificationKey,
    load_public_keys,
)
from server.admin_tokens.verify import (
    DEFAULT_LEEWAY_SECONDS,
    DEFAULT_MAX_LIFETIME_SECONDS,
    MAX_ID_CLAIM_LENGTH,
    AdminTokenVerifier,
)

__all__ = [
    "DEFAULT_LEEWAY_SECONDS",
    "DEFAULT_MAX_LIFETIME_SECONDS",
    "DEV_PUBLIC_KEY_FILE",
    "DEV_SIGNING_KEY_FILE",
    "MAX_ID_CLAIM_LENGTH",
    "MIN_RSA_KEY_BITS",
    "AdminTokenVerifier",
    "PublicKey",
    "VerificationKey",
    "ensure_dev_key_pair",
    "load_public_keys",
]
