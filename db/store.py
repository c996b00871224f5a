"""`RunStore`: the one object the optimize loop talks to about the database.

Every write method commits before it returns, so a run killed at any instant (kill -9) loses at
most the step in flight. Every text that enters the database passes through `storable`
(`forge.db.redact.redact`), so provider keys never reach it.

Resuming a run (`forge optimize --resume RUN`): `rounds(run_id)` groups everything recorded for
a run by (trajectory, round), in order, as `RoundRecord`s holding that round's LLM calls and its
candidates with their evaluations. From them the loop sees, per trajectory, the last complete
round, and for a round in flight which of its steps exist:

- a Judge call with no error for (t, r): its plan is in `response_text` (do not call again);
- a Coder call with no error whose `candidate_id` is None: its answer arrived but no candidate
  was stored (`RoundRecord.unlinked_coder_calls`): extract the code from it, add the candidate,
  then `link_llm_call`;
- a candidate with no evaluation (`candidates_without_evaluation`): evaluate it, do not ask the
  Coder again;
- calls marked malformed (`set_llm_call_error`) count towards the retry-once rule.

`consumed_calls(run_id, role)` counts the calls that took an answer from the model, so a
scripted model can be fast-forwarded past the answers already used
(`forge.agents.llm.resume_model`).

One process at a time runs a run: `acquire_run_lease(run_id)` takes the run's lease (a row of
`run_lease`, taken by one conditional statement, so two processes cannot both win) or raises
`RunLeased` naming the holder; the holder heartbeats (`Lease.heartbeat`, or a background thread
inside `with lease:`) and releases it at the end. A lease whose heartbeat is older than its TTL
has expired, so the run of a crashed (or killed) holder can be resumed after at most `ttl_s`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from pydantic import BaseModel
from sqlalchemy import case, delete, func, literal, or_, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from forge.db.engine import DatabaseError, get_engine, migrate, open_read_only
from forge.db.models import (
    Candidate,
    CandidateKind,
    Evaluation,
    LibraryEntry,
    LLMCall,
    ProblemRow,
    Role,
    Run,
    RunLease,
    RunStatus,
    utcnow,
)
from forge.db.redact import redact
from forge.evaluator.problem import Problem
from forge.evaluator.result import EvalResult, Status

log = logging.getLogger(__name__)

LEASE_TTL_S = 60.0
"""A run's lease expires this long after its last heartbeat (a crashed holder's run can then be
resumed); holders heartbeat every third of it."""


class RecordNotFound(LookupError):
    """A run or candidate id that is not in the database."""


class RunLeased(DatabaseError):
    """Another process holds the run's (or the batch's) lease: it is running it now."""


def lease_holder_id() -> str:
    """`host:pid:random`: who holds a lease (random, so two stores of one process differ)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def holder_is_gone(holder: str) -> bool:
    """Whether `holder` is a process of this host that no longer exists (killed, crashed): its
    lease need not be waited out. Holders on other hosts are only ever judged by expiry."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass(frozen=True)
class Leasable:
    """What a lease holds: a row of `table` (a lease table) keyed by `table.<key>` == `id`."""

    table: type
    key: str
    id: int
    label: str
    """How messages name it: `run 3`, `batch 2`."""

    def where(self):  # noqa: ANN201 (SQL expression)
        return col(getattr(self.table, self.key)) == self.id


class Lease:
    """This process's hold on one run or batch (`RunStore.acquire_run_lease`, `acquire_lease`).
    `heartbeat()` extends it, `release()` gives it up; `with lease:` heartbeats from a daemon
    thread every `ttl_s / 3` and releases at the end. `lost` turns True when a heartbeat finds
    the lease taken over (this process stalled past the TTL and another took it): the holder
    should stop."""

    def __init__(self, store: RunStore, what: Leasable, holder: str, ttl_s: float) -> None:
        self.store, self.what, self.holder, self.ttl_s = store, what, holder, ttl_s
        self.run_id = what.id
        self.lost = False
        self.released = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def heartbeat(self) -> bool:
        """Extend the lease by `ttl_s` from now; False (and `lost`) when it is no longer ours."""
        if self.released or self.lost:
            return False
        now = utcnow()
        with self.store._session() as s:
            table = self.what.table
            result = s.exec(
                update(table)
                .where(self.what.where(), col(table.holder) == self.holder)
                .values(heartbeat_at=now, expires_at=now + timedelta(seconds=self.ttl_s))
            )
            s.commit()
        if result.rowcount != 1:
            self.lost = True
            log.warning("lost the lease of %s (another process took it)", self.what.label)
        return not self.lost

    def release(self) -> None:
        """Stop heartbeating and give the run up (idempotent)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        if self.released:
            return
        self.released = True
        with self.store._session() as s:
            s.exec(
                delete(self.what.table).where(
                    self.what.where(), col(self.what.table.holder) == self.holder
                )
            )
            s.commit()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                if not self.heartbeat():
                    return
            except DatabaseError as exc:  # a locked database: try again at the next beat
                log.warning("heartbeat of %s failed: %s", self.what.label, exc)

    def start_heartbeat(self) -> Lease:
        if self._thread is None:
            name = f"forge-lease-{self.what.label.replace(' ', '-')}"
            self._thread = threading.Thread(target=self._beat, name=name, daemon=True)
            self._thread.start()
        return self

    def __enter__(self) -> Lease:
        return self.start_heartbeat()

    def __exit__(self, *_exc: object) -> None:
        self.release()


