"""API keys: their format, and how their secrets are kept (docs/API.md, "Keys").

A key is ``vsk_`` + 32 random bytes in base62 (43 characters) + a 6-character
base62 CRC32 of everything before it, 53 characters in all. The checksum lets
a secret scanner, or the service itself, reject a look-alike without any
lookup.

The store never sees the plaintext: it keeps an HMAC-SHA256 of the key as the
lookup index (``KeyHasher``), the last four characters for display, and an
AES-256-GCM ciphertext for ``RevealKey`` (``KeyCipher``).
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import zlib
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_PREFIX = "vsk_"
SECRET_BYTES = 32
# 62**43 is the smallest power of 62 above 2**256, and 62**6 the smallest
# above 2**32, so both parts always fit their fixed width.
SECRET_CHARS = 43
CHECKSUM_CHARS = 6
KEY_LENGTH = len(KEY_PREFIX) + SECRET_CHARS + CHECKSUM_CHARS

MASK = "••••"
VISIBLE_CHARS = 4

MIN_HMAC_SECRET_BYTES = 32
ENCRYPTION_KEY_BYTES = 32
NONCE_BYTES = 12
_TAG_BYTES = 16
_SHA256_BLOCK_BYTES = 64
_IPAD = bytes(byte ^ 0x36 for byte in range(256))
_OPAD = bytes(byte ^ 0x5C for byte in range(256))

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SECRET_START = len(KEY_PREFIX)
# The value of each base62 digit, indexed by its byte; -1 for every other byte.
_BYTE_VALUES = tuple(_ALPHABET.find(chr(byte)) for byte in range(256))
_CHECKSUM_START = KEY_LENGTH - CHECKSUM_CHARS
_DIGIT_1, _DIGIT_2, _DIGIT_3, _DIGIT_4, _DIGIT_5, _DIGIT_6 = range(_CHECKSUM_START, KEY_LENGTH)
# Short and without base64 padding, so a key pasted where its id belongs is
# never a valid id, and ids can be quoted in errors without showing a key.
_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
_KEY_ID_RULE = "1-32 letters, digits, '.', '_' or '-', starting with a letter or digit"


def _base62(value: int, width: int) -> str:
    digits = []
    for _ in range(width):
        value, digit = divmod(value, 62)
        digits.append(_ALPHABET[digit])
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), CHECKSUM_CHARS)


def generate_key() -> str:
    """A new key from the operating system's CSPRNG."""
    secret = int.from_bytes(secrets.token_bytes(SECRET_BYTES), "big")
    body = KEY_PREFIX + _base62(secret, SECRET_CHARS)
    return body + _checksum(body)


def is_well_formed(key: str) -> bool:
    """Whether ``key`` has the key format and a matching checksum. Never
    raises, whatever the string."""
    return has_key_format(key) and checksum_matches(key)


def has_key_format(key: str) -> bool:
    """Whether ``key`` is ``vsk_`` and 49 base62 characters: the cheap half
    of ``is_well_formed``, without the checksum. Never raises."""
    # isascii() reads a flag the string already carries, and on ASCII bytes
    # isalnum() is exactly the base62 alphabet. Encoding first is not waste:
    # bytes.isalnum() is a table lookup per byte, str.isalnum() a Unicode
    # database lookup per character, slower even with the encode.
    return (
        len(key) == KEY_LENGTH
        and key.isascii()
        and key.startswith(KEY_PREFIX)
        and key.encode("ascii")[_SECRET_START:].isalnum()
    )


def checksum_matches(key: str) -> bool:
    """Whether the last six characters of a key in the key format are the
    base62 CRC32 of the rest. Only meaningful after ``has_key_format``."""
    raw = key.encode("ascii")
    # Decoding the six given digits is cheaper than encoding the computed
    # CRC; fixed-width base62 is one-to-one, so the comparison is the same.
    # Unrolled: a loop costs more than the arithmetic here.
    value = _BYTE_VALUES
    given = value[raw[_DIGIT_1]]
    given = given * 62 + value[raw[_DIGIT_2]]
    given = given * 62 + value[raw[_DIGIT_3]]
    given = given * 62 + value[raw[_DIGIT_4]]
    given = given * 62 + value[raw[_DIGIT_5]]
    given = given * 62 + value[raw[_DIGIT_6]]
    return given == zlib.crc32(raw[:_CHECKSUM_START])


def last4(key: str) -> str:
    """The characters of ``key`` that may be shown and stored in clear."""
    return key[-VISIBLE_CHARS:]


def mask(last4: str) -> str:
    """The display form of a key from its last four characters, e.g.
    ``••••Zx9k``."""
    return MASK + last4


