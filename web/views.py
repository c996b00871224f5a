"""What each page shows, read from the database through `RunStore` (opened read-only).

One function per page returns a plain object for its template; nothing here writes. Unknown
ids raise `RecordNotFound` (a 404 page); bad query parameters raise `pydantic.ValidationError`
(a 400 page).
"""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Literal

from markupsafe import Markup
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import case, func, or_
from sqlmodel import Session, col, select

from forge.agents.errors import InvalidPlan
from forge.agents.interfaces import JudgePlan
from forge.agents.judge import parse_plan
from forge.db.batches import BatchStore, BatchTotals, totals
from forge.db.library import content_id, get_entry, list_entries, record_from_row
from forge.db.models import (
    Batch,
    BatchItem,
    Candidate,
    LibraryEntry,
    LLMCall,
    ProblemRow,
    Run,
    RunStatus,
)
from forge.db.redact import redact
from forge.db.store import RecordNotFound, RunStore, Step, ensure_datetime
from forge.evaluator.result import Check, EvalResult, SetTiming, Status, geomean
from forge.kernels_library.storage import EntryMeta
from forge.web import charts
from forge.web.templating import (
    DiffRow,
    highlight_diff,
    highlight_python,
    side_by_side,
    unified_diff,
)

LIST_LIMIT = 500
"""Rows a list page shows at most (the newest first when unsorted)."""
SEARCH_LIMIT = 50
"""Candidates (and library entries) a search lists at most."""
MATCHING_LINES = 4
"""Lines of code shown per search hit."""
NO_GPU = "-"
"""The GPU filter's value for runs that used no GPU."""


def _session(store: RunStore) -> Session:
    return Session(store.engine)


class Query(BaseModel):
    """Query parameters of a page: an empty value (an unset form field) counts as absent."""

    model_config = ConfigDict(extra="ignore")

    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if value == "" else value

    def chosen(self) -> dict[str, str | None]:
        """The parameters as the form shows them (strings; None where unset)."""
        return {k: None if v is None else str(v) for k, v in self.model_dump(mode="json").items()}


# ------------------------------------------------------------------------------------ runs

RUN_SORTS = {
    "id": Run.id,
    "op": Run.op,
    "status": Run.status,
    "gpu": Run.gpu_name,
    "rounds": Run.rounds_done,
    "best": Run.best_speedup_vs_eager,
    "cost": Run.cost_usd,
    "started": Run.started_at,
}


class RunFilter(Query):
    """`/runs?op=&status=&model=&gpu=&since=&until=&sort=&order=`."""

    op: str | None = None
    status: RunStatus | None = None
    model: str | None = Field(None, description="the Coder's or the Judge's model")
    gpu: str | None = Field(None, description=f"a GPU name, or {NO_GPU!r} for runs without one")
    since: date | None = Field(None, description="started on or after this day (UTC)")
    until: date | None = Field(None, description="started on or before this day (UTC)")
    sort: Literal["id", "op", "status", "gpu", "rounds", "best", "cost", "started"] = "started"
    order: Literal["asc", "desc"] = "desc"

    def active(self) -> bool:
        return any(
            v is not None
            for v in (self.op, self.status, self.model, self.gpu, self.since, self.until)
        )


@dataclass
class RunsPage:
    runs: list[Run]
    total: int
    matching: int
    filter: RunFilter
    ops: list[str]
    statuses: list[str]
    models: list[str]
    gpus: list[str]
    limit: int = LIST_LIMIT


def _day_start(value: date) -> datetime:
    return datetime.combine(value, time.min, tzinfo=timezone.utc)


def _run_conditions(f: RunFilter) -> list:
    conditions = []
    if f.op is not None:
        conditions.append(col(Run.op) == f.op)
    if f.status is not None:
        conditions.append(col(Run.status) == f.status.value)
    if f.model is not None:
        conditions.append(or_(col(Run.coder_model) == f.model, col(Run.judge_model) == f.model))
    if f.gpu is not None:
        conditions.append(col(Run.gpu_name) == ("" if f.gpu == NO_GPU else f.gpu))
    if f.since is not None:
        conditions.append(col(Run.started_at) >= _day_start(f.since))
    if f.until is not None:
        conditions.append(col(Run.started_at) < _day_start(f.until + timedelta(days=1)))
    return conditions


