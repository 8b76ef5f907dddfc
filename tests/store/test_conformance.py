"""The ``KeyStore`` contract, on every backend of ``migrated_database_url`` and for
every implementation: the SQL store and the cache wrapping it.

The change feed is the SQL store's alone (the cache follows it rather than
offering it), so the tests at the end read it from ``sql_store``, the store
under the implementation being tested."""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from server.domain.errors import KeyCollision, KeyLimitExceeded, StoreUnavailable
from server.domain.records import (
    AuditAction,
    ChangeKind,
    KeyChanges,
    KeyCursor,
    KeyRecord,
    Roll,
)
from server.domain.store import KeyStore
from server.store import SqlKeyStore, check_database_url, open_store
from tests.conftest import BASE_TIME, KeyFactory
from tests.store.feed import read_changes

LIMIT = 50
T1 = BASE_TIME + timedelta(days=1)
T2 = BASE_TIME + timedelta(days=2)


async def test_created_key_reads_back_unchanged(store: KeyStore, make_key: KeyFactory) -> None:
    key = make_key(
        name="Reporting bot",
        description="nightly CDR export",
        scopes=("reporting.cdrs.read", "campaigns.read"),
        create_time=BASE_TIME + timedelta(microseconds=123457),
    )

    created = await store.create_key(key, max_keys=LIMIT)

    assert created.scopes == ("campaigns.read", "reporting.cdrs.read")
    assert created == _with(key, scopes=("campaigns.read", "reporting.cdrs.read"))
    assert await store.get_key("cc-1", key.id) == created
    assert await store.find_by_lookup_hash(key.lookup_hash) == created
    assert created.create_time.utcoffset() == timedelta(0)


async def test_create_records_a_created_event(store: KeyStore, make_key: KeyFactory) -> None:
    key = await store.create_key(
        make_key(name="n", description="d", created_by="admin-7"), max_keys=LIMIT
    )

    page = await store.list_audit_events("cc-1", key_id=None, before_id=None, limit=10)

    [event] = page.events
    assert (event.action, event.key_id, event.actor_id, event.time) == (
        AuditAction.CREATED,
        key.id,
        "admin-7",
        key.create_time,
    )
    assert (event.new_name, event.new_description, event.new_scopes) == ("n", "d", key.scopes)
    assert (event.old_name, event.old_description, event.old_scopes) == ("", "", ())


async def test_another_centers_key_is_invisible(store: KeyStore, make_key: KeyFactory) -> None:
    key = await store.create_key(make_key(), max_keys=LIMIT)

    assert await store.get_key("cc-2", key.id) is None
    assert (
        await store.update_key("cc-2", key.id, KeyChanges(name="x"), actor_id="a", time=T1) is None
    )
    assert await store.reveal_key("cc-2", key.id, actor_id="a", time=T1) is None
    assert await store.delete_key("cc-2", key.id, actor_id="a", time=T1) is None
    page = await store.list_keys("cc-2", query="", after=None, limit=10)
    assert (page.keys, page.total_size, page.has_more) == ((), 0, False)
    audit = await store.list_audit_events("cc-2", key_id=key.id, before_id=None, limit=10)
    assert audit.events == ()
    assert await store.get_key("cc-1", key.id) == key
    own_audit = await store.list_audit_events("cc-1", key_id=None, before_id=None, limit=10)
    assert [e.action for e in own_audit.events] == [AuditAction.CREATED]


async def test_unknown_key_is_none_everywhere(store: KeyStore) -> None:
    assert await store.get_key("cc-1", "key_missing") is None
    assert (
        await store.update_key("cc-1", "key_missing", KeyChanges(), actor_id="a", time=T1) is None
    )
    assert await store.reveal_key("cc-1", "key_missing", actor_id="a", time=T1) is None
    assert await store.delete_key("cc-1", "key_missing", actor_id="a", time=T1) is None
    assert await store.find_by_lookup_hash(bytes(32)) is None
    audit = await store.list_audit_events("cc-1", key_id=None, before_id=None, limit=10)
    assert audit.events == ()


