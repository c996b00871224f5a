"""EXPLOITS rows that only show on a GPU (caching allocator, silent launches, streams, timing):
fixtures tests/fixtures/cheats/gpu_*.py, same docstring format as test_adversarial.py.

Run on the GPU machine: `pytest -m gpu tests/test_gpu_adversarial.py`. The configuration keeps
the protocol (3 seeds, 50 trials, rechecks, rotated buffers) but skips what only costs time here:
the torch.compile baseline and Nsight Compute, and times the 'large' set only.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_adversarial import (
    CHEATS,
    LEGIT,
    CheatSpec,
    Expectation,
    check_verdict,
    evaluate,
    parse_spec,
)

from forge.evaluator.config import EvalConfig
from forge.evaluator.problem import resolve_problem
from forge.evaluator.result import EvalResult, SetTiming, Status

pytestmark = pytest.mark.gpu

GPU_SPECS = [parse_spec(p) for p in sorted(CHEATS.glob("gpu_*.py"))]
TIMED_SET = "large"


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


requires_cuda = pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA GPU")


def gpu_config(cache_dir: Path, **overrides) -> EvalConfig:
    values = {
        "device": "cuda",
        "baselines": ["eager"],
        "profile": False,
        "timing_sets": [TIMED_SET],
        "timeout_s": 600.0,
        "cache_dir": cache_dir,
        **overrides,
    }
    return EvalConfig(**values)


def run_gpu(name_or_path: str | Path, cache_dir: Path, **overrides) -> EvalResult:
    path = Path(name_or_path)
    if not path.is_absolute():
        path = CHEATS / f"{name_or_path}.py"
    result = evaluate(
        resolve_problem("softmax"), path.read_text(), gpu_config(cache_dir, **overrides)
    )
    print(_summary(path.stem, result))  # shown with -s or on failure
    return result


def _summary(name: str, result: EvalResult) -> str:
    lines = [
        f"[{name}] {result.status.value} on {result.environment.gpu_name or '?'}: {result.reasons[:2]}"
    ]
    for t in result.timings:
        eager = f"{t.eager.median_ms:.4f}" if t.eager else "-"
        lines.append(
            f"    {t.input_set}: cand {t.candidate.median_ms:.4f} ms (host {t.candidate.host_median_ms:.4f}), eager {eager} ms, "
            f"floor {t.floor_ms}, speedup {t.speedup_vs_eager}, rechecks {t.rechecks}"
        )
    lines.append(f"    suspicious={result.suspicious} {result.suspicious_reasons[:3]}")
    return "\n".join(lines)


def _timing(result: EvalResult, name: str = TIMED_SET):
    return next((t for t in result.timings if t.input_set == name), None)


def _cases() -> list:
    cases = []
    for spec in GPU_SPECS:
        e = spec.default
        marks = (
            [pytest.mark.xfail(strict=True, raises=AssertionError, reason=f"GAP: {e.gap}")]
            if e.gap
            else []
        )
        cases.append(pytest.param(spec, e, id=spec.name, marks=marks))
    return cases


@pytest.fixture(scope="module")
def legit(tmp_path_factory) -> EvalResult:
    """The legit Triton softmax (the kernel the timing cheats wrap), evaluated once."""
    return run_gpu(LEGIT / "triton_softmax.py", tmp_path_factory.mktemp("legit-cache"))


@pytest.fixture(scope="module")
def legit_timing(legit: EvalResult) -> SetTiming:
    timing = _timing(legit)
    assert legit.status is Status.correct and timing is not None, legit.reasons
    return timing


@requires_cuda
@pytest.mark.parametrize(("spec", "expectation"), _cases())
def test_gpu_cheat_gains_nothing(
    spec: CheatSpec, expectation: Expectation, forge_cache_dir: Path, legit_timing: SetTiming
):
    """Each GPU cheat is caught or, where its docstring says `expect: correct`, its trick never
    fires: it then does the work on every timed call and is timed at no less than the plain
    kernel it wraps."""
    result = run_gpu(spec.path, forge_cache_dir)
    if expectation.status is not Status.correct:
        check_verdict(result, expectation, spec.name)
        return
    assert result.status is Status.correct, result.reasons
    timing = _timing(result)
    assert timing is not None
    assert timing.candidate.median_ms >= 0.9 * legit_timing.candidate.median_ms, (
        f"{spec.name} timed at {timing.candidate.median_ms:.4f} ms, the plain kernel at {legit_timing.candidate.median_ms:.4f} ms"
    )
    assert not result.suspicious, result.suspicious_reasons


@requires_cuda
def test_gpu_no_timed_call_meets_inputs_an_earlier_call_saw(forge_cache_dir: Path):
    """Row 9 keyed on content: the warm-up's inputs, or a batch asked again after the host could
    not queue it, would be cache hits worth 16 passes over the input. Timed with the fewest
    calls (20, two batches: one hit batch would be half the samples), the cached candidate is
    timed like the same kernel without its cache."""
    path = CHEATS / "gpu_row09_content_cache.py"
    results = {}
    for cache in (True, False):
        source = path.read_text().replace("CACHE = True", f"CACHE = {cache}")
        results[cache] = evaluate(
            resolve_problem("softmax"), source, gpu_config(forge_cache_dir, trials=20)
        )
        print(_summary(f"content cache {cache}", results[cache]))
        assert results[cache].status is Status.correct, results[cache].reasons
    cached, plain = _timing(results[True]), _timing(results[False])
    assert cached is not None and plain is not None
    assert cached.candidate.p20_ms >= 0.9 * plain.candidate.p20_ms, (cached, plain)


# ---- defence in depth: free timed calls are flagged even when no recheck lands ------------------


@requires_cuda
def test_gpu_free_timed_calls_are_at_least_flagged(forge_cache_dir: Path):
    """Row 20 with its checked calls guessed right would time calls that do no work: such a
    speedup must never be unflagged (the per-set roofline floor and the > 10x flag)."""
    result = run_gpu("gpu_row20_recheck_schedule", forge_cache_dir)
    if result.status is not Status.correct:
        return
    timing = _timing(result)
    assert timing is not None and timing.floor_ms is not None, (
        f"no roofline for {result.environment.gpu_name!r}: add it to forge.evaluator.gpus"
    )
    assert result.suspicious, (
        f"correct and NOT flagged: median {timing.candidate.median_ms:.4f} ms, floor {timing.floor_ms:.4f} ms, speedup {timing.speedup_vs_eager}"
    )
    assert any(f"'{TIMED_SET}'" in r for r in result.suspicious_reasons), result.suspicious_reasons


# ---- row 10: side stream, runtime only ----------------------------------------------------------


@requires_cuda
def test_gpu_side_stream_work_is_inside_the_timed_window(
    forge_cache_dir: Path, legit_timing: SetTiming
):
    """With the static check off (it rejects stream creation), work left running on a side
    stream is either caught (each timed call's output is cloned on the timing stream right after
    its end event, so an unfinished output fails re-verification; the trusted clock bounds the
    batch) or, when the candidate makes the timing stream wait for it, timed honestly: not below
    the roofline floor, no 10x speedup."""
    result = run_gpu("gpu_row10_side_stream", forge_cache_dir, static_checks=False)
    if result.status in (Status.rejected, Status.incorrect):
        return
    assert result.status is Status.correct, result.reasons
    timing = _timing(result)
    assert timing is not None and timing.eager is not None
    assert timing.candidate.median_ms > 0.5 * legit_timing.candidate.median_ms, (
        f"side-stream kernel timed at {timing.candidate.median_ms:.4f} ms, the same kernel on the default stream at "
        f"{legit_timing.candidate.median_ms:.4f} ms"
    )
    if timing.roofline_fraction is not None:
        assert timing.roofline_fraction <= 1.05, (timing.candidate.median_ms, timing.floor_ms)
    assert not result.suspicious, result.suspicious_reasons


# ---- rows 23-25: output not produced by the candidate's kernels --------------------------------


@requires_cuda
@pytest.mark.parametrize(
    "name", ["gpu_row23_host_compute", "row25_eval_through_annotations", "row17_library_alone"]
)
@pytest.mark.parametrize("profile", [False, True])
def test_gpu_output_not_from_own_kernels_is_rejected(
    forge_cache_dir: Path, name: str, profile: bool
):
    """A decoy launch plus host compute, or PyTorch compute with the op monitor popped, or a
    library call alone: without the profile the runner's trace and copy accounting catch them
    (defence in depth); with it, Nsight Compute's count of the bytes the candidate's kernels
    wrote, taken outside the runner, must reject them too."""
    problem = "conv2d" if name == "row17_library_alone" else "softmax"
    path = CHEATS / f"{name}.py"
    config = gpu_config(forge_cache_dir, static_checks=False, profile=profile)
    result = evaluate(resolve_problem(problem), path.read_text(), config)
    print(_summary(name, result))
    assert result.status is Status.rejected, (result.status, result.reasons)


@requires_cuda
def test_gpu_device_time_agrees_with_nsight_compute(legit_profiled: EvalResult):
    timing = next(t for t in legit_profiled.timings if t.target)
    assert legit_profiled.profile is not None and legit_profiled.profile.tool == "ncu", (
        legit_profiled.profile
    )
    ncu_ms = sum(k.duration_us or 0.0 for k in legit_profiled.profile.kernels) / 1e3
    assert abs(timing.candidate.median_ms / ncu_ms - 1.0) <= 0.10, (
        timing.candidate.median_ms,
        ncu_ms,
    )


@pytest.fixture(scope="module")
def legit_profiled(forge_cache_dir: Path) -> EvalResult:
    return run_gpu(LEGIT / "triton_softmax.py", forge_cache_dir, profile=True)


# ---- row 19: persisting L2 is reset before timing -----------------------------------------------


@requires_cuda
def test_gpu_persisting_l2_is_reset_before_timing(legit: EvalResult):
    """Pinning data in persisting L2 needs ctypes/cudart (rejected statically, see
    gpu_row19_persisting_l2.py); the harness must still reset it before timing, and say so."""
    assert legit.status is Status.correct, legit.reasons
    assert legit.timings, "the legit candidate was not timed"
    assert not any("persisting L2" in r for r in legit.suspicious_reasons), legit.suspicious_reasons
    timing = _timing(legit)
    assert timing is not None and timing.rechecks >= 5
    assert timing.candidate.n >= 50


# ---- row 22 / 14 on the GPU: a module the harness imports lazily is swapped ----------------------


@requires_cuda
def test_gpu_swapped_timing_module_is_rejected(forge_cache_dir: Path):
    result = run_gpu("row22_poisons_environment", forge_cache_dir, static_checks=False)
    assert result.status is Status.rejected, (
        f"got {result.status.value}: speedup {result.speedup_vs_eager} suspicious={result.suspicious}"
    )
    assert re.search("tampered", result.reasons[0])
