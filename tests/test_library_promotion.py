"""Promotion rules (every refusal reason), the entry a promotion makes, and promotion through
the database (`promote`, `promote_best`)."""

from __future__ import annotations

import json

import pytest
from test_library_helpers import (
    LEGIT,
    checks_for,
    cpu_problem,
    environment,
    make_result,
    real_cpu_result,
)

from forge.db.library import list_entries, promote, promote_best, record_from_row
from forge.db.store import RecordNotFound, RunStore
from forge.evaluator.problem import resolve_problem
from forge.evaluator.result import Status
from forge.kernels_library.promotion import PromotionRefused, build_entry, refusal_reasons
from forge.kernels_library.storage import read_entry

SOFTMAX = resolve_problem("softmax")
SOURCE = (LEGIT / "triton_softmax.py").read_text()


def refused(result, problem=SOFTMAX, threshold=1.05) -> list[str]:
    with pytest.raises(PromotionRefused) as info:
        build_entry(problem, SOURCE, result, threshold)
    assert info.value.reasons == refusal_reasons(result, problem, threshold)
    return info.value.reasons


def test_a_correct_fast_candidate_becomes_an_entry_keyed_to_its_machine():
    result = make_result(SOFTMAX, {"tiny": 1.2, "odd": 1.0, "wide": 2.0, "large": 1.3})
    record = build_entry(SOFTMAX, SOURCE, result, 1.05, candidate_id=7, run_id=3)
    m = record.meta
    assert (m.op, m.aten, m.dtype, m.backend) == ("softmax", "aten::_softmax", "float32", "triton")
    assert (m.arch, m.torch_version, m.triton_version, m.cuda_version) == (
        "sm_90",
        "2.11",
        "3.6",
        "13.0",
    )
    assert m.versions_full["torch"] == "2.11.0+cu130"
    by_set = {s.input_set: s for s in m.sets}
    # batch_size is batch-like (pow2 bucket), dim weight-like (exact)
    assert by_set["tiny"].bucket == {"batch_size": 8, "dim": 127}
    assert by_set["wide"].bucket == {"batch_size": 256, "dim": 32769}
    assert by_set["large"].constants == {"batch_size": 4096, "dim": 8192}
    # per-set speedups kept; a set slower than the threshold is not served
    assert by_set["wide"].speedup_vs_eager == 2.0 and by_set[
        "wide"
    ].speedup_vs_compile == pytest.approx(1.6)
    assert [s.served for s in m.sets] == [True, False, True, True]
    assert m.speedup_vs_eager == pytest.approx((1.2 * 1.0 * 2.0 * 1.3) ** 0.25)
    v = m.verification
    assert (v.candidate_id, v.run_id, v.seeds_per_set, v.checks, v.threshold) == (7, 3, 3, 12, 1.05)
    assert [s.name for s in v.input_sets] == ["tiny", "odd", "wide", "large"]
    assert m.files and m.meta_sha256


def test_same_candidate_same_machine_gives_the_same_id_another_arch_another():
    a = build_entry(SOFTMAX, SOURCE, make_result(SOFTMAX), 1.05)
    b = build_entry(SOFTMAX, SOURCE, make_result(SOFTMAX), 1.05)
    c = build_entry(SOFTMAX, SOURCE, make_result(SOFTMAX, env=environment(arch="sm_80")), 1.05)
    assert a.meta.id == b.meta.id != c.meta.id


def test_refused_when_not_correct():
    reasons = refused(make_result(SOFTMAX, status=Status.incorrect))
    assert reasons[0].startswith("status is 'incorrect', not 'correct': output mismatch")


def test_refused_when_a_check_failed():
    reasons = refused(make_result(SOFTMAX, failed=("odd", 2)))
    assert any(
        "1 correctness check(s) failed (first: input set 'odd', seed 2" in r for r in reasons
    )


def test_refused_when_an_input_set_was_not_checked():
    result = make_result(SOFTMAX, {"tiny": 1.5}, sets=["tiny"])
    reasons = refused(result)
    for name in ("odd", "wide", "large"):
        assert f"input set '{name}' was never checked" in reasons


def test_refused_with_fewer_than_three_seeds():
    reasons = refused(make_result(SOFTMAX, seeds=2))
    assert "input set 'tiny' was checked with 2 seed(s), fewer than 3" in reasons


def test_refused_when_no_checks_at_all():
    result = make_result(SOFTMAX).model_copy(update={"checks": []})
    assert "no correctness checks were recorded" in refused(result)


def test_refused_when_suspicious():
    reasons = refused(make_result(SOFTMAX, suspicious=True))
    assert reasons == ["flagged suspicious: 'large': 14.0x faster than eager (> 10x)"]


def test_refused_below_the_threshold_with_the_per_set_numbers():
    reasons = refused(make_result(SOFTMAX, {"tiny": 1.0, "odd": 1.02, "wide": 1.04, "large": 1.06}))
    assert len(reasons) == 1
    assert "below the 1.05x threshold" in reasons[0] and "large 1.06x" in reasons[0]
    # the same result passes a lower threshold
    assert build_entry(
        SOFTMAX,
        SOURCE,
        make_result(SOFTMAX, {"tiny": 1.0, "odd": 1.02, "wide": 1.04, "large": 1.06}),
        1.02,
    )


