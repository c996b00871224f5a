"""`forge runs`, `forge show`, `forge diff`: read what the optimize loop recorded (the database
is opened read-only); `forge delete`: remove a run.

References: `run:3` or `r3` is run 3, `cand:12`, `candidate:12` or `c12` is candidate 12. A plain
number is a run for `forge show` and a candidate for `forge diff`.

`--json` prints machine-readable output with stable keys (`run_json`, `candidate_json`).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import sys
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.syntax import Syntax
from rich.table import Table

from forge.cli.errors import fail

PIPE_WIDTH = 160
"""Output that is not a terminal (a pipe, a log file) is laid out this wide (unless $COLUMNS
says otherwise)."""
console = Console(
    highlight=False,
    width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else PIPE_WIDTH,
)
WIDE = 110
"""From this many columns on, `forge runs` shows every column; below, a compact table."""

REFERENCE = re.compile(r"^(?:(?P<kind>run|r|candidate|cand|c):?)?(?P<id>\d+)$", re.IGNORECASE)
DbOption = Annotated[
    str | None,
    typer.Option(help="SQLAlchemy URL (default $FORGE_DB_URL, else $FORGE_HOME/forge.db)"),
]


def parse_reference(text: str, default: str) -> tuple[str, int]:
    """`run:3` -> ("run", 3); `cand:12` -> ("candidate", 12); `7` -> (default, 7)."""
    match = REFERENCE.match(text.strip())
    if match is None:
        raise ValueError(
            f"'{text}' is not a run or candidate reference: use run:ID, cand:ID or a plain ID"
        )
    kind = (match["kind"] or default).lower()
    return ("run" if kind in ("run", "r") else "candidate"), int(match["id"])


def _store(db: str | None, *, read_only: bool = True):  # noqa: ANN202 (RunStore, lazily)
    from forge.db.store import RunStore

    return RunStore(db, read_only=read_only)


def _x(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "-"


def _when(value) -> str | None:  # noqa: ANN001 (datetime | None)
    from forge.db.store import ensure_datetime

    value = ensure_datetime(value)
    return value.isoformat() if value is not None else None


def run_json(run) -> dict:  # noqa: ANN001 (Run)
    """A run as `--json` prints it (stable keys)."""
    return {
        "id": run.id,
        "op": run.op,
        "status": run.status,
        "backend": run.backend,
        "device": run.device,
        "gpu_name": run.gpu_name,
        "coder_model": run.coder_model,
        "judge_model": run.judge_model,
        "rounds_done": run.rounds_done,
        "best_candidate_id": run.best_candidate_id,
        "best_speedup_vs_eager": run.best_speedup_vs_eager,
        "best_speedup_vs_compile": run.best_speedup_vs_compile,
        "prompt_tokens": run.prompt_tokens,
        "completion_tokens": run.completion_tokens,
        "cost_usd": run.cost_usd,
        "started_at": _when(run.started_at),
        "finished_at": _when(run.finished_at),
        "error": run.error,
    }


def _print_json(value: object) -> None:
    typer.echo(json.dumps(value, indent=2, allow_nan=False, default=str))


def _models(run) -> str:  # noqa: ANN001 (Run)
    if run.coder_model == run.judge_model:
        return run.coder_model
    return f"{run.coder_model} / {run.judge_model}"


def runs_table(rows: list, width: int) -> Table:
    """Every column from `WIDE` columns on; below, a compact table that fits 80 columns: the
    backend and device go, the best candidate and its speedup share a column, the date is
    shorter, and the models column (last) wraps."""
    wide = width >= WIDE
    if wide:
        headers = ["run", "op", "status", "backend", "rounds", "best", "vs eager", "cost"]
        headers += ["started", "models"]
    else:
        headers = ["run", "op", "status", "rnd", "best", "cost", "started", "models"]
    table = Table(
        *headers,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 1, 0, 0) if not wide else (0, 1),
    )
    for column in table.columns[:-1]:
        column.no_wrap = True
    table.columns[-1].overflow = "fold"
    table.columns[-1].min_width = 12
    table.columns[-1].ratio = 1
    for run in rows:
        best = f"c{run.best_candidate_id}" if run.best_candidate_id else "-"
        cost = f"${run.cost_usd:.4f}"
        if wide:
            cells = [str(run.id), run.op, run.status, f"{run.backend}/{run.device}"]
            cells += [str(run.rounds_done), best.replace("c", "cand:", 1)]
            cells += [_x(run.best_speedup_vs_eager), cost, f"{run.started_at:%m-%d %H:%M}"]
        else:
            if run.best_candidate_id:
                best += f" {_x(run.best_speedup_vs_eager)}"
            cells = [str(run.id), run.op, run.status, str(run.rounds_done), best, cost]
            cells += [f"{run.started_at:%m-%d}"]
        table.add_row(*cells, escape(_models(run)))
    return table


def runs(
    limit: Annotated[int, typer.Option(min=1, help="newest runs to list")] = 20,
    json_: Annotated[bool, typer.Option("--json", help="print JSON (stable keys)")] = False,
    db: DbOption = None,
) -> None:
    """List recorded optimize runs, newest first."""
    rows = _store(db).list_runs(limit)
    if json_:
        _print_json([run_json(run) for run in rows])
        return
    if not rows:
        console.print("no runs yet: `forge optimize OP` starts one")
        return
    console.print(runs_table(rows, console.width))
    if console.width < WIDE:
        console.print(
            "best: candidate cN and its speedup vs eager (`forge show cand:N`); "
            f"{WIDE}+ columns show backend and time too"
        )


def show(
    ref: Annotated[str, typer.Argument(help="run:ID, cand:ID, or a plain ID (a run)")],
    json_: Annotated[bool, typer.Option("--json", help="print JSON (stable keys)")] = False,
    db: DbOption = None,
) -> None:
    """Show a run (its candidates and totals) or a candidate (code, verdict, timings, profile,
    Judge notes)."""
    from forge.db.store import RecordNotFound

    try:
        kind, ident = parse_reference(ref, "run")
        store = _store(db)
        if json_:
            _print_json((run_detail_json if kind == "run" else candidate_json)(store, ident))
            return
        (show_run if kind == "run" else show_candidate)(store, ident)
    except (ValueError, RecordNotFound) as exc:
        fail(str(exc))


def run_detail_json(store, run_id: int) -> dict:  # noqa: ANN001 (RunStore)
    """`forge show RUN --json`: the run, its settings, its candidates, its LLM call counts."""
    run = store.get_run(run_id)
    calls = store.llm_calls(run_id)
    candidates = []
    for step in store.history(run_id):
        c, e = step.candidate, step.evaluation
        candidates.append(
            {
                "id": c.id,
                "trajectory": c.trajectory,
                "round": c.round,
                "kind": c.kind,
                "parent_id": c.parent_id,
                "status": e.status if e else None,
                "suspicious": e.suspicious if e else None,
                "speedup_vs_eager": e.speedup_vs_eager if e else None,
                "speedup_vs_compile": e.speedup_vs_compile if e else None,
                "precision": _precision_label(step.result),
                "median_ms": e.median_ms if e else None,
            }
        )
    return {
        "run": run_json(run),
        "config": json.loads(run.config_json or "{}"),
        "candidates": candidates,
        "llm_calls": {"count": len(calls), "failed": sum(1 for c in calls if c.error)},
    }


def candidate_json(store, candidate_id: int) -> dict:  # noqa: ANN001 (RunStore)
    """`forge show cand:N --json`: the candidate, its source, plan, evaluation, Judge notes."""
    c = store.candidate(candidate_id)
    result = store.evaluation_for(c.id)
    notes = [
        {"round": call.round, "text": call.response_text}
        for call in store.llm_calls(c.run_id, role="judge")
        if call.candidate_id == c.id and not call.error
    ]
    return {
        "candidate": {
            "id": c.id,
            "run_id": c.run_id,
            "trajectory": c.trajectory,
            "round": c.round,
            "kind": c.kind,
            "backend": c.backend,
            "parent_id": c.parent_id,
            "created_at": _when(c.created_at),
            "plan": json.loads(c.plan_json) if c.plan_json else None,
            "source": c.source,
        },
        "evaluation": json.loads(result.model_dump_json()) if result is not None else None,
        "judge_notes": notes,
    }


def show_run(store, run_id: int) -> None:  # noqa: ANN001 (RunStore)
    run = store.get_run(run_id)
    config = json.loads(run.config_json or "{}")
    console.print(
        f"[bold]run {run.id}[/]: {run.op}  [bold]{run.status}[/]  {run.backend} on "
        f"{run.gpu_name or run.device}"
    )
    console.print(
        escape(
            f"coder {run.coder_model}, judge {run.judge_model}; "
            f"started {run.started_at:%Y-%m-%d %H:%M:%S}"
        )
    )
    limits = {
        k: config.get(k) for k in ("rounds", "width", "budget_usd", "time_limit_s", "patience")
    }
    limits["precision"] = (config.get("evaluation") or {}).get("precision") or "strict"
    console.print("settings: " + ", ".join(f"{k}={v}" for k, v in limits.items()))
    console.print(
        f"rounds done {run.rounds_done}; {run.prompt_tokens} prompt + "
        f"{run.completion_tokens} completion tokens; ${run.cost_usd:.4f}"
    )
    if run.error:
        console.print(f"[red]error:[/] {escape(run.error)}")
    steps = store.history(run_id)
    first_set = next(
        (s.result.timings[0].input_set for s in steps if s.result and s.result.timings), None
    )
    table = Table(
        "cand",
        "traj",
        "round",
        "kind",
        "parent",
        "status",
        "vs eager",
        "vs compile",
        "precision",
        f"median ms ({first_set})" if first_set else "median ms",
        title="candidates",
    )
    for step in steps:
        c, e = step.candidate, step.evaluation
        best = " *" if c.id == run.best_candidate_id else ""
        table.add_row(
            f"{c.id}{best}",
            str(c.trajectory),
            str(c.round),
            c.kind,
            str(c.parent_id or "-"),
            e.status if e else "not evaluated",
            _x(e.speedup_vs_eager if e else None),
            _x(e.speedup_vs_compile if e else None),
            escape(_precision_label(step.result) or "-"),
            f"{e.median_ms:.4f}" if e and e.median_ms else "-",
        )
    console.print(table)
    calls = store.llm_calls(run_id)
    unusable = sum(1 for c in calls if c.error)
    console.print(
        f"{len(calls)} LLM calls ({unusable} failed or unusable); * marks the best candidate"
    )


def _precision_label(result) -> str | None:  # noqa: ANN001 (EvalResult | None)
    """`tf32 (detected: tf32)`: the policy the speedups were measured under, and what the
    candidate's compiled code was seen to use."""
    return result.precision.label() if result is not None and result.precision else None


