"""The outside check of a correct GPU verdict: what Nsight Compute saw of the candidate's own
kernels (output bytes written, duration) against what the runner reported."""

from __future__ import annotations

import pytest

from forge.evaluator import host
from forge.evaluator.protocol import TrustedReport
from forge.evaluator.result import Environment, EvalResult, SetTiming, Status, TimingStats

OUTPUT_BYTES = 4 * 4096


def verdict(timed_ms: float, ncu_ms: float, written_bytes: int = OUTPUT_BYTES) -> EvalResult:
    stats = TimingStats(
        n=20,
        median_ms=timed_ms,
        p20_ms=timed_ms,
        p80_ms=timed_ms,
        mean_ms=timed_ms,
        cv=0.0,
        host_median_ms=0.01,
    )
    result = EvalResult(
        status=Status.correct,
        problem="48_Mean_reduction_over_a_dimension",
        backend="triton",
        environment=Environment(device="cuda"),
        timings=[SetTiming(input_set="odd", target=True, candidate=stats)],
    )
    metrics = {"gpu__time_duration.sum": ncu_ms * 1e6, host.WRITE_SECTORS: written_bytes / 32}
    trusted = TrustedReport(
        status="correct",
        profiled_set="odd",
        output_bytes={"odd": OUTPUT_BYTES},
        ncu_kernels=[{"name": "_mean_mid_kernel", "metrics": metrics}],
    )
    host._external_proof(result, trusted)
    return result


@pytest.mark.parametrize("ratio", [1.0, 1.71, 2.17])
def test_an_honest_kernel_slower_under_ncu_as_measured_on_the_h200_stays_correct(ratio):
    """The L1/48 reduction's three H200 evaluations ran 1.2-2.17x their timed median under ncu."""
    result = verdict(3.9275, 3.9275 * ratio)
    assert result.status is Status.correct, result.reasons


def test_a_timing_far_below_the_profiled_kernels_is_rejected():
    result = verdict(1.0, 4.0)
    assert result.status is Status.rejected
    assert result.reasons[0] == (
        "timings disagree with Nsight Compute on 'odd': 1.0000 ms reported, its kernels ran "
        "4.0000 ms"
    )


def test_kernels_that_wrote_less_than_the_output_are_rejected_whatever_their_time():
    result = verdict(1.0, 1.0, written_bytes=OUTPUT_BYTES // 2)
    assert result.status is Status.rejected
    assert "the output was not written by the candidate's kernels" in result.reasons[0]
