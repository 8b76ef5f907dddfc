"""The key change feed that keeps every process's cache in step.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "key_changes",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("lookup_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("time", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_key_changes"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_key_changes_time", "key_changes", ["time"])
    pruned = op.create_table(
        "key_changes_pruned",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("pruned_through", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_key_changes_pruned"),
    )
    op.bulk_insert(pruned, [{"id": 1, "pruned_through": 0}])


def downgrade() -> None:
    op.drop_table("key_changes_pruned")
    op.drop_index("ix_key_changes_time", table_name="key_changes")
    op.drop_table("key_changes")
