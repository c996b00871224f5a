"""Problem loading: KernelBench files, Forge extensions, overrides, derived input sets."""

import pytest

from forge.evaluator.problem import ProblemError, load_problem, parse_overrides, resolve_problem

KERNELBENCH = """
import torch
import torch.nn as nn

class Model(nn.Module):
    def __init__(self):
        super().__init__()
    def forward(self, x):
        return torch.relu(x)

batch_size = 16
dim = 16384

def get_inputs():
    return [torch.randn(batch_size, dim)]

def get_init_inputs():
    return []
"""


def test_kernelbench_file_gets_derived_sets_with_odd_sizes_and_a_cpu_set():
    p = load_problem(KERNELBENCH, "relu")
    names = [s.name for s in p.input_sets]
    assert names == ["base", "odd", "small"]
    base, odd, small = p.input_sets
    assert base.constants == {"batch_size": 16, "dim": 16384}
    assert odd.constants["dim"] % 2 == 1 and odd.constants["dim"] & (odd.constants["dim"] - 1) != 0
    assert small.cpu and small.constants["batch_size"] * small.constants["dim"] <= 1 << 16
    assert p.derived_sets and p.dtype == "float32" and p.atol == 1e-4 and p.rtol == 1e-4


def test_set_overrides_a_constant_and_unknown_names_are_refused():
    p = load_problem(KERNELBENCH, "relu", overrides={"batch_size": 8})
    assert p.input_sets[0].constants["batch_size"] == 8
    with pytest.raises(ProblemError, match="no integer constant of that name.*batch_size, dim"):
        load_problem(KERNELBENCH, "relu", overrides={"batchsize": 8})


def test_parse_overrides():
    assert parse_overrides(["batch_size=8", "dim=127"]) == {"batch_size": 8, "dim": 127}
    with pytest.raises(ProblemError, match="NAME=INT"):
        parse_overrides(["batch_size"])
    with pytest.raises(ProblemError, match="integer"):
        parse_overrides(["batch_size=eight"])
    for bad in ("0", "-1"):
        with pytest.raises(ProblemError, match=f"--set batch_size needs a positive integer.*{bad}"):
            parse_overrides([f"batch_size={bad}"])


def test_extended_softmax_declares_sets_dtype_and_tolerances():
    p = resolve_problem("softmax")
    assert len(p.input_sets) >= 3
    assert any(s.cpu for s in p.input_sets)
    assert p.sets_for("cpu") and all(s.cpu for s in p.sets_for("cpu"))
    assert p.aten == "aten::_softmax"


def test_fp16_problem_gets_loose_default_tolerance():
    p = load_problem(KERNELBENCH + '\nforge_dtype = "float16"\n', "relu16")
    assert p.atol == p.rtol == 1e-2


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "import torch\ndef get_inputs(): return []\ndef get_init_inputs(): return []\n",
            "defines no `class Model",
        ),
        ("class Model: pass\ndef get_init_inputs(): return []\n", "defines no get_inputs"),
        ("class Model(:\n", "syntax error"),
        (KERNELBENCH + "\nforge_dtype = 'int4'\n", "forge_dtype 'int4'"),
        (
            KERNELBENCH + "\nforge_input_sets = [{'name': 'a', 'cols': 3}]\n",
            "'cols', which is not a module-level integer constant",
        ),
        (KERNELBENCH + "\nforge_distributions = ['uniformish']\n", "unknown forge_distributions"),
    ],
)
def test_bad_problem_files_name_the_fix(source, message):
    with pytest.raises(ProblemError, match=message):
        load_problem(source, "bad")


def test_unknown_operator_and_missing_file():
    with pytest.raises(ProblemError, match="forge ops"):
        resolve_problem("softmaxx")
    with pytest.raises(ProblemError, match="does not exist"):
        resolve_problem("nowhere/problem.py")


def test_cpu_without_cpu_sets_is_refused():
    p = load_problem(KERNELBENCH + "\nforge_input_sets = [{'name': 'big', 'dim': 99999}]\n", "big")
    with pytest.raises(ProblemError, match="cpu=True"):
        p.sets_for("cpu")
