"""The initial schema: keys, retired lookup hashes, audit events, key counts.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("contact_center_id", sa.String(128), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("name_folded", sa.Text(), nullable=False),
        sa.Column("description_folded", sa.Text(), nullable=False),
        sa.Column("scopes", sa.Text(), nullable=False),
        sa.Column("lookup_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("last4", sa.String(4), nullable=False),
        sa.Column("secret_ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("encryption_key_id", sa.String(64), nullable=False),
        sa.Column("create_time", sa.BigInteger(), nullable=False),
        sa.Column("update_time", sa.BigInteger(), nullable=False),
        sa.Column("last_used_time", sa.BigInteger(), nullable=True),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("lookup_hash", name="uq_api_keys_lookup_hash"),
    )
    op.create_index(
        "ix_api_keys_contact_center_id_create_time_id",
        "api_keys",
        ["contact_center_id", sa.text("create_time DESC"), sa.text("id DESC")],
    )
    op.create_table(
        "retired_lookup_hashes",
        sa.Column("lookup_hash", sa.LargeBinary(32), nullable=False),
        sa.PrimaryKeyConstraint("lookup_hash", name="pk_retired_lookup_hashes"),
    )
    op.create_table(
        "audit_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("contact_center_id", sa.String(128), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("actor_id", sa.String(128), nullable=False),
        sa.Column("time", sa.BigInteger(), nullable=False),
        sa.Column("old_name", sa.Text(), nullable=False),
        sa.Column("new_name", sa.Text(), nullable=False),
        sa.Column("old_description", sa.Text(), nullable=False),
        sa.Column("new_description", sa.Text(), nullable=False),
        sa.Column("old_scopes", sa.Text(), nullable=False),
        sa.Column("new_scopes", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_events"),
    )
    op.create_index(
        "ix_audit_events_contact_center_id_id", "audit_events", ["contact_center_id", "id"]
    )
    op.create_index(
        "ix_audit_events_contact_center_id_key_id_id",
        "audit_events",
        ["contact_center_id", "key_id", "id"],
    )
    op.create_table(
        "contact_centers",
        sa.Column("contact_center_id", sa.String(128), nullable=False),
        sa.Column("key_count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("contact_center_id", name="pk_contact_centers"),
    )


def downgrade() -> None:
    op.drop_table("contact_centers")
    op.drop_index("ix_audit_events_contact_center_id_key_id_id", table_name="audit_events")
    op.drop_index("ix_audit_events_contact_center_id_id", table_name="audit_events")
    op.drop_table("audit_events")
    op.drop_table("retired_lookup_hashes")
    op.drop_index("ix_api_keys_contact_center_id_create_time_id", table_name="api_keys")
    op.drop_table("api_keys")