def _distinct(s: Session, column) -> list[str]:  # noqa: ANN001 (a column)
    return sorted(v for v in s.exec(select(column).distinct()).all() if v is not None)


def run_count(store: RunStore) -> int:
    with _session(store) as s:
        return s.exec(select(func.count()).select_from(Run)).one()


def runs_page(store: RunStore, f: RunFilter) -> RunsPage:
    column = RUN_SORTS[f.sort]
    order = column.desc() if f.order == "desc" else column.asc()
    conditions = _run_conditions(f)
    query = (
        select(Run)
        .where(*conditions)
        .order_by(case((col(column).is_(None), 1), else_=0), order, col(Run.id).desc())
        .limit(LIST_LIMIT)
    )
    with _session(store) as s:
        runs = list(s.exec(query).all())
        total = s.exec(select(func.count()).select_from(Run)).one()
        matching = s.exec(select(func.count()).select_from(Run).where(*conditions)).one()
        models = sorted(set(_distinct(s, Run.coder_model)) | set(_distinct(s, Run.judge_model)))
        gpus = _distinct(s, Run.gpu_name)
        return RunsPage(
            runs=runs,
            total=total,
            matching=matching,
            filter=f,
            ops=_distinct(s, Run.op),
            statuses=[status.value for status in RunStatus],
            models=models,
            gpus=[NO_GPU if g == "" else g for g in gpus],
        )


# ------------------------------------------------------------------------------------- run


@dataclass
class Node:
    """A candidate in its trajectory's tree (children: the candidates built on it)."""

    step: Step
    children: list[Node] = field(default_factory=list)


@dataclass
class RoundRow:
    trajectory: int
    round: int
    steps: list[Step]
    coder_calls: int
    judge_calls: int
    failed_calls: int
    tokens: int
    cost_usd: float


@dataclass
class RunPage:
    run: Run
    problem: ProblemRow
    problem_source: Markup
    settings: list[tuple[str, str]]
    steps: list[Step]
    trees: dict[int, list[Node]]
    rounds: list[RoundRow]
    calls: int
    failed_calls: int
    speedup_chart: charts.Chart | None
    token_chart: charts.Chart | None
    cost_chart: charts.Chart | None
    references: list[charts.Reference]
    timed_sets: list[str]


def flatten(config: dict, prefix: str = "") -> list[tuple[str, str]]:
    """Nested settings as (dotted key, JSON value) rows."""
    rows: list[tuple[str, str]] = []
    for key in sorted(config):
        value = config[key]
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            rows.extend(flatten(value, f"{name}."))
        else:
            rows.append((name, json.dumps(value)))
    return rows


def _trees(steps: list[Step]) -> dict[int, list[Node]]:
    nodes = {step.id: Node(step) for step in steps}
    trees: dict[int, list[Node]] = {}
    for step in steps:
        c = step.candidate
        parent = nodes.get(c.parent_id) if c.parent_id is not None else None
        if parent is not None and parent.step.candidate.trajectory == c.trajectory:
            parent.children.append(nodes[step.id])
        else:
            trees.setdefault(c.trajectory, []).append(nodes[step.id])
    return dict(sorted(trees.items()))


def _target_timings(result: EvalResult) -> list[SetTiming]:
    return [t for t in result.timings if t.target] or list(result.timings)


def _baseline(results: list[EvalResult], ratio) -> float | None:  # noqa: ANN001 (a function)
    """The median over evaluations of the geometric mean over target sets of `ratio(timing)`."""
    per_result = []
    for result in results:
        values = [v for t in _target_timings(result) if (v := ratio(t)) is not None]
        mean = geomean(values)
        if mean is not None:
            per_result.append(mean)
    return statistics.median(per_result) if per_result else None


