"""A report's files: `report.html` (one self-contained page: inline CSS and SVG, no script, no
link to anything outside it), `report.md` (tables with the same numbers; plots linked as SVG
files), `report.json` (the data) and `plots/*.svg`.

Everything is rendered in memory before the first byte is written; each file is written to a
temporary file in the output folder and renamed into place, so a reader never sees a file half
written, and a failure leaves no temporary file behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from markupsafe import Markup

from forge.report.data import VERDICT_ORDER, ReportData, ReportError, Summary, WallSplit
from forge.report.plots import PLOTS
from forge.web import environment, stylesheet

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
PLOTS_DIR = "plots"
HTML, MARKDOWN, JSON = "report.html", "report.md", "report.json"


DEFINITIONS = (
    (
        "best kernel",
        "The run's correct candidate, not flagged suspicious, with the highest speedup vs eager; "
        "both speedups are that kernel's, geometric means over the problem's target input sets.",
    ),
    (
        "best verdict",
        "The most advanced verdict any candidate reached (latest evaluation per candidate), in "
        f"this order: {', '.join(VERDICT_ORDER)}; 'suspicious' is a correct verdict the "
        "evaluator flagged, not counted as correct.",
    ),
    (
        "speed of light",
        "The best kernel's roofline fraction (roofline floor over its median device time) at "
        "the target sets; '-' where the problem has no FLOP/byte counts or nothing was timed.",
    ),
    (
        "fast_p",
        "Items whose best kernel is correct and more than p times faster than the baseline, out "
        "of all items; a correct kernel without timings (a CPU run) is not fast.",
    ),
    (
        "geomean",
        "Geometric mean of the best kernels' speedups over the correct items that were timed.",
    ),
    (
        "rounds, tokens, dollars, model time",
        "Rounds with an evaluated candidate; tokens, dollars and latency summed over every LLM "
        "call of the run, failed calls included.",
    ),
    (
        "GPU-minutes, eval min",
        "The evaluator's wall time (static checks, sandbox start, compile, correctness, timing, "
        "profiling) summed over every evaluation of a run, re-evaluations included: GPU-minutes "
        "for runs on a GPU, CPU evaluation minutes for runs on the CPU.",
    ),
    (
        "wall-time split",
        "From the first run's start to the last run's end (a run still going: its last recorded "
        "call or evaluation), the time during which, by priority, an evaluation ran, else one "
        "waited for a worker (the local pool; a queue or Ray: submission to answer less the "
        "evaluation's own time), else an LLM call was in flight, else none of these (the "
        "controller's own work). Only the end of a call or evaluation is stored: its start is "
        "derived as the end less its latency or its evaluation time (its wait just before that). "
        "The summed column adds up each category over all runs; it overlaps when work runs in "
        "parallel.",
    ),
)
"""What each figure counts, printed at the end of both pages."""


@dataclass
class PlotView:
    """A drawn plot as the templates see it."""

    name: str
    caption: str
    svg: Markup
    file: str


@dataclass
class ReportPaths:
    """The files `write_report` wrote."""

    html: Path
    markdown: Path
    json: Path
    plots: list[Path] = field(default_factory=list)


@dataclass
class WallRow:
    """One line of the wall-time split table."""

    label: str
    seconds: float
    share: float | None
    summed: float | None


def wall_rows(wall: WallSplit, summary: Summary) -> list[WallRow]:
    """The split by priority, with each category's sum over the runs beside it."""
    evaluated = summary.gpu_seconds + summary.other_eval_seconds
    rows = [
        ("evaluation running", wall.evaluating_seconds, evaluated),
        ("waiting for a worker (queue, pool)", wall.waiting_seconds, summary.wait_seconds),
        ("LLM call in flight", wall.model_seconds, summary.llm_seconds),
        ("controller / other", wall.other_seconds, None),
    ]
    table = [WallRow(label, s, wall.share(s), summed) for label, s, summed in rows]
    return table + [WallRow("wall time", wall.wall_seconds, wall.share(wall.wall_seconds), None)]


def draw_plots(data: ReportData) -> list[PlotView]:
    """The plots that have something to draw."""
    views = []
    for plot in PLOTS:
        svg = plot.draw(data)
        if svg is not None:
            # pygal escapes every text it writes (op names come from the database)
            views.append(
                PlotView(plot.name, plot.caption, Markup(svg), f"{PLOTS_DIR}/{plot.name}.svg")
            )
    return views


def context(data: ReportData, plots: list[PlotView]) -> dict[str, object]:
    """What the report templates are rendered with."""
    drawn = {view.name for view in plots}
    return {
        "data": data,
        "summary": data.summary,
        "items": data.items,
        "plots": plots,
        "plots_missing": [p for p in PLOTS if p.name not in drawn],
        "definitions": DEFINITIONS,
        "wall": data.wall,
        "wall_rows": wall_rows(data.wall, data.summary),
    }


def render_files(data: ReportData) -> dict[str, str]:
    """Relative path -> text of every file of the report."""
    env = environment(TEMPLATES_DIR)
    plots = draw_plots(data)
    ctx = context(data, plots)
    files = {view.file: str(view.svg) for view in plots}
    files[JSON] = data.model_dump_json(indent=2) + "\n"
    files[MARKDOWN] = env.get_template("report.md.j2").render(**ctx)
    files[HTML] = env.get_template("report.html.j2").render(**ctx, css=stylesheet())
    return files


def write_report(data: ReportData, out_dir: str | Path) -> ReportPaths:
    """Write the report's files into `out_dir` (created if needed; files of an earlier report
    there are replaced, its plots that this report does not draw are removed). Raises
    `ReportError` when the folder cannot be written."""
    files = render_files(data)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ReportError(f"{out} exists and is not a folder: write the report into a folder")
    created = not out.exists()
    try:
        (out / PLOTS_DIR).mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".forge-report-", dir=out))
        try:
            _write(files, stage, out)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    except OSError as exc:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise ReportError(f"cannot write the report in {out}: {exc.strerror or exc}") from exc
    plot_files = [f"{PLOTS_DIR}/{plot.name}.svg" for plot in PLOTS]
    for rel in plot_files:
        if rel not in files:  # an earlier report's plot that this one does not draw
            (out / rel).unlink(missing_ok=True)
    return ReportPaths(
        html=out / HTML,
        markdown=out / MARKDOWN,
        json=out / JSON,
        plots=[out / rel for rel in plot_files if rel in files],
    )


def _write(files: dict[str, str], stage: Path, out: Path) -> None:
    """Write every file in `stage`, then rename each into `out`: the plots and data first, the
    pages that refer to them last."""
    for rel, text in files.items():
        path = stage / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    pages = (JSON, MARKDOWN, HTML)
    for rel in [r for r in files if r not in pages] + list(pages):
        os.replace(stage / rel, out / rel)