async def test_list_is_newest_first_with_total_and_has_more(
    store: KeyStore, make_key: KeyFactory
) -> None:
    keys = [await store.create_key(make_key(), max_keys=LIMIT) for _ in range(5)]
    await store.create_key(KeyFactory("cc-2")(), max_keys=LIMIT)

    first = await store.list_keys("cc-1", query="", after=None, limit=3)
    last = keys[-3]
    rest = await store.list_keys(
        "cc-1", query="", after=KeyCursor(create_time=last.create_time, key_id=last.id), limit=3
    )

    assert first.keys == tuple(reversed(keys[2:]))
    assert (first.total_size, first.has_more) == (5, True)
    assert rest.keys == (keys[1], keys[0])
    assert (rest.total_size, rest.has_more) == (5, False)


async def test_ties_in_create_time_are_ordered_by_id(store: KeyStore, make_key: KeyFactory) -> None:
    keys = [
        await store.create_key(make_key(id=f"key_{n}", create_time=BASE_TIME), max_keys=LIMIT)
        for n in (3, 1, 2)
    ]
    listed: list[KeyRecord] = []
    after: KeyCursor | None = None
    while True:
        page = await store.list_keys("cc-1", query="", after=after, limit=1)
        listed.extend(page.keys)
        if not page.has_more:
            break
        after = KeyCursor(create_time=page.keys[-1].create_time, key_id=page.keys[-1].id)

    assert [k.id for k in listed] == ["key_3", "key_2", "key_1"]
    assert len(keys) == len(listed)


async def test_query_matches_name_or_description_ignoring_case(
    store: KeyStore, make_key: KeyFactory
) -> None:
    by_name = await store.create_key(make_key(name="Billing EXPORT"), max_keys=LIMIT)
    by_description = await store.create_key(
        make_key(name="other", description="for the export job"), max_keys=LIMIT
    )
    unicode_name = await store.create_key(make_key(name="ÄRGER Straße"), max_keys=LIMIT)
    await store.create_key(make_key(name="unrelated"), max_keys=LIMIT)

    async def ids(query: str) -> set[str]:
        page = await store.list_keys("cc-1", query=query, after=None, limit=100)
        assert page.total_size == len(page.keys)
        return {k.id for k in page.keys}

    assert await ids("eXpOrT") == {by_name.id, by_description.id}
    assert await ids("ärger") == {unicode_name.id}
    assert await ids("STRASSE") == {unicode_name.id}
    assert await ids("nothing like it") == set()


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("%", {"100% coverage", "odd\\%"}),
        ("_", {"snake_case"}),
        ("\\", {"back\\slash", "odd\\%"}),
        ("\\%", {"odd\\%"}),
        ("0%", {"100% coverage"}),
    ],
)
async def test_query_takes_like_wildcards_literally(
    store: KeyStore, make_key: KeyFactory, query: str, expected: set[str]
) -> None:
    for name in ("100% coverage", "snake_case", "back\\slash", "odd\\%", "plain", "1000 x"):
        await store.create_key(make_key(name=name), max_keys=LIMIT)

    page = await store.list_keys("cc-1", query=query, after=None, limit=100)

    assert {k.name for k in page.keys} == expected


