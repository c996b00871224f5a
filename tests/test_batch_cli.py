"""`forge batch` and `forge batches` end to end on the CPU: suites from a directory, a
KernelBench-layout checkout and a TOML file; scripted models; real SQLite, real sandboxed
evaluations where a kernel is verified; budgets, deadlines, priorities, concurrency, retries of
infrastructure failures, kill -9 and `--resume`; bad input.

Most scripted answers are PyTorch fallbacks (rejected by the static check, in milliseconds), so
the batch machinery is what takes the time; two tests verify real Triton kernels in the sandbox.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from forge_process import kill_9_tree
from test_library_helpers import make_result
from typer.testing import CliRunner

from forge.agents.suite import SuiteError, parse_duration, parse_selection
from forge.cli.batch import until_deadline
from forge.cli.main import app
from forge.db.batches import BatchStore
from forge.db.library import list_entries
from forge.db.store import RunStore
from forge.evaluator.job_queue import Queue, QueueJob, QueueResult

PROBLEMS = Path(__file__).parent / "fixtures" / "batch"

FALLBACK = """```python
import torch
import torch.nn as nn


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        return x * 2.0
```
"""

TRITON_SCALE = """```python
import torch
import torch.nn as nn
import triton
import triton.language as tl


@triton.jit
def _scale(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=mask) * 2.0, mask=mask)


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        x = x.contiguous()
        y = torch.empty_like(x)
        n = x.numel()
        _scale[(triton.cdiv(n, 256),)](x, y, n, BLOCK=256)
        return y
```
"""

PLAN = (
    '```json\n{"diagnosis": "a PyTorch fallback", "bottleneck": "static_check", '
    '"plan": "Write a Triton kernel."}\n```'
)


def coder(text: str, tag: str, **extra: object) -> dict:
    return {"role": "coder", "text": f"[{tag}] {text}", **extra}


def judge(tag: str, **extra: object) -> dict:
    return {"role": "judge", "text": PLAN.replace("a PyTorch", f"[{tag}] a PyTorch"), **extra}


def failing(role: str, kind: str) -> dict:
    return {"role": role, "error": f"{kind} failure", "error_kind": kind}


def script(folder: Path, name: str, items: list[dict]) -> str:
    path = folder / f"{name}.json"
    path.write_text(json.dumps(items))
    return f"scripted:{path}"


def two_rounds(folder: Path, name: str = "fallback", cost: float = 0.01) -> str:
    """Round 0: a fallback; round 1: the Judge's plan and another fallback (both rejected)."""
    items = [coder(FALLBACK, "C0"), judge("J1"), coder(FALLBACK, "C1")]
    return script(folder, name, [{**i, "cost_usd": cost} for i in items])


def suite_dir(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / f"{name}.py").write_text((PROBLEMS / f"{name}.py").read_text())
    return folder


class Forge:
    """`forge` in this process against one FORGE_HOME (as test_optimize_cli does)."""

    def __init__(self, home: Path):
        self.home = home
        self.db = home / "forge.db"
        self.runner = CliRunner(
            env={"FORGE_HOME": str(home), "FORGE_DB_URL": None, "FORGE_MODEL": None}
        )

    def __call__(self, *args: str):
        return self.runner.invoke(app, [str(a) for a in args])

    def batches(self) -> BatchStore:
        return BatchStore(RunStore(f"sqlite:///{self.db}"))


@pytest.fixture
def forge(tmp_path: Path) -> Forge:
    return Forge(tmp_path / "home")


def statuses(forge: Forge, batch_id: int = 1) -> list[str]:
    return [i.status for i in forge.batches().items(batch_id)]


# ------------------------------------------------------------------ suites