def show_candidate(store, candidate_id: int) -> None:  # noqa: ANN001 (RunStore)
    from forge.cli.render import render_result

    c = store.candidate(candidate_id)
    console.print(
        f"[bold]candidate {c.id}[/]: run {c.run_id}, trajectory {c.trajectory}, "
        f"round {c.round}, {c.kind}, "
        f"{c.backend}" + (f", from candidate {c.parent_id}" if c.parent_id else "")
    )
    if c.plan_json:
        plan = json.loads(c.plan_json)
        console.print(f"[bold]implements the Judge's plan:[/] {escape(plan.get('plan', ''))}")
    console.print(Syntax(c.source, "python", line_numbers=True, word_wrap=True))
    result = store.evaluation_for(c.id)
    if result is None:
        console.print("[yellow]not evaluated yet[/] (`forge optimize --resume` evaluates it)")
    else:
        render_result(console, result)
    notes = [
        call
        for call in store.llm_calls(c.run_id, role="judge")
        if call.candidate_id == c.id and not call.error
    ]
    for call in notes:
        console.print(f"[bold]Judge's notes (round {call.round}):[/]")
        console.print(escape(_judge_note(call.response_text)))


def _judge_note(text: str) -> str:
    from forge.agents.errors import InvalidPlan
    from forge.agents.judge import parse_plan

    try:
        plan = parse_plan(text)
    except InvalidPlan:
        return text
    return (
        f"diagnosis: {plan.diagnosis}\nbottleneck: {plan.bottleneck or '-'}\n"
        f"plan: {plan.plan}\nexpected gain: {plan.expected_gain or '-'}"
    )


