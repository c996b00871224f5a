"""`forge library ...` from the command line: output, exit codes, one-line errors.

The commands run in a subprocess through `forge.cli.library.library_app` (the same Typer app
`forge library` mounts), against a SQLite file prepared here."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_library_helpers import LEGIT, foreign_entry, make_result

from forge.db.library import add_entry
from forge.db.store import RunStore
from forge.evaluator.problem import resolve_problem

SOFTMAX = resolve_problem("softmax")
SOURCE = (LEGIT / "triton_softmax.py").read_text()


@pytest.fixture
def env(tmp_path):
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in ("FORGE_DB_URL", "FORGE_LIBRARY", "TRITON_INTERPRET")
    }
    environ["FORGE_HOME"] = str(tmp_path / "home")
    environ["COLUMNS"] = "200"
    return environ


@pytest.fixture
def db(tmp_path, env):
    url = f"sqlite:///{tmp_path / 'forge.db'}"
    store = RunStore(url)
    run = store.create_run(SOFTMAX, {}, "m", "m", "triton", "cuda")
    fast = store.add_candidate(run, 0, 0, SOURCE, "triton", "initial")
    store.add_evaluation(
        fast, make_result(SOFTMAX, {"tiny": 1.2, "odd": 1.3, "wide": 1.4, "large": 1.5})
    )
    slow = store.add_candidate(run, 0, 1, SOURCE + "\n# slow\n", "triton", "optimize")
    store.add_evaluation(
        slow, make_result(SOFTMAX, {"tiny": 1.0, "odd": 1.0, "wide": 1.0, "large": 1.01})
    )
    return {"url": url, "store": store, "fast": fast, "slow": slow}


def library(*args: str, env: dict) -> subprocess.CompletedProcess:
    code = "from forge.cli.library import library_app; library_app(prog_name='forge library')"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, env=env
    )


def one_line_error(out: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    assert out.returncode == code, out.stdout + out.stderr
    lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_promote_list_show(db, env):
    out = library("list", "--db", db["url"], env=env)
    assert out.returncode == 0 and "the library is empty" in out.stdout
    out = library("promote", f"c{db['fast']}", "--db", db["url"], env=env)
    assert out.returncode == 0, out.stderr
    assert "promoted candidate" in out.stdout and "sm_90" in out.stdout
    one_line_error(
        library("promote", str(db["slow"]), "--db", db["url"], env=env),
        1,
        "not promoted",
        "below the 1.05x threshold",
    )
    one_line_error(library("promote", "999", "--db", db["url"], env=env), 2, "no candidate 999")
    one_line_error(
        library("promote", "run:3", "--db", db["url"], env=env), 2, "is not a candidate id"
    )
    out = library("list", "--db", db["url"], env=env)
    assert out.returncode == 0
    assert "softmax" in out.stdout and "sm_90" in out.stdout and "1.35x" in out.stdout
    rows = json.loads(library("list", "--json", "--db", db["url"], env=env).stdout)
    assert len(rows) == 1 and rows[0]["op"] == "softmax" and len(rows[0]["served_buckets"]) == 4
    out = library("show", "1", "--db", db["url"], env=env)
    assert out.returncode == 0
    for needle in ("large", "4096", "1.50x", "3 seeds", "candidate"):
        assert needle in out.stdout
    shown = json.loads(
        library("show", rows[0]["id"][:8], "--json", "--db", db["url"], env=env).stdout
    )
    assert shown["id"] == rows[0]["id"] and shown["sets"][0]["input_set"] == "tiny"
    one_line_error(library("show", "42", "--db", db["url"], env=env), 2, "no library entry 42")
    one_line_error(library("show", "zz", "--db", db["url"], env=env), 2, "no library entry 'zz'")


def test_export_import_and_a_tampered_import(db, env, tmp_path):
    assert library("promote", str(db["fast"]), "--db", db["url"], env=env).returncode == 0
    shipped = tmp_path / "shipped"
    out = library("export", str(shipped), "--db", db["url"], env=env)
    assert out.returncode == 0 and "exported 1 entry" in out.stdout
    other = f"sqlite:///{tmp_path / 'other.db'}"
    out = library("import", str(shipped), "--db", other, env=env)
    assert out.returncode == 0 and "imported 1 entry (1 new" in out.stdout
    kernel = next(shipped.iterdir()) / "kernel.py"
    kernel.write_text(kernel.read_text() + "\n# edited\n")
    third = f"sqlite:///{tmp_path / 'third.db'}"
    one_line_error(
        library("import", str(shipped), "--db", third, env=env),
        2,
        "kernel.py does not match the sha256",
    )
    one_line_error(
        library("import", str(tmp_path / "nowhere"), "--db", third, env=env),
        2,
        "is not a directory",
    )


def test_verify_reruns_the_evaluator_for_entries_from_elsewhere(db, env):
    # an entry verified on sm_90 (not this CPU): verify re-runs the evaluator here; on the CPU
    # it can check correctness but not time, so it is not promoted for this machine
    add_entry(db["store"], foreign_entry("softmax", "triton_softmax.py"))
    out = library("verify", "--device", "cpu", "--db", db["url"], env=env)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "refused" in out.stdout and "no timings" in out.stdout
    rows = json.loads(library("list", "--json", "--db", db["url"], env=env).stdout)
    assert [r["arch"] for r in rows] == ["sm_90"]


def test_bench_needs_a_gpu(db, env):
    one_line_error(library("bench", "--db", db["url"], env=env), 2, "needs a CUDA GPU")


def test_verify_rejects_a_bad_device(db, env):
    one_line_error(
        library("verify", "--device", "tpu", "--db", db["url"], env=env),
        2,
        "--device must be cuda or cpu",
    )


def test_verify_on_an_empty_library_says_there_are_no_entries(tmp_path, env):
    out = library("verify", "--device", "cpu", "--db", f"sqlite:///{tmp_path / 'e.db'}", env=env)
    assert out.returncode == 0, out.stderr
    assert "the library has no active entries" in out.stdout
    assert "every active entry is verified" not in out.stdout
