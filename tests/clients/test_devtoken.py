"""Development tokens verify against the key pair a development server makes."""

from __future__ import annotations

from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from clients.cli import main
from clients.devtoken import DEV_SIGNING_KEY_FILE, dev_signing_key_path, mint_dev_token
from server import admin_tokens
from server.admin_tokens import AdminTokenVerifier, ensure_dev_key_pair
from server.domain.permissions import Actor, Permission


def test_file_name_convention_matches_the_server() -> None:
    assert DEV_SIGNING_KEY_FILE == admin_tokens.DEV_SIGNING_KEY_FILE


def test_minted_token_verifies_against_the_dev_public_key(tmp_path: Path) -> None:
    verifier = AdminTokenVerifier.from_file(ensure_dev_key_pair(tmp_path))

    token = mint_dev_token(
        dev_signing_key_path(tmp_path),
        subject="alice",
        contact_center_id="cc-7",
        role="supervisor",
        permissions=["api_keys.view", "api_keys.create"],
        sag=True,
    )

    actor = verifier.verify(token)
    assert actor == Actor(
        actor_id="alice",
        contact_center_id="cc-7",
        role="supervisor",
        permissions=frozenset({"api_keys.view", "api_keys.create"}),
        sag=True,
    )
    assert actor.may(Permission.CREATE)
    assert not actor.may(Permission.DELETE)


def test_minted_token_lives_for_its_ttl(tmp_path: Path) -> None:
    ensure_dev_key_pair(tmp_path)

    token = mint_dev_token(
        dev_signing_key_path(tmp_path),
        subject="alice",
        contact_center_id="cc-7",
        role="admin",
        ttl_seconds=120,
    )

    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 120
    assert jwt.get_unverified_header(token)["alg"] == "EdDSA"


def test_a_key_that_is_not_ed25519_is_refused(tmp_path: Path) -> None:
    path = tmp_path / DEV_SIGNING_KEY_FILE
    path.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )

    with pytest.raises(ValueError, match="not an Ed25519 private key"):
        mint_dev_token(path, subject="alice", contact_center_id="cc-7", role="admin")


def test_cli_prints_only_the_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier = AdminTokenVerifier.from_file(ensure_dev_key_pair(tmp_path))
    monkeypatch.setenv("APIKEYS_DATA_DIR", str(tmp_path))

    status = main(["dev-token", "--role", "agent", "--permission", "api_keys.view", "--sag"])

    out, err = capsys.readouterr()
    assert status == 0
    assert err == ""
    token = out.removesuffix("\n")
    assert "\n" not in token
    actor = verifier.verify(token)
    assert (actor.actor_id, actor.contact_center_id, actor.role) == ("dev-admin", "cc-dev", "agent")
    assert actor.may(Permission.VIEW)
    assert not actor.may(Permission.EDIT)


def test_cli_default_token_is_a_full_admin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    verifier = AdminTokenVerifier.from_file(ensure_dev_key_pair(tmp_path))

    assert main(["dev-token", "--data-dir", str(tmp_path)]) == 0

    actor = verifier.verify(capsys.readouterr().out.strip())
    assert all(actor.may(permission) for permission in Permission)


def test_cli_explains_a_missing_dev_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["dev-token", "--data-dir", str(tmp_path / "nowhere")])

    out, err = capsys.readouterr()
    assert status == 1
    assert out == ""
    assert err.startswith("apikeys: no development signing key at ")
    assert err.count("\n") == 1
