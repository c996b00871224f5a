"""`forge optimize` end to end on the CPU: real sandboxed evaluations under the Triton interpreter,
a scripted LLM, a SQLite database; then `forge runs/show/diff` on what it recorded; kill -9 in the
middle of a run and `--resume`; provider keys kept out of everything stored or printed.

On the CPU timings are not measured, so the search's "improvement" shows as verdicts: the run
moves from a compile error and a wrong result to verified-correct kernels, the best candidate is
the first verified one (an unmeasured later one never displaces it), and no speedup is claimed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from forge_process import kill_9_tree
from typer.testing import CliRunner

from forge.db.store import RunStore

SCRIPTS = Path(__file__).parent / "fixtures" / "scripts"
sys.path.insert(0, str(SCRIPTS))
from forge_cli import forge_app  # noqa: E402

SECRET = "sk-test-SECRET-4f9a1c2e7b"
TAG = re.compile(r"\[([A-Z]\d+[a-z]?)\]")
ROUNDS_OF_SEARCH = 4


def tags(store: RunStore, run_id: int) -> list[str]:
    return [m.group(1) for c in store.llm_calls(run_id) if (m := TAG.search(c.response_text))]


def stored_bytes(home: Path) -> bytes:
    return b"".join(p.read_bytes() for p in home.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """One full search (4 rounds, 3 sandboxed evaluations); several tests read its records."""
    home = tmp_path_factory.mktemp("forge_home")
    items = json.loads((SCRIPTS / "softmax_cpu.json").read_text())
    # a Judge answer that echoes the provider key (as a prompt-injected model might)
    j3 = next(i for i in items if "[J3]" in i["text"])
    j3["text"] = j3["text"].replace('"plan": "', f'"plan": "(key {SECRET}) ')
    script = tmp_path_factory.mktemp("script") / "softmax_cpu.json"
    script.write_text(json.dumps(items))
    env = {
        "FORGE_HOME": str(home),
        "FORGE_DB_URL": None,
        "FORGE_MODEL": None,
        "OPENAI_API_KEY": SECRET,
    }
    runner = CliRunner(env=env)
    started = time.monotonic()
    result = runner.invoke(
        forge_app(),
        [
            "optimize",
            "softmax",
            "--device",
            "cpu",
            "--model",
            f"scripted:{script}",
            "--rounds",
            str(ROUNDS_OF_SEARCH),
            "--patience",
            "0",
        ],
    )
    elapsed = time.monotonic() - started
    return {
        "home": home,
        "runner": runner,
        "result": result,
        "store": RunStore(f"sqlite:///{home / 'forge.db'}"),
        "items": items,
        "elapsed": elapsed,
    }


def test_the_run_ends_by_saying_what_entered_the_library(search):
    """A CPU run verifies but cannot time, so nothing qualifies; the summary says why."""
    result = search["result"]
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if "library" in line)
    assert "promotion needs timings" in row or "timings" in row, row
    listed = search["runner"].invoke(forge_app(), ["library", "list", "--json"])
    assert listed.exit_code == 0 and json.loads(listed.stdout) == []


def test_search_records_every_step(search):
    result, store = search["result"], search["store"]
    assert result.exit_code == 0, result.output
    run = store.list_runs()[0]
    assert run.status == "finished" and run.op == "softmax" and run.device == "cpu"
    history = store.history(run.id)
    assert [(s.candidate.round, s.candidate.kind, s.status) for s in history] == [
        (0, "initial", "compile_error"),
        (1, "repair", "incorrect"),
        (2, "repair", "correct"),
        (3, "optimize", "correct"),
    ]
    assert [s.candidate.parent_id for s in history] == [None, *(s.id for s in history[:-1])]
    # every scripted answer was used exactly once, in order; the malformed ones are marked
    assert tags(store, run.id) == [TAG.search(i["text"]).group(1) for i in search["items"]]
    calls = store.llm_calls(run.id)
    assert [c.error.split(":")[0] for c in calls if c.error] == [
        "unusable answer",
        "unusable answer",
    ]
    assert run.cost_usd == pytest.approx(sum(i["cost_usd"] for i in search["items"]))
    assert (
        run.prompt_tokens > 0 and run.completion_tokens > 0 and run.rounds_done == ROUNDS_OF_SEARCH
    )


def test_evidence_flows_to_the_judge_and_the_plan_to_the_coder(search):
    store = search["store"]
    run_id = store.list_runs()[0].id
    judge_calls = {
        c.round: json.loads(c.messages_json)
        for c in store.llm_calls(run_id, role="judge")
        if not c.error
    }
    judge_prompts = {  # this round's turn of the Judge's conversation
        r: next(m["content"] for m in reversed(messages) if m["content"].startswith("##"))
        for r, messages in judge_calls.items()
    }
    # one conversation: the rules once, the usable answers of earlier rounds in between
    assert [m["role"] for m in judge_calls[3]] == ["system", *["user", "assistant"] * 2, "user"]
    assert "[J1b]" in judge_calls[3][2]["content"] and "[J2]" in judge_calls[3][4]["content"]
    assert sum(m["content"].count("## Rules the evaluator") for m in judge_calls[3]) == 1
    coder_prompts = {
        c.round: json.loads(c.messages_json)[1]["content"]
        for c in store.llm_calls(run_id, role="coder")
        if not c.error
    }
    assert "syntax error" in judge_prompts[1] and "Verdict: **compile_error**" in judge_prompts[1]
    assert (
        re.search(r"input set `(tiny|odd)`, seed #\d+", judge_prompts[2])
        and "first bad index" in judge_prompts[2]
    )
    assert (
        "verified correct" in judge_prompts[3]
        and "No timings: this evaluation ran on cpu" in judge_prompts[3]
    )
    assert "Add the missing colon" in coder_prompts[1]
    assert "Loop over the row in blocks" in coder_prompts[2]
    assert (
        "Keep the whole row in registers" in coder_prompts[3]
        and "## Your current code (round 2), correct" in coder_prompts[3]
    )
    assert (
        "round 1 (repair: Add the missing colon" in coder_prompts[3]
        and "-> incorrect" in coder_prompts[3]
    )


def test_best_so_far_follows_the_verdicts(search):
    result, store = search["result"], search["store"]
    run = store.list_runs()[0]
    history = store.history(run.id)
    first_correct = next(s for s in history if s.status == "correct")
    assert run.best_candidate_id == first_correct.id == store.best_candidate(run.id).id
    assert run.best_speedup_vs_eager is None  # nothing is timed on the CPU: no speedup is claimed
    out = result.stdout
    assert f"best candidate           │ {first_correct.id}" in out
    assert "n/a (timings are not meaningful on cpu)" in out
    assert "a cpu run verifies candidates but cannot rank them" in " ".join(out.split())
    for verdict in (
        "compile_error",
        "incorrect",
        "correct",
        "unusable answer",
        "judge: Add the missing colon",
    ):
        assert verdict in out
    assert re.search(r"best cand \d+ \(n/a\) \| [\d.]+k tokens \| \$0\.0\d+", out)


def test_provider_key_never_stored_printed_or_passed_to_the_sandbox(search):
    result, home, store = search["result"], search["home"], search["store"]
    assert SECRET.encode() not in stored_bytes(home)  # database (+ WAL), caches, logs
    assert SECRET not in result.stdout and SECRET not in result.stderr
    assert "judge: (key [REDACTED:OPENAI_API_KEY]) Keep the whole row" in result.stdout
    plan = store.history(store.list_runs()[0].id)[3].plan
    assert plan["plan"].startswith("(key [REDACTED:OPENAI_API_KEY]) Keep the whole row")

    from forge.sandbox.base import SandboxJob
    from forge.sandbox.local import LocalSandbox

    os.environ["OPENAI_API_KEY"] = SECRET
    try:
        outcome = LocalSandbox(cache_dir=home / "cache").run(
            SandboxJob(payload={"kind": "probe", "look_for": [SECRET]}, timeout_s=60)
        )
    finally:
        del os.environ["OPENAI_API_KEY"]
    assert (
        outcome.message["secret_values_seen"] == []
        and "OPENAI_API_KEY" not in outcome.message["env"]
    )


def test_runs_show_diff(search):
    runner, store = search["runner"], search["store"]
    run_id = store.list_runs()[0].id
    app = forge_app()
    listing = runner.invoke(app, ["runs"])
    assert listing.exit_code == 0 and "softmax" in listing.stdout and "finished" in listing.stdout
    history = store.history(run_id)
    shown = runner.invoke(app, ["show", f"run:{run_id}"])
    assert shown.exit_code == 0 and "compile_error" in shown.stdout and "optimize" in shown.stdout
    assert runner.invoke(app, ["show", str(run_id)]).stdout == shown.stdout
    cand = runner.invoke(app, ["show", f"cand:{history[3].id}"])
    assert cand.exit_code == 0
    assert "_softmax_kernel" in cand.stdout and "correct" in cand.stdout
    assert "Keep the whole row in registers" in cand.stdout  # the plan it implements
    judged = runner.invoke(app, ["show", f"c{history[1].id}"])
    assert (
        "Judge's notes (round 2)" in judged.stdout and "second half of every row" in judged.stdout
    )
    assert "mismatch on input set" in judged.stdout
    delta = runner.invoke(app, ["diff", str(history[2].id), f"cand:{history[3].id}"])
    assert delta.exit_code == 0
    assert (
        f"--- cand:{history[2].id}" in delta.stdout
        and "-        _softmax_kernel[(x.shape[0],)](x, y, x.shape[1], x.stride(0), BLOCK=512"
        in delta.stdout
    )


def test_report_of_the_search_says_what_the_database_holds(search, tmp_path):
    """`forge report` on the recorded run: its figures are the database's (summed here with SQL)."""
    runner, store = search["runner"], search["store"]
    run = store.list_runs()[0]
    out = tmp_path / "report"
    result = runner.invoke(forge_app(), ["report", "--runs", str(run.id), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "report on 1 run: 1 correct, fast_1 0 vs eager and 0 vs torch.compile" in result.stdout
    item = json.loads((out / "report.json").read_text())["items"][0]
    with sqlite3.connect(search["home"] / "forge.db") as db:
        tokens, cost = db.execute(
            "SELECT SUM(prompt_tokens + completion_tokens), SUM(cost_usd) FROM llm_call "
            "WHERE run_id = ?",
            (run.id,),
        ).fetchone()
        results = db.execute(
            "SELECT e.result_json FROM evaluation e JOIN candidate c ON c.id = e.candidate_id "
            "WHERE c.run_id = ?",
            (run.id,),
        ).fetchall()
    # Python's json: a result may hold Infinity (an error measure), which SQLite's JSON refuses
    seconds = sum(json.loads(text)["phase_seconds"]["total"] for (text,) in results)
    assert (item["status"], item["verdict"], item["rounds"]) == ("finished", "correct", 4)
    assert item["best_candidate_id"] == run.best_candidate_id and item["tokens"] == tokens
    assert item["cost_usd"] == pytest.approx(cost) and item["eval_seconds"] == pytest.approx(
        seconds
    )
    assert item["speedup_vs_eager"] is None and not item["on_gpu"]  # a CPU run: nothing timed
    row = next(line for line in (out / "report.md").read_text().splitlines() if "| softmax" in line)
    assert f"| ${cost:.4f} | {seconds / 60:.1f} | triton/cpu |" in row
    assert (out / "plots" / "cost_per_item.svg").is_file()
    assert not (out / "plots" / "speedup_per_item.svg").exists()  # no timings, no speedup plot


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["show", "cand:999"], "no candidate 999"),
        (["show", "run:999"], "no run 999"),
        (["show", "nonsense"], "not a run or candidate reference"),
        (["diff", "1", "run:1"], "forge diff compares candidates"),
        (["optimize", "no_such_op", "--model", "scripted:x.json"], "unknown operator 'no_such_op'"),
        (["optimize", "softmax", "--model", "scripted:/nonexistent.json"], "does not exist"),
        (["optimize", "--resume", "999", "--model", "scripted:x.json"], "no run 999"),
        (["optimize", "softmax", "--resume", "1"], "not both"),
        (
            ["optimize", "--resume", "1", "--rounds", "9", "--device", "cpu"],
            "stored settings: drop --rounds, --device",
        ),
        (["optimize", "softmax", "--device", "cuda", "--model", "m"], "needs a CUDA GPU"),
        (["optimize", "softmax", "--rounds", "0", "--model", "m"], "greater than or equal to 1"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(search, args, message):
    result = search["runner"].invoke(forge_app(), args)
    assert result.exit_code == 2
    assert message in result.stderr or message in result.output
    if result.stderr.startswith("error:"):
        assert len(result.stderr.strip().splitlines()) == 1


def test_resume_of_a_run_another_process_holds_is_refused(search):
    """A run is held by one process at a time: while another holder's lease is fresh,
    `--resume` is one line naming the holder, exit 2, and nothing is recorded."""
    store, run_id = search["store"], search["store"].list_runs()[0].id
    calls_before = len(store.llm_calls(run_id))
    with store.acquire_run_lease(run_id, ttl_s=60):
        result = search["runner"].invoke(forge_app(), ["optimize", "--resume", str(run_id)])
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and f"run {run_id} is being run by" in line, line
    assert len(store.llm_calls(run_id)) == calls_before


def test_no_model_configured_stops_at_once(tmp_path):
    runner = CliRunner(env={"FORGE_HOME": str(tmp_path), "FORGE_MODEL": None})
    started = time.monotonic()
    result = runner.invoke(forge_app(), ["optimize", "softmax", "--device", "cpu"])
    assert result.exit_code == 2 and time.monotonic() - started < 5
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1
    assert "--model" in line and "FORGE_MODEL" in line and "OPENAI_API_KEY" in line
    assert not (tmp_path / "forge.db").exists()


def test_kill_9_then_resume_loses_and_repeats_nothing(tmp_path):
    db = tmp_path / "forge.db"
    env = {**os.environ, "FORGE_HOME": str(tmp_path), "FORGE_DB_URL": f"sqlite:///{db}"}
    env.pop("FORGE_MODEL", None)
    script = SCRIPTS / "softmax_resume.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(SCRIPTS / "forge_cli.py"),
            "optimize",
            "softmax",
            "--device",
            "cpu",
            "--model",
            f"scripted:{script}",
            "--rounds",
            "3",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    _wait_for_unevaluated_round_1(proc, db)
    kill_9_tree(proc.pid)  # the CLI and the sandboxed evaluation it started
    proc.wait()
    proc.stdout.close()

    store = RunStore(f"sqlite:///{db}")
    run = store.list_runs()[0]
    assert run.status == "running"  # killed: nothing had the chance to close it
    before = {c.id: c for c in store.candidates(run.id)}
    assert [c.round for c in before.values()] == [0, 1] and len(
        store.candidates_without_evaluation(run.id)
    ) == 1
    calls_before = [c.id for c in store.llm_calls(run.id)]

    result = CliRunner(env={"FORGE_HOME": str(tmp_path), "FORGE_DB_URL": f"sqlite:///{db}"}).invoke(
        forge_app(), ["optimize", "--resume", str(run.id)]
    )
    assert result.exit_code == 0, result.output
    assert "(replayed)" in result.stdout
    after = store.candidates(run.id)
    assert [(c.round, c.kind) for c in after] == [(0, "initial"), (1, "repair"), (2, "optimize")]
    assert all(
        after[i].id == cid for i, cid in enumerate(before)
    )  # the stored ones were kept, not rewritten
    with sqlite3.connect(db) as conn:
        evaluations = conn.execute(
            "select candidate_id, status from evaluation order by id"
        ).fetchall()
    assert [cid for cid, _ in evaluations] == [
        c.id for c in after
    ]  # one evaluation each, none twice
    assert [status for _, status in evaluations] == ["rejected", "correct", "rejected"]
    assert tags(store, run.id) == [
        "R0",
        "K1",
        "R1",
        "K2",
        "R2",
    ]  # every scripted answer once, in order
    assert [c.id for c in store.llm_calls(run.id)][: len(calls_before)] == calls_before
    assert store.get_run(run.id).status == "finished"


def test_ctrl_c_finishes_the_step_in_flight_then_stops(tmp_path):
    db = tmp_path / "forge.db"
    env = {**os.environ, "FORGE_HOME": str(tmp_path), "FORGE_DB_URL": f"sqlite:///{db}"}
    env.pop("FORGE_MODEL", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            str(SCRIPTS / "forge_cli.py"),
            "optimize",
            "softmax",
            "--device",
            "cpu",
            "--model",
            f"scripted:{SCRIPTS / 'softmax_resume.json'}",
            "--rounds",
            "3",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_unevaluated_round_1(proc, db)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout + stderr
    assert "--resume 1" in stderr
    store = RunStore(f"sqlite:///{db}")
    assert store.get_run(1).status == "interrupted"
    assert [s.status for s in store.history(1)] == [
        "rejected",
        "correct",
    ]  # the evaluation in flight was recorded
    assert [(c.role, c.round) for c in store.llm_calls(1)] == [
        ("coder", 0),
        ("judge", 1),
        ("coder", 1),
    ]


def _wait_for_unevaluated_round_1(proc: subprocess.Popen, db: Path) -> None:
    unevaluated = "select id from candidate where round = 1 and id not in (select candidate_id from evaluation)"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never reached the evaluation of round 1"
        if db.exists():
            with sqlite3.connect(db) as conn:
                try:
                    if conn.execute(unevaluated).fetchall():
                        return
                except sqlite3.OperationalError:  # tables not created yet
                    pass
        time.sleep(0.05)


@pytest.mark.gpu
def test_gpu_search_keeps_the_fastest_and_shows_the_judge_the_profile(tmp_path):
    """On a GPU the verdicts carry measured speedups: the best candidate is the fastest verified
    one, and the Judge's prompt holds the timings, the roofline and the profile. The speedups are
    those of the three scripted kernels (tests/fixtures/scripts/softmax_gpu.json)."""
    db = tmp_path / "forge.db"
    runner = CliRunner(env={"FORGE_DB_URL": f"sqlite:///{db}", "FORGE_MODEL": None})
    result = runner.invoke(
        forge_app(),
        [
            "optimize",
            "softmax",
            "--device",
            "cuda",
            "--model",
            f"scripted:{SCRIPTS / 'softmax_gpu.json'}",
            "--rounds",
            "3",
            "--patience",
            "0",
        ],
    )
    (tmp_path / "optimize.out").write_text(result.output)
    assert result.exit_code == 0, result.output
    store = RunStore(f"sqlite:///{db}")
    run = store.list_runs()[0]
    history = store.history(run.id)
    assert [s.status for s in history] == ["correct"] * 3
    speedups = {s.id: s.result.speedup_vs_eager for s in history}
    assert all(v is not None for v in speedups.values()) and run.gpu_name
    trusted = {s.id: s.result.speedup_vs_eager for s in history if not s.result.suspicious}
    assert run.best_candidate_id == max(trusted, key=trusted.get)
    assert run.best_speedup_vs_eager == pytest.approx(max(trusted.values()))
    live = re.findall(r"best cand (\d+)", result.output)
    assert live and int(live[-1]) == run.best_candidate_id, (
        "the live progress and the summary disagree on the best"
    )
    judge_prompt = json.loads(store.llm_calls(run.id, role="judge")[0].messages_json)[1]["content"]
    assert "| large (target) |" in judge_prompt and "Speedup at the target set" in judge_prompt
    assert "SMs" in judge_prompt and "Profile (" in judge_prompt
    (tmp_path / "judge_prompt_round1.md").write_text(judge_prompt)
    shown = runner.invoke(forge_app(), ["show", f"run:{run.id}"])
    (tmp_path / "show_run.out").write_text(shown.output)
    assert f"{run.best_speedup_vs_eager:.2f}x" in result.stdout
    # the run ends by promoting its best under the library's rules, and says so
    from forge.db.library import list_entries
    from forge.kernels_library.promotion import DEFAULT_THRESHOLD

    entries = list_entries(store)
    if run.best_speedup_vs_eager >= DEFAULT_THRESHOLD:
        assert [e.candidate_id for e in entries] == [run.best_candidate_id]
        assert f"candidate {run.best_candidate_id} promoted as library entry" in result.stdout
    else:
        assert entries == [] and "library" in result.stdout


def test_the_recorded_run_reads_in_the_web_pages(search):
    """What a real run recorded (compile error, wrong result, verified kernels, an unusable
    answer, a Judge answer echoing the key) renders in `forge serve`'s pages, key masked."""
    pytest.importorskip("starlette", reason="the web extra is not installed")
    from starlette.testclient import TestClient

    from forge.web.app import create_app

    url = f"sqlite:///{search['home'] / 'forge.db'}"
    client = TestClient(create_app(RunStore(url, read_only=True)), base_url="http://127.0.0.1")
    run = search["store"].list_runs()[0]
    history = search["store"].history(run.id)
    pages = {"/runs": "", f"/runs/{run.id}": "No candidate of this run was timed"}
    verdicts = ("compile_error", "incorrect", "correct", "correct")
    for step, verdict in zip(history, verdicts, strict=True):
        pages[f"/candidates/{step.id}"] = f'<span class="badge {verdict}">{verdict}</span>'
        if step.candidate.parent_id:
            pages[f"/candidates/{step.id}/diff"] = f"against candidate {step.candidate.parent_id}"
    pages["/search?q=tl.load"] = "<mark>tl.load</mark>"
    for path, needle in pages.items():
        response = client.get(path)
        assert response.status_code == 200, (path, response.text[-1000:])
        assert needle in response.text, path
        assert SECRET not in response.text, path
    judged = client.get(f"/candidates/{history[2].id}").text
    assert "[REDACTED:OPENAI_API_KEY]) Keep the whole row" in judged  # the plan, as stored
    assert "Add the missing colon" in client.get(f"/candidates/{history[0].id}").text
