"""`forge report B` (a batch's runs) or `forge report --runs 1,2,5`: a self-contained HTML page,
Markdown, JSON and SVG plots about those runs (the database is only read). See docs/report.md."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from forge.cli.browse import DbOption
from forge.cli.errors import fail

console = Console(highlight=False, soft_wrap=True)
RUN_LIST = re.compile(r"^\d+(-\d+)?$")


def parse_run_ids(text: str) -> list[int]:
    """`1,2,5` or `3-6,9` -> run ids in that order; ValueError (one line) otherwise."""
    ids: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not RUN_LIST.match(part):
            raise ValueError(
                f"'{part}' in --runs is not a run id or range: use ids and ranges like 1,2,5 or 3-6"
            )
        first, _, last = part.partition("-")
        low, high = int(first), int(last or first)
        if high < low:
            raise ValueError(f"'{part}' in --runs is an empty range: write it low-high")
        ids.extend(range(low, high + 1))
    return ids


def report(
    batch: Annotated[
        int | None,
        typer.Argument(help="a batch id (`forge batches` lists them)", show_default=False),
    ] = None,
    runs: Annotated[
        str | None, typer.Option("--runs", help="run ids and ranges to report on: 1,2,5 or 3-6")
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", help="folder for report.html, report.md, report.json, plots/")
    ] = Path("forge-report"),
    title: Annotated[str | None, typer.Option(help="the report's title")] = None,
    db: DbOption = None,
) -> None:
    """Write a report on runs: per run status, best speedups, speed of light, rounds, tokens,
    dollars, GPU-minutes; totals, fast_p shares, plots. The HTML page needs no network."""
    from forge.db.store import RunStore
    from forge.report import ReportError, build_report, write_report

    if (batch is None) == (runs is None):
        fail(
            "say what to report on: a batch id (`forge report 3`, `forge batches` lists them) "
            "or --runs 1,2,5 (`forge runs` lists them), not both"
        )
    store = RunStore(db, read_only=True)
    meta: dict = {}
    if batch is not None:
        run_ids, title, meta = _batch_runs(store, batch, title)
    else:
        try:
            run_ids = parse_run_ids(runs)
        except ValueError as exc:
            fail(str(exc))
    try:
        data = build_report(store, run_ids, title=title, meta=meta)
        paths = write_report(data, out)
    except ReportError as exc:
        fail(str(exc))
    s = data.summary
    fast_1 = next(f for f in s.fast if f.p == 1.0)
    console.print(
        f"report on {s.items} run{'s' if s.items != 1 else ''}: {s.correct} correct, "
        f"fast_1 {fast_1.vs_eager} vs eager and {fast_1.vs_compile} vs torch.compile, "
        f"${s.cost_usd:.4f}, {s.gpu_minutes:.1f} GPU-minutes"
    )
    console.print(f"wrote {paths.html} and {paths.markdown} ({len(paths.plots)} plots)")


def _batch_runs(store, batch_id: int, title: str | None) -> tuple[list[int], str, dict]:
    from forge.db.batches import BatchStore
    from forge.db.store import RecordNotFound

    batches = BatchStore(store)
    try:
        batch = batches.get(batch_id)
    except RecordNotFound as exc:
        fail(str(exc))
    run_ids = [item.run_id for item in batches.items(batch_id) if item.run_id is not None]
    if not run_ids:
        fail(f"batch {batch_id} has no item that started a run yet: nothing to report")
    meta = {"batch": batch_id, "suite": batch.suite, "status": batch.status}
    return run_ids, title or f"batch {batch_id}: {batch.name}", meta


def register(app: typer.Typer) -> None:
    app.command("report")(report)