def test_refused_without_timings_cpu_evaluation():
    # the evaluator's own CPU verdict: correct, but nothing timed
    result = real_cpu_result("softmax", "triton_softmax.py")
    reasons = refusal_reasons(result, cpu_problem("softmax"))
    assert reasons == [
        "no timings: evaluated on 'cpu' (promotion needs timings vs eager from a GPU)"
    ]


def test_refused_when_a_set_was_timed_without_eager():
    reasons = refused(make_result(SOFTMAX, eager=False))
    assert "input set 'tiny' was timed without the eager baseline" in reasons


def test_refused_without_architecture_or_versions():
    result = make_result(SOFTMAX, env=environment(arch="", torch_version="", triton=""))
    reasons = refused(result)
    assert "the evaluation recorded no GPU architecture" in reasons
    assert "the evaluation recorded no torch version" in reasons
    assert "a Triton kernel evaluated without a recorded triton version" in reasons


def test_every_failed_rule_is_listed_at_once():
    result = make_result(
        SOFTMAX,
        {"tiny": 0.5, "odd": 0.5, "wide": 0.5, "large": 0.5},
        suspicious=True,
        status=Status.incorrect,
    )
    reasons = refused(result)
    assert len(reasons) == 3 and "below the 1.05x threshold" in reasons[-1]


def test_a_timed_set_unknown_to_the_problem_is_refused():
    result = make_result(SOFTMAX)
    result.timings[0].input_set = "huge"
    assert "timed input set 'huge' is not an input set of problem 'softmax'" in refused(result)


# ------------------------------------------------------------------------------- database


@pytest.fixture
def store(tmp_path, monkeypatch, db_url) -> RunStore:
    monkeypatch.setenv("FORGE_HOME", str(tmp_path / "home"))
    return RunStore(db_url)


def add_candidate(
    store: RunStore, run_id: int, result, source: str = SOURCE, round: int = 0
) -> int:
    cid = store.add_candidate(
        run_id, 0, round, source, "triton", "initial" if round == 0 else "optimize"
    )
    store.add_evaluation(cid, result)
    return cid


def new_run(store: RunStore) -> int:
    return store.create_run(SOFTMAX, {}, "scripted", "scripted", "triton", "cuda")


def test_promote_stores_the_entry_and_publishes_its_folder(store, tmp_path):
    run = new_run(store)
    cid = add_candidate(
        store, run, make_result(SOFTMAX, {"tiny": 1.1, "odd": 1.2, "wide": 1.3, "large": 1.4})
    )
    row = promote(store, cid)
    assert (
        row.op,
        row.dtype,
        row.arch,
        row.torch_version,
        row.triton_version,
        row.cuda_version,
    ) == ("softmax", "float32", "sm_90", "2.11", "3.6", "13.0")
    assert row.candidate_id == cid and row.active and row.speedup_vs_eager > 1.05
    assert json.loads(row.shape_key) == [
        {"batch_size": 8, "dim": 127},
        {"batch_size": 64, "dim": 1000},
        {"batch_size": 256, "dim": 32769},
        {"batch_size": 4096, "dim": 8192},
    ]
    record = record_from_row(row)
    folder = tmp_path / "home" / "library" / record.meta.folder_name()
    on_disk = read_entry(folder)
    assert on_disk.meta == record.meta and on_disk.kernel_source == SOURCE
    # promoting the same candidate again updates the same entry
    assert promote(store, cid).id == row.id
    assert len(list_entries(store)) == 1


def test_promote_refusals_through_the_database(store):
    run = new_run(store)
    slow = add_candidate(
        store, run, make_result(SOFTMAX, {"tiny": 1.0, "odd": 1.0, "wide": 1.0, "large": 1.0})
    )
    with pytest.raises(
        PromotionRefused,
        match=r"candidate \d+ not promoted: 1.000x vs eager .* below the 1.05x threshold",
    ):
        promote(store, slow)
    unevaluated = store.add_candidate(run, 0, 1, SOURCE, "triton", "optimize")
    with pytest.raises(PromotionRefused, match="it was never evaluated"):
        promote(store, unevaluated)
    with pytest.raises(RecordNotFound):
        promote(store, 999)
    assert list_entries(store) == []


def test_promote_best_returns_the_entry_or_the_reason(store):
    run = new_run(store)
    entry, reason = promote_best(store, run)
    assert entry is None and reason == f"run {run} has no correct, non-suspicious candidate"
    add_candidate(
        store, run, make_result(SOFTMAX, {"tiny": 1.01, "odd": 1.0, "wide": 1.0, "large": 1.0})
    )
    entry, reason = promote_best(store, run)
    assert entry is None and "below the 1.05x threshold" in reason
    fast = add_candidate(
        store,
        run,
        make_result(SOFTMAX, {"tiny": 1.5, "odd": 1.6, "wide": 1.7, "large": 1.8}),
        SOURCE + "\n# faster\n",
        round=1,
    )
    entry, reason = promote_best(store, run)
    assert entry is not None and entry.candidate_id == fast
    assert reason.startswith(
        f"candidate {fast} promoted as library entry {entry.id} (softmax, float32, sm_90, 1.6"
    )


def test_suspicious_best_is_not_promoted(store):
    run = new_run(store)
    add_candidate(store, run, make_result(SOFTMAX, suspicious=True))
    entry, reason = promote_best(store, run)
    assert entry is None and "no correct, non-suspicious candidate" in reason


def test_checks_for_helper_builds_seed_coverage():
    assert len(checks_for(["a", "b"], 3)) == 6
