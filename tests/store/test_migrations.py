"""Alembic migrations on every backend of ``database_url``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import create_async_engine

from server.domain.keys import KeyCipher, KeyHasher, generate_key
from server.store import migrate, open_store
from server.store._engine import create_engine
from server.store._schema import metadata
from tests.conftest import KeyFactory
from tests.harness import SHARED_SECRETS, running_server
from voiso.apikeys.v1 import api_key_pb2
from voiso.apikeys.v1 import authorize_pb2 as az
from voiso.apikeys.v1 import key_admin_pb2 as pb

TABLES = {
    "alembic_version",
    "api_keys",
    "audit_events",
    "contact_centers",
    "key_changes",
    "key_changes_pruned",
    "retired_lookup_hashes",
    "write_probes",
}


async def _inspect(database_url: str) -> tuple[set[str], str, list[object]]:
    """Tables, schema revision, and differences from the Core metadata."""

    def read(connection: Connection) -> tuple[set[str], str, list[object]]:
        tables = set(inspect(connection).get_table_names())
        revision = connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
        return tables, revision, differences

    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(read)
    finally:
        await engine.dispose()


async def test_migrating_a_fresh_database_creates_the_schema(database_url: str) -> None:
    await migrate(database_url)

    tables, revision, differences = await _inspect(database_url)

    assert tables == TABLES
    assert revision == "0006"
    assert differences == []


async def test_migrating_again_changes_nothing(database_url: str, make_key: KeyFactory) -> None:
    store = await open_store(database_url)
    try:
        key = await store.create_key(make_key(), max_keys=50)
    finally:
        await store.close()

    await migrate(database_url)
    store = await open_store(database_url)
    try:
        assert await store.get_key("cc-1", key.id) == key
    finally:
        await store.close()
    tables, revision, _ = await _inspect(database_url)
    assert (tables, revision) == (TABLES, "0006")


async def test_replicas_migrating_at_once_all_succeed(database_url: str) -> None:
    await asyncio.gather(*(migrate(database_url) for _ in range(4)))

    tables, revision, _ = await _inspect(database_url)
    assert (tables, revision) == (TABLES, "0006")


def _upgrade_to(revision: str) -> Callable[[Connection], None]:
    def upgrade(connection: Connection) -> None:
        config = Config()
        config.set_main_option("script_location", "server.store:migrations")
        config.set_main_option("path_separator", "os")
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    return upgrade


async def test_upgrading_a_populated_change_feed_keeps_readers_in_step(
    database_url: str,
) -> None:
    engine = await create_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade_to("0002"))
        written_before = text(
            "INSERT INTO key_changes (lookup_hash, kind, time) VALUES (:hash, 'deleted', 0)"
        )
        async with engine.begin() as conn:
            await conn.execute(written_before, {"hash": b"a" * 32})
        await migrate(database_url)
        store = await open_store(database_url)
        try:
            position = (await store.changes_since(None, limit=10)).position
            # A replica still on the previous release writes as it always did.
            async with engine.begin() as conn:
                await conn.execute(written_before, {"hash": b"b" * 32})
            page = await store.changes_since(position, limit=10)
        finally:
            await store.close()
    finally:
        await engine.dispose()

    assert [change.lookup_hash for change in page.changes] == [b"b" * 32]
    assert not page.missed and not page.reset


async def test_upgrading_a_database_with_keys_of_the_previous_release_keeps_every_key_working(
    database_url: str, tmp_path: Path
) -> None:
    await migrate(database_url, revision="0004")
    # Keys as the previous release wrote them, under the secrets the
    # upgraded replicas are given.
    hasher = KeyHasher(b"h" * 32)
    cipher = KeyCipher([("test1", b"k" * 32)])
    secrets_by_id: dict[str, str] = {}
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            for number, scopes in enumerate(('["users.read"]', '["campaigns.read","users.read"]')):
                secret, key_id = generate_key(), f"key_previous_{number}"
                encryption_key_id, ciphertext = cipher.encrypt(
                    secret, associated_data=key_id.encode()
                )
                await conn.execute(
                    text(
                        "INSERT INTO api_keys (id, contact_center_id, name, description, "
                        "name_folded, description_folded, scopes, lookup_hash, last4, "
                        "secret_ciphertext, encryption_key_id, create_time, update_time, "
                        "last_used_time, created_by) VALUES (:id, 'cc-1', :name, '', :name, '', "
                        ":scopes, :hash, :last4, :ciphertext, :kek, 1, 1, NULL, 'admin-1')"
                    ),
                    {
                        "id": key_id,
                        "name": f"previous {number}",
                        "scopes": scopes,
                        "hash": hasher.lookup_hash(secret),
                        "last4": secret[-4:],
                        "ciphertext": ciphertext,
                        "kek": encryption_key_id,
                    },
                )
                secrets_by_id[key_id] = secret
            await conn.execute(
                text(
                    "INSERT INTO contact_centers (contact_center_id, key_count) VALUES ('cc-1', 2)"
                )
            )
    finally:
        await engine.dispose()

    await migrate(database_url)

    _, revision, differences = await _inspect(database_url)
    assert (revision, differences) == ("0006", [])
    async with running_server(
        tmp_path / "var", args=["--database-url", database_url, *SHARED_SECRETS]
    ) as h:
        for key_id, secret in secrets_by_id.items():
            checked = await h.authorize.Check(
                az.CheckRequest(key=secret, method="GET", path="/api/v4/users")
            )
            assert (checked.allowed, checked.key_id) == (True, key_id)
            key = (await h.admin.GetKey(pb.GetKeyRequest(id=key_id), metadata=h.auth())).key
            assert key.state == api_key_pb2.ApiKey.STATE_ACTIVE
            assert not key.HasField("expire_time") and not key.allowed_cidrs
            revealed = await h.admin.RevealKey(pb.RevealKeyRequest(id=key_id), metadata=h.auth())
            assert revealed.secret == secret
        # The new operations work on keys the previous release made.
        key_id = next(iter(secrets_by_id))
        await h.admin.DisableKey(pb.DisableKeyRequest(id=key_id), metadata=h.auth())
        refused = await h.authorize.Check(
            az.CheckRequest(key=secrets_by_id[key_id], method="GET", path="/api/v4/users")
        )
        assert refused.reason == az.REASON_KEY_DISABLED
