import base64
import re
import string
import zlib

import pytest

from server.domain.keys import (
    KEY_LENGTH,
    KEY_PREFIX,
    KeyCipher,
    KeyHasher,
    SecretUnreadable,
    checksum_matches,
    generate_key,
    has_key_format,
    is_well_formed,
    last4,
    mask,
    parse_encryption_keys,
    parse_hmac_secret,
)

BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))
HMAC_SECRET = b"s" * 32
URLSAFE_KEY = base64.urlsafe_b64encode(bytes([0xFB]) * 32).decode()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def base62(value: int, width: int) -> str:
    digits = ""
    for _ in range(width):
        value, digit = divmod(value, 62)
        digits = BASE62[digit] + digits
    return digits


# Key format


def test_generated_keys_have_the_documented_format() -> None:
    key = generate_key()
    assert len(key) == KEY_LENGTH == 53
    assert key.startswith(KEY_PREFIX)
    assert KEY_PREFIX == "vsk_"
    assert re.fullmatch(r"vsk_[0-9A-Za-z]{49}", key)
    assert key[-6:] == base62(zlib.crc32(key[:-6].encode()), 6)
    assert is_well_formed(key)


def test_generated_keys_are_unique() -> None:
    keys = {generate_key() for _ in range(1000)}
    assert len(keys) == 1000
    assert all(is_well_formed(key) for key in keys)


def test_every_single_character_change_fails_the_checksum() -> None:
    key = generate_key()
    for position in range(len(KEY_PREFIX), KEY_LENGTH):
        for replacement in ("0", "z", "K"):
            if key[position] != replacement:
                mutated = key[:position] + replacement + key[position + 1 :]
                assert not is_well_formed(mutated), (position, replacement)


def test_a_lookalike_with_a_valid_checksum_under_another_prefix_is_refused() -> None:
    body = "ghp_" + generate_key()[4:-6]
    assert not is_well_formed(body + base62(zlib.crc32(body.encode()), 6))


@pytest.mark.parametrize(
    "key",
    [
        "",
        "vsk_",
        "x" * 10_000,
        "vsk_" + "a" * 10_000,
        "VSK_" + "a" * 49,
        "vsk-" + "a" * 49,
        "vsk_" + "a" * 48,
        "vsk_" + "a" * 50,
        "vsk_" + "a" * 48 + "é",
        "vsk_" + "a" * 48 + "_",
        "vsk_" + "a" * 48 + " ",
        "vsk_" + "٣" * 49,
        "vsk_" + "\x00" * 49,
        "vsk_" + "\ud800" * 49,
    ],
)
def test_malformed_strings_are_refused_without_raising(key: str) -> None:
    assert not is_well_formed(key)


def test_the_format_and_the_checksum_are_checked_apart() -> None:
    key = generate_key()
    assert has_key_format(key) and checksum_matches(key)
    broken = key[:-1] + ("a" if key[-1] != "a" else "b")
    assert has_key_format(broken) and not checksum_matches(broken)
    assert not is_well_formed(broken)
    for odd in ("", "vsk_", "VSK_" + key[4:], key[:-1] + "_", key + "a", "vsk_é" + key[5:]):
        assert not has_key_format(odd)


def test_valid_checksum_with_non_base62_characters_is_refused() -> None:
    body = "vsk_" + "-" * 43
    assert not is_well_formed(body + base62(zlib.crc32(body.encode()), 6))


def test_mask_shows_only_the_last_four_characters() -> None:
    key = generate_key()
    assert last4(key) == key[-4:]
    assert mask(last4(key)) == "••••" + key[-4:]
    assert mask("Zx9k") == "••••Zx9k"


# Lookup hash


def test_lookup_hash_is_deterministic_and_depends_on_the_secret() -> None:
    key = generate_key()
    hasher = KeyHasher(HMAC_SECRET)
    assert hasher.lookup_hash(key) == hasher.lookup_hash(key)
    assert len(hasher.lookup_hash(key)) == 32
    assert KeyHasher(HMAC_SECRET).lookup_hash(key) == hasher.lookup_hash(key)
    assert KeyHasher(b"t" * 32).lookup_hash(key) != hasher.lookup_hash(key)
    assert hasher.lookup_hash(generate_key()) != hasher.lookup_hash(key)


