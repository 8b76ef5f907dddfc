"""The controls the page offers follow the server's permission rule, read
from the token's claims."""

from __future__ import annotations

from pathlib import Path

import pytest

from console import Admin, DevSignIn
from tests.harness import ALL_PERMISSIONS, running_server


@pytest.mark.parametrize(
    ("role", "sag", "listed", "granted"),
    [
        ("admin", False, [], set(ALL_PERMISSIONS)),
        ("supervisor", False, list(ALL_PERMISSIONS), set()),
        ("admin", True, ["api_keys.view"], {"api_keys.view"}),
        ("agent", True, ["api_keys.view", "api_keys.delete"], {"api_keys.view", "api_keys.delete"}),
        ("admin", True, [], set()),
    ],
)
async def test_sag_counts_only_listed_permissions_and_without_it_only_admins_have_all(
    tmp_path: Path, role: str, sag: bool, listed: list[str], granted: set[str]
) -> None:
    async with running_server(tmp_path / "var") as harness:
        token = harness.token(role=role, sag=sag, permissions=listed)
    admin = Admin.from_token(token)
    assert admin is not None
    assert {p for p in ALL_PERMISSIONS if admin.may(p)} == granted
    assert token not in repr(admin)


def test_something_that_is_not_a_jwt_signs_nobody_in() -> None:
    assert Admin.from_token("not-a-token") is None


async def test_dev_sign_in_renews_a_token_about_to_expire_with_the_same_claims(
    tmp_path: Path,
) -> None:
    async with running_server(tmp_path / "var") as harness:
        dev = DevSignIn(harness.data_dir)
        viewer = dev.sign_in(role="agent", permissions=["api_keys.view"], sag=True)
        assert dev.renewed(viewer) is viewer
        expiring = Admin.from_token(
            harness.token(
                contact_center="cc-dev",
                role="agent",
                permissions=["api_keys.view"],
                sag=True,
                ttl_seconds=30,
            )
        )
        renewed = dev.renewed(expiring)
    assert renewed is not expiring and expiring is not None
    assert (renewed.role, renewed.sag, renewed.listed_permissions) == (
        "agent",
        True,
        frozenset({"api_keys.view"}),
    )
    assert renewed.expires_at is not None and expiring.expires_at is not None
    assert renewed.expires_at > expiring.expires_at
    assert dev.renewed(None).may_create
