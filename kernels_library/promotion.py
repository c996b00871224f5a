"""Promotion rules: which evaluated candidate may enter the library, and the entry it becomes.

A candidate is promoted only when its EvalResult is `correct`, every input set of the problem
was checked with at least `MIN_SEEDS` seeds and every check passed, it is not flagged
suspicious, it was evaluated under the `strict` precision policy (the library stands in for
PyTorch ops in programs that chose no other), it was timed against eager on every timed set,
and its speedup vs eager (geometric mean over the timed sets) is at least the threshold
(default 1.05). The entry keeps each timed
set's shape, shape bucket and speedups vs eager and torch.compile; the runtime serves a bucket
only where that set's own speedup reached the threshold.

No database and no torch here: `forge.db.library.promote` reads the candidate and its
evaluation from the database and calls `build_entry`; the GPU bench calls it directly.
"""

from __future__ import annotations

from datetime import datetime, timezone

from forge.evaluator.precision import STRICT
from forge.evaluator.problem import Problem
from forge.evaluator.result import EvalResult, Status, geomean
from forge.kernels_library.keys import bucket_of, major_minor, validate_rules
from forge.kernels_library.storage import (
    EntryMeta,
    EntryRecord,
    InputSetSpec,
    LibraryError,
    SetResult,
    Verification,
    entry_id,
)

DEFAULT_THRESHOLD = 1.05
MIN_SEEDS = 3


class PromotionRefused(LibraryError):
    """The candidate does not meet the promotion rules; `reasons` lists every rule it fails."""

    def __init__(self, reasons: list[str], subject: str = "candidate") -> None:
        self.reasons = list(reasons)
        super().__init__(f"{subject} not promoted: " + "; ".join(self.reasons))


def refusal_reasons(
    result: EvalResult, problem: Problem, threshold: float = DEFAULT_THRESHOLD
) -> list[str]:
    """Every promotion rule `result` fails (empty: it may be promoted)."""
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    reasons: list[str] = []
    if result.status is not Status.correct:
        why = f": {result.reasons[0]}" if result.reasons else ""
        reasons.append(f"status is '{result.status.value}', not 'correct'{why}")
    reasons.extend(_coverage_reasons(result, problem))
    if result.suspicious:
        reasons.append(
            "flagged suspicious: " + ("; ".join(result.suspicious_reasons) or "no reason recorded")
        )
    reasons.extend(_timing_reasons(result, problem, threshold))
    if result.precision is not None and result.precision.policy != STRICT:
        reasons.append(
            f"evaluated under --precision {result.precision.policy}: the library stands in for "
            "PyTorch ops in programs that did not choose that precision, so only strict "
            "verdicts are promoted"
        )
    env = result.environment
    if not env.arch:
        reasons.append("the evaluation recorded no GPU architecture")
    if not major_minor(env.torch_version):
        reasons.append("the evaluation recorded no torch version")
    if result.backend == "triton" and not major_minor(env.triton_version):
        reasons.append("a Triton kernel evaluated without a recorded triton version")
    return reasons


def _coverage_reasons(result: EvalResult, problem: Problem) -> list[str]:
    reasons = []
    if not result.checks:
        return ["no correctness checks were recorded"]
    failed = [c for c in result.checks if not c.passed]
    if failed:
        c = failed[0]
        reasons.append(
            f"{len(failed)} correctness check(s) failed (first: input set '{c.input_set}', seed {c.seed_index}, "
            f"max abs error {c.max_abs_error:.3g})"
        )
    device = result.environment.device if result.environment.device in ("cuda", "cpu") else "cuda"
    expected = [
        s.name
        for s in (
            problem.input_sets if device == "cuda" else [s for s in problem.input_sets if s.cpu]
        )
    ]
    for name in expected:
        seeds = {c.seed_index for c in result.checks if c.input_set == name}
        if not seeds:
            reasons.append(f"input set '{name}' was never checked")
        elif len(seeds) < MIN_SEEDS:
            reasons.append(
                f"input set '{name}' was checked with {len(seeds)} seed(s), fewer than {MIN_SEEDS}"
            )
    return reasons


