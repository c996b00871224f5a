"""`forge report`: the numbers of a report equal the database's (computed here independently, with
SQL and `statistics`), the HTML page is self-contained, every template renders with
StrictUndefined, bad input gives one line and writes nothing, files are never half-written.

The database is seeded through the store API with GPU-like verdicts (timed, roofline known or
not, suspicious, re-evaluated) so that every column has something to show; the report of a real
`forge optimize` run is checked in test_optimize_cli.py.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import statistics
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path
from xml.etree import ElementTree

import jinja2
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from forge.cli.main import app
from forge.db.models import Evaluation, LLMCall, Run
from forge.db.store import RunStore
from forge.evaluator.problem import resolve_problem
from forge.evaluator.result import (
    Environment,
    EvalResult,
    PhaseSeconds,
    SetTiming,
    Status,
    TimingStats,
)
from forge.report import ReportError, build_report, write_report
from forge.report.data import split_wall
from forge.report.plots import PLOTS
from forge.report.render import TEMPLATES_DIR, context, draw_plots, render_files
from forge.web import TEMPLATES_DIR as WEB_TEMPLATES
from forge.web import environment, stylesheet

KERNEL = "import torch\nclass ModelNew(torch.nn.Module):\n    pass\n"
STATS = TimingStats.from_samples([0.1, 0.11, 0.12], [0.01, 0.01, 0.01])


def verdict(
    status: Status,
    *,
    eager: float | None = None,
    compile: float | None = None,
    sets: tuple[tuple[str, bool, float | None], ...] = (),
    total_s: float = 1.0,
    suspicious: bool = False,
    device: str = "cuda",
) -> EvalResult:
    """An EvalResult with timings on `sets` (name, target, roofline fraction)."""
    return EvalResult(
        status=status,
        problem="p",
        backend="triton",
        environment=Environment(device=device, gpu_name="NVIDIA H200" if device == "cuda" else ""),
        timings=[
            SetTiming(
                input_set=name,
                target=target,
                candidate=STATS,
                speedup_vs_eager=eager,
                speedup_vs_compile=compile,
                floor_ms=None if roofline is None else roofline * 0.11,
                roofline_fraction=roofline,
            )
            for name, target, roofline in sets
        ],
        timing_meaningful=bool(sets),
        speedup_vs_eager=eager,
        speedup_vs_compile=compile,
        target_sets=[name for name, target, _ in sets if target],
        suspicious=suspicious,
        phase_seconds=PhaseSeconds(total=total_s),
    )


def add_run(store, op, device, rounds, calls, status="finished", error="") -> int:  # noqa: ANN001
    """A run whose round r evaluates `rounds[r]` (a list of verdicts: re-evaluations)."""
    run = store.create_run(
        resolve_problem(op), {}, "openai/gpt-5", "openai/gpt-5", "triton", device
    )
    for number, evaluations in enumerate(rounds):
        cand = store.add_candidate(run, 0, number, KERNEL + f"# {number}\n", "triton", "optimize")
        for result in evaluations:
            store.add_evaluation(cand, result)
    for role, prompt, completion, cost, latency, failed in calls:
        store.record_llm_call(
            run, role, "openai/gpt-5", [], "answer", prompt, completion, cost, latency,
            error="unusable answer" if failed else "",
        )  # fmt: skip
    if status != "running":
        store.finish_run(run, status, error)
    return run


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("home")
    url = f"sqlite:///{home / 'forge.db'}"
    store = RunStore(url)
    roofline_sets = (("large", True, 0.5), ("huge", True, 0.8), ("tiny", False, 0.1))
    runs = {
        "tuned": add_run(
            store,
            "softmax",
            "cuda",
            [
                [verdict(Status.compile_error, total_s=2.0)],
                [verdict(Status.correct, eager=1.5, compile=0.9, sets=roofline_sets, total_s=10)],
                [verdict(Status.correct, eager=12.0, compile=9.0, total_s=11, suspicious=True)],
                [
                    verdict(Status.correct, eager=2.2, compile=1.2, sets=roofline_sets, total_s=9),
                    verdict(Status.correct, eager=2.4, compile=1.3, sets=roofline_sets, total_s=12),
                ],
            ],
            [
                ("coder", 1000, 300, 0.010, 4.0, False),
                ("coder", 1100, 20, 0.002, 1.0, True),
                ("judge", 1500, 200, 0.006, 3.0, False),
            ],
        ),
        "slow": add_run(
            store,
            "gelu",
            "cuda",
            [
                [verdict(Status.incorrect, total_s=3.0)],
                [verdict(Status.correct, eager=0.8, compile=0.5, sets=(("large", True, None),))],
            ],
            [("coder", 900, 250, 0.008, 2.5, False)],
            status="interrupted",
        ),
        "crashed": add_run(
            store,
            "cross_entropy",
            "cuda",
            [[verdict(Status.runtime_error, total_s=4.5)]],
            [("coder", 800, 100, 0.004, 1.5, False)],
            status="failed",
            error="sandbox | crashed",
        ),
        "cpu": add_run(
            store,
            "softmax",
            "cpu",
            [[verdict(Status.correct, device="cpu", total_s=30.0)]],
            [("coder", 700, 90, 0.003, 1.0, False)],
        ),
        "flagged": add_run(
            store,
            "gelu",
            "cuda",
            [[verdict(Status.correct, eager=40.0, compile=30.0, suspicious=True, total_s=6.0)]],
            [("coder", 600, 80, 0.002, 0.5, False)],
        ),
        "fresh": add_run(store, "gelu", "cuda", [], [], status="running"),
    }
    store.engine.dispose()
    return {"home": home, "url": url, "db": home / "forge.db", "runs": runs}


def sql(seeded: dict, query: str, *args: object) -> tuple:
    with sqlite3.connect(seeded["db"]) as conn:
        return conn.execute(query, args).fetchone()


def cli(*args: str, home: Path):  # noqa: ANN201 (click Result)
    return CliRunner(env={"FORGE_HOME": str(home), "FORGE_DB_URL": None}).invoke(app, list(args))


def one_line_error(result, *needles: str) -> str:  # noqa: ANN001 (click Result)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_numbers_equal_the_database(seeded):
    runs = seeded["runs"]
    ids = list(runs.values())
    data = build_report(RunStore(seeded["url"], read_only=True).engine, ids, meta={"batch": 7})
    assert [i.run_id for i in data.items] == ids and data.meta == {"batch": "7"}
    items = {name: data.items[ids.index(run_id)] for name, run_id in runs.items()}
    for name, item in items.items():
        run_id = runs[name]
        prompt, completion, cost, latency = sql(
            seeded,
            "SELECT TOTAL(prompt_tokens), TOTAL(completion_tokens), TOTAL(cost_usd), "
            "TOTAL(latency_s) FROM llm_call WHERE run_id = ?",
            run_id,
        )
        assert (item.prompt_tokens, item.completion_tokens) == (prompt, completion), name
        assert item.cost_usd == pytest.approx(cost) and item.llm_seconds == pytest.approx(latency)
        seconds, evaluations = sql(
            seeded,
            "SELECT TOTAL(json_extract(e.result_json, '$.phase_seconds.total')), COUNT(e.id) "
            "FROM evaluation e JOIN candidate c ON c.id = e.candidate_id WHERE c.run_id = ?",
            run_id,
        )
        assert item.eval_seconds == pytest.approx(seconds) and item.evaluations == evaluations
        status, best_id = sql(
            seeded, "SELECT status, best_candidate_id FROM run WHERE id = ?", run_id
        )
        assert item.status == status and item.best_candidate_id == best_id, name

    tuned = items["tuned"]
    assert (tuned.verdict, tuned.rounds, tuned.candidates) == ("correct", 4, 4)
    assert tuned.evaluations == 5
    # the re-evaluation counts (2.4x, not 2.2x); the suspicious 12x does not
    assert (tuned.speedup_vs_eager, tuned.speedup_vs_compile) == (2.4, 1.3)
    assert tuned.speed_of_light == pytest.approx(math.sqrt(0.5 * 0.8))  # target sets only
    assert tuned.target_sets == ["large", "huge"] and tuned.eval_seconds == 2 + 10 + 11 + 9 + 12
    assert items["slow"].speed_of_light is None  # no FLOP/byte counts: no roofline
    assert [(i.verdict, i.correct, i.status) for n, i in items.items() if n != "tuned"] == [
        ("correct", True, "interrupted"),
        ("runtime_error", False, "failed"),
        ("correct", True, "finished"),
        ("suspicious", False, "finished"),
        ("not evaluated", False, "running"),
    ]
    assert items["cpu"].speedup_vs_eager is None and items["fresh"].rounds == 0

    s = data.summary
    assert (s.items, s.correct, s.timed) == (6, 3, 2)
    fast = {f.p: (f.vs_eager, f.vs_compile) for f in s.fast}
    assert fast == {1.0: (1, 1), 1.5: (1, 0), 2.0: (1, 0)}  # the flagged 40x counts nowhere
    assert s.geomean_vs_eager == pytest.approx(statistics.geometric_mean([2.4, 0.8]))
    assert s.geomean_vs_compile == pytest.approx(statistics.geometric_mean([1.3, 0.5]))
    total_cost, total_tokens = sql(
        seeded, "SELECT TOTAL(cost_usd), TOTAL(prompt_tokens + completion_tokens) FROM llm_call"
    )
    assert s.cost_usd == pytest.approx(total_cost) and s.tokens == total_tokens
    assert s.cost_per_correct == pytest.approx(total_cost / 3)
    assert s.cost_per_fast == pytest.approx(total_cost / 1)
    gpu_seconds = sql(
        seeded,
        "SELECT TOTAL(json_extract(e.result_json, '$.phase_seconds.total')) FROM evaluation e "
        "JOIN candidate c ON c.id = e.candidate_id JOIN run r ON r.id = c.run_id "
        "WHERE r.device = 'cuda'",
    )[0]
    assert s.gpu_minutes == pytest.approx(gpu_seconds / 60)
    assert s.other_eval_minutes == pytest.approx(30 / 60)
    assert s.rounds == 4 + 2 + 1 + 1 + 1 + 0


def test_speedup_over_rounds_is_the_best_so_far(seeded):
    data = build_report(RunStore(seeded["url"], read_only=True), [seeded["runs"]["tuned"]])
    points = [(p.round, p.speedup_vs_eager, p.speedup_vs_compile) for p in data.items[0].progress]
    assert points == [(0, None, None), (1, 1.5, 0.9), (2, 1.5, 0.9), (3, 2.4, 1.3)]


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


def test_wall_split_counts_each_second_once_by_priority():
    """Overlapping intervals in a window [0, 100], the split worked out by hand."""
    split = split_wall(
        at(0),
        at(100),
        evaluating=[(10, 30), (20, 40)],  # 10..40
        waiting=[(5, 15), (40, 50), (95, 110)],  # beyond evaluating: 5..10, 40..50, 95..100
        model=[(0, 12), (45, 60), (-10, 2), (70, 80)],  # beyond: 0..5, 50..60, 70..80
    )
    assert split.wall_seconds == 100
    assert split.evaluating_seconds == pytest.approx(30)
    assert split.waiting_seconds == pytest.approx(5 + 10 + 5)
    assert split.model_seconds == pytest.approx(5 + 10 + 10)
    assert split.other_seconds == pytest.approx(10 + 15)  # 60..70, 80..95
    assert split.share(split.model_seconds) == pytest.approx(0.25)


def pin(store: RunStore, model, row_id: int, **when: float) -> None:  # noqa: ANN001 (table)
    """Set a row's timestamps (seconds since T0): the clock the test's runs would have read."""
    values = {name: at(T0 + seconds) for name, seconds in when.items()}
    with store.engine.begin() as conn:
        conn.execute(sa.update(model).where(model.id == row_id).values(**values))


T0 = 1_800_000_000


def test_report_splits_the_wall_time_of_parallel_runs(tmp_path):
    """Two finished runs and one still going, with a queue wait and a pool wait, all recorded
    through the store; the timestamps are pinned so the split can be worked out by hand."""
    store = RunStore(f"sqlite:///{tmp_path / 'forge.db'}")
    queued, pooled = (
        verdict(Status.compile_error, total_s=15),
        verdict(Status.incorrect, total_s=30),
    )
    queued.phase_seconds.detail["queue_wait"] = 5.0
    pooled.phase_seconds.detail["worker_wait"] = 10.0
    a = add_run(
        store,
        "gelu",
        "cuda",
        [[queued]],
        [("coder", 1, 1, 0, 10, False), ("judge", 1, 1, 0, 20, False)],
    )
    b = add_run(store, "softmax", "cuda", [[pooled]], [("coder", 1, 1, 0, 25, False)])
    c = add_run(store, "gelu", "cuda", [], [("coder", 1, 1, 0, 5, False)], status="running")
    calls = [call.id for run in (a, b, c) for call in store.llm_calls(run)]
    evaluations = [store.evaluations(run)[0].id for run in (a, b)]
    pin(store, Run, a, started_at=0, finished_at=100)
    pin(store, Run, b, started_at=5, finished_at=120)
    pin(store, Run, c, started_at=110)
    for call_id, end in zip(calls, (10, 60, 30, 130), strict=True):
        pin(store, LLMCall, call_id, created_at=end)
    pin(store, Evaluation, evaluations[0], created_at=35)  # waits 15..20, runs 20..35
    pin(store, Evaluation, evaluations[1], created_at=100)  # waits 60..70, runs 70..100

    data = build_report(RunStore(store.engine, read_only=True), [a, b, c])
    wall = data.wall
    # model: 0..10, 40..60, 5..30, 125..130; run c, still going, ends at its last call (130)
    assert (wall.started_at, wall.ended_at) == (at(T0), at(T0 + 130))
    assert wall.evaluating_seconds == pytest.approx(15 + 30)
    assert wall.waiting_seconds == pytest.approx(5 + 10)
    assert wall.model_seconds == pytest.approx(15 + 20 + 5)  # 0..15, 40..60, 125..130
    assert wall.other_seconds == pytest.approx(5 + 25)  # 35..40, 100..125
    s = data.summary
    assert (s.llm_seconds, s.wait_seconds, s.gpu_seconds) == (60, 15, 45)
    assert [i.wait_seconds for i in data.items] == [5, 10, 0]

    files = render_files(data)
    md = files["report.md"]
    assert "| evaluation running | 45.0 | 35% | 45.0 |" in md
    assert "| waiting for a worker (queue, pool) | 15.0 | 12% | 15.0 |" in md
    assert "| LLM call in flight | 40.0 | 31% | 60.0 |" in md
    assert "| controller / other | 30.0 | 23% | - |" in md
    assert "| wall time | 130.0 | 100% | - |" in md
    page = files["report.html"]
    assert (
        '<tr><td>LLM call in flight</td><td class="num">40.0</td><td class="num">31%</td>' in page
    )


class Links(HTMLParser):
    """Every attribute value that could make a browser fetch something."""

    def __init__(self) -> None:
        super().__init__()
        self.fetches: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.scripts += tag == "script"
        for name, value in attrs:
            if name in ("src", "href", "xlink:href", "srcset", "action", "data") and value:
                self.fetches.append(value)


def test_cli_writes_a_self_contained_page_markdown_json_and_plots(seeded, tmp_path):
    runs = seeded["runs"]
    out = tmp_path / "out"
    listed = f"{runs['tuned']}-{runs['crashed']},{runs['cpu']}"
    result = cli(
        "report", "--runs", listed, "--out", str(out), "--title", "Night <1>", home=seeded["home"]
    )
    assert result.exit_code == 0, result.output
    assert "report on 4 runs: 3 correct, fast_1 1 vs eager and 1 vs torch.compile" in result.stdout
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "plots/cost_per_item.svg",
        "plots/speedup_over_rounds.svg",
        "plots/speedup_per_item.svg",
        "report.html",
        "report.json",
        "report.md",
    ]
    page = (out / "report.html").read_text()
    links = Links()
    links.feed(page)
    assert links.fetches == [] and links.scripts == 0
    assert not re.search(r"url\(|@import|https?://(?!www\.w3\.org/)", page)
    assert page.count("<svg") == 3 and "Night &lt;1&gt;" in page
    assert "<style>" in page and ".card" in page  # the shared stylesheet, inlined

    md = (out / "report.md").read_text()
    for plot in ("speedup_per_item", "speedup_over_rounds", "cost_per_item"):
        assert f"](plots/{plot}.svg)" in md
    row = next(line for line in md.splitlines() if line.startswith(f"| {runs['tuned']} |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2:9] == ["finished", "correct", cells[4], "2.40x", "1.30x", "63%", "4"]
    assert cells[4] == str(
        sql(seeded, "SELECT best_candidate_id FROM run WHERE id = ?", runs["tuned"])[0]
    )
    crashed = next(line for line in md.splitlines() if line.startswith(f"| {runs['crashed']} |"))
    assert "failed | runtime_error" in crashed
    assert "sandbox \\| crashed" in md  # a pipe in a cell is escaped
    assert "| correct | 3/4 (75%) |" in md and "| fast_1 vs eager | 1/4 (25%) |" in md

    stored = json.loads((out / "report.json").read_text())
    again = build_report(RunStore(seeded["url"], read_only=True), stored["run_ids"], "Night <1>")
    assert {**stored, "generated_at": None} == {
        **json.loads(again.model_dump_json()),
        "generated_at": None,
    }


def test_plots_are_valid_svg_that_fetch_nothing(seeded):
    data = build_report(RunStore(seeded["url"], read_only=True), list(seeded["runs"].values()))
    for plot in PLOTS:
        svg = plot.draw(data)
        root = ElementTree.fromstring(svg)
        assert root.tag.endswith("svg"), plot.name
        assert "<script" not in svg and "href" not in svg and "<!--" not in svg, plot.name
    bars = PLOTS[0].draw(data)
    assert "2.40x" in bars and "0.80x" in bars and "40.00x" not in bars  # flagged: not a best
    nothing = build_report(RunStore(seeded["url"], read_only=True), [seeded["runs"]["fresh"]])
    assert [plot.draw(nothing) for plot in PLOTS] == [None, None, None]


def test_every_template_renders_and_a_missing_variable_raises(seeded):
    data = build_report(RunStore(seeded["url"], read_only=True), list(seeded["runs"].values()))
    env = environment(TEMPLATES_DIR)
    full = {**context(data, draw_plots(data)), "css": stylesheet()}
    names = sorted(p.name for p in TEMPLATES_DIR.glob("*.j2"))  # the base: through report.html
    assert names == ["report.html.j2", "report.md.j2"]
    assert (WEB_TEMPLATES / "base.html.j2").is_file()
    for name in names:
        assert env.get_template(name).render(**full).strip(), name
    for name in ("report.html.j2", "report.md.j2"):
        for missing in ("data", "items", "plots"):
            with pytest.raises(jinja2.UndefinedError):
                env.get_template(name).render(**{k: v for k, v in full.items() if k != missing})
    with pytest.raises(jinja2.UndefinedError):  # a page extending the base, with a typo
        env.from_string(
            '{% extends "base.html.j2" %}{% block content %}{{ titel }}{% endblock %}'
        ).render()


def test_bad_input_gives_one_line_and_writes_nothing(seeded, tmp_path):
    home, runs = seeded["home"], seeded["runs"]
    out = tmp_path / "never"
    cases = [
        ((), "--runs 1,2,5"),
        (("--runs", ""), "not a run id"),
        (("--runs", "1,x"), "'x' in --runs"),
        (("--runs", "5-3"), "empty range"),
        (("--runs", f"{runs['tuned']},990,991"), "no runs 990, 991 in the database"),
        (("--runs", f"{runs['cpu']},{runs['cpu']}"), f"run {runs['cpu']} is listed twice"),
    ]
    for args, needle in cases:
        one_line_error(cli("report", *args, "--out", str(out), home=home), needle)
        assert not out.exists(), args
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    one_line_error(
        cli("report", "--runs", str(runs["cpu"]), "--out", str(a_file), home=home), "not a folder"
    )
    assert a_file.read_text() == "keep me"
    empty = cli("report", "--runs", "1", "--out", str(out), home=tmp_path / "no_home")
    one_line_error(empty, "no run 1 in the database")
    assert not (tmp_path / "no_home").exists() and not out.exists()
    with pytest.raises(ReportError, match="no runs to report"):
        build_report(RunStore(seeded["url"], read_only=True), [])


def test_files_are_replaced_whole_and_a_failed_write_leaves_no_temporary_file(seeded, tmp_path):
    store = RunStore(seeded["url"], read_only=True)
    full = build_report(store, list(seeded["runs"].values()))
    out = tmp_path / "out"
    first = write_report(full, out)
    assert len(first.plots) == 3 and first.html.read_text() == render_files(full)["report.html"]
    # a report with nothing to plot replaces the pages and removes the plots it does not draw
    bare = build_report(store, [seeded["runs"]["fresh"]])
    write_report(bare, out)
    assert not list((out / "plots").iterdir()) and "Nothing to plot" in first.html.read_text()
    # a folder in the way of report.html: the write fails, one line, nothing temporary is left
    (out / "report.html").unlink()
    (out / "report.html").mkdir()
    (out / "report.html" / "x").write_text("")
    with pytest.raises(ReportError, match=f"cannot write the report in {out}"):
        write_report(full, out)
    assert not [p for p in out.rglob("*") if ".forge-report-" in p.as_posix()]
    # a folder that cannot be made (its parent is a file): one line, the file untouched
    (tmp_path / "parent").write_text("a file")
    with pytest.raises(ReportError, match="cannot write the report"):
        write_report(full, tmp_path / "parent" / "out")
    assert (tmp_path / "parent").read_text() == "a file"
