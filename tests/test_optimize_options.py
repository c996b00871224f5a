"""`forge optimize` as a new user meets it: the quickstart's reasoning model against the local
OpenAI-compatible stub (no temperature sent, no key needed for a local server), a missing key
named before anything runs, sampling flags, limits that must be > 0, an unpriced model's cost
shown as unknown, markup-safe messages, and Ctrl-C (once: finish the step; twice: stop now)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from openai_stub import OpenAIStub, Reply
from typer.testing import CliRunner

from forge.db.store import RunStore

SCRIPTS = Path(__file__).parent / "fixtures" / "scripts"
sys.path.insert(0, str(SCRIPTS))
from forge_cli import forge_app  # noqa: E402

FALLBACK = (SCRIPTS / "softmax_kernels" / "torch_fallback.py").read_text()
CODE = f"```python\n{FALLBACK}```"  # rejected by the static check at once: fast rounds
PLAN = json.dumps({"diagnosis": "torch.softmax is PyTorch", "plan": "write a Triton kernel"})


def runner(home: Path, **env: str | None) -> CliRunner:
    base = {"FORGE_HOME": str(home), "FORGE_DB_URL": None, "FORGE_MODEL": None}
    return CliRunner(env={**base, "OPENAI_API_KEY": None, **env})


def optimize(home: Path, *args: str, **env: str | None):  # noqa: ANN201
    return runner(home, **env).invoke(
        forge_app(), ["optimize", "softmax", "--device", "cpu", *args]
    )


def one_error_line(result) -> str:  # noqa: ANN001
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# --------------------------------------------------------- the quickstart


def test_quickstart_with_a_reasoning_model_on_a_local_server(tmp_path: Path) -> None:
    """`--model openai/gpt-5` as the README says, against the stub, without OPENAI_API_KEY: the
    stub answers 400 to any temperature for gpt-5, so the run only finishes if none is sent."""
    replies = [Reply.ok(CODE, model="gpt-5"), Reply.ok(PLAN, model="gpt-5")]
    with OpenAIStub([*replies, Reply.ok(CODE, model="gpt-5")]) as stub:
        result = optimize(
            tmp_path, "--model", "openai/gpt-5", "--api-base", stub.api_base, "--rounds", "2"
        )
    assert result.exit_code == 0, result.output
    bodies = [r["json"] for r in stub.requests]
    assert len(bodies) == 3 and all("temperature" not in b for b in bodies)
    assert all(b["model"] == "gpt-5" for b in bodies)
    run = RunStore(f"sqlite:///{tmp_path / 'forge.db'}").list_runs()[0]
    assert run.status == "finished"
    assert "$?" not in result.stdout  # gpt-5 has a price


def test_sampling_flags_reach_the_provider_and_the_stored_settings(tmp_path: Path) -> None:
    with OpenAIStub([Reply.ok(CODE, model="gpt-4o-mini")]) as stub:
        result = optimize(
            tmp_path,
            "--model",
            "openai/gpt-4o-mini",
            "--api-base",
            stub.api_base,
            "--rounds",
            "1",
            "--temperature",
            "0.7",
            "--top-p",
            "0.9",
            "--max-tokens",
            "1000",
        )
    assert result.exit_code == 0, result.output
    [request] = stub.requests
    body = request["json"]
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.7, 0.9, 1000)
    store = RunStore(f"sqlite:///{tmp_path / 'forge.db'}")
    stored = store.run_config(store.list_runs()[0].id)
    assert stored["coder"]["temperature"] == stored["judge"]["temperature"] == 0.7


# ------------------------------------------------------------ credentials


def test_missing_key_is_one_line_before_anything_runs(tmp_path: Path) -> None:
    started = time.monotonic()
    result = optimize(tmp_path, "--model", "openai/gpt-5")
    line = one_error_line(result)
    assert "OPENAI_API_KEY is not set" in line and "--api-base" in line
    assert time.monotonic() - started < 30  # litellm's import, no provider call, no retries
    assert not (tmp_path / "forge.db").exists()


def test_missing_key_for_the_judge_only(tmp_path: Path) -> None:
    result = optimize(
        tmp_path,
        "--coder-model",
        f"scripted:{tmp_path / 'unused.json'}",
        "--judge-model",
        "anthropic/claude-sonnet-4-5",
        ANTHROPIC_API_KEY=None,
        ANTHROPIC_AUTH_TOKEN=None,
    )
    assert "ANTHROPIC_API_KEY is not set" in one_error_line(result)
    assert not (tmp_path / "forge.db").exists()


# ----------------------------------------------------------------- limits


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--budget-usd", "0"), ("--time-limit", "0"), ("--budget-usd", "-1"), ("--time-limit", "-5")],
)
def test_zero_or_negative_limits_are_usage_errors(tmp_path: Path, flag: str, value: str) -> None:
    result = optimize(tmp_path, "--model", f"scripted:{tmp_path / 's.json'}", flag, value)
    line = one_error_line(result)
    assert f"{flag} must be greater than 0" in line and "leave it out for no limit" in line
    assert not (tmp_path / "forge.db").exists()


def test_unpriced_model_shows_unknown_cost_and_says_the_budget_cannot_stop_it(
    tmp_path: Path,
) -> None:
    with OpenAIStub([Reply.ok(CODE, model="stub-unpriced")]) as stub:
        result = optimize(
            tmp_path,
            "--model",
            "openai/stub-unpriced",
            "--api-base",
            stub.api_base,
            "--rounds",
            "1",
            "--budget-usd",
            "5",
        )
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if "no price" in line]
    assert notes == [
        "litellm has no price for openai/stub-unpriced: the cost shows as $? and --budget-usd 5 "
        "cannot stop the run (--rounds and --time-limit still do)"
    ]
    assert "| $?" in result.stdout and "$0.0000" not in result.stdout
    assert "$? (litellm has no price for a model in use)" in result.stdout


# ----------------------------------------------------------------- markup


def test_markup_in_arguments_is_printed_as_is(tmp_path: Path) -> None:
    assert "'[/x]'" in one_error_line(
        runner(tmp_path).invoke(forge_app(), ["optimize", "[/x]", "--model", "scripted:x.json"])
    )
    folder = tmp_path / "[" / "x]"  # a script path holding `[/x]`
    folder.mkdir(parents=True)
    script = folder / "s.json"
    script.write_text(json.dumps([{"role": "coder", "error": "boom [/x] [bold]"}]))
    result = optimize(tmp_path, "--model", f"scripted:{script}", "--rounds", "1")
    assert result.exit_code == 1, result.output  # the run failed, and said so without crashing
    assert f"coder scripted:{script}" in result.stdout
    assert "boom [/x] [bold]" in result.stdout


# ----------------------------------------------------------------- Ctrl-C


def start_run(tmp_path: Path, items: list[dict]) -> tuple[subprocess.Popen, Path]:
    db = tmp_path / "forge.db"
    script = tmp_path / "script.json"
    script.write_text(json.dumps(items))
    env = {**os.environ, "FORGE_HOME": str(tmp_path), "FORGE_DB_URL": f"sqlite:///{db}"}
    env.pop("FORGE_MODEL", None)
    argv = ["optimize", "softmax", "--device", "cpu", "--model", f"scripted:{script}"]
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "forge_cli.py"), *argv, "--rounds", "3"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, db


def wait_for_judge_call(proc: subprocess.Popen, db: Path) -> None:
    """Until candidate 0 is evaluated: the Judge's (slow) call is then in flight."""
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never evaluated round 0"
        if db.exists():
            with sqlite3.connect(db) as conn:
                try:
                    if conn.execute("select id from evaluation").fetchall():
                        break
                except sqlite3.OperationalError:  # tables not created yet
                    pass
        time.sleep(0.05)
    time.sleep(0.5)  # into the Judge's call