# 64 bytes is SHA-256's block: longer secrets are hashed first (RFC 2104).
@pytest.mark.parametrize("secret_bytes", [32, 33, 63, 64, 65, 200])
def test_lookup_hash_is_hmac_sha256_of_the_key(secret_bytes: int) -> None:
    import hashlib
    import hmac

    secret = bytes(range(256))[-secret_bytes:]
    hasher = KeyHasher(secret)
    for key in (generate_key(), generate_key(), "vsk_é", ""):
        expected = hmac.new(secret, key.encode(), hashlib.sha256).digest()
        assert hasher.lookup_hash(key) == expected


def test_hasher_refuses_a_short_secret_without_showing_it() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes") as caught:
        KeyHasher(b"shortsecret")
    assert "shortsecret" not in str(caught.value)


def test_hasher_repr_hides_the_secret() -> None:
    secret = b"very-secret-hmac-key-material-0123456789"
    text = repr(KeyHasher(secret))
    assert secret.decode() not in text
    assert "very" not in text


# Encryption


def test_cipher_round_trip() -> None:
    cipher = KeyCipher([("k1", KEY_A)])
    key = generate_key()
    key_id, blob = cipher.encrypt(key, associated_data=b"record-1")
    assert key_id == "k1" == cipher.primary_key_id
    assert key.encode() not in blob
    assert len(blob) == 12 + len(key) + 16
    assert cipher.decrypt(key_id, blob, associated_data=b"record-1") == key


def test_each_encryption_uses_a_fresh_nonce() -> None:
    cipher = KeyCipher([("k1", KEY_A)])
    _, first = cipher.encrypt("same", associated_data=b"r")
    _, second = cipher.encrypt("same", associated_data=b"r")
    assert first[:12] != second[:12]
    assert first != second


def test_rotation_keeps_old_ciphertexts_readable_and_encrypts_with_the_new_key() -> None:
    old = KeyCipher([("k1", KEY_A)])
    old_id, old_blob = old.encrypt("the-secret", associated_data=b"r1")

    rotated = KeyCipher([("k2", KEY_B), ("k1", KEY_A)])
    assert rotated.primary_key_id == "k2"
    assert rotated.decrypt(old_id, old_blob, associated_data=b"r1") == "the-secret"

    new_id, new_blob = rotated.encrypt("the-secret", associated_data=b"r1")
    assert new_id == "k2"
    assert rotated.decrypt(new_id, new_blob, associated_data=b"r1") == "the-secret"
    with pytest.raises(SecretUnreadable):
        old.decrypt(new_id, new_blob, associated_data=b"r1")


def test_tampered_ciphertext_is_unreadable() -> None:
    cipher = KeyCipher([("k1", KEY_A)])
    key_id, blob = cipher.encrypt("the-secret", associated_data=b"r1")
    for position in (0, 11, 12, len(blob) - 1):
        tampered = bytearray(blob)
        tampered[position] ^= 0x01
        with pytest.raises(SecretUnreadable):
            cipher.decrypt(key_id, bytes(tampered), associated_data=b"r1")
    for truncated in (b"", blob[:12], blob[:27], blob[:-1]):
        with pytest.raises(SecretUnreadable):
            cipher.decrypt(key_id, truncated, associated_data=b"r1")


def test_ciphertext_is_bound_to_its_associated_data() -> None:
    cipher = KeyCipher([("k1", KEY_A)])
    key_id, blob = cipher.encrypt("the-secret", associated_data=b"record-1")
    with pytest.raises(SecretUnreadable):
        cipher.decrypt(key_id, blob, associated_data=b"record-2")


def test_ciphertext_under_another_key_with_the_same_id_is_unreadable() -> None:
    key_id, blob = KeyCipher([("k1", KEY_A)]).encrypt("s", associated_data=b"r")
    with pytest.raises(SecretUnreadable):
        KeyCipher([("k1", KEY_B)]).decrypt(key_id, blob, associated_data=b"r")


def test_unknown_key_id_is_unreadable_and_named() -> None:
    cipher = KeyCipher([("k1", KEY_A)])
    _, blob = cipher.encrypt("the-secret", associated_data=b"r1")
    with pytest.raises(SecretUnreadable, match="'k9'"):
        cipher.decrypt("k9", blob, associated_data=b"r1")


def test_unreadable_errors_never_contain_the_secret_or_key_bytes() -> None:
    secret = generate_key()
    cipher = KeyCipher([("k1", KEY_A)])
    key_id, blob = cipher.encrypt(secret, associated_data=b"r1")
    for attempt in (
        lambda: cipher.decrypt(key_id, blob, associated_data=b"other"),
        lambda: cipher.decrypt("k2", blob, associated_data=b"r1"),
        lambda: cipher.decrypt(key_id, blob[:5], associated_data=b"r1"),
    ):
        with pytest.raises(SecretUnreadable) as caught:
            attempt()
        text = str(caught.value) + repr(caught.value)
        assert secret not in text
        assert secret[-4:] not in text
        assert repr(KEY_A) not in text
        assert b64(KEY_A) not in text


