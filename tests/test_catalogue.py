"""The operator catalogue: every problem file loads, declares its work for the roofline, has input
sets for the CPU and the GPU, and its reference output can tell a cheat from a kernel (EXPLOITS.md
row 5: a problem where an all-zeros or constant output passes the tolerance verifies nothing)."""

from __future__ import annotations

import ast

import pytest
import torch

from forge.evaluator.problem import CPU_ELEMENT_BUDGET, Problem, catalogue_names, resolve_problem

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
NAMES = catalogue_names()
SEED = 1234

# H100 SXM datasheet peaks, for the "is some input set big enough to time" check: HBM3
# 3.35 TB/s; dense FMA fp32 67 TFLOP/s; dense bf16/fp16 tensor cores 990 TFLOP/s.
H100_BYTES_PER_S = 3.35e12
H100_FLOPS_PER_S = {"float32": 67e12, "float64": 34e12, "float16": 990e12, "bfloat16": 990e12}
# The largest set must keep an H100 busy >= 75 us even at its roofline, well above launch
# overhead (~5 us) and timer resolution. The smallest catalogue entry, softmax 4096 x 8192 fp32
# (268 MB moved), sits at ~80 us.
MIN_LARGEST_SET_S = 75e-6


def _instantiate(problem: Problem, constants: dict[str, int]) -> dict:
    """Execute the problem source in a fresh namespace with the set's constants, as the harness
    does (it sets them on the module, so get_inputs()/get_init_inputs() read the new values)."""
    namespace: dict = {"__name__": f"forge_catalogue_{problem.name}"}
    exec(compile(problem.source, problem.path or problem.name, "exec"), namespace)
    namespace.update(constants)
    return namespace


def _reference(problem: Problem, constants: dict[str, int], seed: int) -> tuple[object, list]:
    namespace = _instantiate(problem, constants)
    dtype = DTYPES[problem.dtype]
    torch.manual_seed(seed)
    model = namespace["Model"](*namespace["get_init_inputs"]()).to(dtype).eval()
    torch.manual_seed(seed + 1)
    inputs = [
        x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x
        for x in namespace["get_inputs"]()
    ]
    with torch.no_grad():
        out = model(*inputs)
    return out, inputs


def _cpu_cases() -> list:
    cases = []
    for name in NAMES:
        for input_set in resolve_problem(name).input_sets:
            if input_set.cpu:
                cases.append(pytest.param(name, input_set.name, id=f"{name}-{input_set.name}"))
    return cases


def test_catalogue_has_the_core_operators():
    assert len(NAMES) >= 13, NAMES
    for required in ("softmax", "log_softmax", "layer_norm", "rms_norm", "cross_entropy", "sdpa"):
        assert required in NAMES


@pytest.mark.parametrize("name", NAMES)
def test_problem_metadata(name: str):
    problem = resolve_problem(name)
    assert problem.name == name, (
        "forge_name must match the file name: `forge optimize NAME` finds it by file"
    )
    assert problem.description, "the module docstring's first line is what `forge ops` shows"
    assert len(problem.input_sets) >= 3
    assert any(s.cpu for s in problem.input_sets), "no input set marked cpu=True"
    assert any(not s.cpu for s in problem.input_sets), "no GPU-sized input set"
    # at least one size that is neither a power of two nor tiny (127, 129, 1000...), where
    # kernels tuned for one shape mask their tails wrongly (EXPLOITS.md row 8)
    sizes = {v for s in problem.input_sets for v in s.constants.values()}
    assert any(v > 16 and v & (v - 1) for v in sizes), sorted(sizes)
    if problem.aten:
        assert problem.aten.startswith("aten::"), problem.aten
    assert set(problem.shape_buckets) <= set(problem.constants), problem.shape_buckets
    assert set(problem.shape_buckets.values()) <= {"pow2", "exact"}, problem.shape_buckets


@pytest.mark.parametrize("name", NAMES)
def test_problem_declares_flops_and_bytes(name: str):
    problem = resolve_problem(name)
    functions = {n.name for n in ast.parse(problem.source).body if isinstance(n, ast.FunctionDef)}
    assert {"forge_flops", "forge_bytes"} <= functions
    namespace = _instantiate(problem, {})
    longest = 0.0
    for input_set in problem.input_sets:
        flops = namespace["forge_flops"](**input_set.constants)
        moved = namespace["forge_bytes"](**input_set.constants)
        assert isinstance(flops, int) and flops > 0, (input_set.name, flops)
        assert isinstance(moved, int) and moved > 0, (input_set.name, moved)
        if not input_set.cpu:
            roofline_s = max(moved / H100_BYTES_PER_S, flops / H100_FLOPS_PER_S[problem.dtype])
            longest = max(longest, roofline_s)
    assert longest >= MIN_LARGEST_SET_S, (
        f"largest set runs {longest * 1e6:.1f} us at the H100 roofline"
    )


@pytest.mark.parametrize(("name", "set_name"), _cpu_cases())
def test_cpu_set_reference_runs_and_is_not_degenerate(name: str, set_name: str):
    problem = resolve_problem(name)
    input_set = next(s for s in problem.input_sets if s.name == set_name)
    dtype = DTYPES[problem.dtype]
    out, inputs = _reference(problem, input_set.constants, SEED)

    floating = [x.numel() for x in inputs if isinstance(x, torch.Tensor) and x.is_floating_point()]
    assert floating, "no floating input: the harness's distributions would have nothing to perturb"
    assert sum(floating) <= CPU_ELEMENT_BUDGET, (
        f"{sum(floating)} input elements: too slow for the Triton interpreter"
    )

    assert type(out) is torch.Tensor, type(out)
    assert out.dtype == dtype, (out.dtype, dtype)
    assert bool(torch.isfinite(out).all())
    again, _ = _reference(problem, input_set.constants, SEED)
    assert torch.equal(out, again), "reference is not deterministic"

    atol, rtol = problem.atol, problem.rtol
    ref = out.double()
    assert not torch.allclose(torch.zeros_like(ref), ref, atol=atol, rtol=rtol), (
        "an all-zeros output passes"
    )
    if ref.numel() > 1:
        constant = torch.full_like(ref, ref.mean().item())
        assert not torch.allclose(constant, ref, atol=atol, rtol=rtol), (
            "a constant (mean) output passes"
        )
    # A scalar equals its own mean, so for scalar outputs (cross_entropy) the constant check is
    # this one, for every output: the answer must depend on the inputs, i.e. differ between seeds.
    other, _ = _reference(problem, input_set.constants, SEED + 7)
    assert not torch.allclose(other.double(), ref, atol=atol, rtol=rtol), (
        "output does not depend on the seed"
    )
