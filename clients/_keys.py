"""The service's public key format, checked in the caller's process.

A key is ``vsk_`` + 43 base62 characters of secret + a 6-character base62
CRC32 of everything before it (docs/API.md, "Keys"). ``clients/`` does not
import the server, so the format is repeated here; the tests hold this copy
to the server's. A caller that checks it locally never sends a look-alike
(a typo, a key of another service) over the network, and the caching client
never lets one leave the process.
"""

from __future__ import annotations

import secrets
import zlib
from typing import Final

__all__ = [
    "CHECKSUM_CHARS",
    "KEY_LENGTH",
    "KEY_PREFIX",
    "SECRET_CHARS",
    "is_well_formed",
    "well_formed_key",
]

KEY_PREFIX: Final = "vsk_"
SECRET_CHARS: Final = 43
CHECKSUM_CHARS: Final = 6
KEY_LENGTH: Final = len(KEY_PREFIX) + SECRET_CHARS + CHECKSUM_CHARS

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SECRET_START = len(KEY_PREFIX)
_CHECKSUM_START = KEY_LENGTH - CHECKSUM_CHARS
# The value of each base62 digit, indexed by its byte; -1 for every other byte.
_BYTE_VALUES = tuple(_ALPHABET.find(chr(byte)) for byte in range(256))


def _base62(value: int, width: int) -> str:
    digits = []
    for _ in range(width):
        value, digit = divmod(value, 62)
        digits.append(_ALPHABET[digit])
    return "".join(reversed(digits))


def is_well_formed(key: str) -> bool:
    """Whether ``key`` has the key format and a matching checksum; never raises."""
    # On ASCII bytes isalnum() is exactly the base62 alphabet.
    if not (
        len(key) == KEY_LENGTH
        and key.isascii()
        and key.startswith(KEY_PREFIX)
        and key.encode("ascii")[_SECRET_START:].isalnum()
    ):
        return False
    raw = key.encode("ascii")
    # Decoding the six given digits is cheaper than encoding the computed CRC;
    # fixed-width base62 is one-to-one, so the comparison is the same.
    given = 0
    for byte in raw[_CHECKSUM_START:]:
        given = given * 62 + _BYTE_VALUES[byte]
    return given == zlib.crc32(raw[:_CHECKSUM_START])


def well_formed_key() -> str:
    """A random key in the service's format that no server has issued.

    It passes the format check and costs the server a lookup, as a guessed
    key would.
    """
    body = KEY_PREFIX + _base62(int.from_bytes(secrets.token_bytes(32), "big"), SECRET_CHARS)
    return body + _base62(zlib.crc32(body.encode("ascii")), CHECKSUM_CHARS)
