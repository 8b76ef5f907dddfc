"""Admin token verification: accepted algorithms, every refusal, the permission rule."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from server.admin_tokens import (
    DEFAULT_MAX_LIFETIME_SECONDS,
    DEV_PUBLIC_KEY_FILE,
    DEV_SIGNING_KEY_FILE,
    AdminTokenVerifier,
    ensure_dev_key_pair,
)
from server.domain.errors import Unauthenticated
from server.domain.permissions import Actor, Permission

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

ALGORITHMS = ["EdDSA", "ES256", "RS256"]

_MISSING: Any = object()
"""A claim value that leaves the claim out of the token."""


def _generate(algorithm: str) -> PrivateKey:
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def private_keys() -> dict[str, PrivateKey]:
    return {algorithm: _generate(algorithm) for algorithm in ALGORITHMS}


@pytest.fixture(scope="module")
def other_private_keys() -> dict[str, PrivateKey]:
    return {algorithm: _generate(algorithm) for algorithm in ALGORITHMS}


def _public_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _jwk(key: PrivateKey, kid: str | None = None) -> dict[str, Any]:
    public_key = key.public_key()
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        jwk = OKPAlgorithm.to_jwk(public_key, as_dict=True)
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public_key, as_dict=True)
    else:
        jwk = RSAAlgorithm.to_jwk(public_key, as_dict=True)
    if kid is not None:
        jwk["kid"] = kid
    return jwk


def _claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "sub": "user-1",
        "contact_center_id": "cc-1",
        "role": "admin",
        "permissions": ["api_keys.view"],
        "sag": False,
        "iat": int(time.time()),
        "exp": int(time.time()) + 300,
    }
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not _MISSING}


def _sign(key: PrivateKey, algorithm: str, claims: dict[str, Any], **headers: Any) -> str:
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers or None)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _hs256_token(secret: bytes, claims: dict[str, Any]) -> str:
    """An HS256 token built by hand: PyJWT itself refuses to use a PEM as an HMAC secret."""
    signing_input = _b64(b'{"alg":"HS256","typ":"JWT"}') + "." + _b64(json.dumps(claims).encode())
    signature = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
    return signing_input + "." + _b64(signature)


def _pem_verifier(tmp_path: Path, *keys: PrivateKey) -> AdminTokenVerifier:
    path = tmp_path / "admin-keys.pem"
    path.write_bytes(b"".join(_public_pem(key) for key in keys))
    return AdminTokenVerifier.from_file(path)


def _jwks_verifier(tmp_path: Path, jwks: list[dict[str, Any]]) -> AdminTokenVerifier:
    path = tmp_path / "admin-keys.json"
    path.write_text(json.dumps({"keys": jwks}))
    return AdminTokenVerifier.from_file(path)


def _refusal(verifier: AdminTokenVerifier, token: str) -> str:
    with pytest.raises(Unauthenticated) as caught:
        verifier.verify(token)
    message = str(caught.value)
    assert token not in message
    return message


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_pem_key_verifies_its_algorithm(
    tmp_path: Path, private_keys: dict[str, PrivateKey], algorithm: str
) -> None:
    verifier = _pem_verifier(tmp_path, private_keys[algorithm])
    token = _sign(private_keys[algorithm], algorithm, _claims(sag=True))

    assert verifier.verify(token) == Actor(
        actor_id="user-1",
        contact_center_id="cc-1",
        role="admin",
        permissions=frozenset({"api_keys.view"}),
        sag=True,
    )


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_jwks_key_verifies_its_algorithm(
    tmp_path: Path, private_keys: dict[str, PrivateKey], algorithm: str
) -> None:
    verifier = _jwks_verifier(tmp_path, [_jwk(key, kid=alg) for alg, key in private_keys.items()])
    token = _sign(private_keys[algorithm], algorithm, _claims(), kid=algorithm)

    assert verifier.verify(token).actor_id == "user-1"


def test_pem_file_with_several_keys_tries_each(
    tmp_path: Path, private_keys: dict[str, PrivateKey], other_private_keys: dict[str, PrivateKey]
) -> None:
    verifier = _pem_verifier(tmp_path, *private_keys.values(), *other_private_keys.values())

    for algorithm, key in other_private_keys.items():
        assert verifier.verify(_sign(key, algorithm, _claims())).contact_center_id == "cc-1"


def test_jwks_kid_selects_the_only_key_tried(
    tmp_path: Path, private_keys: dict[str, PrivateKey], other_private_keys: dict[str, PrivateKey]
) -> None:
    first, second = private_keys["EdDSA"], other_private_keys["EdDSA"]
    verifier = _jwks_verifier(tmp_path, [_jwk(first, kid="one"), _jwk(second, kid="two")])

    assert verifier.verify(_sign(second, "EdDSA", _claims(), kid="two")).actor_id == "user-1"
    assert "signature" in _refusal(verifier, _sign(second, "EdDSA", _claims(), kid="one"))
    assert "signature" in _refusal(verifier, _sign(second, "EdDSA", _claims(), kid="three"))


def test_missing_optional_claims_default_to_no_permissions_without_sag(
    tmp_path: Path, private_keys: dict[str, PrivateKey]
) -> None:
    verifier = _pem_verifier(tmp_path, private_keys["EdDSA"])
    token = _sign(private_keys["EdDSA"], "EdDSA", _claims(permissions=_MISSING, sag=_MISSING))

    actor = verifier.verify(token)

    assert actor.permissions == frozenset()
    assert actor.sag is False


@pytest.mark.parametrize("token", ["", "not-a-token", "a.b.c", "e30.!!.x", "...."])
def test_malformed_token_is_refused(
    tmp_path: Path, private_keys: dict[str, PrivateKey], token: str
) -> None:
    verifier = _pem_verifier(tmp_path, private_keys["EdDSA"])

    with pytest.raises(Unauthenticated, match="malformed"):
        verifier.verify(token)


def test_unsigned_token_is_refused(tmp_path: Path, private_keys: dict[str, PrivateKey]) -> None:
    verifier = _pem_verifier(tmp_path, *private_keys.values())
    token = jwt.encode(_claims(), None, algorithm="none")

    assert "algorithm" in _refusal(verifier, token)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_hs256_signed_with_the_public_pem_is_refused(
    tmp_path: Path, private_keys: dict[str, PrivateKey], algorithm: str
) -> None:
    key = private_keys[algorithm]
    verifier = _pem_verifier(tmp_path, key)

    assert "algorithm" in _refusal(verifier, _hs256_token(_public_pem(key), _claims()))


def test_hs256_signed_with_the_public_jwk_is_refused(
    tmp_path: Path, private_keys: dict[str, PrivateKey]
) -> None:
    jwk = _jwk(private_keys["RS256"], kid="rsa")
    verifier = _jwks_verifier(tmp_path, [jwk])

    assert "algorithm" in _refusal(verifier, _hs256_token(json.dumps(jwk).encode(), _claims()))


@pytest.mark.parametrize("algorithm", ["ES384", "RS512", "PS256"])
def test_other_asymmetric_algorithms_are_refused(
    tmp_path: Path, private_keys: dict[str, PrivateKey], algorithm: str
) -> None:
    key = private_keys["RS256"] if algorithm != "ES384" else ec.generate_private_key(ec.SECP384R1())
    verifier = _pem_verifier(tmp_path, *private_keys.values())

    assert "algorithm" in _refusal(verifier, _sign(key, algorithm, _claims()))


def test_algorithm_without_a_key_of_its_type_is_refused(
    tmp_path: Path, private_keys: dict[str, PrivateKey]
) -> None:
    verifier = _pem_verifier(tmp_path, private_keys["EdDSA"])

    assert "algorithm" in _refusal(verifier, _sign(private_keys["ES256"], "ES256", _claims()))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_signature_of_an_unknown_key_is_refused(
    tmp_path: Path,
    private_keys: dict[str, PrivateKey],
    other_private_keys: dict[str, PrivateKey],
    algorithm: str,
) -> None:
    verifier = _pem_verifier(tmp_path, private_keys[algorithm])
    token = _sign(other_private_keys[algorithm], algorithm, _claims())

    assert "signature" in _refusal(verifier, token)


def test_tampered_claims_are_refused(tmp_path: Path, private_keys: dict[str, PrivateKey]) -> None:
    verifier = _pem_verifier(tmp_path, private_keys["EdDSA"])
    header, _, signature = _sign(private_keys["EdDSA"], "EdDSA", _claims(role="agent")).split(".")
    forged = f"{header}.{_b64(json.dumps(_claims(role='admin')).encode())}.{signature}"

    assert "signature" in _refusal(verifier, forged)


# Times are seconds from when the test runs (not when it was collected,
# which can be minutes earlier in a long run).
@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": _MISSING}, "exp"),
        ({"exp": -31}, "expired"),
        ({"exp": "tomorrow"}, "malformed"),
        ({"nbf": 60}, "not yet valid"),
        ({"iat": 60}, "not yet valid"),
    ],
)
def test_token_outside_its_lifetime_is_refused(
    tmp_path: Path, private_keys: dict[str, PrivateKey], claims: dict[str, Any], reason: str
) -> None:
    verifier = _pem_verifier(tmp_path, private_keys["EdDSA"])
    now = int(time.time())
    claims = {
        name: now + value if isinstance(value, int) else value for name, value in claims.items()
    }

    assert reason in _refusal(verifier, _sign(private_keys["EdDSA"], "EdDSA", _claims(**claims)))


def test_clock_skew_within_the_leeway_is_tolerated(
    tmp_path: Path, private_keys: dict[str, PrivateKey]
) -> None:
    verifier = _pem_verifier(tmp_path, private_keys["EdDSA"])
    now = int(time.time())
    token = _sign(private_keys["EdDSA"], "EdDSA", _claims(exp=now - 10, nbf=now + 10, iat=now + 10))

    assert verifier.verify(token).actor_id == "user-1"


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": _MISSING},
        {"sub": ""},
        {"sub": 42},
        {"contact_center_id": _MISSING},
        {"contact_center_id": ""},
        {"contact_center_id": 7},
        {"role": _MISSING},
        {"role": None},
        {"role": ["admin"]},
        {"permissions": "api_keys.view"},
        {"permissions": [1]},
        {"permissions": {"api_keys.view": True}},
        {"sag": "true"},
        {"sag": 1},
    ],
    ids=lambda claims: ",".join(f"{k}={v!r}" for k, v in claims.items()),
)
def test_claim_of_the_wrong_type_is_refused(
    tmp_path: Path, private_keys: dict[str, PrivateKey], claims: dict[str, Any]
) -> None:
    verifier = _pem_verifier(tmp_path, private_keys["EdDSA"])
    token = _sign(private_keys["EdDSA"], "EdDSA", _claims(**claims))

    message = _refusal(verifier, token)

    claim = next(iter(claims))
    assert claim in message or "malformed" in message


@pytest.mark.parametrize("sag", [True, False])
@pytest.mark.parametrize("role", ["admin", "supervisor"])
@pytest.mark.parametrize("granted", list(Permission))
def test_permission_rule(
    tmp_path: Path,
    private_keys: dict[str, PrivateKey],
    granted: Permission,
    role: str,
    sag: bool,
) -> None:
    verifier = _pem_verifier(tmp_path, private_keys["EdDSA"])
    token = _sign(
        private_keys["EdDSA"], "EdDSA", _claims(role=role, permissions=[granted.value], sag=sag)
    )

    actor = verifier.verify(token)

    for permission in Permission:
        expected = permission is granted if sag else role == "admin"
        assert actor.may(permission) is expected, permission


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "neither PEM nor JSON"),
        (b"{}", "keys"),
        (b'{"keys": []}', "keys"),
        (b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n", "PEM block 1"),
        (b"-----BEGIN PUBLIC KEY-----\n", "no PUBLIC KEY blocks"),
        (b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "unsupported key type"),
        (b'{"keys": [{"kty": "OKP", "crv": "X25519", "x": "AA"}]}', "unsupported key type"),
        (b'{"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}', "invalid EC key"),
    ],
)
def test_unusable_key_file_is_refused_with_its_path(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    path = tmp_path / "keys"
    path.write_bytes(content)

    with pytest.raises(ValueError, match=reason) as caught:
        AdminTokenVerifier.from_file(path)

    assert str(caught.value).startswith(f"{path}: ")


def test_missing_key_file_is_refused_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.pem"

    with pytest.raises(ValueError, match="cannot read") as caught:
        AdminTokenVerifier.from_file(path)

    assert str(caught.value).startswith(f"{path}: ")


def test_private_key_in_a_pem_file_is_refused(
    tmp_path: Path, private_keys: dict[str, PrivateKey]
) -> None:
    path = tmp_path / "keys.pem"
    path.write_bytes(
        private_keys["EdDSA"].private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )

    with pytest.raises(ValueError, match="PRIVATE KEY, expected PUBLIC KEY"):
        AdminTokenVerifier.from_file(path)


def test_private_key_in_a_jwks_is_refused(tmp_path: Path) -> None:
    jwk = OKPAlgorithm.to_jwk(ed25519.Ed25519PrivateKey.generate(), as_dict=True)
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [jwk]}))

    with pytest.raises(ValueError, match="private key"):
        AdminTokenVerifier.from_file(path)


@pytest.mark.parametrize(
    "weak_key",
    [
        pytest.param(lambda: rsa.generate_private_key(65537, 1024), id="rsa-1024"),
        pytest.param(lambda: ec.generate_private_key(ec.SECP384R1()), id="ec-p384"),
    ],
)
def test_weak_or_unexpected_public_keys_are_refused(tmp_path: Path, weak_key: Any) -> None:
    key = weak_key()
    pem_path = tmp_path / "keys.pem"
    pem_path.write_bytes(_public_pem(key))

    with pytest.raises(ValueError, match="PEM block 1"):
        AdminTokenVerifier.from_file(pem_path)


def test_rsa_jwk_shorter_than_2048_bits_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    weak = RSAAlgorithm.to_jwk(rsa.generate_private_key(65537, 1024).public_key(), as_dict=True)
    path.write_text(json.dumps({"keys": [weak]}))

    with pytest.raises(ValueError, match="shorter than 2048"):
        AdminTokenVerifier.from_file(path)


def test_dev_key_pair_is_created_private_and_verifies_its_tokens(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"

    public_path = ensure_dev_key_pair(data_dir)

    signing_path = data_dir / DEV_SIGNING_KEY_FILE
    assert public_path == data_dir / DEV_PUBLIC_KEY_FILE
    assert stat.S_IMODE(signing_path.stat().st_mode) == 0o600
    assert sorted(p.name for p in data_dir.iterdir()) == sorted(
        [DEV_SIGNING_KEY_FILE, DEV_PUBLIC_KEY_FILE]
    )
    signing_key = serialization.load_pem_private_key(signing_path.read_bytes(), password=None)
    assert isinstance(signing_key, ed25519.Ed25519PrivateKey)
    token = _sign(signing_key, "EdDSA", _claims())
    assert AdminTokenVerifier.from_file(public_path).verify(token).actor_id == "user-1"


def test_dev_key_pair_is_reused(tmp_path: Path) -> None:
    public_path = ensure_dev_key_pair(tmp_path)
    signing_pem = (tmp_path / DEV_SIGNING_KEY_FILE).read_bytes()
    public_pem = public_path.read_bytes()

    assert ensure_dev_key_pair(tmp_path) == public_path
    assert (tmp_path / DEV_SIGNING_KEY_FILE).read_bytes() == signing_pem
    assert public_path.read_bytes() == public_pem

    public_path.unlink()
    ensure_dev_key_pair(tmp_path)
    assert (tmp_path / DEV_SIGNING_KEY_FILE).read_bytes() == signing_pem
    assert public_path.read_bytes() == public_pem


def _ed25519_verifier(tmp_path: Path, **options: Any) -> tuple[Any, AdminTokenVerifier]:
    private_key = ed25519.Ed25519PrivateKey.generate()
    pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = tmp_path / "audience.pem"
    path.write_bytes(pem)
    return private_key, AdminTokenVerifier.from_file(path, **options)


def _signed(private_key: Any, **claims: Any) -> str:
    body = {
        "sub": "admin-1",
        "contact_center_id": "cc-1",
        "role": "admin",
        "exp": int(time.time()) + 300,
        **claims,
    }
    return jwt.encode(body, private_key, algorithm="EdDSA")


def test_audience_and_issuer_are_enforced_when_configured(tmp_path: Path) -> None:
    private_key, verifier = _ed25519_verifier(
        tmp_path, audience="apikeys", issuer="https://id.example"
    )
    good = _signed(private_key, aud="apikeys", iss="https://id.example")
    assert verifier.verify(good).actor_id == "admin-1"
    for claims, reason in (
        ({"aud": "billing", "iss": "https://id.example"}, "audience"),
        ({"aud": "apikeys", "iss": "https://evil.example"}, "issuer"),
        ({"iss": "https://id.example"}, "aud"),
        ({"aud": "apikeys"}, "iss"),
    ):
        with pytest.raises(Unauthenticated, match=reason):
            verifier.verify(_signed(private_key, **claims))


def test_without_configured_audience_a_token_carrying_one_is_accepted(tmp_path: Path) -> None:
    private_key, verifier = _ed25519_verifier(tmp_path)
    assert verifier.verify(_signed(private_key, aud="apikeys", iss="x")).actor_id == "admin-1"


@pytest.mark.parametrize("claim", ["sub", "contact_center_id"])
def test_identifiers_longer_than_the_store_keeps_are_refused(tmp_path: Path, claim: str) -> None:
    private_key, verifier = _ed25519_verifier(tmp_path)
    assert verifier.verify(_signed(private_key, **{claim: "x" * 128}))
    with pytest.raises(Unauthenticated, match=claim):
        verifier.verify(_signed(private_key, **{claim: "x" * 129}))


@pytest.mark.parametrize(
    ("claims", "accepted"),
    [
        ({"iat": 0, "exp": DEFAULT_MAX_LIFETIME_SECONDS}, True),
        ({"iat": 0, "exp": DEFAULT_MAX_LIFETIME_SECONDS + 1}, False),
        ({"iat": -3000, "exp": 600}, True),
        ({"iat": -3000, "exp": 601}, False),
        ({"exp": DEFAULT_MAX_LIFETIME_SECONDS - 60}, True),
        ({"exp": DEFAULT_MAX_LIFETIME_SECONDS + 60}, False),
        ({"exp": 10**18}, False),
        ({"iat": 0, "exp": 10**18}, False),
    ],
    ids=lambda value: repr(value),
)
def test_a_token_living_longer_than_the_maximum_is_refused(
    tmp_path: Path, claims: dict[str, int], accepted: bool
) -> None:
    private_key, verifier = _ed25519_verifier(tmp_path)
    now = int(time.time())
    relative = {name: value if value >= 10**18 else now + value for name, value in claims.items()}
    token = _signed(private_key, **relative)

    if accepted:
        assert verifier.verify(token).actor_id == "admin-1"
    else:
        with pytest.raises(Unauthenticated, match="lives longer"):
            verifier.verify(token)


def test_the_maximum_lifetime_is_configurable(tmp_path: Path) -> None:
    private_key, verifier = _ed25519_verifier(tmp_path, max_lifetime=60)
    now = int(time.time())

    assert verifier.verify(_signed(private_key, iat=now, exp=now + 60))
    with pytest.raises(Unauthenticated, match="60 s"):
        verifier.verify(_signed(private_key, iat=now, exp=now + 61))


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
@pytest.mark.parametrize("shape", [str, float, bool], ids=["string", "float", "bool"])
def test_times_must_be_json_numbers(tmp_path: Path, claim: str, shape: type) -> None:
    private_key, verifier = _ed25519_verifier(tmp_path)
    now = int(time.time())
    claims: dict[str, Any] = {"iat": now, "nbf": now, "exp": now + 300}
    if shape is str:
        claims[claim] = str(claims[claim])
    elif shape is float:
        claims[claim] = float(claims[claim])
    else:
        claims[claim] = True
    token = _signed(private_key, **claims)

    if shape is float:
        assert verifier.verify(token).actor_id == "admin-1"
    else:
        with pytest.raises(Unauthenticated, match=claim):
            verifier.verify(token)
