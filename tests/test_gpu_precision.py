"""Precision policies on a GPU: a Triton GEMM whose `tl.dot` runs on TF32 tensor cores is
rejected under strict (the trusted side read TF32 `mma`/`wgmma` in its PTX) and accepted under
tf32 with baselines that ran with TF32 on; its `input_precision="ieee"` variant passes strict.

Run on the GPU machine: `pytest -m gpu tests/test_gpu_precision.py -rP` (about 2-3 minutes on
an H200: the 4096^3 fp32 product is timed under both policies).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from forge.evaluator import evaluate
from forge.evaluator.config import EvalConfig
from forge.evaluator.problem import resolve_problem
from forge.evaluator.profiling import ncu_path
from forge.evaluator.result import EvalResult, Status

pytestmark = pytest.mark.gpu

FIXTURES = Path(__file__).parent / "fixtures" / "precision"
PROBLEM = FIXTURES / "matmul.py"
TF32_SOURCE = (FIXTURES / "triton_matmul.py").read_text()
IEEE_SOURCE = TF32_SOURCE.replace('INPUT_PRECISION = "tf32"', 'INPUT_PRECISION = "ieee"')


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


requires_cuda = pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA GPU")


def run(source: str, policy: str, cache_dir: Path, **overrides) -> EvalResult:
    settings = {
        "device": "cuda",
        "precision": policy,
        "baselines": ["eager"],
        "profile": False,
        "trials": 20,
        "cache_dir": cache_dir,
        "timeout_s": 600.0,
    }
    config = EvalConfig(**{**settings, **overrides})
    result = evaluate(resolve_problem(str(PROBLEM)), source, config)
    target = next((t for t in result.timings if t.target), None)
    print(
        f"[{policy}] {result.status.value} {result.reasons[:2]} "
        f"{result.precision.label() if result.precision else '-'} "
        f"eager {target.eager.median_ms if target and target.eager else '-'} ms, "
        f"cand {target.candidate.median_ms if target else '-'} ms, x{result.speedup_vs_eager}; "
        f"tolerances {[t.model_dump() for t in result.precision.tolerances] if result.precision else '-'}"
    )
    return result


@requires_cuda
def test_tf32_tl_dot_is_rejected_under_strict(forge_cache_dir):
    result = run(TF32_SOURCE, "strict", forge_cache_dir)
    assert result.status is Status.rejected, result.reasons
    assert "`_matmul_kernel`" in result.reasons[0] and "TF32" in result.reasons[0]
    assert "--precision strict does not allow" in result.reasons[0]
    assert result.precision.detected == ["tf32"] and "PTX" in result.precision.inspected
    assert not result.timings  # rejected before timing


@requires_cuda
def test_tf32_kernel_under_tf32_is_timed_against_tf32_baselines(forge_cache_dir):
    strict = run(IEEE_SOURCE, "strict", forge_cache_dir)
    tf32 = run(TF32_SOURCE, "tf32", forge_cache_dir)
    assert strict.status is Status.correct, strict.reasons
    assert strict.precision.detected == [] and strict.precision.inspected == ["PTX"]
    # strict: the fp32 reference's own error against its float64 run, measured on the 3
    # correctness seeds and reused for the timed re-verifications
    exact = next(t for t in strict.precision.tolerances if t.input_set == "large")
    assert exact.reference_error > 0 and exact.comparisons > 3
    assert tf32.status is Status.correct, tf32.reasons
    assert tf32.precision.detected == ["tf32"]
    large = next(t for t in tf32.precision.tolerances if t.input_set == "large")
    assert large.atol > 1e-4 and large.reference_error > 0  # cuBLAS TF32 moved the reference
    eager = {
        name: next(t for t in r.timings if t.target).eager.median_ms
        for name, r in (("strict", strict), ("tf32", tf32))
    }
    # the same eager matmul, with allow_tf32 on under tf32: several times faster on an H100/H200
    assert eager["tf32"] < 0.5 * eager["strict"], eager


@requires_cuda
@pytest.mark.skipif(ncu_path() is None, reason="needs Nsight Compute (ncu)")
def test_nsight_compute_counts_tf32_tensor_core_math(forge_cache_dir):
    result = run(TF32_SOURCE, "tf32", forge_cache_dir, profile=True)
    assert result.status is Status.correct, result.reasons
    counted = [k for k in result.precision.kernels if k.source == "Nsight Compute"]
    assert "Nsight Compute" in result.precision.inspected, result.precision
    assert any("tf32" in k.formats and "_matmul_kernel" in k.kernel for k in counted), counted


@requires_cuda
def test_float64_accurate_kernel_passes_strict_and_its_bf16_variant_is_rejected(forge_cache_dir):
    """The cancelling GEMM row sum (KernelBench L2/14 style): a Triton kernel with float64
    accumulators fails the problem's fixed atol against cuBLAS's fp32 reference and passes the
    atol derived from the reference's float64 run; rounding its operands to bf16 is rejected by
    the compiled-code check."""
    problem = resolve_problem(str(FIXTURES / "gemm_divide_sum_scaling.py"))
    source = (FIXTURES / "triton_gemm_divide_sum_scaling.py").read_text()
    config = EvalConfig(
        device="cuda", baselines=["eager"], profile=False, trials=20, cache_dir=forge_cache_dir
    )
    accurate = evaluate(problem, source, config)
    assert accurate.status is Status.correct, accurate.reasons
    (small,) = accurate.precision.tolerances
    assert small.atol > 1e-4 and small.comparisons > 3
    narrow = source.replace("ROUND_TO_BF16 = False", "ROUND_TO_BF16 = True")
    bf16 = evaluate(problem, narrow, config)
    assert bf16.status is Status.rejected and "bf16" in bf16.reasons[0].lower(), bf16.reasons
