"""The tables, as SQLAlchemy Core metadata.

Migrations ``0001_initial`` to ``0006_change_key_ids`` create exactly these; a
test compares the two.
Times are integer microseconds since the Unix epoch (UTC) so that SQLite and
PostgreSQL compare and order them the same way.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    false,
    text,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Scopes are stored as a JSON array of sorted names.
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("contact_center_id", String(128), nullable=False),
    Column("name", Text, nullable=False),
    Column("description", Text, nullable=False),
    # Case-folded copies of name and description: searching them with a plain
    # LIKE behaves the same for any script on both backends, whereas SQL
    # lower() in SQLite folds ASCII only and in PostgreSQL depends on the
    # database's locale.
    Column("name_folded", Text, nullable=False),
    Column("description_folded", Text, nullable=False),
    Column("scopes", Text, nullable=False),
    Column("lookup_hash", LargeBinary(32), nullable=False, unique=True),
    Column("last4", String(4), nullable=False),
    Column("secret_ciphertext", LargeBinary, nullable=False),
    Column("encryption_key_id", String(64), nullable=False),
    Column("create_time", BigInteger, nullable=False),
    Column("update_time", BigInteger, nullable=False),
    Column("last_used_time", BigInteger, nullable=True),
    Column("created_by", String(128), nullable=False),
    # The lifecycle columns have server defaults so that rows written by a
    # replica of the previous release, which does not know them, read as a
    # key without expiry, enabled, usable from anywhere and never rolled.
    Column("expire_time", BigInteger, nullable=True),
    Column("disabled", Boolean, nullable=False, server_default=false()),
    # A JSON array of networks, like scopes.
    Column("allowed_cidrs", Text, nullable=False, server_default=text("'[]'")),
    Column("previous_lookup_hash", LargeBinary(32), nullable=True),
    Column("previous_expire_time", BigInteger, nullable=True),
)

# The listing order, newest first; its leading column also serves every
# lookup by contact center, so that needs no index of its own.
Index(
    "ix_api_keys_contact_center_id_create_time_id",
    api_keys.c.contact_center_id,
    api_keys.c.create_time.desc(),
    api_keys.c.id.desc(),
)

# Finds a rolled key by its previous secret during the overlap.
Index("ix_api_keys_previous_lookup_hash", api_keys.c.previous_lookup_hash, unique=True)

# A deleted key's lookup hash moves here so no later key can take it, and so
# does a rolled key's replaced one (at the roll, while it still works).
retired_lookup_hashes = Table(
    "retired_lookup_hashes",
    metadata,
    Column("lookup_hash", LargeBinary(32), primary_key=True),
)

# No foreign key to api_keys: events outlive the key they describe.
audit_events = Table(
    "audit_events",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("contact_center_id", String(128), nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("action", String(16), nullable=False),
    Column("actor_id", String(128), nullable=False),
    Column("time", BigInteger, nullable=False),
    Column("old_name", Text, nullable=False),
    Column("new_name", Text, nullable=False),
    Column("old_description", Text, nullable=False),
    Column("new_description", Text, nullable=False),
    Column("old_scopes", Text, nullable=False),
    Column("new_scopes", Text, nullable=False),
    Column("old_expire_time", BigInteger, nullable=True),
    Column("new_expire_time", BigInteger, nullable=True),
    Column("old_allowed_cidrs", Text, nullable=False, server_default=text("'[]'")),
    Column("new_allowed_cidrs", Text, nullable=False, server_default=text("'[]'")),
    Column("previous_secret_expire_time", BigInteger, nullable=True),
    Index("ix_audit_events_contact_center_id_id", "contact_center_id", "id"),
    Index(
        "ix_audit_events_contact_center_id_key_id_id",
        "contact_center_id",
        "key_id",
        "id",
    ),
)

# One row per contact center that ever had a key: the live key count, kept
# in step with api_keys so that a conditional UPDATE of this single row can
# enforce the per-center limit under concurrent creates.
contact_centers = Table(
    "contact_centers",
    metadata,
    Column("contact_center_id", String(128), primary_key=True),
    Column("key_count", Integer, nullable=False),
)

# The change feed: one row per create, update or delete of a key, written in
# the mutation's transaction, read by every process to drop stale cache
# entries. AUTOINCREMENT on SQLite so that a seq is never handed out twice,
# even after pruning emptied the table. On PostgreSQL ``xid`` is the writing
# transaction's id (``pg_current_xact_id()``), which readers compare with
# snapshots to tell committed, running and finished transactions apart;
# SQLite, with its single writer, leaves it NULL. ``time`` is the database's
# clock at the insert, for pruning. ``key_id`` names the changed key, so
# that a reader drops every lookup hash it holds for it; entries written
# before it was recorded have none, and a reader resets on them.
key_changes = Table(
    "key_changes",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("key_id", String(64), nullable=True),
    Column("lookup_hash", LargeBinary(32), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("time", BigInteger, nullable=False),
    Column("xid", BigInteger, nullable=True),
    Index("ix_key_changes_time", "time"),
    Index("ix_key_changes_xid", "xid"),
    sqlite_autoincrement=True,
)

# A single row (id 1): how far pruning has gone. ``pruned_through`` is the
# highest seq it deleted; ``pruned_below_xid`` (PostgreSQL) says every entry
# of a transaction below that id is gone, so a reader whose position goes
# back further may have missed entries.
key_changes_pruned = Table(
    "key_changes_pruned",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("pruned_through", BigInteger, nullable=False),
    Column("pruned_below_xid", BigInteger, nullable=False, server_default="0"),
)

# Always empty: the health probe inserts a row and deletes it again in one
# committed transaction, proving the database takes writes (a SELECT succeeds
# on a read-only or full one) without leaving anything behind or contending
# with other replicas for a row.
write_probes = Table(
    "write_probes",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("time", BigInteger, nullable=False),
)