def test_directory_suite_runs_each_file_and_ends_each_item_by_promotion(forge, tmp_path):
    """The same Triton kernel (y = 2x) for two problems: correct for `scale`, wrong for
    `shift`. Both items finish (a wrong kernel is a verdict, not a failure: no retry), and
    each records what its end-of-run promotion did: on the CPU nothing is timed, so the
    library's rules refuse the verified kernel, and say so."""
    suite = suite_dir(tmp_path / "suite", "scale", "shift")
    model = script(tmp_path, "kernel", [coder(TRITON_SCALE, "K0")])
    result = forge("batch", suite, "--device", "cpu", "--model", model, "--rounds", 1)
    assert result.exit_code == 0, result.output
    rows = forge.batches().with_runs(1)
    assert [(i.label, i.status, i.attempts, i.retries) for i, _ in rows] == [
        ("scale", "finished", 1, 0),
        ("shift", "finished", 1, 0),
    ]
    store = forge.batches().runs
    verdicts = {i.label: [s.status for s in store.history(r.id)] for i, r in rows}
    assert verdicts == {"scale": ["correct"], "shift": ["incorrect"]}
    scale, shift = (i for i, _ in rows)
    assert "not promoted" in scale.promotion and "timings" in scale.promotion
    assert scale.library_entry_id is None
    assert "no correct, non-suspicious candidate" in shift.promotion
    assert "[item 1 scale] r0 candidate 1: correct" in result.stdout
    assert "batch 1 (suite): finished" in result.stdout
    assert "report: forge report 1" in result.stdout
    listed = json.loads(forge("batches", "--json").stdout)
    assert [(b["id"], b["status"], b["items"], b["item_statuses"]) for b in listed] == [
        (1, "finished", 2, {"finished": 2})
    ]
    assert listed[0]["gpu_seconds"] > 0  # the sandboxed evaluations' recorded wall time
    shown = forge("batches", 1)
    assert shown.exit_code == 0 and "scale" in shown.stdout and "incorrect" not in shown.stdout


def kernelbench_checkout(root: Path, nested: bool = True) -> Path:
    level1 = root / "KernelBench" / "level1" if nested else root / "level1"
    level1.mkdir(parents=True)
    for number, name, source in (
        (1, "Scale", "scale"),
        (2, "Shift", "shift"),
        (3, "Unused", "scale"),
        (40, "Forty", "shift"),
    ):
        (level1 / f"{number}_{name}.py").write_text((PROBLEMS / f"{source}.py").read_text())
    (root / "KernelBench" / "level2" if nested else root / "level2").mkdir(parents=True)
    return root


