"""`forge runs`, `show`, `diff`, `delete`, `ops --json`, `--version`, `-h` and the one error
style, from the command line (subprocesses against a SQLite file prepared here)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from forge_process import run_forge as forge

from forge.db.store import RunStore
from forge.evaluator.problem import resolve_problem

LONG_MODEL = "anthropic/claude-sonnet-4-5-20250929"


@pytest.fixture
def env(tmp_path: Path) -> dict:
    environ = {k: v for k, v in os.environ.items() if k not in ("FORGE_DB_URL", "COLUMNS")}
    environ["FORGE_HOME"] = str(tmp_path / "home")
    return environ


@pytest.fixture
def runs(env: dict) -> dict:
    store = RunStore(f"sqlite:///{Path(env['FORGE_HOME']) / 'forge.db'}")
    problem = resolve_problem("softmax")
    first = store.create_run(
        problem, {"rounds": 8}, "openai/gpt-5", "openai/gpt-5", "triton", "cpu"
    )
    cand = store.add_candidate(first, 0, 0, "print('kernel')\n", "triton", "initial")
    store.finish_run(first, "interrupted")
    second = store.create_run(problem, {}, LONG_MODEL, "openai/gpt-5-mini", "triton", "cuda")
    store.add_candidate(second, 0, 0, "print('other')\n", "triton", "initial")
    store.engine.dispose()
    return {"first": first, "second": second, "cand": cand}


def one_line_error(out: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    assert out.returncode == code, out.stdout + out.stderr
    lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_runs_is_readable_at_80_columns(runs, env):
    out = forge("runs", env={**env, "COLUMNS": "80"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), out.stdout
    assert "…" not in out.stdout
    assert "models" in lines[0] and "status" in lines[0] and "interrupted" in out.stdout
    assert "anthropic/claude-sonnet" in out.stdout  # the models column wraps, not cut
    wide = forge("runs", env={**env, "COLUMNS": "160"})
    assert "triton/cuda" in wide.stdout and "backend" in wide.stdout


def test_runs_show_and_ops_json(runs, env):
    listed = json.loads(forge("runs", "--json", env=env).stdout)
    assert [r["id"] for r in listed] == [runs["second"], runs["first"]]
    assert listed[0]["coder_model"] == LONG_MODEL and listed[1]["status"] == "interrupted"
    assert {"id", "op", "status", "cost_usd", "best_candidate_id", "started_at"} <= set(listed[0])
    shown = json.loads(forge("show", str(runs["first"]), "--json", env=env).stdout)
    assert shown["run"]["id"] == runs["first"] and shown["config"] == {"rounds": 8}
    assert [c["id"] for c in shown["candidates"]] == [runs["cand"]]
    assert shown["candidates"][0]["status"] is None
    cand = json.loads(forge("show", f"cand:{runs['cand']}", "--json", env=env).stdout)
    assert cand["candidate"]["source"] == "print('kernel')\n" and cand["evaluation"] is None
    ops = json.loads(forge("ops", "--json", env=env).stdout)
    softmax = next(o for o in ops if o["name"] == "softmax")
    assert {"name", "dtype", "description", "input_sets"} == set(softmax)
    assert {s["name"] for s in softmax["input_sets"]} >= {"tiny", "odd"}


def test_read_only_commands_create_nothing(env, tmp_path):
    out = forge("runs", env=env)
    assert out.returncode == 0 and "no runs yet" in out.stdout, out.stderr
    assert json.loads(forge("runs", "--json", env=env).stdout) == []
    assert json.loads(forge("library", "list", "--json", env=env).stdout) == []
    one_line_error(forge("show", "1", env=env), 2, "no run 1")
    assert not Path(env["FORGE_HOME"]).exists()


def test_version_short_help_and_plain_usage_errors(env):
    version = forge("--version", env=env)
    assert version.returncode == 0 and version.stdout.startswith("forge "), version.stderr
    for args in (["-h"], ["runs", "-h"], ["library", "list", "-h"]):
        out = forge(*args, env=env)
        assert out.returncode == 0 and "Usage" in out.stdout, out.stderr
    one_line_error(forge("runs", "--bogus", env=env), 2, "No such option: --bogus", "runs -h")
    one_line_error(forge("runs", "--limit", "0", env=env), 2, "--limit")
    one_line_error(forge("eval", env=env), 2, "Missing argument")
    one_line_error(forge("library", "lst", env=env), 2, "No such command 'lst'")


def test_delete_a_run(runs, env):
    refused = one_line_error(forge("delete", str(runs["first"]), env=env), 2, "--yes")
    assert "cannot be undone" in refused
    out = forge("delete", f"run:{runs['first']}", "--yes", env=env)
    assert out.returncode == 0 and f"deleted run {runs['first']}" in out.stdout, out.stderr
    one_line_error(forge("show", str(runs["first"]), env=env), 2, f"no run {runs['first']}")
    assert [r["id"] for r in json.loads(forge("runs", "--json", env=env).stdout)] == [
        runs["second"]
    ]
    one_line_error(forge("delete", "cand:1", "--yes", env=env), 2, "removes runs")


def test_delete_refuses_a_run_another_process_holds(runs, env):
    store = RunStore(f"sqlite:///{Path(env['FORGE_HOME']) / 'forge.db'}")
    lease = store.acquire_run_lease(runs["second"])
    try:
        one_line_error(
            forge("delete", str(runs["second"]), "--yes", env=env),
            2,
            f"run {runs['second']} is being run by {lease.holder}",
            "wait or stop it",
        )
    finally:
        lease.release()