def storable(text: str) -> str:
    """Text as the database receives it: secrets redacted, and NUL characters (which a model's
    answer or a process's output may hold, and PostgreSQL's text columns refuse) replaced by
    U+FFFD, on every backend alike."""
    return redact(text).replace("\x00", "\N{REPLACEMENT CHARACTER}")


def source_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def result_to_json(result: EvalResult) -> str:
    """EvalResult -> JSON text that round-trips, infinities included (pydantic's own JSON
    writes inf as null, which the model then refuses to read back)."""
    return json.dumps(result.model_dump(mode="python"), allow_nan=True)


def result_from_json(text: str) -> EvalResult:
    return EvalResult.model_validate(json.loads(text))


def _json(value: dict | BaseModel | None) -> str:
    if value is None:
        return ""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return json.dumps(value, sort_keys=True)


@dataclass
class Step:
    """One candidate with its latest evaluation (None until evaluated)."""

    candidate: Candidate
    evaluation: Evaluation | None = None
    result: EvalResult | None = None

    @property
    def id(self) -> int:
        return self.candidate.id  # type: ignore[return-value]

    @property
    def status(self) -> str | None:
        return self.evaluation.status if self.evaluation else None

    @property
    def plan(self) -> dict:
        return json.loads(self.candidate.plan_json) if self.candidate.plan_json else {}


@dataclass
class RoundRecord:
    """Everything recorded for one (trajectory, round) of a run, in insertion order."""

    trajectory: int
    round: int
    calls: list[LLMCall] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)

    def calls_for(self, role: str, *, ok_only: bool = False) -> list[LLMCall]:
        return [c for c in self.calls if c.role == role and (not ok_only or not c.error)]

    @property
    def unlinked_coder_calls(self) -> list[LLMCall]:
        """Coder answers that arrived without error but have no candidate yet."""
        return [c for c in self.calls_for(Role.coder.value, ok_only=True) if c.candidate_id is None]

    @property
    def evaluated(self) -> bool:
        """The round produced a candidate and every candidate of it was evaluated."""
        return bool(self.steps) and all(s.evaluation is not None for s in self.steps)