def diff(
    a: Annotated[str, typer.Argument(help="candidate (cand:ID or ID)")],
    b: Annotated[str, typer.Argument(help="candidate (cand:ID or ID)")],
    db: DbOption = None,
) -> None:
    """Unified diff of two candidates' sources."""
    from forge.db.store import RecordNotFound

    try:
        refs = [parse_reference(r, "candidate") for r in (a, b)]
        if any(kind != "candidate" for kind, _ in refs):
            raise ValueError("forge diff compares candidates: use cand:ID")
        store = _store(db)
        first, second = (store.candidate(ident) for _, ident in refs)
    except (ValueError, RecordNotFound) as exc:
        fail(str(exc))
    lines = difflib.unified_diff(
        first.source.splitlines(keepends=True),
        second.source.splitlines(keepends=True),
        fromfile=f"cand:{first.id} (run {first.run_id}, round {first.round})",
        tofile=f"cand:{second.id} (run {second.run_id}, round {second.round})",
    )
    text = "".join(lines)
    if console.is_terminal:
        console.print(Syntax(text, "diff"))
    else:
        typer.echo(text, nl=False)


def delete(
    ref: Annotated[str, typer.Argument(help="run to delete (run:ID or a plain ID)")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="delete without asking")] = False,
    db: DbOption = None,
) -> None:
    """Delete a run with its candidates, evaluations and LLM calls (cannot be undone; library
    entries promoted from it stay)."""
    from forge.db.store import RecordNotFound

    try:
        kind, ident = parse_reference(ref, "run")
        if kind != "run":
            raise ValueError("forge delete removes runs: use run:ID or a plain ID")
        store = _store(db, read_only=False)
        run = store.get_run(ident)
        what = f"run {run.id} ({run.op}, {run.status}, {len(store.candidates(run.id))} candidates)"
        if not yes:
            if not sys.stdin.isatty():
                fail(f"deleting {what} cannot be undone: add --yes to confirm")
            if not typer.confirm(f"delete {what}? This cannot be undone", default=False):
                fail("nothing deleted", code=1)
        counts = store.delete_run(ident)
    except (ValueError, RecordNotFound) as exc:
        fail(str(exc))
    console.print(
        f"deleted {what}: {counts['evaluations']} evaluations, {counts['llm_calls']} LLM calls"
    )


def register(app: typer.Typer) -> None:
    app.command("runs")(runs)
    app.command("show")(show)
    app.command("diff")(diff)
    app.command("delete")(delete)
