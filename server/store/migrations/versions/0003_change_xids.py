"""Change-feed entries carry their transaction's id on PostgreSQL.

Readers then decide from the database's own view of running transactions
which entries can still appear, instead of from a time window. Existing
entries keep a NULL ``xid``: they committed before any reader of the new
feed took its position. The column default makes entries written by
replicas still on the previous release (during a rolling upgrade) carry it
too.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("key_changes") as batch:
        batch.add_column(sa.Column("xid", sa.BigInteger(), nullable=True))
        batch.create_index("ix_key_changes_xid", ["xid"])
    with op.batch_alter_table("key_changes_pruned") as batch:
        batch.add_column(
            sa.Column("pruned_below_xid", sa.BigInteger(), nullable=False, server_default="0")
        )
    if op.get_bind().dialect.name == "postgresql":
        # Set after the column exists, so rows already there stay NULL
        # instead of all taking this migration's transaction id.
        op.execute(
            "ALTER TABLE key_changes ALTER COLUMN xid"
            " SET DEFAULT pg_current_xact_id()::text::bigint"
        )


def downgrade() -> None:
    with op.batch_alter_table("key_changes_pruned") as batch:
        batch.drop_column("pruned_below_xid")
    with op.batch_alter_table("key_changes") as batch:
        batch.drop_index("ix_key_changes_xid")
        batch.drop_column("xid")
