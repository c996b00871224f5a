"""Batches: a batch, its items (one run each) and the batch's lease.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-08

New tables only, so commands reading an older database read-only (not migrated) still find
the tables they know.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

NAME = sa.String(length=200)
SHORT = sa.String(length=64)
WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "batch",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", NAME, nullable=False),
        sa.Column("suite", sa.Text(), nullable=False),
        sa.Column("status", SHORT, nullable=False),
        sa.Column("settings_json", sa.Text(), nullable=False),
        sa.Column("budget_usd", sa.Float(), nullable=True),
        sa.Column("budget_gpu_s", sa.Float(), nullable=True),
        sa.Column("deadline_at", WHEN, nullable=True),
        sa.Column("stop_reason", sa.Text(), nullable=False),
        sa.Column("created_at", WHEN, nullable=False),
        sa.Column("finished_at", WHEN, nullable=True),
    )
    op.create_index("ix_batch_status", "batch", ["status"])
    op.create_index("ix_batch_created_at", "batch", ["created_at"])
    op.create_table(
        "batch_item",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("batch_id", sa.Integer(), sa.ForeignKey("batch.id"), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("label", NAME, nullable=False),
        sa.Column("problem_id", sa.Integer(), sa.ForeignKey("problem.id"), nullable=False),
        sa.Column("config_json", sa.Text(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("status", SHORT, nullable=False),
        sa.Column(
            "run_id", sa.Integer(), sa.ForeignKey("run.id", ondelete="SET NULL"), nullable=True
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("retries", sa.Integer(), nullable=False),
        sa.Column("budget_usd", sa.Float(), nullable=True),
        sa.Column("budget_gpu_s", sa.Float(), nullable=True),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("gpu_seconds", sa.Float(), nullable=False),
        sa.Column(
            "library_entry_id",
            sa.Integer(),
            sa.ForeignKey("library_entry.id", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column("promotion", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("created_at", WHEN, nullable=False),
        sa.Column("started_at", WHEN, nullable=True),
        sa.Column("finished_at", WHEN, nullable=True),
    )
    op.create_index("ix_batch_item_status", "batch_item", ["status"])
    op.create_index("ix_batch_item_batch_position", "batch_item", ["batch_id", "position"])
    op.create_table(
        "batch_lease",
        sa.Column(
            "batch_id",
            sa.Integer(),
            sa.ForeignKey("batch.id"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("holder", NAME, nullable=False),
        sa.Column("acquired_at", WHEN, nullable=False),
        sa.Column("heartbeat_at", WHEN, nullable=False),
        sa.Column("expires_at", WHEN, nullable=False),
    )
    op.create_index("ix_batch_lease_expires_at", "batch_lease", ["expires_at"])


def downgrade() -> None:
    op.drop_table("batch_lease")
    op.drop_table("batch_item")
    op.drop_table("batch")
