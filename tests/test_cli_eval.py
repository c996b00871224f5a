"""`forge eval` and `forge ops` from the command line: verdicts, exit codes, one-line errors."""

import json
import subprocess
from pathlib import Path

import pytest
from forge_process import run_forge as forge

FIXTURES = Path(__file__).parent / "fixtures"
LEGIT_SOFTMAX = FIXTURES / "legit" / "triton_softmax.py"


def test_ops_lists_the_catalogue():
    out = forge("ops")
    assert out.returncode == 0, out.stderr
    for op in ("softmax", "layer_norm", "rms_norm", "conv2d", "sdpa"):
        assert op in out.stdout


def test_eval_cpu_json_is_a_correct_evalresult():
    out = forge("eval", "softmax", str(LEGIT_SOFTMAX), "--device", "cpu", "--json")
    assert out.returncode == 0, out.stderr + out.stdout
    result = json.loads(out.stdout)
    assert result["status"] == "correct"
    assert result["timing_meaningful"] is False
    assert {c["input_set"] for c in result["checks"]} == {"tiny", "odd"}
    assert len({c["seed_index"] for c in result["checks"]}) >= 3
    assert result["kernels_seen"] == ["_softmax_kernel"]


def test_eval_cpu_readable_summary():
    out = forge("eval", "softmax", str(LEGIT_SOFTMAX), "--device", "cpu")
    assert out.returncode == 0, out.stderr
    assert "correct" in out.stdout and "not meaningful" in out.stdout


def _one_line_error(out: subprocess.CompletedProcess, *needles: str) -> None:
    assert out.returncode != 0
    lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(
    ("problem", "needles"),
    [
        (str(FIXTURES / "bad" / "no_model_problem.py"), ("class Model", "get_inputs")),
        (str(FIXTURES / "bad" / "no_get_inputs_problem.py"), ("get_inputs()",)),
        ("softmaxx", ("forge ops",)),
    ],
)
def test_bad_problem_is_a_one_line_error(problem, needles):
    _one_line_error(forge("eval", problem, str(LEGIT_SOFTMAX), "--device", "cpu"), *needles)


BROKEN_REFERENCE = """
import torch
import torch.nn as nn

class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        raise ValueError("this reference is broken")

rows = 8
cols = 33

def get_inputs():
    return [torch.randn(rows, cols)]

def get_init_inputs():
    return []
"""


def test_a_failure_of_the_evaluator_itself_is_no_verdict(tmp_path):
    """The trusted process holds no candidate code: when it fails (here the problem's own
    reference raises), the candidate gets no verdict, and the user one line saying so."""
    problem = tmp_path / "broken_reference.py"
    problem.write_text(BROKEN_REFERENCE)
    out = forge("eval", str(problem), str(LEGIT_SOFTMAX), "--device", "cpu", "--json")
    _one_line_error(
        out,
        "the evaluator failed on broken_reference (no verdict on the candidate)",
        "ValueError: this reference is broken",
    )
    assert out.stdout.strip() == ""


def test_eval_names_the_input_sets_it_dropped():
    out = forge(
        "eval",
        str(FIXTURES / "derived" / "chunk_softmax.py"),
        str(FIXTURES / "bad" / "no_modelnew.py"),
        "--device",
        "cpu",
    )
    assert out.returncode == 1 and "rejected" in out.stdout, out.stderr
    assert (
        "note: input set 'odd' dropped: Model rejects it "
        "(RuntimeError: shape '[17, -1, 17]' is invalid for input of size 561)"
    ) in " ".join(out.stdout.split())  # the console wraps at 80 columns


def test_missing_candidate_file_is_a_one_line_error():
    _one_line_error(forge("eval", "softmax", "nope.py", "--device", "cpu"), "does not exist")


def test_bad_override_is_a_one_line_error():
    _one_line_error(
        forge("eval", "softmax", str(LEGIT_SOFTMAX), "--device", "cpu", "--set", "rows=3"),
        "--set rows",
        "batch_size, dim",
    )


def test_queue_wait_without_an_executor_elsewhere_is_a_one_line_error():
    out = forge("eval", "softmax", str(LEGIT_SOFTMAX), "--device", "cpu", "--queue-wait", "5")
    _one_line_error(out, "--queue-wait", "queue:DIR")
    out = forge("eval", "softmax", str(LEGIT_SOFTMAX), "--device", "cpu", "--executor", "queue")
    _one_line_error(out, "--executor", "needs a directory")


def test_too_few_trials_is_a_one_line_error():
    _one_line_error(forge("eval", "softmax", str(LEGIT_SOFTMAX), "--trials", "5"), "--trials")


def test_device_cuda_without_gpu_is_a_one_line_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the error path cannot be exercised here")
    _one_line_error(
        forge("eval", "softmax", str(LEGIT_SOFTMAX), "--device", "cuda"), "--device cpu"
    )


@pytest.mark.parametrize(
    ("candidate", "status", "needle"),
    [
        ("no_modelnew.py", "rejected", "ModelNew"),
        ("syntax_error.py", "compile_error", "syntax error"),
        ("wrong_constructor.py", "rejected", "__init__"),
    ],
)
def test_bad_candidates_get_a_verdict_naming_the_problem(candidate, status, needle):
    out = forge("eval", "softmax", str(FIXTURES / "bad" / candidate), "--device", "cpu", "--json")
    assert out.returncode == 1, out.stderr
    result = json.loads(out.stdout)
    assert result["status"] == status
    assert needle in result["reasons"][0]


def test_invalid_overrides_are_usage_errors_before_anything_runs():
    for value in ("-1", "0"):
        out = forge(
            "eval", "softmax", str(LEGIT_SOFTMAX), "--device", "cpu", "--set", f"batch_size={value}"
        )
        _one_line_error(out, "--set batch_size needs a positive integer")
        assert out.returncode == 2


def test_timeout_caps_the_evaluation_deadlines():
    """A candidate that never returns is killed at the --timeout given, not the derived
    first-call deadline (60 s on the CPU)."""
    hung = FIXTURES / "cheats" / "containment_infinite_loop.py"
    args = ["eval", "softmax", str(hung), "--device", "cpu", "--json"]
    out = forge(*args, "--timeout", "3")
    assert out.returncode == 1, out.stderr
    result = json.loads(out.stdout)
    assert result["status"] == "timeout"
    assert "killed after the 3 s wall-clock limit" in result["reasons"][0], result["reasons"]
    refused = forge(*args, "--timeout", "0")
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: ") and "--timeout" in refused.stderr


def test_eval_shows_its_phases_on_a_terminal(monkeypatch):
    """On a terminal the phases show as the sandboxed run reaches them, then their seconds."""
    import io

    from rich.console import Console
    from typer.testing import CliRunner

    from forge.cli import evaluate as cli_evaluate
    from forge.cli.main import app

    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=200, color_system=None)
    monkeypatch.setattr(cli_evaluate, "progress_console", terminal)
    out = CliRunner().invoke(app, ["eval", "softmax", str(LEGIT_SOFTMAX), "--device", "cpu"])
    assert out.exit_code == 0, out.output
    shown = screen.getvalue()
    for phase in ("static check", "correctness on 'tiny'", "correctness on 'odd'"):
        assert phase in shown, shown
    assert "evaluated in " in shown and "correctness " in shown


def test_eval_prints_no_progress_when_stderr_is_not_a_terminal():
    out = forge("eval", "softmax", str(FIXTURES / "bad" / "syntax_error.py"), "--device", "cpu")
    assert out.returncode == 1 and out.stderr == "", out.stderr
