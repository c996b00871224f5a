"""The kernel database's tables (SQLModel).

Every column has an explicit SQLAlchemy type that SQLite and PostgreSQL both accept, and the
initial Alembic revision (`forge/db/migrations/versions/0001_initial.py`) creates exactly these
(later revisions add to them: 0002 the run leases, 0003 the batches; a test compares the migrated schema with this
metadata). Times are UTC. JSON payloads are stored as text (`*_json` columns) so that any
SQLAlchemy backend works; the key columns a query filters or sorts on are copied out of them
and indexed.

Ids are integer autoincrement: users type them (`forge show 12`).

`Run.best_candidate_id` deliberately carries no foreign key: runs and candidates would reference
each other, a cycle that needs ALTER TABLE (which SQLite cannot do in place). It is written only
by `RunStore.update_run_totals`, from the candidate rows of the same run.
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

NAME = sa.String(200)
SHORT = sa.String(64)
HASH = sa.String(64)
TEXT = sa.Text()
WHEN = sa.DateTime(timezone=True)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class RunStatus(str, Enum):
    running = "running"
    finished = "finished"
    failed = "failed"
    interrupted = "interrupted"


class BatchStatus(str, Enum):
    running = "running"
    finished = "finished"
    """Every item is finished or failed."""
    stopped = "stopped"
    """A batch limit (deadline, total budget) stopped it; `--resume` continues."""
    interrupted = "interrupted"


class ItemStatus(str, Enum):
    pending = "pending"
    running = "running"
    finished = "finished"
    failed = "failed"
    """For good: not an infrastructure failure, or its retries are spent."""
    stopped = "stopped"
    """Cut by a batch limit while it ran; its run resumes with the batch."""
    interrupted = "interrupted"


class CandidateKind(str, Enum):
    initial = "initial"
    repair = "repair"
    optimize = "optimize"


class Role(str, Enum):
    coder = "coder"
    judge = "judge"


class ProblemRow(SQLModel, table=True):
    """One problem source, stored once per (name, source hash) and shared by its runs."""

    __tablename__ = "problem"
    __table_args__ = (sa.UniqueConstraint("name", "source_hash", name="uq_problem_name_hash"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_type=NAME, index=True)
    source: str = Field(sa_type=TEXT)
    source_hash: str = Field(sa_type=HASH)
    dtype: str = Field(sa_type=SHORT)
    created_at: datetime = Field(default_factory=utcnow, sa_type=WHEN)


class Run(SQLModel, table=True):
    """One `forge optimize` invocation; totals are recomputed from its rows."""

    __tablename__ = "run"

    id: int | None = Field(default=None, primary_key=True)
    problem_id: int = Field(foreign_key="problem.id", index=True)
    op: str = Field(sa_type=NAME, index=True)
    status: str = Field(default=RunStatus.running.value, sa_type=SHORT, index=True)
    config_json: str = Field(default="{}", sa_type=TEXT)
    coder_model: str = Field(sa_type=NAME)
    judge_model: str = Field(sa_type=NAME)
    backend: str = Field(sa_type=SHORT)
    device: str = Field(sa_type=SHORT)
    gpu_name: str = Field(default="", sa_type=NAME)
    error: str = Field(default="", sa_type=TEXT)
    started_at: datetime = Field(default_factory=utcnow, sa_type=WHEN, index=True)
    finished_at: datetime | None = Field(default=None, sa_type=WHEN)
    rounds_done: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    best_candidate_id: int | None = None
    best_speedup_vs_eager: float | None = None
    best_speedup_vs_compile: float | None = None


class RunLease(SQLModel, table=True):
    """Which process runs a run now (`RunStore.acquire_run_lease`): one row per held run, taken
    atomically, kept alive by heartbeats, free again once `expires_at` has passed. Added by
    revision 0002."""

    __tablename__ = "run_lease"

    run_id: int = Field(
        foreign_key="run.id", primary_key=True, sa_column_kwargs={"autoincrement": False}
    )
    holder: str = Field(sa_type=NAME)
    acquired_at: datetime = Field(default_factory=utcnow, sa_type=WHEN)
    heartbeat_at: datetime = Field(default_factory=utcnow, sa_type=WHEN)
    expires_at: datetime = Field(sa_type=WHEN, index=True)


class Batch(SQLModel, table=True):
    """One `forge batch`: many items (problems), each optimized by a run of its own. Totals
    are those of its items. Added by revision 0003."""

    __tablename__ = "batch"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_type=NAME)
    suite: str = Field(sa_type=TEXT)
    """What the suite was read from (directory, checkout with level and selection, TOML file)."""
    status: str = Field(default=BatchStatus.running.value, sa_type=SHORT, index=True)
    settings_json: str = Field(default="{}", sa_type=TEXT)
    """Batch-wide settings (`forge.agents.batch.BatchSettings`): concurrency, retries, ..."""
    budget_usd: float | None = None
    budget_gpu_s: float | None = None
    deadline_at: datetime | None = Field(default=None, sa_type=WHEN)
    stop_reason: str = Field(default="", sa_type=TEXT)
    created_at: datetime = Field(default_factory=utcnow, sa_type=WHEN, index=True)
    finished_at: datetime | None = Field(default=None, sa_type=WHEN)


class BatchItem(SQLModel, table=True):
    """One problem of a batch and the run that optimizes it (`run_id`, set once it starts).
    `config_json` is the run's `LoopConfig` with its models; `attempts` counts the sessions
    its run was played in, `retries` the infrastructure failures that were retried."""

    __tablename__ = "batch_item"
    __table_args__ = (sa.Index("ix_batch_item_batch_position", "batch_id", "position"),)

    id: int | None = Field(default=None, primary_key=True)
    batch_id: int = Field(foreign_key="batch.id")
    position: int = 0
    label: str = Field(sa_type=NAME)
    problem_id: int = Field(foreign_key="problem.id")
    config_json: str = Field(default="{}", sa_type=TEXT)
    priority: int = 0
    status: str = Field(default=ItemStatus.pending.value, sa_type=SHORT, index=True)
    run_id: int | None = Field(default=None, foreign_key="run.id", ondelete="SET NULL")
    attempts: int = 0
    retries: int = 0
    budget_usd: float | None = None
    budget_gpu_s: float | None = None
    cost_usd: float = 0.0
    gpu_seconds: float = 0.0
    library_entry_id: int | None = Field(
        default=None, foreign_key="library_entry.id", ondelete="SET NULL"
    )
    promotion: str = Field(default="", sa_type=TEXT)
    """What entered the library at the item's end, or why nothing did."""
    error: str = Field(default="", sa_type=TEXT)
    created_at: datetime = Field(default_factory=utcnow, sa_type=WHEN)
    started_at: datetime | None = Field(default=None, sa_type=WHEN)
    finished_at: datetime | None = Field(default=None, sa_type=WHEN)


