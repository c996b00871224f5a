"""`forge runs`, `forge show`, `forge diff`: read what the optimize loop recorded.

References: `run:3` or `r3` is run 3, `cand:12`, `candidate:12` or `c12` is candidate 12. A plain
number is a run for `forge show` and a candidate for `forge diff`.
"""

from __future__ import annotations

import difflib
import json
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
"""Output that is not a terminal (a pipe, a log file) is laid out this wide instead of 80."""
console = Console(highlight=False, width=None if sys.stdout.isatty() else PIPE_WIDTH)

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


def _store(db: str | None):  # noqa: ANN202 (RunStore, imported lazily)
    from forge.db.store import RunStore

    return RunStore(db)


def _x(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "-"


def runs(
    limit: Annotated[int, typer.Option(min=1, help="newest runs to list")] = 20,
    db: DbOption = None,
) -> None:
    """List recorded optimize runs, newest first."""
    table = Table(
        "run",
        "op",
        "status",
        "backend",
        "rounds",
        "best",
        "vs eager",
        "cost",
        "started",
        "models",
        box=box.SIMPLE_HEAD,
    )
    for column in table.columns[:-1]:
        column.no_wrap = True
    table.columns[-1].overflow = "fold"
    table.columns[-1].min_width = 16
    for run in _store(db).list_runs(limit):
        models = (
            run.coder_model
            if run.coder_model == run.judge_model
            else f"{run.coder_model} / {run.judge_model}"
        )
        table.add_row(
            str(run.id),
            run.op,
            run.status,
            f"{run.backend}/{run.device}",
            str(run.rounds_done),
            f"cand:{run.best_candidate_id}" if run.best_candidate_id else "-",
            _x(run.best_speedup_vs_eager),
            f"${run.cost_usd:.4f}",
            f"{run.started_at:%m-%d %H:%M}",
            escape(models),
        )
    console.print(table)


def show(
    ref: Annotated[str, typer.Argument(help="run:ID, cand:ID, or a plain ID (a run)")],
    db: DbOption = None,
) -> None:
    """Show a run (its candidates and totals) or a candidate (code, verdict, timings, profile, Judge notes)."""
    from forge.db.store import RecordNotFound

    try:
        kind, ident = parse_reference(ref, "run")
        store = _store(db)
        (show_run if kind == "run" else show_candidate)(store, ident)
    except (ValueError, RecordNotFound) as exc:
        fail(str(exc))


def show_run(store, run_id: int) -> None:  # noqa: ANN001 (RunStore)
    run = store.get_run(run_id)
    config = json.loads(run.config_json or "{}")
    console.print(
        f"[bold]run {run.id}[/]: {run.op}  [bold]{run.status}[/]  {run.backend} on {run.gpu_name or run.device}"
    )
    console.print(
        escape(
            f"coder {run.coder_model}, judge {run.judge_model}; started {run.started_at:%Y-%m-%d %H:%M:%S}"
        )
    )
    limits = {
        k: config.get(k) for k in ("rounds", "width", "budget_usd", "time_limit_s", "patience")
    }
    console.print("settings: " + ", ".join(f"{k}={v}" for k, v in limits.items()))
    console.print(
        f"rounds done {run.rounds_done}; {run.prompt_tokens} prompt + {run.completion_tokens} completion tokens; ${run.cost_usd:.4f}"
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
            f"{e.median_ms:.4f}" if e and e.median_ms else "-",
        )
    console.print(table)
    calls = store.llm_calls(run_id)
    unusable = sum(1 for c in calls if c.error)
    console.print(
        f"{len(calls)} LLM calls ({unusable} failed or unusable); * marks the best candidate"
    )


def show_candidate(store, candidate_id: int) -> None:  # noqa: ANN001 (RunStore)
    from forge.cli.render import render_result

    c = store.candidate(candidate_id)
    console.print(
        f"[bold]candidate {c.id}[/]: run {c.run_id}, trajectory {c.trajectory}, round {c.round}, {c.kind}, "
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
    return f"diagnosis: {plan.diagnosis}\nbottleneck: {plan.bottleneck or '-'}\nplan: {plan.plan}\nexpected gain: {plan.expected_gain or '-'}"


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


def register(app: typer.Typer) -> None:
    app.command("runs")(runs)
    app.command("show")(show)
    app.command("diff")(diff)