def _compile_vs_eager(t: SetTiming) -> float | None:
    if t.eager is None or t.compiled is None or t.compiled.median_ms <= 0:
        return None
    return t.eager.median_ms / t.compiled.median_ms


def _light_vs_eager(t: SetTiming) -> float | None:
    if t.eager is None or not t.floor_ms:
        return None
    return t.eager.median_ms / t.floor_ms


def references(results: list[EvalResult]) -> list[charts.Reference]:
    """torch.compile and the speed of light as speedups vs eager, at the target sets."""
    found = [
        ("torch-compile", "torch.compile", _baseline(results, _compile_vs_eager)),
        ("speed-of-light", "speed of light", _baseline(results, _light_vs_eager)),
    ]
    return [charts.Reference(css, name, value) for css, name, value in found if value]


def _round_points(steps: list[Step]) -> list[charts.RoundPoint]:
    points = []
    for step in steps:
        e = step.evaluation
        if e is None or e.speedup_vs_eager is None or not math.isfinite(e.speedup_vs_eager):
            continue
        points.append(
            charts.RoundPoint(
                round=step.candidate.round,
                trajectory=step.candidate.trajectory,
                candidate_id=step.id,
                speedup=e.speedup_vs_eager,
                counts=e.status == Status.correct.value and not e.suspicious,
            )
        )
    return points


def _running_totals(run: Run, calls: list[LLMCall]) -> tuple[list, list]:
    start = ensure_datetime(run.started_at)
    tokens: list[tuple[float, float]] = []
    costs: list[tuple[float, float]] = []
    total_tokens, total_cost = 0, 0.0
    for call in sorted(calls, key=lambda c: (ensure_datetime(c.created_at), c.id)):
        at = max(0.0, (ensure_datetime(call.created_at) - start).total_seconds())
        total_tokens += call.prompt_tokens + call.completion_tokens
        total_cost += call.cost_usd
        tokens.append((at, float(total_tokens)))
        costs.append((at, total_cost))
    return tokens, costs


def run_page(store: RunStore, run_id: int) -> RunPage:
    run = store.get_run(run_id)
    problem = store.problem(run_id)
    records = store.rounds(run_id)
    steps = [step for record in records for step in record.steps]
    calls = [call for record in records for call in record.calls]
    rounds = [
        RoundRow(
            trajectory=record.trajectory,
            round=record.round,
            steps=record.steps,
            coder_calls=len(record.calls_for("coder")),
            judge_calls=len(record.calls_for("judge")),
            failed_calls=sum(1 for c in record.calls if c.error),
            tokens=sum(c.prompt_tokens + c.completion_tokens for c in record.calls),
            cost_usd=sum(c.cost_usd for c in record.calls),
        )
        for record in records
    ]
    results = [s.result for s in steps if s.result is not None and s.result.timings]
    refs = references(results)
    tokens, costs = _running_totals(run, calls)
    timed_sets = sorted({t.input_set for r in results for t in _target_timings(r)})
    return RunPage(
        run=run,
        problem=problem,
        problem_source=highlight_python(problem.source),
        settings=flatten(json.loads(run.config_json or "{}")),
        steps=steps,
        trees=_trees(steps),
        rounds=rounds,
        calls=len(calls),
        failed_calls=sum(1 for c in calls if c.error),
        speedup_chart=charts.speedup_chart(_round_points(steps), refs),
        token_chart=charts.cumulative_chart("Tokens over time", "tokens (total)", tokens, ",.0f"),
        cost_chart=charts.cumulative_chart("Cost over time", "US dollars (total)", costs, ".4f"),
        references=refs,
        timed_sets=timed_sets,
    )


# ------------------------------------------------------------------------------- candidate


@dataclass
class CheckSummary:
    """The checks of one input set."""

    input_set: str
    checks: int
    passed: int
    seeds: int
    max_abs_error: float
    max_rel_error: float
    failures: list[Check]


