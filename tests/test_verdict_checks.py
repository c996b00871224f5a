"""The checks of what the runner reports: the trusted clock over a timed batch, the outside check
of a correct GPU verdict (what Nsight Compute saw of the candidate's own kernels against what
the runner reported), and the second evaluation of a result flagged for its speed."""

from __future__ import annotations

from pathlib import Path

import pytest

from forge.evaluator import EvalConfig, host
from forge.evaluator.protocol import RawTiming, Reply, TrustedReport
from forge.evaluator.result import Environment, EvalResult, SetTiming, Status, TimingStats
from forge.evaluator.trusted import SetTimer, Verdict

OUTPUT_BYTES = 4 * 4096
LEGIT = Path(__file__).parent / "fixtures" / "legit"


def steady(ms: float) -> TimingStats:
    """20 timed calls of `ms` each."""
    return TimingStats.from_samples([ms] * 20, [0.01] * 20)


def verdict(timed_ms: float, ncu_ms: float, written_bytes: int = OUTPUT_BYTES) -> EvalResult:
    result = EvalResult(
        status=Status.correct,
        problem="48_Mean_reduction_over_a_dimension",
        backend="triton",
        environment=Environment(device="cuda"),
        timings=[SetTiming(input_set="odd", target=True, candidate=steady(timed_ms))],
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


@pytest.mark.parametrize("ratio", [1.0, 1.71, 2.17, 3.54])
def test_an_honest_kernel_slower_under_ncu_as_measured_on_the_h200_stays_correct(ratio):
    """The L1/48 reductions' H200 evaluations ran 1.2-3.54x their timed median under ncu."""
    result = verdict(3.9275, 3.9275 * ratio)
    assert result.status is Status.correct, result.reasons


def test_a_timing_far_below_the_profiled_kernels_is_rejected():
    result = verdict(1.0, 6.0)
    assert result.status is Status.rejected
    assert result.reasons[0] == (
        "timings disagree with Nsight Compute on 'odd': 1.0000 ms reported, its kernels ran "
        "6.0000 ms"
    )


def test_kernels_that_wrote_less_than_the_output_are_rejected_whatever_their_time():
    result = verdict(1.0, 1.0, written_bytes=OUTPUT_BYTES // 2)
    assert result.status is Status.rejected
    assert "the output was not written by the candidate's kernels" in result.reasons[0]


def timed_result(speedup: float, roofline: float | None = None) -> EvalResult:
    timing = SetTiming(
        input_set="odd",
        target=True,
        candidate=steady(1.0),
        speedup_vs_eager=speedup,
        roofline_fraction=roofline,
        floor_ms=roofline,
    )
    result = EvalResult(
        status=Status.correct,
        problem="14_Gemm_Divide_Sum_Scaling",
        backend="triton",
        environment=Environment(device="cuda"),
        timings=[timing],
        speedup_vs_eager=speedup,
    )
    host._flag(result, timing)
    result.phase_seconds.total = 20.0
    return result


@pytest.mark.parametrize(("fraction", "flagged"), [(1.004, False), (1.05, False), (1.06, True)])
def test_a_time_at_the_measured_bandwidth_is_not_flagged_one_well_past_it_is(fraction, flagged):
    """1.004: an honest softmax against the H200's measured copy bandwidth (2026-12-02)."""
    result = timed_result(2.0, roofline=fraction)
    assert result.suspicious is flagged, result.suspicious_reasons


def test_only_a_correct_result_flagged_for_its_speed_alone_is_evaluated_again():
    assert host.flagged_for_speed_alone(timed_result(42.8))
    assert not host.flagged_for_speed_alone(timed_result(3.0))
    beyond_floor = timed_result(42.8, roofline=1.5)
    assert beyond_floor.suspicious and not host.flagged_for_speed_alone(beyond_floor)
    unreset = timed_result(42.8)
    unreset.suspicious_reasons.append(host.L2_NOT_RESET)
    assert not host.flagged_for_speed_alone(unreset)
    wrong = timed_result(42.8)
    wrong.status = Status.incorrect
    assert not host.flagged_for_speed_alone(wrong)


def test_the_second_evaluation_is_stricter_and_not_itself_re_verified():
    config = EvalConfig(device="cuda", profile=False)
    second = host.reverify_config(config)
    assert second.seeds == host.REVERIFY_SEED_FACTOR * config.seeds
    assert second.verify_per_batch == config.batch and second.profile
    assert not second.reverify_suspicious


def test_a_result_correct_again_counts_re_verified_with_both_evaluations_seconds():
    first, second = timed_result(42.8), timed_result(39.6)
    result = host.reverified(first, second)
    assert result.status is Status.correct and result.reverified and not result.suspicious
    assert result.speedup_vs_eager == 39.6  # the second, stricter evaluation's figure
    assert result.phase_seconds.total == 40.0
    assert result.phase_seconds.detail["first_evaluation"] == 20.0
    assert "42.8x faster than eager" in result.suspicious_reasons[0]
    assert result.notes[-1].startswith("re-verified: flagged for 'odd': 42.8x faster than eager")


def test_a_result_that_fails_its_re_verification_is_not_counted():
    first, second = timed_result(42.8), timed_result(39.6)
    second.status = Status.incorrect
    second.reasons = ["mismatch on input set 'odd' seed 7: 12 elements"]
    result = host.reverified(first, second)
    assert result.status is Status.incorrect and not result.reverified
    assert result.reasons[0].startswith("re-verification of a result flagged for its speed")
    beyond = host.reverified(timed_result(42.8), timed_result(42.8, roofline=1.5))
    assert beyond.suspicious and not beyond.reverified


def test_the_deadline_an_executor_allows_covers_the_second_evaluation():
    from forge.evaluator import resolve_problem

    problem = resolve_problem("softmax")
    source = (LEGIT / "triton_softmax.py").read_text()
    once = EvalConfig(device="cuda", reverify_suspicious=False)
    both = EvalConfig(device="cuda")
    single = host.deadline_for(problem, source, once)
    assert host.deadline_for(problem, source, both) == single + host.deadline_for(
        problem, source, host.reverify_config(once)
    )
    assert host.deadline_for(problem, source, both) > single


def trusted_clock(wall_ms: float, claimed_ms: list[float]) -> tuple[str | None, RawTiming]:
    """The trusted clock's check of one batch (`SetTimer.cross_check`) with the sleep head and
    fixed work of the honest Swish batch the H200 rejected on 2026-12-02 (7.1 ms together)."""
    timer = SetTimer.__new__(SetTimer)
    timer.name = "odd"
    raw = RawTiming(input_set="odd", samples={})
    return timer.cross_check(raw, Reply(device_ms=claimed_ms), wall_ms, 2.0, 5.09), raw


def test_a_batch_within_the_trusted_clocks_bound_agrees():
    disagreement, raw = trusted_clock(15.0, [0.3219] * 10)
    assert disagreement is None
    assert raw.wall_checks == ["15.00 ms <= 18.40 ms"]


def test_a_batch_past_the_bound_is_a_disagreement_to_time_again_not_yet_a_verdict():
    disagreement, raw = trusted_clock(19.27, [0.3219] * 10)
    assert disagreement.startswith(
        "timing disagrees with the trusted clock on 'odd': the batch took 19.27 ms, at most "
        "18.40 ms is explained by the reported 3.219 ms of calls"
    )
    assert raw.wall_checks == []


def test_more_device_time_than_the_batch_took_rejects_at_once():
    with pytest.raises(Verdict, match="timing forged on 'odd'"):
        trusted_clock(4.0, [1.0] * 10)