class RunStore:
    """Runs, candidates, evaluations and LLM calls in one database.

    `RunStore(url)` connects to `database_url(url)` and migrates it to the newest schema
    (`migrate_schema=False` to skip). `read_only=True` opens it read-only (SQLite `mode=ro`), never
    migrates or writes, and reads a missing database as empty: for commands that only look.
    Thread-safe: each method uses its own session, so parallel trajectories may share one store.
    Problems of the database itself raise `forge.db.engine.DatabaseError` (one-line message).
    """

    def __init__(
        self,
        url: str | Engine | None = None,
        *,
        migrate_schema: bool = True,
        read_only: bool = False,
    ) -> None:
        if read_only:
            self.engine = url if isinstance(url, Engine) else open_read_only(url)
        else:
            self.engine = url if isinstance(url, Engine) else get_engine(url)
            if migrate_schema:
                migrate(self.engine)

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def _insert(self, row):  # noqa: ANN001, ANN202 (any table row)
        with self._session() as s:
            s.add(row)
            s.commit()
            return row

    # ---------------------------------------------------------------- runs

    def store_problem(self, problem: Problem) -> int:
        """The id of the problem's row, stored once per (name, source)."""
        return self._problem_id(problem)

    def _problem_id(self, problem: Problem) -> int:
        digest = source_hash(problem.source)
        query = select(ProblemRow.id).where(
            ProblemRow.name == problem.name, ProblemRow.source_hash == digest
        )
        with self._session() as s:
            existing = s.exec(query).first()
            if existing is not None:
                return existing
            row = ProblemRow(
                name=problem.name, source=problem.source, source_hash=digest, dtype=problem.dtype
            )
            s.add(row)
            try:
                s.commit()
            except IntegrityError:  # another process stored the same problem first
                s.rollback()
                return s.exec(query).one()
            return row.id  # type: ignore[return-value]

    def create_run(
        self,
        problem: Problem,
        config: dict | BaseModel,
        coder_model: str,
        judge_model: str,
        backend: str,
        device: str,
        gpu_name: str = "",
    ) -> int:
        """Store the problem (once per source) and a new run in status `running`; its id."""
        run = Run(
            problem_id=self._problem_id(problem),
            op=problem.name,
            config_json=storable(_json(config)),
            coder_model=storable(coder_model),
            judge_model=storable(judge_model),
            backend=backend,
            device=device,
            gpu_name=gpu_name,
        )
        return self._insert(run).id

    def get_run(self, run_id: int) -> Run:
        with self._session() as s:
            run = s.get(Run, run_id)
        if run is None:
            raise RecordNotFound(f"no run {run_id} in the database (`forge runs` lists them)")
        return run

    def problem(self, run_id: int) -> ProblemRow:
        """The problem row of a run (its source, to rebuild the Problem on resume)."""
        run = self.get_run(run_id)
        with self._session() as s:
            return s.get(ProblemRow, run.problem_id)  # type: ignore[return-value]

    def run_config(self, run_id: int) -> dict:
        return json.loads(self.get_run(run_id).config_json or "{}")

    def list_runs(
        self, limit: int = 50, *, op: str | None = None, status: str | None = None
    ) -> list[Run]:
        """Newest first."""
        query = select(Run).order_by(col(Run.id).desc()).limit(limit)
        if op is not None:
            query = query.where(Run.op == op)
        if status is not None:
            query = query.where(Run.status == RunStatus(status).value)
        with self._session() as s:
            return list(s.exec(query).all())

    def run_bests(
        self, backend: str, exclude_run: int | None = None
    ) -> list[tuple[Run, ProblemRow, Candidate]]:
        """Every run's best candidate (verified correct, not suspicious: `Run.best_candidate_id`)
        of `backend`, with its run and problem, newest run first."""
        query = (
            select(Run, ProblemRow, Candidate)
            .join(ProblemRow, col(ProblemRow.id) == col(Run.problem_id))
            .join(Candidate, col(Candidate.id) == col(Run.best_candidate_id))
            .where(Run.backend == backend)
            .order_by(col(Run.id).desc())
        )
        if exclude_run is not None:
            query = query.where(Run.id != exclude_run)
        with self._session() as s:
            return [tuple(row) for row in s.exec(query).all()]  # type: ignore[misc]

    def finish_run(self, run_id: int, status: str | RunStatus, error: str = "") -> Run:
        """Set the final status (finished | failed | interrupted), the end time and the totals."""
        final = RunStatus(status)
        self.get_run(run_id)
        with self._session() as s:
            s.exec(
                update(Run)
                .where(col(Run.id) == run_id)
                .values(status=final.value, finished_at=utcnow(), error=storable(error))
            )
            s.commit()
        return self.update_run_totals(run_id)

    def reopen_run(self, run_id: int) -> Run:
        """Mark a run `running` again (for `--resume`); its rows are kept as they are."""
        self.get_run(run_id)
        with self._session() as s:
            s.exec(
                update(Run)
                .where(col(Run.id) == run_id)
                .values(status=RunStatus.running.value, finished_at=None, error="")
            )
            s.commit()
        return self.get_run(run_id)

    def delete_run(self, run_id: int) -> dict[str, int]:
        """Delete a run with its candidates, evaluations and LLM calls (its problem row stays;
        library entries promoted from it keep their kernel and lose the link). Refused with
        `RunLeased` while another process runs it. Counts of the rows deleted, by table."""
        self.get_run(run_id)
        with self.acquire_run_lease(run_id, ttl_s=LEASE_TTL_S):
            candidates = select(Candidate.id).where(col(Candidate.run_id) == run_id)
            with self._session() as s:
                s.exec(
                    update(LibraryEntry)
                    .where(col(LibraryEntry.candidate_id).in_(candidates))
                    .values(candidate_id=None)
                )
                counts = {
                    "llm_calls": s.exec(
                        delete(LLMCall).where(col(LLMCall.run_id) == run_id)
                    ).rowcount,
                    "evaluations": s.exec(
                        delete(Evaluation).where(col(Evaluation.candidate_id).in_(candidates))
                    ).rowcount,
                }
                s.exec(
                    update(Candidate).where(col(Candidate.run_id) == run_id).values(parent_id=None)
                )
                counts["candidates"] = s.exec(
                    delete(Candidate).where(col(Candidate.run_id) == run_id)
                ).rowcount
                s.exec(delete(RunLease).where(col(RunLease.run_id) == run_id))
                counts["runs"] = s.exec(delete(Run).where(col(Run.id) == run_id)).rowcount
                s.commit()
        return counts

    # ------------------------------------------------------------- leases

    def acquire_run_lease(
        self, run_id: int, *, ttl_s: float = LEASE_TTL_S, holder: str | None = None
    ) -> Lease:
        """Take the run's lease for this process, or raise `RunLeased` (one line naming the
        holder and its last heartbeat) while another holder's lease has not expired."""
        self.get_run(run_id)
        return self.acquire_lease(
            Leasable(RunLease, "run_id", run_id, f"run {run_id}"), ttl_s=ttl_s, holder=holder
        )

    def acquire_lease(
        self, what: Leasable, *, ttl_s: float = LEASE_TTL_S, holder: str | None = None
    ) -> Lease:
        """Take `what`'s lease for this process, or raise `RunLeased`. Atomic: an INSERT (the
        primary key lets one process win) or, when a row exists, one UPDATE conditional on that
        lease having expired, being ours already, or being held by a process of this host that
        no longer exists (what a `kill -9`ed process held resumes at once)."""
        holder = holder or lease_holder_id()
        table = what.table
        now = utcnow()
        expires = now + timedelta(seconds=ttl_s)
        with self._session() as s:
            try:
                s.add(
                    table(
                        **{what.key: what.id}, holder=holder, heartbeat_at=now, expires_at=expires
                    )
                )
                s.commit()
                return Lease(self, what, holder, ttl_s)
            except IntegrityError:
                s.rollback()
            current = s.get(table, what.id)
            takeable = [holder] + (
                [current.holder] if current and holder_is_gone(current.holder) else []
            )
            result = s.exec(
                update(table)
                .where(
                    what.where(),
                    or_(col(table.expires_at) < now, col(table.holder).in_(takeable)),
                )
                .values(holder=holder, heartbeat_at=now, expires_at=expires, acquired_at=now)
                .execution_options(synchronize_session=False)
            )
            s.commit()
            if result.rowcount == 1:
                return Lease(self, what, holder, ttl_s)
            current = s.get(table, what.id)
        if current is None:  # released between the two statements: try once more
            return self.acquire_lease(what, ttl_s=ttl_s, holder=holder)
        beat = ensure_datetime(current.heartbeat_at) or now
        age = max(0.0, (utcnow() - beat).total_seconds())
        left = max(0.0, ((ensure_datetime(current.expires_at) or now) - utcnow()).total_seconds())
        raise RunLeased(
            f"{what.label} is being run by {current.holder} (heartbeat {age:.0f} s ago); wait "
            f"or stop it (if that process is gone, its lease expires in {left:.0f} s)"
        )

    def run_lease(self, run_id: int) -> RunLease | None:
        """The run's lease row, expired or not (None: nobody holds it)."""
        with self._session() as s:
            return s.get(RunLease, run_id)

    def set_run_gpu(self, run_id: int, gpu_name: str) -> None:
        with self._session() as s:
            s.exec(update(Run).where(col(Run.id) == run_id).values(gpu_name=gpu_name))
            s.commit()

    def update_run_totals(self, run_id: int) -> Run:
        """Recompute tokens, cost, rounds done and the best candidate from the rows, in one
        UPDATE statement (correct even when several threads or processes write the run)."""
        calls = select(LLMCall).where(col(LLMCall.run_id) == run_id).subquery()
        latest = self._latest_evaluation_ids(run_id).subquery()
        evaluated = (
            select(
                Candidate.id,
                Candidate.round,
                Evaluation.status,
                Evaluation.suspicious,
                Evaluation.speedup_vs_eager,
                Evaluation.speedup_vs_compile,
                Evaluation.gpu_name,
            )
            .join(latest, col(latest.c.candidate_id) == col(Candidate.id))
            .join(Evaluation, col(Evaluation.id) == latest.c.evaluation_id)
            .where(col(Candidate.run_id) == run_id)
            .subquery()
        )
        best = (
            select(evaluated)
            .where(
                evaluated.c.status == Status.correct.value, evaluated.c.suspicious == literal(False)
            )
            .order_by(*self._best_order(evaluated.c.speedup_vs_eager, evaluated.c.id))
            .limit(1)
            .subquery()
        )
        gpu = (
            select(evaluated.c.gpu_name)
            .where(evaluated.c.gpu_name != "")
            .order_by(evaluated.c.id.desc())
            .limit(1)
            .scalar_subquery()
        )
        values = {
            "prompt_tokens": select(
                func.coalesce(func.sum(calls.c.prompt_tokens), 0)
            ).scalar_subquery(),
            "completion_tokens": select(
                func.coalesce(func.sum(calls.c.completion_tokens), 0)
            ).scalar_subquery(),
            "cost_usd": select(func.coalesce(func.sum(calls.c.cost_usd), 0.0)).scalar_subquery(),
            "rounds_done": select(
                func.coalesce(func.max(evaluated.c.round) + 1, 0)
            ).scalar_subquery(),
            "best_candidate_id": select(best.c.id).scalar_subquery(),
            "best_speedup_vs_eager": select(best.c.speedup_vs_eager).scalar_subquery(),
            "best_speedup_vs_compile": select(best.c.speedup_vs_compile).scalar_subquery(),
            "gpu_name": func.coalesce(gpu, Run.gpu_name),
        }
        with self._session() as s:
            # The run's row lock first: on PostgreSQL an UPDATE that waited for a concurrent
            # one would otherwise write totals from the snapshot it started with.
            s.exec(
                select(Run.id).where(col(Run.id) == run_id).with_for_update(key_share=True)
            ).first()
            s.exec(update(Run).where(col(Run.id) == run_id).values(**values))
            s.commit()
        return self.get_run(run_id)

    @staticmethod
    def _best_order(speedup, candidate_id):  # noqa: ANN001, ANN205 (SQL expressions)
        """Highest speedup first, unmeasured last, then the earliest candidate."""
        return (case((speedup.is_(None), 1), else_=0), speedup.desc(), candidate_id)

    @staticmethod
    def _latest_evaluation_ids(run_id: int | None = None):  # noqa: ANN205
        """(candidate_id, evaluation_id) of each candidate's latest evaluation; with `run_id`,
        of that run's candidates only (the whole table grows with every run)."""
        query = select(
            col(Evaluation.candidate_id).label("candidate_id"),
            func.max(Evaluation.id).label("evaluation_id"),
        ).group_by(Evaluation.candidate_id)
        if run_id is None:
            return query
        return query.join(Candidate, col(Candidate.id) == col(Evaluation.candidate_id)).where(
            col(Candidate.run_id) == run_id
        )

    # ---------------------------------------------------------- candidates

    def add_candidate(
        self,
        run_id: int,
        trajectory: int,
        round: int,
        source: str,
        backend: str,
        kind: str | CandidateKind,
        parent_id: int | None = None,
        plan: dict | BaseModel | None = None,
    ) -> int:
        """Store a candidate's source (and the Judge plan it implements); its id."""
        text = storable(source)
        row = Candidate(
            run_id=run_id,
            trajectory=trajectory,
            round=round,
            parent_id=parent_id,
            kind=CandidateKind(kind).value,
            backend=backend,
            source=text,
            source_hash=source_hash(text),
            plan_json=storable(_json(plan)),
        )
        return self._insert(row).id

    def candidate(self, candidate_id: int) -> Candidate:
        with self._session() as s:
            row = s.get(Candidate, candidate_id)
        if row is None:
            raise RecordNotFound(f"no candidate {candidate_id} in the database")
        return row

    def candidates(self, run_id: int, trajectory: int | None = None) -> list[Candidate]:
        query = select(Candidate).where(Candidate.run_id == run_id)
        if trajectory is not None:
            query = query.where(Candidate.trajectory == trajectory)
        query = query.order_by(col(Candidate.trajectory), col(Candidate.round), col(Candidate.id))
        with self._session() as s:
            return list(s.exec(query).all())

    # --------------------------------------------------------- evaluations

    def add_evaluation(self, candidate_id: int, result: EvalResult) -> int:
        """Store the full EvalResult and its key columns; its id."""
        self.candidate(candidate_id)
        first_timing = result.timings[0].candidate.median_ms if result.timings else None
        env = result.environment
        row = Evaluation(
            candidate_id=candidate_id,
            result_json=storable(result_to_json(result)),
            status=result.status.value,
            suspicious=result.suspicious,
            speedup_vs_eager=result.speedup_vs_eager,
            speedup_vs_compile=result.speedup_vs_compile,
            median_ms=first_timing,
            gpu_name=env.gpu_name,
            arch=env.arch,
            torch_version=env.torch_version,
            triton_version=env.triton_version,
        )
        return self._insert(row).id

    def latest_evaluation(self, candidate_id: int) -> Evaluation | None:
        query = (
            select(Evaluation)
            .where(Evaluation.candidate_id == candidate_id)
            .order_by(col(Evaluation.id).desc())
            .limit(1)
        )
        with self._session() as s:
            return s.exec(query).first()

    def evaluations(self, run_id: int) -> list[Evaluation]:
        """Every evaluation of the run's candidates, re-evaluations included, oldest first (what
        the run spent on evaluating; `history` keeps only the latest per candidate)."""
        query = (
            select(Evaluation)
            .join(Candidate, col(Candidate.id) == col(Evaluation.candidate_id))
            .where(Candidate.run_id == run_id)
            .order_by(col(Evaluation.id))
        )
        with self._session() as s:
            return list(s.exec(query).all())

    def evaluation_seconds(self, run_id: int) -> float:
        """Wall time of every evaluation of the run's candidates: what a GPU budget counts."""
        return recorded_seconds(self.evaluations(run_id))

    def evaluation_for(self, candidate_id: int) -> EvalResult | None:
        """The candidate's latest EvalResult, or None when it was never evaluated."""
        row = self.latest_evaluation(candidate_id)
        return result_from_json(row.result_json) if row else None

    def _steps(self, candidates: Iterable[Candidate]) -> list[Step]:
        candidates = list(candidates)
        if not candidates:
            return []
        ids = [c.id for c in candidates]
        latest = (
            self._latest_evaluation_ids().where(col(Evaluation.candidate_id).in_(ids)).subquery()
        )
        query = select(Evaluation).join(latest, col(Evaluation.id) == latest.c.evaluation_id)
        with self._session() as s:
            by_candidate = {e.candidate_id: e for e in s.exec(query).all()}
        steps = []
        for c in candidates:
            ev = by_candidate.get(c.id)  # type: ignore[arg-type]
            steps.append(Step(c, ev, result_from_json(ev.result_json) if ev else None))
        return steps

    def history(self, run_id: int, trajectory: int | None = None) -> list[Step]:
        """Candidates with their latest evaluation, ordered by (trajectory, round, id)."""
        return self._steps(self.candidates(run_id, trajectory))

    def candidates_without_evaluation(self, run_id: int) -> list[Candidate]:
        """Candidates that were stored but never evaluated (a run killed mid-evaluation)."""
        evaluated = select(Evaluation.candidate_id)
        query = (
            select(Candidate)
            .where(Candidate.run_id == run_id, col(Candidate.id).not_in(evaluated))
            .order_by(col(Candidate.trajectory), col(Candidate.round), col(Candidate.id))
        )
        with self._session() as s:
            return list(s.exec(query).all())

    def best_candidate(self, run_id: int, *, include_suspicious: bool = False) -> Step | None:
        """The correct candidate with the highest speedup vs eager (unmeasured ones rank last,
        ties go to the earliest); suspicious results are left out unless asked for."""
        latest = self._latest_evaluation_ids(run_id).subquery()
        query = (
            select(Candidate)
            .join(latest, col(latest.c.candidate_id) == col(Candidate.id))
            .join(Evaluation, col(Evaluation.id) == latest.c.evaluation_id)
            .where(Candidate.run_id == run_id, Evaluation.status == Status.correct.value)
        )
        if not include_suspicious:
            query = query.where(col(Evaluation.suspicious).is_(False))
        query = query.order_by(
            *self._best_order(col(Evaluation.speedup_vs_eager), col(Candidate.id))
        ).limit(1)
        with self._session() as s:
            row = s.exec(query).first()
        return self._steps([row])[0] if row else None

    # ----------------------------------------------------------- LLM calls

    def record_llm_call(
        self,
        run_id: int,
        role: str | Role,
        model: str,
        messages: list,
        response_text: str,
        prompt_tokens: int,
        completion_tokens: int,
        cost_usd: float,
        latency_s: float,
        error: str = "",
        trajectory: int = 0,
        round: int = 0,
        candidate_id: int | None = None,
        attempts: int = 1,
    ) -> int:
        """Store one LLM call (secrets redacted); its id. `messages` are `Message` models or
        `{"role", "content"}` dicts."""
        plain = [
            m.model_dump(mode="json") if isinstance(m, BaseModel) else dict(m) for m in messages
        ]
        row = LLMCall(
            run_id=run_id,
            candidate_id=candidate_id,
            trajectory=trajectory,
            round=round,
            role=Role(role).value,
            model=storable(model),
            messages_json=storable(json.dumps(plain)),
            response_text=storable(response_text),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=cost_usd,
            latency_s=latency_s,
            attempts=attempts,
            error=storable(error),
        )
        return self._insert(row).id

    def link_llm_call(self, call_id: int, candidate_id: int) -> None:
        """Point a Coder call at the candidate its answer became."""
        self.candidate(candidate_id)
        with self._session() as s:
            s.exec(
                update(LLMCall).where(col(LLMCall.id) == call_id).values(candidate_id=candidate_id)
            )
            s.commit()

    def set_llm_call_error(self, call_id: int, error: str) -> None:
        """Mark a call whose answer was unusable (no code block, invalid plan JSON)."""
        with self._session() as s:
            s.exec(update(LLMCall).where(col(LLMCall.id) == call_id).values(error=storable(error)))
            s.commit()

    def llm_calls(
        self,
        run_id: int,
        trajectory: int | None = None,
        round: int | None = None,
        role: str | None = None,
    ) -> list[LLMCall]:
        """A run's LLM calls ordered by (trajectory, round, id)."""
        query = select(LLMCall).where(LLMCall.run_id == run_id)
        if trajectory is not None:
            query = query.where(LLMCall.trajectory == trajectory)
        if round is not None:
            query = query.where(LLMCall.round == round)
        if role is not None:
            query = query.where(LLMCall.role == Role(role).value)
        query = query.order_by(col(LLMCall.trajectory), col(LLMCall.round), col(LLMCall.id))
        with self._session() as s:
            return list(s.exec(query).all())

    def consumed_calls(self, run_id: int, role: str) -> int:
        """Calls of `role` that took an answer from the model (attempts >= 1): where a
        scripted model's replay resumes."""
        query = (
            select(func.count())
            .select_from(LLMCall)
            .where(
                LLMCall.run_id == run_id,
                LLMCall.role == Role(role).value,
                col(LLMCall.attempts) >= 1,
            )
        )
        with self._session() as s:
            return int(s.exec(query).one())

    # ------------------------------------------------------------- resume

    def rounds(self, run_id: int, trajectory: int | None = None) -> list[RoundRecord]:
        """Everything recorded for the run, grouped by (trajectory, round), in order."""
        grouped: dict[tuple[int, int], RoundRecord] = {}

        def record(t: int, r: int) -> RoundRecord:
            return grouped.setdefault((t, r), RoundRecord(t, r))

        for call in self.llm_calls(run_id, trajectory):
            record(call.trajectory, call.round).calls.append(call)
        for step in self.history(run_id, trajectory):
            record(step.candidate.trajectory, step.candidate.round).steps.append(step)
        return [grouped[k] for k in sorted(grouped)]

    def trajectories(self, run_id: int) -> list[int]:
        with self._session() as s:
            rows = s.exec(
                select(Candidate.trajectory).where(Candidate.run_id == run_id).distinct()
            ).all()
            calls = s.exec(
                select(LLMCall.trajectory).where(LLMCall.run_id == run_id).distinct()
            ).all()
        return sorted(set(rows) | set(calls))


def ensure_datetime(value: datetime | None) -> datetime | None:
    """A stored time in UTC: SQLite returns naive datetimes (they are UTC), PostgreSQL aware
    ones in the session's time zone."""
    if value is None:
        return value
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def recorded_seconds(evaluations: Iterable[Evaluation]) -> float:
    """The wall time `evaluations` recorded (`phase_seconds.total`: static check, sandbox
    start, compile, correctness, timing, profiling), summed."""
    return sum(
        json.loads(e.result_json).get("phase_seconds", {}).get("total", 0.0) for e in evaluations
    )