@dataclass
class Message:
    role: str
    content: str


@dataclass
class CallView:
    call: LLMCall
    messages: list[Message]


@dataclass
class JudgeNote:
    call: LLMCall
    plan: JudgePlan | None
    text: str
    """The raw answer when it does not parse as a plan."""


@dataclass
class CandidatePage:
    candidate: Candidate
    run: Run
    code: Markup
    result: EvalResult | None
    plan: JudgePlan | None
    """The Judge's plan this candidate implements (None for a first attempt)."""
    parent: Candidate | None
    parent_diff: Markup | None
    children: list[Candidate]
    previous_id: int | None
    next_id: int | None
    checks: list[CheckSummary]
    metric_names: list[str]
    judge_notes: list[JudgeNote]
    calls: list[CallView]
    is_best: bool


def check_summaries(checks: list[Check]) -> list[CheckSummary]:
    by_set: dict[str, list[Check]] = {}
    for c in checks:
        by_set.setdefault(c.input_set, []).append(c)
    return [
        CheckSummary(
            input_set=name,
            checks=len(group),
            passed=sum(c.passed for c in group),
            seeds=len({c.seed_index for c in group}),
            max_abs_error=max(c.max_abs_error for c in group),
            max_rel_error=max(c.max_rel_error for c in group),
            failures=[c for c in group if not c.passed],
        )
        for name, group in by_set.items()
    ]


def _messages(call: LLMCall) -> list[Message]:
    return [
        Message(str(m.get("role", "")), str(m.get("content", "")))
        for m in json.loads(call.messages_json or "[]")
    ]


def _judge_note(call: LLMCall) -> JudgeNote:
    try:
        return JudgeNote(call, parse_plan(call.response_text), call.response_text)
    except InvalidPlan:
        return JudgeNote(call, None, call.response_text)


def candidate_page(store: RunStore, candidate_id: int) -> CandidatePage:
    c = store.candidate(candidate_id)
    run = store.get_run(c.run_id)
    parent = store.candidate(c.parent_id) if c.parent_id is not None else None
    result = store.evaluation_for(c.id)
    with _session(store) as s:
        siblings = list(
            s.exec(
                select(Candidate.id)
                .where(col(Candidate.run_id) == c.run_id)
                .order_by(col(Candidate.trajectory), col(Candidate.round), col(Candidate.id))
            ).all()
        )
        children = list(
            s.exec(
                select(Candidate)
                .where(col(Candidate.parent_id) == c.id)
                .order_by(col(Candidate.id))
            ).all()
        )
        calls = list(
            s.exec(
                select(LLMCall).where(col(LLMCall.candidate_id) == c.id).order_by(col(LLMCall.id))
            ).all()
        )
    index = siblings.index(c.id)
    metric_names = sorted(
        {
            name
            for k in (result.profile.kernels if result and result.profile else [])
            for name in k.metrics
        }
    )
    return CandidatePage(
        candidate=c,
        run=run,
        code=highlight_python(c.source),
        result=result,
        plan=JudgePlan.model_validate_json(c.plan_json) if c.plan_json else None,
        parent=parent,
        parent_diff=highlight_diff(
            unified_diff(parent.source, c.source, f"candidate {parent.id}", f"candidate {c.id}")
        )
        if parent is not None
        else None,
        children=children,
        previous_id=siblings[index - 1] if index > 0 else None,
        next_id=siblings[index + 1] if index + 1 < len(siblings) else None,
        checks=check_summaries(result.checks) if result else [],
        metric_names=metric_names,
        judge_notes=[
            _judge_note(call) for call in calls if call.role == "judge" and not call.error
        ],
        calls=[CallView(call, _messages(call)) for call in calls],
        is_best=run.best_candidate_id == c.id,
    )


@dataclass
class DiffPage:
    old: Candidate
    new: Candidate
    rows: list[DiffRow]
    added: int
    removed: int


