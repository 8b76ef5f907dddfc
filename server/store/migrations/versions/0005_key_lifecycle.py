"""Key lifecycle: expiry, disabling, address allowlists and rolled secrets.

Every new column is nullable or has a server default, so existing keys keep
working unchanged (no expiry, enabled, any address, never rolled) and a
replica of the previous release can go on writing rows during a rollout.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as table:
        table.add_column(sa.Column("expire_time", sa.BigInteger(), nullable=True))
        table.add_column(
            sa.Column("disabled", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        table.add_column(
            sa.Column("allowed_cidrs", sa.Text(), nullable=False, server_default=sa.text("'[]'"))
        )
        table.add_column(sa.Column("previous_lookup_hash", sa.LargeBinary(32), nullable=True))
        table.add_column(sa.Column("previous_expire_time", sa.BigInteger(), nullable=True))
    # An index rather than a constraint: SQLite adds it without rebuilding
    # the table.
    op.create_index(
        "ix_api_keys_previous_lookup_hash", "api_keys", ["previous_lookup_hash"], unique=True
    )
    with op.batch_alter_table("audit_events") as table:
        table.add_column(sa.Column("old_expire_time", sa.BigInteger(), nullable=True))
        table.add_column(sa.Column("new_expire_time", sa.BigInteger(), nullable=True))
        table.add_column(
            sa.Column(
                "old_allowed_cidrs", sa.Text(), nullable=False, server_default=sa.text("'[]'")
            )
        )
        table.add_column(
            sa.Column(
                "new_allowed_cidrs", sa.Text(), nullable=False, server_default=sa.text("'[]'")
            )
        )
        table.add_column(sa.Column("previous_secret_expire_time", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_events") as table:
        table.drop_column("previous_secret_expire_time")
        table.drop_column("new_allowed_cidrs")
        table.drop_column("old_allowed_cidrs")
        table.drop_column("new_expire_time")
        table.drop_column("old_expire_time")
    op.drop_index("ix_api_keys_previous_lookup_hash", table_name="api_keys")
    with op.batch_alter_table("api_keys") as table:
        table.drop_column("previous_expire_time")
        table.drop_column("previous_lookup_hash")
        table.drop_column("allowed_cidrs")
        table.drop_column("disabled")
        table.drop_column("expire_time")
