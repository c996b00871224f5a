"""Whole-output comparison (`forge.evaluator.compare`): chunked, it must give exactly what one
pass over the whole tensors gives (the oracle below), at every chunk boundary; and the timed
batch is as long as the GPU's free memory allows (`timing.calls_that_fit`)."""

from __future__ import annotations

import math

import pytest
import torch

from forge.evaluator import compare as cmp
from forge.evaluator.timing import (
    ROTATING,
    WORKSPACE_INPUTS,
    calls_that_fit,
    rotation,
    settled,
)


def whole(out: torch.Tensor, ref: torch.Tensor, atol: float, rtol: float) -> dict:
    c, e = out.to(torch.float64), ref.to(torch.float64)
    finite = torch.isfinite(c) & torch.isfinite(e)
    diff = torch.where(finite, (c - e).abs(), torch.zeros_like(c))
    scale = torch.where(finite, e.abs(), torch.zeros_like(e))
    ok = (finite & (diff <= atol + rtol * scale)) | (torch.isinf(e) & (c == e))
    ok |= torch.isnan(e) & torch.isnan(c)
    bad = ~ok
    flat = torch.nonzero(bad.reshape(-1))
    nonfinite = bool((bad & ~finite).any())
    return {
        "passed": not bool(bad.any()),
        "max_abs_error": math.inf if nonfinite else float(diff.max()),
        "max_rel_error": math.inf
        if nonfinite
        else float((diff / scale.clamp_min(atol if atol > 0 else 1e-30)).max()),
        "mismatches": int(bad.sum()),
        "numel": c.numel(),
        "first_bad_index": [int(i) for i in torch.unravel_index(flat[0, 0], tuple(c.shape))]
        if len(flat)
        else [],
    }


def outputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ref = torch.randn(7, 13, generator=g) * 10
    out = ref + torch.randn(7, 13, generator=g) * 1e-6
    return out, ref


@pytest.mark.parametrize("chunk", [1, 5, 13, 90, 91, 1 << 24])
def test_chunked_comparison_equals_one_pass(monkeypatch, chunk):
    monkeypatch.setattr(cmp, "CHUNK", chunk)
    out, ref = outputs(0)
    cases = {"close": (out, ref)}
    late = out.clone()
    late[6, 3] += 1.0  # the only mismatch sits in the last chunk for most chunk sizes
    cases["late mismatch"] = (late, ref)
    both = out.clone()
    both[0, 2], both[4, 0] = 3e5, -2.0
    cases["two mismatches"] = (both, ref)
    special = ref.clone()
    special[1, 1], special[2, 2], special[3, 3] = float("inf"), float("nan"), -float("inf")
    same = special.clone()
    cases["same inf and nan"] = (same, special)
    poisoned = same.clone()
    poisoned[5, 5] = float("nan")
    cases["unexpected nan"] = (poisoned, special)
    for name, (o, r) in cases.items():
        assert cmp.compare(o, r, 1e-4, 1e-4) == whole(o, r, 1e-4, 1e-4), name
    assert not cmp.compare(late, ref, 1e-4, 1e-4)["passed"]
    assert cmp.compare(late, ref, 1e-4, 1e-4)["first_bad_index"] == [6, 3]
    assert cmp.compare(poisoned, special, 1e-4, 1e-4)["max_abs_error"] == math.inf
    assert cmp.max_difference(both, ref) == pytest.approx(float((both - ref).abs().max()))
    assert cmp.max_difference(poisoned, special) == math.inf
    assert cmp.max_difference(same, special) == float((same - special).nan_to_num().abs().max())


@pytest.mark.parametrize("chunk", [3, 1 << 24])
def test_degenerate_references_are_named(monkeypatch, chunk):
    monkeypatch.setattr(cmp, "CHUNK", chunk)
    assert (
        cmp.degenerate(torch.zeros(4, 5), 1e-4, 1e-4) == "an all-zeros output passes its tolerance"
    )
    constant = torch.full((4, 5), 2.5)
    assert cmp.degenerate(constant, 1e-4, 1e-4) == "a constant (mean) output passes its tolerance"
    assert cmp.degenerate(outputs(1)[1], 1e-4, 1e-4) == ""
    assert cmp.degenerate(torch.arange(6, dtype=torch.int32), 0, 0) == ""