def test_cipher_repr_shows_key_ids_only() -> None:
    text = repr(KeyCipher([("k2", KEY_B), ("k1", KEY_A)]))
    assert "k2" in text
    assert "k1" in text
    for raw in (KEY_A, KEY_B):
        assert repr(raw) not in text
        assert b64(raw) not in text
        assert raw.hex() not in text


@pytest.mark.parametrize(
    ("ring", "message"),
    [
        ([], "at least one key"),
        ([("k1", b"x" * 16)], "'k1' must be 32 bytes"),
        ([("k1", b"x" * 33)], "'k1' must be 32 bytes"),
        ([("k1", KEY_A), ("k1", KEY_B)], "'k1' appears more than once"),
        ([("", KEY_A)], "id of encryption key 1"),
        ([("k1", KEY_A), ("a:b", KEY_B)], "id of encryption key 2"),
        ([("a,b", KEY_A)], "id of encryption key 1"),
    ],
)
def test_cipher_refuses_a_bad_ring_without_showing_key_bytes(
    ring: list[tuple[str, bytes]], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        KeyCipher(ring)
    text = str(caught.value)
    for _, raw in ring:
        assert repr(raw) not in text
        assert b64(raw) not in text


def test_cipher_does_not_quote_a_key_given_as_an_id() -> None:
    with pytest.raises(ValueError, match="id of encryption key 1") as caught:
        KeyCipher([(b64(KEY_B), KEY_A)])
    assert b64(KEY_B) not in str(caught.value)


# Configuration parsing


def test_parse_encryption_keys_keeps_order() -> None:
    ring = parse_encryption_keys(f"k2:{b64(KEY_B)}, k1:{b64(KEY_A)}")
    assert ring == [("k2", KEY_B), ("k1", KEY_A)]
    assert KeyCipher(ring).primary_key_id == "k2"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "at least one key"),
        ("   ", "at least one key"),
        (b64(KEY_A), "encryption key 1 is not of the form id:base64"),
        (f"k1:{b64(KEY_A)},{b64(KEY_B)}", "encryption key 2 is not of the form id:base64"),
        (f"k1:{b64(KEY_A)},", "encryption key 2 is not of the form id:base64"),
        (f":{b64(KEY_A)}", "id of encryption key 1 must be"),
        (f"{b64(KEY_A)}:{b64(KEY_B)}", "id of encryption key 1 must be"),
        (f"k1:{b64(KEY_A)[:-2]}", "encryption key 1 is not valid base64"),
        (f"k1:{b64(KEY_A)}!", "encryption key 1 is not valid base64"),
        (f"k1:{URLSAFE_KEY}", "encryption key 1 is not valid base64"),
        (f"k1:{b64(KEY_A)[:10]}é{b64(KEY_A)[10:]}", "encryption key 1 is not valid base64"),
        (f"k1:{b64(KEY_A[:16])}", "'k1' must be 32 bytes"),
        (f"k1:{b64(KEY_A + b'x')}", "'k1' must be 32 bytes"),
        (f"k1:{b64(KEY_A)},k1:{b64(KEY_B)}", "'k1' appears more than once"),
    ],
)
def test_parse_encryption_keys_refuses_bad_values_without_quoting_them(
    value: str, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        parse_encryption_keys(value)
    text = str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__ or caught.value.__context__ is None
    for part in re.split(r"[,:]", value):
        if len(part.strip()) > 8:
            assert part.strip() not in text
            assert part.strip()[:10] not in text


def test_parse_hmac_secret() -> None:
    assert parse_hmac_secret(b64(HMAC_SECRET)) == HMAC_SECRET
    assert parse_hmac_secret(f"  {b64(b'x' * 64)}\n") == b"x" * 64


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "at least 32 bytes, got 0"),
        (b64(b"short-secret-value"), "at least 32 bytes, got 18"),
        ("not base64 at all!", "not valid base64"),
        (b64(HMAC_SECRET)[:-1], "not valid base64"),
    ],
)
def test_parse_hmac_secret_refuses_bad_values_without_quoting_them(
    value: str, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        parse_hmac_secret(value)
    text = str(caught.value)
    assert caught.value.__context__ is None or caught.value.__suppress_context__
    if value:
        assert value not in text
        assert value[:8] not in text