async def test_paging_has_no_gaps_or_duplicates_while_keys_change(
    store: KeyStore, make_key: KeyFactory
) -> None:
    # Some keys share a create time so the id tie-break is exercised.
    originals = [
        await store.create_key(
            make_key(create_time=BASE_TIME + timedelta(seconds=n // 3)), max_keys=LIMIT
        )
        for n in range(30)
    ]
    alive = {k.id for k in originals}
    deleted: set[str] = set()
    seen: list[str] = []
    after: KeyCursor | None = None
    round_ = 0
    while True:
        page = await store.list_keys("cc-1", query="", after=after, limit=7)
        seen.extend(k.id for k in page.keys)
        if not page.has_more:
            break
        after = KeyCursor(create_time=page.keys[-1].create_time, key_id=page.keys[-1].id)
        # Between pages: a newer key appears and an older, not yet listed one
        # goes away; neither may disturb the remaining pages.
        round_ += 1
        await store.create_key(make_key(create_time=T1 + timedelta(seconds=round_)), max_keys=LIMIT)
        victim = originals[round_ * 2]
        if victim.id not in seen:
            await store.delete_key("cc-1", victim.id, actor_id="a", time=T1)
            alive.discard(victim.id)
            deleted.add(victim.id)

    assert len(seen) == len(set(seen))
    assert deleted
    assert alive <= set(seen)
    assert not deleted & set(seen)
    assert set(seen) <= {k.id for k in originals}


async def test_update_applies_changes_and_records_them(
    store: KeyStore, make_key: KeyFactory
) -> None:
    key = await store.create_key(
        make_key(name="old", description="desc", scopes=("users.read",)), max_keys=LIMIT
    )

    result = await store.update_key(
        "cc-1",
        key.id,
        KeyChanges(name="new", scopes=("numbers.read", "campaigns.manage")),
        actor_id="admin-2",
        time=T1,
    )

    assert result is not None
    before, after = result
    assert before == key
    assert after == _with(
        key, name="new", scopes=("campaigns.manage", "numbers.read"), update_time=T1
    )
    assert await store.get_key("cc-1", key.id) == after
    [event, _created] = (
        await store.list_audit_events("cc-1", key_id=key.id, before_id=None, limit=10)
    ).events
    assert (event.action, event.actor_id, event.time) == (AuditAction.UPDATED, "admin-2", T1)
    assert (event.old_name, event.new_name) == ("old", "new")
    assert (event.old_scopes, event.new_scopes) == (
        ("users.read",),
        ("campaigns.manage", "numbers.read"),
    )
    assert (event.old_description, event.new_description) == ("", "")


async def test_update_finds_renamed_key_by_new_name(store: KeyStore, make_key: KeyFactory) -> None:
    key = await store.create_key(make_key(name="alpha"), max_keys=LIMIT)

    await store.update_key(
        "cc-1", key.id, KeyChanges(description="Now Beta"), actor_id="a", time=T1
    )

    found = await store.list_keys("cc-1", query="beta", after=None, limit=10)
    assert [k.id for k in found.keys] == [key.id]
    assert found.keys[0].name == "alpha"


async def test_delete_revokes_and_keeps_history(store: KeyStore, make_key: KeyFactory) -> None:
    key = await store.create_key(
        make_key(name="gone", description="soon", scopes=("users.read",)), max_keys=LIMIT
    )
    await store.reveal_key("cc-1", key.id, actor_id="admin-1", time=T1)

    deleted = await store.delete_key("cc-1", key.id, actor_id="admin-2", time=T2)

    assert deleted == key
    assert await store.get_key("cc-1", key.id) is None
    assert await store.find_by_lookup_hash(key.lookup_hash) is None
    assert await store.delete_key("cc-1", key.id, actor_id="admin-2", time=T2) is None
    assert (await store.list_keys("cc-1", query="", after=None, limit=10)).total_size == 0
    events = (await store.list_audit_events("cc-1", key_id=key.id, before_id=None, limit=10)).events
    assert [e.action for e in events] == [
        AuditAction.DELETED,
        AuditAction.REVEALED,
        AuditAction.CREATED,
    ]
    assert (events[0].actor_id, events[0].time) == ("admin-2", T2)
    assert (events[0].old_name, events[0].old_description, events[0].old_scopes) == (
        "gone",
        "soon",
        ("users.read",),
    )


async def test_reveal_returns_the_secret_and_is_audited(
    store: KeyStore, make_key: KeyFactory
) -> None:
    key = await store.create_key(make_key(), max_keys=LIMIT)

    revealed = await store.reveal_key("cc-1", key.id, actor_id="admin-9", time=T1)

    assert revealed is not None
    assert revealed.secret_ciphertext == key.secret_ciphertext
    [event, _] = (
        await store.list_audit_events("cc-1", key_id=None, before_id=None, limit=10)
    ).events
    assert (event.action, event.key_id, event.actor_id, event.time) == (
        AuditAction.REVEALED,
        key.id,
        "admin-9",
        T1,
    )


async def test_audit_pages_by_id_and_filters_by_key(store: KeyStore, make_key: KeyFactory) -> None:
    first = await store.create_key(make_key(), max_keys=LIMIT)
    second = await store.create_key(make_key(), max_keys=LIMIT)
    for n in range(3):
        await store.reveal_key("cc-1", first.id, actor_id=f"a{n}", time=T1)
    await store.create_key(KeyFactory("cc-2")(), max_keys=LIMIT)

    everything = await store.list_audit_events("cc-1", key_id=None, before_id=None, limit=100)
    top = await store.list_audit_events("cc-1", key_id=None, before_id=None, limit=2)
    below = await store.list_audit_events(
        "cc-1", key_id=None, before_id=top.events[-1].id, limit=100
    )
    of_second = await store.list_audit_events("cc-1", key_id=second.id, before_id=None, limit=100)

    ids = [e.id for e in everything.events]
    assert ids == sorted(ids, reverse=True)
    assert len(ids) == 5
    assert everything.has_more is False
    assert top.has_more is True
    assert top.events + below.events == everything.events
    assert [e.actor_id for e in top.events] == ["a2", "a1"]
    assert [(e.key_id, e.action) for e in of_second.events] == [(second.id, AuditAction.CREATED)]


async def test_find_by_lookup_hash_spans_contact_centers(store: KeyStore) -> None:
    other = await store.create_key(KeyFactory("cc-2")(), max_keys=LIMIT)

    assert await store.find_by_lookup_hash(other.lookup_hash) == other


async def test_a_lookup_by_hash_sees_each_mutation_once_it_returns(
    store: KeyStore, make_key: KeyFactory
) -> None:
    # Each lookup comes before the next mutation, so an implementation that
    # keeps answers (the cache) must let go of them when the key changes.
    key = make_key(scopes=("users.read",))
    assert await store.find_by_lookup_hash(key.lookup_hash) is None

    created = await store.create_key(key, max_keys=LIMIT)
    assert await store.find_by_lookup_hash(key.lookup_hash) == created

    updated = await store.update_key(
        "cc-1", key.id, KeyChanges(scopes=("campaigns.read",)), actor_id="a", time=T1
    )
    assert updated is not None
    assert await store.find_by_lookup_hash(key.lookup_hash) == updated[1]

    await store.delete_key("cc-1", key.id, actor_id="a", time=T2)
    assert await store.find_by_lookup_hash(key.lookup_hash) is None


async def test_lookup_hash_is_never_reused(store: KeyStore, make_key: KeyFactory) -> None:
    key = await store.create_key(make_key(), max_keys=LIMIT)

    with pytest.raises(KeyCollision):
        await store.create_key(KeyFactory("cc-2")(lookup_hash=key.lookup_hash), max_keys=LIMIT)
    await store.delete_key("cc-1", key.id, actor_id="a", time=T1)
    with pytest.raises(KeyCollision):
        await store.create_key(make_key(lookup_hash=key.lookup_hash), max_keys=LIMIT)
    assert await store.find_by_lookup_hash(key.lookup_hash) is None
    assert (await store.list_keys("cc-1", query="", after=None, limit=10)).total_size == 0


async def test_duplicate_live_id_is_refused(store: KeyStore, make_key: KeyFactory) -> None:
    key = await store.create_key(make_key(), max_keys=LIMIT)

    with pytest.raises(KeyCollision):
        await store.create_key(make_key(id=key.id), max_keys=LIMIT)
    assert (await store.list_keys("cc-1", query="", after=None, limit=10)).keys == (key,)


async def test_limit_counts_live_keys_only(store: KeyStore, make_key: KeyFactory) -> None:
    keys = [await store.create_key(make_key(), max_keys=3) for _ in range(3)]
    # A refused create (duplicate hash) must not use up a slot either.
    with pytest.raises(KeyCollision):
        await store.create_key(make_key(lookup_hash=keys[0].lookup_hash), max_keys=4)

    with pytest.raises(KeyLimitExceeded) as raised:
        await store.create_key(make_key(), max_keys=3)
    await store.delete_key("cc-1", keys[0].id, actor_id="a", time=T1)
    await store.create_key(make_key(), max_keys=3)
    await store.create_key(KeyFactory("cc-2")(), max_keys=3)

    assert (raised.value.contact_center_id, raised.value.limit) == ("cc-1", 3)
    with pytest.raises(KeyLimitExceeded):
        await store.create_key(make_key(), max_keys=3)
    await store.create_key(make_key(), max_keys=4)


async def test_concurrent_creates_never_exceed_the_limit(
    store: KeyStore, make_key: KeyFactory
) -> None:
    results = await asyncio.gather(
        *(store.create_key(make_key(), max_keys=LIMIT) for _ in range(100)),
        return_exceptions=True,
    )

    assert sum(isinstance(r, KeyRecord) for r in results) == LIMIT
    assert sum(isinstance(r, KeyLimitExceeded) for r in results) == 100 - LIMIT
    assert (await store.list_keys("cc-1", query="", after=None, limit=100)).total_size == LIMIT


async def test_concurrent_creates_through_two_stores_never_exceed_the_limit(
    store: KeyStore, migrated_database_url: str, make_key: KeyFactory
) -> None:
    second = await open_store(migrated_database_url, migrate=False)
    try:
        results = await asyncio.gather(
            *(
                (store if n % 2 else second).create_key(make_key(), max_keys=LIMIT)
                for n in range(100)
            ),
            return_exceptions=True,
        )
    finally:
        await second.close()

    assert sum(isinstance(r, KeyRecord) for r in results) == LIMIT
    assert sum(isinstance(r, KeyLimitExceeded) for r in results) == 100 - LIMIT


async def test_last_used_only_moves_forward(store: KeyStore, make_key: KeyFactory) -> None:
    first = await store.create_key(make_key(), max_keys=LIMIT)
    second = await store.create_key(make_key(), max_keys=LIMIT)

    await store.record_last_used({first.id: T2, second.id: T1, "key_deleted": T1})
    await store.record_last_used({first.id: T1, second.id: T2})
    await store.record_last_used({})

    got_first = await store.get_key("cc-1", first.id)
    got_second = await store.get_key("cc-1", second.id)
    assert got_first is not None
    assert got_second is not None
    assert got_first.last_used_time == T2
    assert got_second.last_used_time == T2
    assert got_first.update_time == first.update_time


async def test_naive_times_are_refused(store: KeyStore, make_key: KeyFactory) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.create_key(make_key(create_time=BASE_TIME.replace(tzinfo=None)), max_keys=1)


@pytest.mark.postgres
async def test_unreachable_postgres_is_unavailable(caplog: pytest.LogCaptureFixture) -> None:
    url = "postgresql+asyncpg://postgres@127.0.0.1:1/nothing"
    caplog.set_level(logging.WARNING, logger="server.store")

    with pytest.raises(StoreUnavailable) as raised:
        await open_store(url)
    broken = await open_store(url, migrate=False)
    try:
        with pytest.raises(StoreUnavailable) as raised_later:
            await broken.get_key("cc-1", "key_1")
    finally:
        await broken.close()

    for error in (raised.value, raised_later.value):
        assert "refused" not in str(error).lower()
        assert "127.0.0.1" not in str(error)
        assert error.__cause__ is not None
    assert "get_key" in caplog.text


async def test_corrupt_sqlite_file_is_unavailable(
    tmp_path: Path, make_key: KeyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys.db"
    url = f"sqlite+aiosqlite:///{path}"
    store = await open_store(url)
    try:
        key = await store.create_key(make_key(), max_keys=LIMIT)
        _overwrite_with_garbage(tmp_path, "keys.db*")
        with pytest.raises(StoreUnavailable) as raised:
            await store.get_key("cc-1", key.id)
        with pytest.raises(StoreUnavailable):
            await store.delete_key("cc-1", key.id, actor_id="a", time=T1)
    finally:
        await store.close()
    with pytest.raises(StoreUnavailable) as raised_on_open:
        await open_store(url, migrate=False)

    for error in (raised.value, raised_on_open.value):
        assert "database" not in str(error)
        assert error.__cause__ is not None
    assert "not a database" in caplog.text


async def test_sqlite_directory_that_cannot_exist_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("a file, not a directory")

    with pytest.raises(StoreUnavailable):
        await open_store(f"sqlite+aiosqlite:///{tmp_path / 'file' / 'keys.db'}")


@pytest.mark.parametrize(
    "url",
    [
        "sqlite+aiosqlite:///var/keys.db",
        "sqlite+aiosqlite:////abs/keys.db",
        "postgresql+asyncpg://user:pw@db.internal:5432/apikeys",
        "postgresql+asyncpg://db/apikeys",
        "postgresql+asyncpg:///apikeys?host=/run/postgresql",
    ],
)
def test_supported_urls_pass_the_check(url: str) -> None:
    check_database_url(url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "malformed"),
        ("", "malformed"),
        ("mysql+aiomysql://u:hunter2@db/x", "unsupported database driver 'mysql\\+aiomysql'"),
        ("postgresql://u:hunter2@db/x", "unsupported database driver 'postgresql'"),
        ("postgresql+psycopg://u:hunter2@db/x", "unsupported"),
        ("sqlite:///var/keys.db", "unsupported database driver 'sqlite'"),
        ("sqlite+aiosqlite://", "no SQLite file"),
        ("sqlite+aiosqlite:///:memory:", "no SQLite file"),
        ("postgresql+asyncpg://u:hunter2@db.internal", "database name"),
        ("postgresql+asyncpg:///apikeys", "host"),
    ],
)
async def test_bad_urls_are_refused_clearly(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        check_database_url(url)
    with pytest.raises(ValueError, match=message):
        await open_store(url)

    assert "hunter2" not in str(raised.value)


def _overwrite_with_garbage(directory: Path, pattern: str) -> None:
    for file in directory.glob(pattern):
        file.write_bytes(b"this is not a database" * 1000)


def _with(key: KeyRecord, **changes: object) -> KeyRecord:
    return replace(key, **changes)  # type: ignore[arg-type]


def _roll(previous_expire_time: datetime) -> Roll:
    return Roll(
        lookup_hash=secrets.token_bytes(32),
        last4="N3w4",
        secret_ciphertext=secrets.token_bytes(60),
        encryption_key_id="k1",
        previous_expire_time=previous_expire_time,
    )


async def test_lifecycle_fields_read_back_and_update_only_when_named(
    store: KeyStore, make_key: KeyFactory
) -> None:
    key = await store.create_key(
        make_key(expire_time=T2, allowed_cidrs=("10.0.0.0/8", "2001:db8::/32")), max_keys=LIMIT
    )
    assert await store.find_by_lookup_hash(key.lookup_hash) == key
    assert (key.expire_time, key.allowed_cidrs, key.disabled) == (
        T2,
        ("10.0.0.0/8", "2001:db8::/32"),
        False,
    )

    _, renamed = await store.update_key(
        "cc-1", key.id, KeyChanges(name="renamed"), actor_id="a", time=T1
    ) or (None, None)
    assert renamed is not None and (renamed.expire_time, renamed.allowed_cidrs) == (
        T2,
        key.allowed_cidrs,
    )
    _, cleared = await store.update_key(
        "cc-1", key.id, KeyChanges(expire_time=None, allowed_cidrs=()), actor_id="a", time=T1
    ) or (None, None)
    assert cleared is not None and (cleared.expire_time, cleared.allowed_cidrs) == (None, ())
    assert await store.find_by_lookup_hash(key.lookup_hash) == cleared
    page = await store.list_audit_events("cc-1", key_id=key.id, before_id=None, limit=10)
    assert (page.events[0].old_expire_time, page.events[0].new_expire_time) == (T2, None)
    assert page.events[2].new_allowed_cidrs == key.allowed_cidrs


async def test_disabling_and_enabling_keep_the_key_and_are_audited(
    store: KeyStore, make_key: KeyFactory
) -> None:
    key = await store.create_key(make_key(), max_keys=LIMIT)

    disabled = await store.set_key_disabled("cc-1", key.id, True, actor_id="a", time=T1)
    assert disabled is not None and disabled[1].disabled and disabled[1].update_time == T1
    assert await store.find_by_lookup_hash(key.lookup_hash) == disabled[1]
    enabled = await store.set_key_disabled("cc-1", key.id, False, actor_id="a", time=T2)
    assert enabled is not None and not enabled[1].disabled
    assert await store.set_key_disabled("cc-2", key.id, True, actor_id="a", time=T2) is None

    page = await store.list_audit_events("cc-1", key_id=key.id, before_id=None, limit=10)
    assert [event.action for event in page.events] == [
        AuditAction.ENABLED,
        AuditAction.DISABLED,
        AuditAction.CREATED,
    ]


async def test_a_rolled_key_is_found_by_both_hashes_until_the_next_roll_or_delete(
    store: KeyStore, make_key: KeyFactory
) -> None:
    key = await store.create_key(make_key(), max_keys=LIMIT)
    first = _roll(T2)

    result = await store.roll_key("cc-1", key.id, first, actor_id="a", time=T1)

    assert result is not None
    rolled = result[1]
    assert (rolled.id, rolled.lookup_hash, rolled.last4) == (key.id, first.lookup_hash, "N3w4")
    assert (rolled.previous_lookup_hash, rolled.previous_expire_time) == (key.lookup_hash, T2)
    assert await store.find_by_lookup_hash(key.lookup_hash) == rolled
    assert await store.find_by_lookup_hash(first.lookup_hash) == rolled
    # The replaced hash is retired at once: no new key can take it.
    with pytest.raises(KeyCollision):
        await store.create_key(make_key(lookup_hash=key.lookup_hash), max_keys=LIMIT)

    second = _roll(T2)
    again = await store.roll_key("cc-1", key.id, second, actor_id="a", time=T1)
    assert again is not None and again[1].previous_lookup_hash == first.lookup_hash
    assert await store.find_by_lookup_hash(key.lookup_hash) is None

    await store.delete_key("cc-1", key.id, actor_id="a", time=T2)
    for lookup_hash in (key.lookup_hash, first.lookup_hash, second.lookup_hash):
        assert await store.find_by_lookup_hash(lookup_hash) is None
    page = await store.list_audit_events("cc-1", key_id=key.id, before_id=None, limit=10)
    assert [event.action for event in page.events] == [
        AuditAction.DELETED,
        AuditAction.ROLLED,
        AuditAction.ROLLED,
        AuditAction.CREATED,
    ]
    assert page.events[1].previous_secret_expire_time == T2


async def test_a_roll_without_overlap_keeps_one_hash_and_refuses_a_used_one(
    store: KeyStore, make_key: KeyFactory
) -> None:
    key = await store.create_key(make_key(), max_keys=LIMIT)
    other = await store.create_key(make_key(), max_keys=LIMIT)

    result = await store.roll_key("cc-1", key.id, _roll(T1), actor_id="a", time=T1)

    assert result is not None and result[1].previous_lookup_hash is None
    assert await store.find_by_lookup_hash(key.lookup_hash) is None
    taken = replace(_roll(T1), lookup_hash=other.lookup_hash)
    with pytest.raises(KeyCollision):
        await store.roll_key("cc-1", key.id, taken, actor_id="a", time=T1)
    assert await store.roll_key("cc-2", key.id, _roll(T1), actor_id="a", time=T1) is None


async def test_each_change_names_every_lookup_hash_of_the_key(
    store: KeyStore, sql_store: SqlKeyStore, make_key: KeyFactory
) -> None:
    key = await store.create_key(make_key(), max_keys=LIMIT)
    position = (await sql_store.changes_since(None, limit=10)).position
    roll = _roll(T2)

    await store.roll_key("cc-1", key.id, roll, actor_id="a", time=T1)
    await store.set_key_disabled("cc-1", key.id, True, actor_id="a", time=T1)
    await store.set_key_disabled("cc-1", key.id, False, actor_id="a", time=T1)
    await store.update_key("cc-1", key.id, KeyChanges(name="n"), actor_id="a", time=T1)
    await store.delete_key("cc-1", key.id, actor_id="a", time=T2)

    page = await read_changes(sql_store, position)
    both = {key.lookup_hash, roll.lookup_hash}
    named: dict[ChangeKind, set[bytes]] = {}
    for change in page.changes:
        named.setdefault(change.kind, set()).add(change.lookup_hash)
    assert named == {
        ChangeKind.ROLLED: both,
        ChangeKind.DISABLED: both,
        ChangeKind.ENABLED: both,
        ChangeKind.UPDATED: both,
        ChangeKind.DELETED: both,
    }