def _timing_reasons(result: EvalResult, problem: Problem, threshold: float) -> list[str]:
    if not result.timing_meaningful or not result.timings:
        return [
            f"no timings: evaluated on '{result.environment.device}' (promotion needs timings vs eager from a GPU)"
        ]
    reasons = []
    known = {s.name for s in problem.input_sets}
    for t in result.timings:
        if t.input_set not in known:
            reasons.append(
                f"timed input set '{t.input_set}' is not an input set of problem '{problem.name}'"
            )
        if t.eager is None or t.speedup_vs_eager is None:
            reasons.append(f"input set '{t.input_set}' was timed without the eager baseline")
    speedups = [t.speedup_vs_eager for t in result.timings if t.speedup_vs_eager]
    overall = geomean(speedups)
    if overall is not None and overall < threshold:
        per_set = ", ".join(
            f"{t.input_set} {t.speedup_vs_eager:.2f}x" for t in result.timings if t.speedup_vs_eager
        )
        reasons.append(
            f"{overall:.3f}x vs eager (geometric mean; {per_set}) is below the {threshold:g}x threshold"
        )
    return reasons


def build_entry(
    problem: Problem,
    kernel_source: str,
    result: EvalResult,
    threshold: float = DEFAULT_THRESHOLD,
    *,
    candidate_id: int | None = None,
    run_id: int | None = None,
) -> EntryRecord:
    """The library entry for an evaluated candidate; raises PromotionRefused with every failed
    rule. `problem` must be the problem (with the input sets) the result was evaluated on."""
    subject = f"candidate {candidate_id}" if candidate_id is not None else "candidate"
    reasons = refusal_reasons(result, problem, threshold)
    if reasons:
        raise PromotionRefused(reasons, subject)
    validate_rules(problem.shape_buckets, problem.name)
    env = result.environment
    sets_by_name = {s.name: s for s in problem.input_sets}
    sets = []
    for t in result.timings:
        constants = dict(sets_by_name[t.input_set].constants)
        sets.append(
            SetResult(
                input_set=t.input_set,
                constants=constants,
                bucket=bucket_of(constants, problem.shape_buckets),
                candidate_ms=t.candidate.median_ms,
                eager_ms=t.eager.median_ms if t.eager else None,
                compile_ms=t.compiled.median_ms if t.compiled else None,
                speedup_vs_eager=t.speedup_vs_eager,
                speedup_vs_compile=t.speedup_vs_compile,
                served=bool(t.speedup_vs_eager and t.speedup_vs_eager >= threshold),
            )
        )
    checked = {c.input_set for c in result.checks}
    verification = Verification(
        status=result.status.value,
        device=env.device,
        gpu_name=env.gpu_name,
        input_sets=[
            InputSetSpec(name=s.name, constants=dict(s.constants), cpu=s.cpu)
            for s in problem.input_sets
            if s.name in checked
        ],
        seeds_per_set=min(
            len({c.seed_index for c in result.checks if c.input_set == name}) for name in checked
        ),
        checks=len(result.checks),
        max_abs_error=max(c.max_abs_error for c in result.checks),
        max_rel_error=max(c.max_rel_error for c in result.checks),
        kernels_seen=list(result.kernels_seen),
        threshold=threshold,
        candidate_id=candidate_id,
        run_id=run_id,
        promoted_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    key = {
        "op": problem.name,
        "dtype": problem.dtype,
        "backend": result.backend,
        "arch": env.arch,
        "torch": major_minor(env.torch_version),
        "triton": major_minor(env.triton_version),
        "cuda": major_minor(env.cuda_version),
        "sets": [{"constants": s.constants, "served": s.served} for s in sets],
    }
    meta = EntryMeta(
        id=entry_id(key, kernel_source),
        op=problem.name,
        aten=problem.aten,
        dtype=problem.dtype,
        backend=result.backend,
        arch=env.arch,
        torch_version=key["torch"],
        triton_version=key["triton"],
        cuda_version=key["cuda"],
        versions_full={
            "torch": env.torch_version,
            "triton": env.triton_version,
            "cuda": env.cuda_version,
        },
        shape_buckets=dict(problem.shape_buckets),
        sets=sets,
        speedup_vs_eager=geomean([s.speedup_vs_eager for s in sets if s.speedup_vs_eager]),
        speedup_vs_compile=geomean([s.speedup_vs_compile for s in sets if s.speedup_vs_compile]),
        verification=verification,
    )
    return EntryRecord(meta, kernel_source, problem.source).sealed()


def problem_for(record: EntryRecord) -> Problem:
    """The problem an entry was verified against, with exactly the input sets it was checked on
    (what `forge library verify` and `forge library bench` re-run)."""
    from forge.evaluator.problem import InputSet, load_problem

    problem = load_problem(record.problem_source, record.meta.op)
    sets = [
        InputSet(name=s.name, constants=dict(s.constants), cpu=s.cpu)
        for s in record.meta.verification.input_sets
    ]
    return problem.model_copy(update={"input_sets": sets, "name": record.meta.op})