class KeyHasher:
    """Computes the lookup hash of a key: HMAC-SHA256 under a server secret,
    so a copy of the database alone cannot confirm a guessed key."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_HMAC_SECRET_BYTES:
            raise ValueError(
                f"the HMAC secret must be at least {MIN_HMAC_SECRET_BYTES} bytes, got {len(secret)}"
            )
        # HMAC (RFC 2104) is H((K ^ opad) || H((K ^ ipad) || message)). The
        # two padded-key blocks are hashed once here; each lookup copies those
        # states, in about half the time hmac.HMAC takes.
        if len(secret) > _SHA256_BLOCK_BYTES:
            secret = hashlib.sha256(secret).digest()
        block = secret.ljust(_SHA256_BLOCK_BYTES, b"\0")
        self._inner = hashlib.sha256(block.translate(_IPAD))
        self._outer = hashlib.sha256(block.translate(_OPAD))

    def lookup_hash(self, key: str) -> bytes:
        """The 32-byte lookup hash of ``key``."""
        inner = self._inner.copy()
        inner.update(key.encode("utf-8"))
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def __repr__(self) -> str:
        return "KeyHasher(secret=<redacted>)"


class SecretUnreadable(Exception):
    """A stored key cannot be decrypted: its key-encryption key is not
    configured, or the ciphertext does not authenticate."""


class KeyCipher:
    """AES-256-GCM over a ring of key-encryption keys.

    The first key of the ring encrypts; every key decrypts, so a new key can
    be put first while records written under older ones stay readable. Each
    ciphertext is bound to ``associated_data`` (callers pass the id of the
    record holding it), so it cannot be moved to another record.
    """

    __slots__ = ("_primary", "_ring")

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        check_key_ring(keys)
        self._ring = {key_id: AESGCM(key) for key_id, key in keys}
        self._primary = keys[0][0]

    @property
    def primary_key_id(self) -> str:
        """The id of the key that new encryptions use."""
        return self._primary

    def encrypt(self, secret: str, *, associated_data: bytes) -> tuple[str, bytes]:
        """Encrypts ``secret`` under the primary key. Returns the key id and
        the blob: a random 12-byte nonce followed by ciphertext and tag."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._ring[self._primary].encrypt(nonce, secret.encode("utf-8"), associated_data)
        return self._primary, nonce + sealed

    def decrypt(self, key_id: str, blob: bytes, *, associated_data: bytes) -> str:
        """Decrypts a blob from ``encrypt``. Raises ``SecretUnreadable`` if
        ``key_id`` is not in the ring or the blob, key or associated data do
        not match."""
        cipher = self._ring.get(key_id)
        if cipher is None:
            raise SecretUnreadable(f"encryption key {key_id!r} is not configured")
        if len(blob) < NONCE_BYTES + _TAG_BYTES:
            raise SecretUnreadable("the encrypted secret is truncated")
        try:
            plaintext = cipher.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], associated_data)
        except InvalidTag as exc:
            raise SecretUnreadable(
                f"the encrypted secret does not authenticate under key {key_id!r}"
            ) from exc
        try:
            return plaintext.decode("utf-8")
        except UnicodeDecodeError:
            # The decode error quotes the offending bytes of the plaintext.
            raise SecretUnreadable("the decrypted secret is not UTF-8") from None

    def __repr__(self) -> str:
        return f"KeyCipher(key_ids={list(self._ring)!r})"


def _decode_base64(value: str) -> bytes | None:
    # None rather than the decoder's exception, so that no traceback chain
    # leads from a configuration error back to secret-bearing input.
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        return None


def check_key_ring(keys: Sequence[tuple[str, bytes]]) -> None:
    """Refuses a key ring ``KeyCipher`` cannot use: empty, an id that is not
    1-32 id characters, an id given twice, or a key that is not 32 bytes.

    The ``ValueError`` names keys by position or id, never quoting key
    material; an id is quoted only once it has the id format, so a key pasted
    where its id belongs is never shown.
    """
    if not keys:
        raise ValueError("the encryption key ring needs at least one key")
    seen: set[str] = set()
    for position, (key_id, key) in enumerate(keys, start=1):
        if not _KEY_ID.fullmatch(key_id):
            raise ValueError(f"the id of encryption key {position} must be {_KEY_ID_RULE}")
        if key_id in seen:
            raise ValueError(f"encryption key id {key_id!r} appears more than once")
        if len(key) != ENCRYPTION_KEY_BYTES:
            raise ValueError(
                f"encryption key {key_id!r} must be {ENCRYPTION_KEY_BYTES} bytes "
                f"(AES-256), got {len(key)}"
            )
        seen.add(key_id)


def parse_encryption_keys(value: str) -> list[tuple[str, bytes]]:
    """Parses a key ring written as comma-separated ``id:base64`` entries,
    primary first (the ``APIKEYS_ENCRYPTION_KEYS`` format), and checks it
    as ``check_key_ring`` does.

    Raises ``ValueError`` naming the bad entry by position or id, never
    quoting key material.
    """
    ring: list[tuple[str, bytes]] = []
    for position, entry in enumerate(value.split(",") if value.strip() else (), start=1):
        key_id, separator, encoded = entry.partition(":")
        if not separator:
            raise ValueError(f"encryption key {position} is not of the form id:base64")
        key = _decode_base64(encoded.strip())
        if key is None:
            raise ValueError(f"encryption key {position} is not valid base64")
        ring.append((key_id.strip(), key))
    check_key_ring(ring)
    return ring


def parse_hmac_secret(value: str) -> bytes:
    """Parses the base64 HMAC secret (the ``APIKEYS_HMAC_SECRET`` format);
    surrounding whitespace is ignored.

    Raises ``ValueError`` without quoting the value.
    """
    secret = _decode_base64(value.strip())
    if secret is None:
        raise ValueError("the HMAC secret is not valid base64")
    if len(secret) < MIN_HMAC_SECRET_BYTES:
        raise ValueError(
            f"the HMAC secret must decode to at least {MIN_HMAC_SECRET_BYTES} bytes, "
            f"got {len(secret)}"
        )
    return secret