def coder(text: str) -> dict:
    return {"role": "coder", "text": text}


def test_first_ctrl_c_finishes_the_call_and_spends_nothing_more(tmp_path: Path) -> None:
    items = [coder(CODE), {"role": "judge", "text": PLAN, "delay_s": 3}, coder(CODE)]
    proc, db = start_run(tmp_path, items)
    wait_for_judge_call(proc, db)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout + stderr
    assert "stopping after this step (Ctrl-C again to stop now)" in stderr
    assert "Traceback" not in stderr
    store = RunStore(f"sqlite:///{db}")
    assert store.get_run(1).status == "interrupted"
    # the Judge's answer in flight was recorded; no Coder call after the interrupt
    assert [(c.role, c.round) for c in store.llm_calls(1)] == [("coder", 0), ("judge", 1)]
    assert len(store.history(1)) == 1


def test_second_ctrl_c_stops_at_once(tmp_path: Path) -> None:
    items = [coder(CODE), {"role": "judge", "text": PLAN, "delay_s": 60}, coder(CODE)]
    proc, db = start_run(tmp_path, items)
    wait_for_judge_call(proc, db)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert time.monotonic() - started < 15  # not the 60 s the call in flight takes
    assert proc.returncode == 130, stdout + stderr
    assert "stopping now" in stderr and "Traceback" not in stderr
    store = RunStore(f"sqlite:///{db}")
    assert store.get_run(1).status == "interrupted"
    assert [(c.role, c.round) for c in store.llm_calls(1)] == [("coder", 0)]


# ----------------------------------------------------------------- search settings


def test_search_settings_reach_the_stored_run(tmp_path: Path) -> None:
    """`--search NAME=VALUE` sets the search's settings for a comparison; they are stored."""
    script = tmp_path / "s.json"
    script.write_text(json.dumps([{"role": "coder", "text": CODE}] * 2))
    result = optimize(
        tmp_path,
        "--model",
        f"scripted:{script}",
        "--rounds",
        "1",
        "--search",
        "candidates_per_round=2",
        "--search",
        "sol_stop=none",
        "--search",
        "technique_hints=false",
    )
    assert result.exit_code == 0, result.output
    store = RunStore(f"sqlite:///{tmp_path / 'forge.db'}")
    run = store.list_runs()[0]
    stored = store.run_config(run.id)
    assert (stored["candidates_per_round"], stored["sol_stop"], stored["technique_hints"]) == (
        2,
        None,
        False,
    )
    assert stored["judge_turns"] == 4 and len(store.candidates(run.id)) == 2


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "rounds=3",
            "--search expects NAME=VALUE with NAME one of autotune_configs, candidates_per_round, ",
        ),
        ("max_configs=0", "--search max_configs=0: Input should be greater than or equal to 1"),
        ("judge_turns", "--search expects NAME=VALUE"),
        ("judge_turns=0", "--search judge_turns=0: Input should be greater than or equal to 1"),
        ("sol_stop=2", "--search sol_stop=2: Input should be less than or equal to 1"),
    ],
)
def test_bad_search_settings_are_one_line(tmp_path: Path, value: str, message: str) -> None:
    result = optimize(tmp_path, "--model", f"scripted:{tmp_path / 's.json'}", "--search", value)
    assert message in one_error_line(result)
    assert not (tmp_path / "forge.db").exists()
