"""Initial schema: problems, runs, candidates, evaluations, LLM calls, library entries.

Revision ID: 0001
Revises:
Create Date: 2026-11-21

Hand-cleaned from autogenerate; portable types only (Integer, Float, Boolean, String(n), Text,
DateTime(timezone=True)) so SQLite and PostgreSQL both run it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

NAME = sa.String(length=200)
SHORT = sa.String(length=64)
HASH = sa.String(length=64)
WHEN = sa.DateTime(timezone=True)


def _id() -> sa.Column:
    return sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True)


def upgrade() -> None:
    op.create_table(
        "problem",
        _id(),
        sa.Column("name", NAME, nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("source_hash", HASH, nullable=False),
        sa.Column("dtype", SHORT, nullable=False),
        sa.Column("created_at", WHEN, nullable=False),
        sa.UniqueConstraint("name", "source_hash", name="uq_problem_name_hash"),
    )
    op.create_index("ix_problem_name", "problem", ["name"])

    op.create_table(
        "run",
        _id(),
        sa.Column("problem_id", sa.Integer(), sa.ForeignKey("problem.id"), nullable=False),
        sa.Column("op", NAME, nullable=False),
        sa.Column("status", SHORT, nullable=False),
        sa.Column("config_json", sa.Text(), nullable=False),
        sa.Column("coder_model", NAME, nullable=False),
        sa.Column("judge_model", NAME, nullable=False),
        sa.Column("backend", SHORT, nullable=False),
        sa.Column("device", SHORT, nullable=False),
        sa.Column("gpu_name", NAME, nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("started_at", WHEN, nullable=False),
        sa.Column("finished_at", WHEN, nullable=True),
        sa.Column("rounds_done", sa.Integer(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("best_candidate_id", sa.Integer(), nullable=True),
        sa.Column("best_speedup_vs_eager", sa.Float(), nullable=True),
        sa.Column("best_speedup_vs_compile", sa.Float(), nullable=True),
    )
    op.create_index("ix_run_op", "run", ["op"])
    op.create_index("ix_run_problem_id", "run", ["problem_id"])
    op.create_index("ix_run_started_at", "run", ["started_at"])
    op.create_index("ix_run_status", "run", ["status"])

    op.create_table(
        "candidate",
        _id(),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("run.id"), nullable=False),
        sa.Column("trajectory", sa.Integer(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("parent_id", sa.Integer(), sa.ForeignKey("candidate.id"), nullable=True),
        sa.Column("kind", SHORT, nullable=False),
        sa.Column("backend", SHORT, nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("source_hash", HASH, nullable=False),
        sa.Column("plan_json", sa.Text(), nullable=False),
        sa.Column("created_at", WHEN, nullable=False),
    )
    op.create_index("ix_candidate_run_traj_round", "candidate", ["run_id", "trajectory", "round"])
    op.create_index("ix_candidate_source_hash", "candidate", ["source_hash"])

    op.create_table(
        "evaluation",
        _id(),
        sa.Column("candidate_id", sa.Integer(), sa.ForeignKey("candidate.id"), nullable=False),
        sa.Column("result_json", sa.Text(), nullable=False),
        sa.Column("status", SHORT, nullable=False),
        sa.Column("suspicious", sa.Boolean(), nullable=False),
        sa.Column("speedup_vs_eager", sa.Float(), nullable=True),
        sa.Column("speedup_vs_compile", sa.Float(), nullable=True),
        sa.Column("median_ms", sa.Float(), nullable=True),
        sa.Column("gpu_name", NAME, nullable=False),
        sa.Column("arch", SHORT, nullable=False),
        sa.Column("torch_version", SHORT, nullable=False),
        sa.Column("triton_version", SHORT, nullable=False),
        sa.Column("created_at", WHEN, nullable=False),
    )
    op.create_index("ix_evaluation_arch", "evaluation", ["arch"])
    op.create_index("ix_evaluation_candidate_id", "evaluation", ["candidate_id"])
    op.create_index("ix_evaluation_gpu_name", "evaluation", ["gpu_name"])
    op.create_index("ix_evaluation_speedup_vs_eager", "evaluation", ["speedup_vs_eager"])
    op.create_index("ix_evaluation_status", "evaluation", ["status"])

    op.create_table(
        "llm_call",
        _id(),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("run.id"), nullable=False),
        sa.Column("candidate_id", sa.Integer(), sa.ForeignKey("candidate.id"), nullable=True),
        sa.Column("trajectory", sa.Integer(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("role", SHORT, nullable=False),
        sa.Column("model", NAME, nullable=False),
        sa.Column("messages_json", sa.Text(), nullable=False),
        sa.Column("response_text", sa.Text(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("latency_s", sa.Float(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("created_at", WHEN, nullable=False),
    )
    op.create_index("ix_llm_call_run_traj_round", "llm_call", ["run_id", "trajectory", "round"])

    op.create_table(
        "library_entry",
        _id(),
        sa.Column("op", NAME, nullable=False),
        sa.Column("dtype", SHORT, nullable=False),
        sa.Column("shape_key", sa.Text(), nullable=False),
        sa.Column("arch", SHORT, nullable=False),
        sa.Column("torch_version", SHORT, nullable=False),
        sa.Column("triton_version", SHORT, nullable=False),
        sa.Column("cuda_version", SHORT, nullable=False),
        sa.Column("backend", SHORT, nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("source_hash", HASH, nullable=False),
        sa.Column("metadata_json", sa.Text(), nullable=False),
        sa.Column("speedup_vs_eager", sa.Float(), nullable=True),
        sa.Column("speedup_vs_compile", sa.Float(), nullable=True),
        sa.Column(
            "candidate_id",
            sa.Integer(),
            sa.ForeignKey("candidate.id", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column("created_at", WHEN, nullable=False),
        sa.Column("verified_at", WHEN, nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_library_entry_active", "library_entry", ["active"])
    op.create_index(
        "ix_library_entry_key",
        "library_entry",
        ["op", "dtype", "arch", "torch_version", "triton_version", "cuda_version"],
    )
    op.create_index("ix_library_entry_source_hash", "library_entry", ["source_hash"])


def downgrade() -> None:
    for table in ("library_entry", "llm_call", "evaluation", "candidate", "run", "problem"):
        op.drop_table(table)
