"""Deletes mark the job first: `deleted_at`, committed before its files are removed.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from shared.models import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("deleted_at", UTCDateTime(), nullable=True))
        batch.create_index("ix_jobs_deleted_at", ["deleted_at"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_deleted_at")
        batch.drop_column("deleted_at")