class BatchLease(SQLModel, table=True):
    """Which process runs a batch now: the batch's counterpart of `RunLease`."""

    __tablename__ = "batch_lease"

    batch_id: int = Field(
        foreign_key="batch.id", primary_key=True, sa_column_kwargs={"autoincrement": False}
    )
    holder: str = Field(sa_type=NAME)
    acquired_at: datetime = Field(default_factory=utcnow, sa_type=WHEN)
    heartbeat_at: datetime = Field(default_factory=utcnow, sa_type=WHEN)
    expires_at: datetime = Field(sa_type=WHEN, index=True)


class Candidate(SQLModel, table=True):
    """One kernel source the Coder wrote."""

    __tablename__ = "candidate"
    __table_args__ = (sa.Index("ix_candidate_run_traj_round", "run_id", "trajectory", "round"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id")
    trajectory: int = 0
    round: int = 0
    parent_id: int | None = Field(default=None, foreign_key="candidate.id")
    kind: str = Field(sa_type=SHORT)
    backend: str = Field(sa_type=SHORT)
    source: str = Field(sa_type=TEXT)
    source_hash: str = Field(sa_type=HASH, index=True)
    plan_json: str = Field(default="", sa_type=TEXT)
    created_at: datetime = Field(default_factory=utcnow, sa_type=WHEN)


class Evaluation(SQLModel, table=True):
    """The evaluator's verdict on one candidate: the full EvalResult plus indexed key columns.

    `median_ms` is the candidate's median time on the first timed input set (the problem's
    first declared set), absent when nothing was timed.
    """

    __tablename__ = "evaluation"

    id: int | None = Field(default=None, primary_key=True)
    candidate_id: int = Field(foreign_key="candidate.id", index=True)
    result_json: str = Field(sa_type=TEXT)
    status: str = Field(sa_type=SHORT, index=True)
    suspicious: bool = False
    speedup_vs_eager: float | None = Field(default=None, index=True)
    speedup_vs_compile: float | None = None
    median_ms: float | None = None
    gpu_name: str = Field(default="", sa_type=NAME, index=True)
    arch: str = Field(default="", sa_type=SHORT, index=True)
    torch_version: str = Field(default="", sa_type=SHORT)
    triton_version: str = Field(default="", sa_type=SHORT)
    created_at: datetime = Field(default_factory=utcnow, sa_type=WHEN)


class LLMCall(SQLModel, table=True):
    """One LLM request: what was sent, what came back (or the error), tokens, cost, latency.

    `candidate_id` is the candidate the call is about: for a Coder call, the candidate its answer
    became (linked by `RunStore.link_llm_call` once the candidate exists); for a Judge call, the
    candidate it judged. `attempts` counts HTTP attempts including retries.
    """

    __tablename__ = "llm_call"
    __table_args__ = (sa.Index("ix_llm_call_run_traj_round", "run_id", "trajectory", "round"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id")
    candidate_id: int | None = Field(default=None, foreign_key="candidate.id")
    trajectory: int = 0
    round: int = 0
    role: str = Field(sa_type=SHORT)
    model: str = Field(sa_type=NAME)
    messages_json: str = Field(sa_type=TEXT)
    response_text: str = Field(default="", sa_type=TEXT)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    attempts: int = 1
    error: str = Field(default="", sa_type=TEXT)
    created_at: datetime = Field(default_factory=utcnow, sa_type=WHEN)


class LibraryEntry(SQLModel, table=True):
    """A verified kernel in the library (issue 4), keyed by op, dtype, shape bucket, arch and
    the torch / triton / CUDA major.minor it was verified with."""

    __tablename__ = "library_entry"
    __table_args__ = (
        sa.Index(
            "ix_library_entry_key",
            "op",
            "dtype",
            "arch",
            "torch_version",
            "triton_version",
            "cuda_version",
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    op: str = Field(sa_type=NAME)
    dtype: str = Field(sa_type=SHORT)
    shape_key: str = Field(default="{}", sa_type=TEXT)
    arch: str = Field(sa_type=SHORT)
    torch_version: str = Field(default="", sa_type=SHORT)
    triton_version: str = Field(default="", sa_type=SHORT)
    cuda_version: str = Field(default="", sa_type=SHORT)
    backend: str = Field(sa_type=SHORT)
    source: str = Field(sa_type=TEXT)
    source_hash: str = Field(sa_type=HASH, index=True)
    metadata_json: str = Field(default="{}", sa_type=TEXT)
    speedup_vs_eager: float | None = None
    speedup_vs_compile: float | None = None
    candidate_id: int | None = Field(default=None, foreign_key="candidate.id", ondelete="SET NULL")
    created_at: datetime = Field(default_factory=utcnow, sa_type=WHEN)
    verified_at: datetime | None = Field(default=None, sa_type=WHEN)
    active: bool = Field(default=True, index=True)


TABLES = (
    ProblemRow,
    Run,
    RunLease,
    Candidate,
    Evaluation,
    LLMCall,
    LibraryEntry,
    Batch,
    BatchItem,
    BatchLease,
)
