"""A correct result more than 10x faster than eager is evaluated again before it counts: an
honest one-pass kernel against a 64-pass eager reference (tests/fixtures/reverify).

CPU: the fixture is correct and, untimed, never flagged. GPU (`pytest -m gpu
tests/test_gpu_reverify.py -rP`): flagged, evaluated a second time, counted `reverified`."""

from __future__ import annotations

from pathlib import Path

import pytest

from forge.evaluator import evaluate
from forge.evaluator.config import EvalConfig
from forge.evaluator.problem import resolve_problem
from forge.evaluator.result import Status

FIXTURES = Path(__file__).parent / "fixtures" / "reverify"
PROBLEM = FIXTURES / "repeated_scale.py"
SOURCE = (FIXTURES / "triton_repeated_scale.py").read_text()


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def test_the_one_pass_kernel_is_correct_and_untimed_results_are_never_flagged(forge_cache_dir):
    config = EvalConfig(device="cpu", cache_dir=forge_cache_dir)
    result = evaluate(resolve_problem(str(PROBLEM)), SOURCE, config)
    assert result.status is Status.correct, result.reasons
    assert not result.suspicious and not result.reverified
    assert "first_evaluation" not in result.phase_seconds.detail


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA GPU")
def test_a_result_over_10x_eager_is_re_verified_before_it_counts(forge_cache_dir):
    config = EvalConfig(
        device="cuda", baselines=["eager"], profile=False, trials=20, cache_dir=forge_cache_dir
    )
    result = evaluate(resolve_problem(str(PROBLEM)), SOURCE, config)
    print(result.status.value, result.speedup_vs_eager, result.suspicious_reasons, result.notes)
    assert result.status is Status.correct, result.reasons
    assert result.speedup_vs_eager > 10
    assert result.reverified and not result.suspicious
    assert "faster than eager" in result.suspicious_reasons[0]
    assert any(n.startswith("re-verified: ") for n in result.notes)
    assert result.phase_seconds.detail["first_evaluation"] > 0
    # the second evaluation checked 3x the seeds on every set, and timed calls' outputs
    seeds = {(c.input_set, c.seed_index) for c in result.checks if c.phase == "before_reference"}
    assert len(seeds) == 2 * 3 * config.seeds
    assert any(c.phase == "timed" and c.passed for c in result.checks)
