"""Run leases: which process runs a run now (one row per held run, with its heartbeat).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

A separate table rather than columns of `run`, so that commands reading an older database
read-only (revision 0001, not migrated) still find `run` as they expect.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

NAME = sa.String(length=200)
WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "run_lease",
        sa.Column(
            "run_id",
            sa.Integer(),
            sa.ForeignKey("run.id"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("holder", NAME, nullable=False),
        sa.Column("acquired_at", WHEN, nullable=False),
        sa.Column("heartbeat_at", WHEN, nullable=False),
        sa.Column("expires_at", WHEN, nullable=False),
    )
    op.create_index("ix_run_lease_expires_at", "run_lease", ["expires_at"])


def downgrade() -> None:
    op.drop_table("run_lease")