class DiffQuery(Query):
    """`/candidates/N/diff?against=M` (default: against its parent)."""

    against: int | None = Field(None, ge=1)


def diff_page(store: RunStore, candidate_id: int, q: DiffQuery) -> DiffPage:
    new = store.candidate(candidate_id)
    against = q.against if q.against is not None else new.parent_id
    if against is None:
        raise RecordNotFound(
            f"candidate {candidate_id} has no parent: compare it with another one "
            f"(/candidates/{candidate_id}/diff?against=ID)"
        )
    old = store.candidate(against)
    rows = side_by_side(old.source, new.source)
    return DiffPage(
        old=old,
        new=new,
        rows=rows,
        added=sum(1 for r in rows if r.new_number is not None and r.change != "equal"),
        removed=sum(1 for r in rows if r.old_number is not None and r.change != "equal"),
    )


# --------------------------------------------------------------------------------- library


class LibraryFilter(Query):
    """`/library?op=&gpu=&dtype=&bucket=&all=1`."""

    op: str | None = None
    gpu: str | None = Field(None, description="an architecture (sm_90) or a GPU name")
    dtype: str | None = None
    bucket: str | None = Field(None, description="a served shape bucket, as the page prints it")
    all: bool = Field(False, description="also deactivated entries")


def bucket_label(bucket: dict[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(bucket.items()))


@dataclass
class LibraryRow:
    entry: LibraryEntry
    meta: EntryMeta
    content_id: str
    buckets: list[str]
    run_id: int | None
    """The run it was promoted from, when that run is still in the database."""


@dataclass
class LibraryPage:
    rows: list[LibraryRow]
    total: int
    filter: LibraryFilter
    ops: list[str]
    gpus: list[str]
    dtypes: list[str]
    buckets: list[str]


def _library_row(entry: LibraryEntry, runs: set[int]) -> LibraryRow:
    meta = record_from_row(entry).meta
    run_id = meta.verification.run_id
    return LibraryRow(
        entry=entry,
        meta=meta,
        content_id=content_id(entry),
        buckets=[bucket_label(b) for b in meta.served_buckets],
        run_id=run_id if run_id in runs else None,
    )


def _run_ids(store: RunStore) -> set[int]:
    with _session(store) as s:
        return set(s.exec(select(Run.id)).all())


def library_page(store: RunStore, f: LibraryFilter) -> LibraryPage:
    runs = _run_ids(store)
    every = [_library_row(e, runs) for e in list_entries(store, include_inactive=f.all)]

    def keep(row: LibraryRow) -> bool:
        return (
            (f.op is None or row.entry.op == f.op)
            and (f.gpu is None or f.gpu in (row.entry.arch, row.meta.verification.gpu_name))
            and (f.dtype is None or row.entry.dtype == f.dtype)
            and (f.bucket is None or f.bucket in row.buckets)
        )

    return LibraryPage(
        rows=[r for r in every if keep(r)],
        total=len(every),
        filter=f,
        ops=sorted({r.entry.op for r in every}),
        gpus=sorted(
            {r.entry.arch for r in every} | {r.meta.verification.gpu_name for r in every} - {""}
        ),
        dtypes=sorted({r.entry.dtype for r in every}),
        buckets=sorted({b for r in every for b in r.buckets}),
    )


@dataclass
class EntryPage:
    row: LibraryRow
    code: Markup


def entry_page(store: RunStore, entry_id: int) -> EntryPage:
    entry = get_entry(store, entry_id)
    return EntryPage(_library_row(entry, _run_ids(store)), highlight_python(entry.source))


# ---------------------------------------------------------------------------------- search


class SearchQuery(Query):
    """`/search?q=`: an operator name or text in code."""

    q: str | None = Field(None, max_length=200)


@dataclass
class Segment:
    text: str
    match: bool


@dataclass
class CodeHit:
    """A candidate or library entry whose source contains the text, with matching lines."""

    kind: Literal["candidate", "library"]
    id: int
    op: str
    run_id: int | None
    lines: list[tuple[int, list[Segment]]]


@dataclass
class OpHit:
    op: str
    runs: int
    best: float | None
    entries: int


@dataclass
class SearchPage:
    q: str
    ops: list[OpHit]
    hits: list[CodeHit]
    more: bool


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _segments(line: str, pattern: re.Pattern) -> list[Segment]:
    out, at = [], 0
    for m in pattern.finditer(line):
        if m.start() > at:
            out.append(Segment(line[at : m.start()], False))
        out.append(Segment(m.group(), True))
        at = m.end()
    if at < len(line):
        out.append(Segment(line[at:], False))
    return out


def _matching_lines(source: str, pattern: re.Pattern) -> list[tuple[int, list[Segment]]]:
    found = []
    for number, line in enumerate(source.splitlines(), 1):
        if pattern.search(line):
            found.append((number, _segments(line, pattern)))
            if len(found) == MATCHING_LINES:
                break
    return found


def search_page(store: RunStore, q: SearchQuery) -> SearchPage:
    text = (q.q or "").strip()
    if not text:
        return SearchPage("", [], [], False)
    like = _like(text)
    pattern = re.compile(re.escape(text), re.IGNORECASE)
    with _session(store) as s:
        op_runs = s.exec(
            select(Run.op, func.count(), func.max(Run.best_speedup_vs_eager))
            .where(col(Run.op).ilike(like, escape="\\"))
            .group_by(Run.op)
        ).all()
        op_entries = dict(
            s.exec(
                select(LibraryEntry.op, func.count())
                .where(col(LibraryEntry.op).ilike(like, escape="\\"), col(LibraryEntry.active))
                .group_by(LibraryEntry.op)
            ).all()
        )
        candidates = s.exec(
            select(Candidate, Run.op)
            .join(Run, col(Run.id) == col(Candidate.run_id))
            .where(col(Candidate.source).ilike(like, escape="\\"))
            .order_by(col(Candidate.id).desc())
            .limit(SEARCH_LIMIT + 1)
        ).all()
        entries = s.exec(
            select(LibraryEntry)
            .where(col(LibraryEntry.source).ilike(like, escape="\\"))
            .order_by(col(LibraryEntry.id).desc())
            .limit(SEARCH_LIMIT + 1)
        ).all()
    ops = {op: OpHit(op, n, best, op_entries.get(op, 0)) for op, n, best in op_runs}
    for op, n in op_entries.items():
        ops.setdefault(op, OpHit(op, 0, None, n))
    found = [
        CodeHit("candidate", c.id, op, c.run_id, _matching_lines(redact(c.source), pattern))
        for c, op in candidates[:SEARCH_LIMIT]
    ] + [
        CodeHit("library", e.id, e.op, None, _matching_lines(redact(e.source), pattern))
        for e in entries[:SEARCH_LIMIT]
    ]
    hits = [hit for hit in found if hit.lines]  # a match inside a secret is no match
    return SearchPage(
        q=text,
        ops=[ops[k] for k in sorted(ops)],
        hits=hits,
        more=len(candidates) > SEARCH_LIMIT or len(entries) > SEARCH_LIMIT,
    )


# ---- batches -----------------------------------------------------------------------------------


@dataclass
class BatchRow:
    batch: Batch
    totals: BatchTotals


@dataclass
class BatchesPage:
    rows: list[BatchRow]


@dataclass
class BatchPage:
    row: BatchRow
    items: list[tuple[BatchItem, Run | None]]


def batches_page(store: RunStore) -> BatchesPage:
    batches = BatchStore(store)
    listed = batches.list(LIST_LIMIT)
    return BatchesPage([BatchRow(b, totals(batches.as_shown(batches.items(b.id)))) for b in listed])


def batch_page(store: RunStore, batch_id: int) -> BatchPage:
    batches = BatchStore(store)
    batch = batches.get(batch_id)
    items = batches.with_runs(batch_id)
    return BatchPage(BatchRow(batch, totals([i for i, _ in items])), items)
