"""Re-running the evaluator on library entries: re-verification on this machine, and timing.

Both evaluate the entry's kernel against the problem stored with it, on exactly the input sets
it was verified on (`promotion.problem_for`), with `forge.evaluator.evaluate`, so the numbers
are the evaluator's: correctness on every set and seed, then interleaved medians of the kernel,
eager PyTorch and torch.compile. No database here (`forge.db.library.verify_entries` records
the outcome).
"""

from __future__ import annotations

from dataclasses import dataclass

from forge.evaluator.config import EvalConfig
from forge.evaluator.result import EvalResult
from forge.kernels_library.promotion import PromotionRefused, build_entry, problem_for
from forge.kernels_library.storage import EntryRecord


@dataclass
class Reverification:
    """The outcome of re-verifying one entry here: the new entry (None when refused), the
    reason when refused, and the evaluator's result."""

    source: EntryRecord
    result: EvalResult
    entry: EntryRecord | None
    reason: str = ""


def reverify(
    record: EntryRecord,
    *,
    device: str = "cuda",
    threshold: float | None = None,
    config: EvalConfig | None = None,
    candidate_id: int | None = None,
) -> Reverification:
    """Evaluate the entry's kernel on this machine and apply the promotion rules (the entry's
    own threshold unless one is given). A pass gives an entry keyed to this machine."""
    from forge.evaluator.host import evaluate

    problem = problem_for(record)
    config = config or EvalConfig(device=device, profile=False, backend=record.meta.backend)
    result = evaluate(problem, record.kernel_source, config)
    limit = record.meta.verification.threshold if threshold is None else threshold
    try:
        entry = build_entry(
            problem,
            record.kernel_source,
            result,
            limit,
            candidate_id=candidate_id,
            run_id=record.meta.verification.run_id,
        )
    except PromotionRefused as refused:
        return Reverification(record, result, None, "; ".join(refused.reasons))
    return Reverification(record, result, entry)


@dataclass
class BenchRow:
    """One input set of one entry, timed here."""

    op: str
    entry_id: str
    dtype: str
    input_set: str
    shape: dict
    status: str
    kernel_ms: float | None
    eager_ms: float | None
    compile_ms: float | None
    speedup_vs_eager: float | None
    speedup_vs_compile: float | None
    recorded_speedup_vs_eager: float | None
    gpu_name: str
    note: str = ""


def bench(record: EntryRecord, *, trials: int = 50, device: str = "cuda") -> list[BenchRow]:
    """Time the entry's kernel against eager and torch.compile on every input set it was timed
    on at promotion (the evaluator verifies it first; an entry that fails gives one row with
    the status and reason)."""
    from forge.evaluator.host import evaluate

    problem = problem_for(record)
    timed = [s.input_set for s in record.meta.sets]
    config = EvalConfig(
        device=device, profile=False, trials=trials, timing_sets=timed, backend=record.meta.backend
    )
    result = evaluate(problem, record.kernel_source, config)
    recorded = {s.input_set: s.speedup_vs_eager for s in record.meta.sets}
    shapes = {s.name: s.constants for s in problem.input_sets}
    base = {
        "op": record.meta.op,
        "entry_id": record.meta.id,
        "dtype": record.meta.dtype,
        "gpu_name": result.environment.gpu_name,
    }
    if not result.timings:
        reason = result.reasons[0] if result.reasons else "nothing was timed"
        return [
            BenchRow(
                **base,
                input_set="-",
                shape={},
                status=result.status.value,
                kernel_ms=None,
                eager_ms=None,
                compile_ms=None,
                speedup_vs_eager=None,
                speedup_vs_compile=None,
                recorded_speedup_vs_eager=None,
                note=reason,
            )
        ]
    rows = []
    for t in result.timings:
        rows.append(
            BenchRow(
                **base,
                input_set=t.input_set,
                shape=shapes.get(t.input_set, {}),
                status=result.status.value,
                kernel_ms=t.candidate.median_ms,
                eager_ms=t.eager.median_ms if t.eager else None,
                compile_ms=t.compiled.median_ms if t.compiled else None,
                speedup_vs_eager=t.speedup_vs_eager,
                speedup_vs_compile=t.speedup_vs_compile,
                recorded_speedup_vs_eager=recorded.get(t.input_set),
                note="; ".join(result.suspicious_reasons),
            )
        )
    return rows