def test_timed_batches_shrink_to_the_free_memory():
    gib = 2**30
    # small sets: the job's batch
    assert calls_that_fit(10, 4 * 2**20, 4 * 2**20, 100 * gib) == 10
    # KernelBench L1/25 Swish at its odd set: 6.44 GB in and out per call, ~100 GiB free
    swish = 4097 * 393217 * 4
    fixed = (2 * ROTATING + WORKSPACE_INPUTS) * swish + 3 * swish
    assert 0.7 * 100 * gib < fixed + 3 * swish
    assert calls_that_fit(10, swish, swish, 100 * gib) == 1
    assert 0.7 * 200 * gib - fixed > 3 * (3 * swish)
    assert calls_that_fit(10, swish, swish, 200 * gib) == 3
    # never below one call, never above the job's batch
    assert calls_that_fit(10, swish, swish, 1 * gib) == 1
    assert calls_that_fit(4, 1, 1, 1000 * gib) == 4
    assert calls_that_fit(10, 0, 0, 0) == 10


def test_sets_larger_than_twice_the_l2_are_not_rotated():
    l2 = 60 * 2**20  # the H200's 60 MiB
    assert rotation(4 * 2**20, l2) == ROTATING
    assert rotation(2 * l2, l2) == ROTATING
    assert rotation(2 * l2 + 1, l2) == 1
    # KernelBench L1/38 L1Norm (32768 x 65535 fp32, 8.6 GB in and out), ~100 GiB free: one call
    # per batch, one copy on each side: 8 tensors of the set in all, within 70% of the free memory
    l1norm = 32768 * 65535 * 4
    gib = 2**30
    assert 0.7 * 100 * gib > 8 * l1norm
    assert calls_that_fit(10, l1norm, l1norm, 100 * gib, rotation(l1norm, l2)) == 1


def test_input_styles_change_what_they_say_and_nothing_else():
    """`_distribute` builds its styles in place or with one temporary (KernelBench inputs reach
    8.7 GB): heavy tails scale every element by exp(N(0, 1)), outliers move about 0.1% of the
    elements to at least 50 in magnitude and keep the rest, on non-contiguous inputs too."""
    from forge.evaluator.trusted import _distribute

    torch.manual_seed(0)
    x = torch.randn(512, 1024)
    g = torch.Generator().manual_seed(7 ^ 0x5EED)
    expected = x * torch.exp(torch.randn(x.shape, generator=g))
    assert torch.equal(_distribute(x.clone(), "heavy_tailed", seed=7), expected)
    for source in (x, x.t()):
        out = _distribute(source, "outliers", seed=7)
        moved = out != source
        assert out.shape == source.shape and 0.0005 < moved.float().mean() < 0.002
        assert out[moved].abs().min() >= 50.0
        assert torch.equal(out[~moved], source[~moved])
        assert torch.equal(_distribute(source, "outliers", seed=7), out)  # seeded


def test_the_trusted_sides_temporaries_shorten_the_batch():
    """KernelBench L1/48 (129 x 4097 x 4096 fp32, 8.7 GB per input) with 113.5 GiB free ran its
    runner out of memory at 3 calls per batch on the H200: with the generation's temporaries
    counted, 2 calls."""
    gib = 2**30
    mean = 129 * 4097 * 4096 * 4
    l2 = 60 * 2**20
    assert calls_that_fit(10, mean, 129 * 4097 * 4, int(113.5 * gib), rotation(mean, l2)) == 2


def test_timing_stops_once_every_implementation_has_settled():
    """`settled`: at least `at_least` device times per implementation, each spread (p80 - p20
    over the median) within the bound; one unsettled implementation keeps the timing going."""
    steady = [2.150 + 0.002 * (i % 5) for i in range(20)]  # KernelBench-sized: ~0.4% spread
    noisy = [3.0 * (1.0 + 0.05 * (i % 4)) for i in range(20)]  # ~10% spread
    short = [0.070 + 0.00001 * (i % 3) for i in range(20)]  # a 70 us kernel: never early
    assert settled([steady, steady], 20, 0.01)
    assert not settled([steady, steady[:19]], 20, 0.01)  # too few calls of one
    assert not settled([steady, noisy], 20, 0.01)
    assert settled([noisy], 20, 0.2)
    assert not settled([steady, short], 20, 0.01)
    assert not settled([steady], 20, None)  # early stopping off


def test_the_early_stop_reaches_the_trusted_side_as_configured():
    from forge.evaluator import resolve_problem
    from forge.evaluator.config import EvalConfig
    from forge.evaluator.host import build_job

    problem = resolve_problem("softmax")
    default = build_job(problem, "", EvalConfig(device="cuda"), "triton", [], 1)
    assert (default.trials, default.min_trials, default.settle_spread) == (50, 20, 0.01)
    off = EvalConfig(device="cuda", trials=30, min_trials=40, settle_spread=None)
    job = build_job(problem, "", off, "triton", [], 1)
    assert (job.trials, job.min_trials, job.settle_spread) == (30, 30, None)
