"""Problem loading: KernelBench files, Forge extensions, overrides, derived input sets."""

from pathlib import Path

import pytest

from forge.evaluator.problem import ProblemError, load_problem, parse_overrides, resolve_problem

DERIVED = Path(__file__).parent / "fixtures" / "derived"

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
    assert p.notes == []


def test_set_overrides_a_constant_and_unknown_names_are_refused():
    p = load_problem(KERNELBENCH, "relu", overrides={"batch_size": 8})
    assert p.input_sets[0].constants["batch_size"] == 8
    with pytest.raises(ProblemError, match="no integer constant of that name.*batch_size, dim"):
        load_problem(KERNELBENCH, "relu", overrides={"batchsize": 8})


def test_a_forge_setting_that_is_not_a_literal_is_an_error_not_ignored():
    computed = KERNELBENCH + '\nforge_input_sets = [{"name": "large", "dim": 16 * 1024}]\n'
    with pytest.raises(ProblemError, match=r"relu:\d+: forge_input_sets must be a literal"):
        load_problem(computed, "relu")
    # other module-level expressions stay the problem's own business
    assert load_problem(KERNELBENCH + "\nscale = 2 ** 0.5\n", "relu").input_sets


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


def test_a_derived_set_the_model_rejects_is_dropped_with_a_note():
    """GroupNorm's 64 channels in 8 groups: the odd (65) and small (17) channel counts raise
    in Model.__init__, so only the base set is left (and with it, no CPU set)."""
    p = resolve_problem(str(DERIVED / "group_norm.py"))
    assert [s.name for s in p.input_sets] == ["base"]
    assert p.input_sets[0].constants == dict(batch_size=16, features=64, num_groups=8, dim=32)
    assert p.notes == [
        "input set 'odd' dropped: Model rejects it "
        "(ValueError: num_channels (65) must be divisible by num_groups (8))",
        "input set 'small' dropped: Model rejects it "
        "(ValueError: num_channels (17) must be divisible by num_groups (8))",
    ]
    with pytest.raises(ProblemError, match=r"cpu=True \(input set 'odd' dropped: .*\(65\)"):
        p.sets_for("cpu")


def test_a_derived_set_whose_forward_fails_is_dropped_and_the_others_kept():
    p = resolve_problem(str(DERIVED / "chunk_softmax.py"))
    assert [s.name for s in p.input_sets] == ["base", "small"]
    assert p.notes == [
        "input set 'odd' dropped: Model rejects it "
        "(RuntimeError: shape '[17, -1, 17]' is invalid for input of size 561)"
    ]


def test_module_level_values_computed_from_constants_follow_each_set(tmp_path, monkeypatch):
    """KernelBench L2/76's `bias_shape = (out_features,)`: the evaluator executes the file with
    each set's constants, so the bias follows `out_features` and every derived set runs."""
    import torch

    from forge.evaluator.config import EvalConfig
    from forge.evaluator.host import build_job
    from forge.evaluator.trusted import Evaluation

    monkeypatch.chdir(tmp_path)  # the trusted process writes the problem file where it runs
    p = resolve_problem(str(DERIVED / "gemm_add_relu.py"))
    assert [s.name for s in p.input_sets] == ["base", "odd", "small"] and p.notes == []
    job = build_job(p, "", EvalConfig(device="cuda"), "triton", [], 1)
    evaluation = Evaluation(job.model_copy(update={"device": "cpu"}))
    for input_set in job.input_sets:
        evaluation.set_constants(input_set)
        module = evaluation.problem
        out_features = input_set.constants["out_features"]
        assert module.bias_shape == (out_features,)
        inputs = evaluation.make_inputs(input_set, seed=1, seed_index=0)
        with torch.no_grad():
            out = module.Model(*module.get_init_inputs())(*inputs)
        assert out.shape == (input_set.constants["batch_size"], out_features)


def test_when_the_base_set_fails_on_meta_every_set_is_kept():
    """Inputs that need a real value (`.item()`, as L1/94's Pareto sampling does with argument
    validation on) cannot be made on the meta device: the check cannot judge, so nothing is
    dropped even where a set would fail."""
    rand = "torch.rand(batch_size, features, dim)"
    scaled = "torch.rand(batch_size, features, dim) * torch.rand(()).item()"
    source = (DERIVED / "group_norm.py").read_text().replace(rand, scaled)
    assert scaled in source
    p = load_problem(source, "item_group_norm")
    assert [s.name for s in p.input_sets] == ["base", "odd", "small"] and p.notes == []


def test_declared_sets_are_never_dropped():
    source = (DERIVED / "group_norm.py").read_text() + (
        "\nforge_input_sets = [{'name': 'big', 'features': 64}, {'name': 'odd', 'features': 65}]\n"
    )
    p = load_problem(source, "declared_group_norm")
    assert [s.name for s in p.input_sets] == ["big", "odd"] and p.notes == []