@pytest.mark.parametrize("nested", [True, False], ids=["KernelBench/levelN", "levelN"])
def test_kernelbench_checkout_selects_problems_by_number(forge, tmp_path, nested):
    root = kernelbench_checkout(tmp_path / "kb", nested)
    model = two_rounds(tmp_path)
    args = ["batch", root, "--level", 1, "--problems", "1-2,40", "--device", "cpu"]
    dry = forge(*args, "--model", model, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "L1/1_Scale" in dry.stdout and "L1/40_Forty" in dry.stdout
    assert "L1/3_Unused" not in dry.stdout and "nothing was stored" in dry.stdout
    assert not forge.db.exists()
    result = forge(*args, "--model", model, "--rounds", 1, "--search", "judge_turns=2")
    assert result.exit_code == 0, result.output
    store = forge.batches().runs
    assert {store.run_config(r.id)["judge_turns"] for _, r in forge.batches().with_runs(1)} == {2}
    ops = [(i.label, r.op) for i, r in forge.batches().with_runs(1)]
    assert ops == [
        ("L1/1_Scale", "1_Scale"),
        ("L1/2_Shift", "2_Shift"),
        ("L1/40_Forty", "40_Forty"),
    ]
    assert all(len(store.candidates(r.id)) == 1 for _, r in forge.batches().with_runs(1))


def test_toml_suite_with_per_item_settings_and_priorities(forge, tmp_path):
    """Per-item rounds, budget, model and priority from TOML (defaults, then the command line,
    then the item's own); with one item at a time, higher priority runs first."""
    (tmp_path / "problems").mkdir()
    (tmp_path / "problems" / "scale.py").write_text((PROBLEMS / "scale.py").read_text())
    one = script(tmp_path, "one", [coder(FALLBACK, "A0")])
    (tmp_path / "suite.toml").write_text(
        f"""
[defaults]
rounds = 1
budget_gpu_hours = 2.0

[[item]]
file = "problems/scale.py"
name = "scale-late"

[[item]]
op = "softmax"
priority = 5
rounds = 2
budget_usd = 0.5
time_limit = "30m"

[[item]]
file = "problems/scale.py"
priority = 1
model = "{one}"
"""
    )
    result = forge(
        "batch", tmp_path / "suite.toml", "--device", "cpu", "--model", two_rounds(tmp_path),
        "--rounds", 3,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    store = forge.batches().runs
    rows = forge.batches().with_runs(1)
    assert [(i.label, i.priority, i.status) for i, _ in rows] == [
        ("scale-late", 0, "finished"),
        ("softmax", 5, "finished"),
        ("scale", 1, "finished"),
    ]
    by_start = [i.label for i, r in sorted(rows, key=lambda row: row[1].id)]
    assert by_start == ["softmax", "scale", "scale-late"]
    configs = {i.label: store.run_config(r.id) for i, r in rows}
    assert {k: c["rounds"] for k, c in configs.items()} == {
        "scale-late": 1,  # [defaults] beat --rounds 3
        "softmax": 2,
        "scale": 1,
    }
    assert configs["softmax"]["budget_usd"] == 0.5 and configs["softmax"]["time_limit_s"] == 1800
    assert all(c["gpu_budget_s"] == 7200 for c in configs.values())
    assert {i.label: r.coder_model for i, r in rows}["scale"] == one
    assert [r.rounds_done for _, r in rows] == [1, 2, 1]


class StandInGpuWorker(threading.Thread):
    """A `forge worker` on a GPU host, as far as the queue directory can tell: it claims each
    job and answers with a verdict made like the library tests' GPU results (correct, with
    timings at every input set; the speedup vs eager of the n-th job is `speedups[n]`)."""

    def __init__(self, queue: Path, speedups: list[float]):
        super().__init__(daemon=True)
        self.queue, self.speedups, self.stop = Queue(queue), speedups, threading.Event()

    def run(self) -> None:
        answered = 0
        while not self.stop.wait(0.05):
            claim = self.queue.claim("stand-in-gpu", "cuda")
            if claim is None:
                continue
            job = QueueJob.model_validate_json(claim.read_text())
            speedup = self.speedups[answered]
            result = make_result(job.problem, {s.name: speedup for s in job.problem.input_sets})
            self.queue.answer(claim, QueueResult(id=job.id, worker="stand-in-gpu", result=result))
            answered += 1


def test_each_item_ends_by_promoting_its_verified_winner_under_the_library_rules(forge, tmp_path):
    """GPU verdicts through `queue:DIR`: the faster item's kernel enters the library, the
    other's (slower than eager) is refused by the promotion rules; each item says which."""
    source = (Path(__file__).parent / "fixtures" / "legit" / "triton_softmax.py").read_text()
    model = script(tmp_path, "softmax", [coder(f"```python\n{source}\n```\n", "S0")])
    (tmp_path / "suite.toml").write_text(
        '[[item]]\nop = "softmax"\nname = "slow"\n\n'
        '[[item]]\nop = "softmax"\nname = "fast"\npriority = 1\n'
    )
    worker = StandInGpuWorker(tmp_path / "queue", speedups=[1.5, 0.8])
    worker.start()
    try:
        result = forge(
            "batch", tmp_path / "suite.toml", "--device", "cuda", "--model", model,
            "--executor", f"queue:{tmp_path / 'queue'}", "--rounds", 1,
        )  # fmt: skip
    finally:
        worker.stop.set()
        worker.join()
    assert result.exit_code == 0, result.output
    slow, fast = forge.batches().items(1)
    entries = list_entries(forge.batches().runs)
    assert [e.id for e in entries] == [fast.library_entry_id] and slow.library_entry_id is None
    assert entries[0].speedup_vs_eager == pytest.approx(1.5)
    assert "promoted as library entry" in fast.promotion
    assert "not promoted" in slow.promotion and "0.80x" in slow.promotion
    assert f"entry {fast.library_entry_id}" in result.stdout
    assert "1 promoted to the library" in result.stdout
    reported = forge("report", 1, "--out", tmp_path / "report")
    assert reported.exit_code == 0, reported.output
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["meta"]["batch"] == "1" and data["title"].startswith("batch 1")
    assert sorted(i["speedup_vs_eager"] for i in data["items"]) == pytest.approx([0.8, 1.5])
    assert [f["vs_eager"] for f in data["summary"]["fast"] if f["p"] == 1.0] == [1]
    assert forge("report", 1, "--runs", "1").exit_code == 2
    assert "no batch 7" in forge("report", 7).output


# ------------------------------------------------------------- limits


def test_item_budgets_stop_their_item_and_the_batch_budget_stops_the_batch(forge, tmp_path):
    suite = suite_dir(tmp_path / "suite", "scale", "shift")
    model = two_rounds(tmp_path, cost=0.01)
    # per item: $0.015 lets round 0's Coder and round 1's Judge call through, then stops
    result = forge(
        "batch", suite, "--device", "cpu", "--model", model, "--rounds", 2,
        "--item-budget-usd", 0.015,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.count("stopped: budget_usd: $0.0200 spent of $0.0150") == 2
    store = forge.batches().runs
    assert [len(store.llm_calls(r.id)) for _, r in forge.batches().with_runs(1)] == [2, 2]

    # per item, GPU time: the first evaluation's recorded time is over a tiny budget
    result = forge(
        "batch", suite, "--device", "cpu", "--model", model, "--rounds", 2,
        "--item-budget-gpu-hours", 1e-9,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.count("stopped: gpu_budget:") == 2
    assert [len(store.candidates(r.id)) for _, r in forge.batches().with_runs(2)] == [1, 1]

    # the batch's budget: the first item spends it, the second does not start
    result = forge(
        "batch", suite, "--device", "cpu", "--model", model, "--rounds", 2, "--budget-usd", 0.025
    )
    assert result.exit_code == 75, result.output
    assert statuses(forge, 3) == ["finished", "pending"]
    batch = forge.batches().get(3)
    assert (
        batch.status == "stopped" and "batch budget spent: $0.0300 of $0.0250" in batch.stop_reason
    )
    assert "--resume 3" in result.stderr
    resumed = forge("batch", "--resume", 3, "--budget-usd", 1)
    assert resumed.exit_code == 0, resumed.output
    assert statuses(forge, 3) == ["finished", "finished"]
    first_run = forge.batches().items(3)[0].run_id
    assert len(store.llm_calls(first_run)) == 3  # the finished item was not played again

    # the batch's GPU time: the first evaluation is over it; the item in flight stops
    result = forge(
        "batch", suite, "--device", "cpu", "--model", model, "--rounds", 2,
        "--budget-gpu-hours", 1e-9,
    )  # fmt: skip
    assert result.exit_code == 75, result.output
    assert statuses(forge, 4) == ["stopped", "pending"]
    assert "batch GPU budget spent" in forge.batches().get(4).stop_reason
    assert len(store.candidates(forge.batches().items(4)[0].run_id)) == 1


def test_time_limit_stops_the_batch_cleanly_and_resume_continues(forge, tmp_path):
    """Each Coder call takes 0.6 s: a 1 s limit lets the first item through round 0 and stops
    it before round 2 (its steps in flight are recorded); the second never starts. Resuming
    with a new limit continues the first item's run and plays the second."""
    suite = suite_dir(tmp_path / "suite", "scale", "shift")
    items = [coder(FALLBACK, "C0", delay_s=0.6), judge("J1"), coder(FALLBACK, "C1", delay_s=0.6)]
    items += [judge("J2"), coder(FALLBACK, "C2")]
    model = script(tmp_path, "slow", items)
    result = forge(
        "batch", suite, "--device", "cpu", "--model", model, "--rounds", 3, "--patience", 0,
        "--time-limit", "1s",
    )  # fmt: skip
    assert result.exit_code == 75, result.output
    batches = forge.batches()
    first, second = batches.with_runs(1)
    assert (first[0].status, first[1].status, second[0].status) == (
        "stopped",
        "interrupted",
        "pending",
    )
    assert second[1] is None and "deadline" in batches.get(1).stop_reason
    store = batches.runs
    assert store.candidates_without_evaluation(first[1].id) == []
    played = len(store.candidates(first[1].id))
    assert 1 <= played < 3

    late = forge("batch", "--resume", 1)
    assert late.exit_code == 2 and "has passed: give --until or --time-limit" in late.stderr
    resumed = forge("batch", "--resume", 1, "--time-limit", "1h")
    assert resumed.exit_code == 0, resumed.output
    first_again, second_again = batches.with_runs(1)
    assert first_again[0].run_id == first[0].run_id and first_again[0].attempts == 2
    assert [c.round for c in store.candidates(first_again[1].id)] == [0, 1, 2]
    assert (first_again[0].status, second_again[0].status) == ("finished", "finished")


def test_until_is_the_next_occurrence_of_a_local_time():
    now = datetime(2026, 3, 1, 22, 30, tzinfo=timezone(timedelta(hours=1)))
    assert until_deadline("07:00", now) == datetime(2026, 3, 2, 7, 0, tzinfo=now.tzinfo)
    assert until_deadline("23:15:30", now) == datetime(2026, 3, 1, 23, 15, 30, tzinfo=now.tzinfo)
    assert until_deadline("22:30", now) == datetime(2026, 3, 2, 22, 30, tzinfo=now.tzinfo)


def test_durations_and_selections():
    assert [parse_duration(t) for t in ("90", "90s", "30m", "1.5h", "2d")] == [
        90,
        90,
        1800,
        5400,
        172800,
    ]
    assert parse_selection("1-3, 40,2") == [1, 2, 3, 40]
    for bad in ("1-x", "", "5-2", "1,,2"):
        with pytest.raises(SuiteError):
            parse_selection(bad)
    with pytest.raises(SuiteError):
        parse_duration("8 hours")


def test_concurrent_items_overlap(forge, tmp_path):
    """With --concurrency 2 the two items' runs are in flight together (each Coder call takes
    1 s): the batch takes about one item's time, and each run starts before the other ends."""
    suite = suite_dir(tmp_path / "suite", "scale", "shift")
    model = script(tmp_path, "slow", [coder(FALLBACK, "C0", delay_s=1.0)])
    result = forge(
        "batch", suite, "--device", "cpu", "--model", model, "--rounds", 1, "--concurrency", 2
    )
    assert result.exit_code == 0, result.output
    (_, a), (_, b) = forge.batches().with_runs(1)
    assert a.started_at < b.finished_at and b.started_at < a.finished_at


@pytest.mark.parametrize("spec", ["local", "local:2"])
def test_items_share_one_local_pool_one_evaluation_per_worker(forge, tmp_path, spec):
    """Two items in flight evaluate through the batch's one `local` executor: its workers
    (one on `local`, two on `local:2`, standing in for GPUs) never hold two evaluations at
    once, and with one worker the items' evaluations never overlap."""
    suite = suite_dir(tmp_path / "suite", "scale", "shift")
    model = script(tmp_path, "kernel", [coder(TRITON_SCALE, "K0")])
    result = forge(
        "batch", suite, "--device", "cpu", "--model", model, "--rounds", 1,
        "--concurrency", 2, "--executor", spec,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    store = forge.batches().runs
    held = [
        (step.result.sandbox.worker, step.result.sandbox.held_from, step.result.sandbox.held_until)
        for _, run in forge.batches().with_runs(1)
        for step in store.history(run.id)
    ]
    assert len(held) == 2 and all(start and end for _, start, end in held), held
    workers = {"local": {"cpu 0"}, "local:2": {"cpu 0", "cpu 1"}}[spec]
    assert {w for w, _, _ in held} <= workers, held
    (w1, s1, e1), (w2, s2, e2) = held
    if w1 == w2:
        assert e1 <= s2 or e2 <= s1, f"two evaluations held {w1} at once: {held}"


# ------------------------------------------------------------- retries


def test_infrastructure_failures_are_retried_other_failures_are_not(forge, tmp_path):
    """`flaky`: the Judge's connection fails once, the retry resumes the run and finishes it.
    `down`: the provider never answers; one retry allowed, then the item fails.
    `refused`: a refused request (a bad key, say) is not an infrastructure failure: no retry."""
    for name in ("flaky", "down", "refused"):
        (tmp_path / f"{name}.py").write_text((PROBLEMS / "scale.py").read_text())
    flaky = script(
        tmp_path,
        "flaky",
        [coder(FALLBACK, "F0"), failing("judge", "connection"), judge("F1")]
        + [coder(FALLBACK, "F1")],
    )
    down = script(tmp_path, "down", [failing("coder", "timeout"), failing("coder", "server")])
    refused = script(tmp_path, "refused", [failing("coder", "request")])
    (tmp_path / "suite.toml").write_text(
        "\n".join(
            f'[[item]]\nfile = "{name}.py"\nmodel = "{model}"\n'
            for name, model in (("flaky", flaky), ("down", down), ("refused", refused))
        )
    )
    result = forge(
        "batch", tmp_path / "suite.toml", "--device", "cpu", "--rounds", 2, "--max-retries", 1
    )
    assert result.exit_code == 1, result.output  # an item failed
    rows = {i.label: (i, r) for i, r in forge.batches().with_runs(1)}
    summary = {k: (i.status, i.attempts, i.retries, r.status) for k, (i, r) in rows.items()}
    assert summary == {
        "flaky": ("finished", 2, 1, "finished"),
        "down": ("failed", 2, 1, "failed"),
        "refused": ("failed", 1, 0, "failed"),
    }
    store = forge.batches().runs
    flaky_run = rows["flaky"][1].id
    assert [c.round for c in store.candidates(flaky_run)] == [0, 1]  # round 0 not redone
    assert "after 1 retries" in rows["down"][0].error
    assert "request failure" in rows["refused"][0].error
    assert "infrastructure failure, retry 1 of 1" in result.stdout


# ------------------------------------------------------------- resume


def test_kill_9_then_resume_repeats_nothing(tmp_path):
    """A real `forge batch` process is killed (-9) while the second item waits for its Judge;
    `--resume` leaves the finished item alone and continues the second item's run from its
    records (with a model given anew: the first one was the slow one)."""
    home = tmp_path / "home"
    suite_dir(tmp_path / "suite", "scale", "shift")
    fast = two_rounds(tmp_path, "fast")
    slow = script(
        tmp_path,
        "slow",
        [coder(FALLBACK, "C0"), judge("J1", delay_s=0.8)] + [coder(FALLBACK, "C1")],
    )
    (tmp_path / "suite.toml").write_text(
        f'[[item]]\nfile = "suite/scale.py"\nmodel = "{fast}"\n\n'
        f'[[item]]\nfile = "suite/shift.py"\nmodel = "{slow}"\n'
    )
    env = {**os.environ, "FORGE_HOME": str(home)}
    for name in ("FORGE_DB_URL", "FORGE_MODEL"):
        env.pop(name, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "forge.cli.main", "batch", str(tmp_path / "suite.toml")]
        + ["--device", "cpu", "--rounds", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    db = home / "forge.db"
    waiting = (
        "select count(*) from batch_item i join candidate c on c.run_id = i.run_id "
        "join evaluation e on e.candidate_id = c.id where i.position = 1"
    )
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the second item never reached its Judge call"
        if db.exists():
            with sqlite3.connect(db) as conn:
                try:
                    if conn.execute(waiting).fetchone()[0] == 1:
                        break
                except sqlite3.OperationalError:  # tables not created yet
                    pass
        time.sleep(0.05)
    kill_9_tree(proc.pid)  # the CLI and the sandboxed evaluation it started
    proc.wait()
    proc.stdout.close()

    forge = Forge(home)
    batches = forge.batches()
    (first, first_run), (second, second_run) = batches.with_runs(1)
    assert (batches.get(1).status, first.status, second.status) == (
        "running",
        "finished",
        "running",
    )
    # the killed item's totals were never written; what `forge batches` shows is its run's
    listed = json.loads(forge("batches", "--json").output)[0]
    shown = json.loads(forge("batches", 1, "--json").output)["item_list"][1]
    assert shown["gpu_seconds"] == batches.runs.evaluation_seconds(second_run.id) > 0
    assert listed["gpu_seconds"] == first.gpu_seconds + shown["gpu_seconds"]
    first_calls = [c.id for c in batches.runs.llm_calls(first_run.id)]
    second_candidates = [c.id for c in batches.runs.candidates(second_run.id)]

    result = forge("batch", "--resume", 1, "--model", fast)
    assert result.exit_code == 0, result.output
    (first_after, _), (second_after, _) = batches.with_runs(1)
    assert (first_after.run_id, first_after.attempts) == (first.run_id, 1)
    assert [c.id for c in batches.runs.llm_calls(first_run.id)] == first_calls
    assert (second_after.run_id, second_after.attempts, second_after.status) == (
        second.run_id,
        2,
        "finished",
    )
    after = batches.runs.candidates(second_run.id)
    assert [c.id for c in after][:1] == second_candidates and [c.round for c in after] == [0, 1]
    tags = [
        re.search(r"\[(\w\d)\]", c.response_text)[1] for c in batches.runs.llm_calls(second_run.id)
    ]
    assert tags == ["C0", "J1", "C1"]  # each answer once: C0 recorded before the kill
    assert batches.get(1).status == "finished"


def test_ctrl_c_stops_after_the_step_in_flight_and_resume_finishes(tmp_path):
    home = tmp_path / "home"
    suite = suite_dir(tmp_path / "suite", "scale", "shift")
    items = [coder(FALLBACK, "C0"), judge("J1", delay_s=1.5), coder(FALLBACK, "C1")]
    model = script(tmp_path, "slow", items)
    env = {**os.environ, "FORGE_HOME": str(home)}
    for name in ("FORGE_DB_URL", "FORGE_MODEL"):
        env.pop(name, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "forge.cli.main", "batch", str(suite), "--device", "cpu"]
        + ["--model", model, "--rounds", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while "r0 candidate 1: rejected" not in (line := proc.stdout.readline()):
        assert line and time.monotonic() < deadline, proc.communicate()
    time.sleep(0.4)
    proc.send_signal(signal.SIGINT)  # the first item's Judge call (1.5 s) is in flight
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout + stderr
    assert "continue with `forge batch --resume 1`" in stderr
    forge = Forge(home)
    batches = forge.batches()
    assert (batches.get(1).status, statuses(forge)) == ("interrupted", ["interrupted", "pending"])
    run = batches.items(1)[0].run_id
    assert [(c.role, c.round) for c in batches.runs.llm_calls(run)] == [("coder", 0), ("judge", 1)]
    result = forge("batch", "--resume", 1)
    assert result.exit_code == 0, result.output
    assert statuses(forge) == ["finished", "finished"]
    assert [c.round for c in batches.runs.candidates(run)] == [0, 1]


def test_batches_on_a_database_from_before_batches(forge, tmp_path):
    """A database of an older Forge, opened read-only (not migrated), holds no batch."""
    from forge.db.engine import migrate

    url = f"sqlite:///{tmp_path / 'old.db'}"
    migrate(url, "0002")
    listed = forge("batches", "--json", "--db", url)
    assert listed.exit_code == 0 and json.loads(listed.stdout) == []
    one = forge("batches", 1, "--db", url)
    assert one.exit_code == 2 and "no batch 1" in one.stderr


# ------------------------------------------------------------- bad input


def bad_inputs(tmp_path: Path) -> dict[str, tuple[list, str]]:
    kb = kernelbench_checkout(tmp_path / "kb")
    (tmp_path / "broken.toml").write_text("[[item]\nop = 'softmax'\n")
    (tmp_path / "unknown.toml").write_text("[[item]]\nop = 'softmax'\nroundz = 3\n")
    (tmp_path / "both.toml").write_text("[[item]]\nop = 'softmax'\nfile = 'x.py'\n")
    (tmp_path / "empty.toml").write_text("[defaults]\nrounds = 2\n")
    (tmp_path / "bf16.toml").write_text("[[item]]\nop = 'softmax'\nprecision = 'bf16'\n")
    bad_dir = tmp_path / "bad_dir"
    bad_dir.mkdir()
    (bad_dir / "no_model.py").write_text("def get_inputs():\n    return []\n")
    return {
        "missing suite": ([tmp_path / "nowhere"], "does not exist"),
        "bad selection": ([kb, "--level", 1, "--problems", "1-x"], "'x' is not a problem number"),
        "missing problem": ([kb, "--level", 1, "--problems", "1-5"], "has no problem 4"),
        "missing level": ([kb, "--level", 3, "--problems", "1"], "no KernelBench/level3"),
        "selection alone": ([kb, "--problems", "1"], "--level and --problems go together"),
        "bad toml": ([tmp_path / "broken.toml"], "not valid TOML"),
        "unknown key": ([tmp_path / "unknown.toml"], "item.0.roundz: Extra inputs"),
        "op and file": ([tmp_path / "both.toml"], "exactly one of 'op'"),
        "no items": ([tmp_path / "empty.toml"], "item: Field required"),
        "bad problem": ([bad_dir], "defines no `class Model"),
        "bad until": ([kb, "--until", "25:99"], "not a time of day"),
        "bad time limit": ([kb, "--time-limit", "soon"], "is not a duration"),
        "bad budget": ([kb, "--budget-usd", "0"], "--budget-usd must be greater than 0"),
        "bad precision": ([kb, "--precision", "fp8"], "fp8"),
        "bad search": (
            [kb, "--level", 1, "--problems", "1", "--search", "width=2"],
            "--search expects NAME=VALUE with NAME one",
        ),
        "precision not accepted": ([tmp_path / "bf16.toml"], "does not accept --precision bf16"),
    }


def test_bad_input_is_one_line_nonzero_and_writes_nothing(forge, tmp_path):
    model = two_rounds(tmp_path)
    for case, (args, message) in bad_inputs(tmp_path).items():
        result = forge("batch", *args, "--device", "cpu", "--model", model)
        assert result.exit_code == 2, (case, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (case, result.stderr)
        assert not forge.home.exists(), case  # no database, no folder


def test_bad_resume_is_one_line(forge, tmp_path):
    missing = forge("batch", "--resume", 9)
    assert missing.exit_code == 2 and "no batch 9" in missing.stderr
    fixed = forge("batch", "--resume", 9, "--rounds", 3, "--device", "cpu")
    assert fixed.exit_code == 2 and "drop --rounds, --device" in fixed.stderr
    both = forge("batch", tmp_path, "--resume", 9)
    assert both.exit_code == 2 and "not both" in both.stderr


def test_a_batch_on_either_database(db_url, tmp_path):
    """The batch, its listing, its resume refusal once finished and its report on SQLite and on
    a real PostgreSQL server (FORGE_DB_URL), with the item's run finished and recorded."""
    forge = Forge(tmp_path / "home")
    forge.runner.env["FORGE_DB_URL"] = db_url
    suite = suite_dir(tmp_path / "suite", "scale", "shift")
    model = two_rounds(tmp_path)
    result = forge("batch", suite, "--device", "cpu", "--model", model, "--rounds", 2)
    assert result.exit_code == 0, result.output
    batches = BatchStore(RunStore(db_url))
    assert [i.status for i in batches.items(1)] == ["finished", "finished"]
    listed = json.loads(forge("batches", "--json").stdout)
    assert [(b["id"], b["status"], b["items"]) for b in listed] == [(1, "finished", 2)]
    assert "finished" in forge("batch", "--resume", 1).output
    reported = forge("report", 1, "--out", tmp_path / "report")
    assert reported.exit_code == 0, reported.output
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [i["run_id"] for i in data["items"]] == [r.id for _, r in batches.with_runs(1)]
