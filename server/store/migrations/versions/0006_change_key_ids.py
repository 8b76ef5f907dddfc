"""Change-feed entries name the changed key.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

Nullable: entries written before this revision (or by a replica of the
previous release during a rolling upgrade) have no key id, and a reader that
meets one starts afresh rather than guess which key it was.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("key_changes", sa.Column("key_id", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("key_changes") as batch:
        batch.drop_column("key_id")
