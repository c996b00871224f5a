"""The same kernels under each precision policy: baselines, candidate, speedup, error, detection.

For every case (a problem file and a candidate file) and every policy the problem accepts among
`--policies`, one full evaluation on the GPU (`forge.evaluator.evaluate`): the eager and
torch.compile baselines timed under that policy, the candidate's time and speedups at the
target set, the largest error of the candidate against the strict reference, the tolerance the
policy gave, and the precision detected in the candidate's compiled code. A candidate file that
sets `INPUT_PRECISION = "tf32"` (the fixtures in tests/fixtures/precision/) is also evaluated as
its `"ieee"` variant (fp32 FMA only), so `strict` shows both the rejection of the TF32 kernel
and the speedup of the fp32 one.

    python bench/precision_bench.py --out precision.json
    python bench/precision_bench.py --case path/problem.py:path/candidate.py --policies strict,tf32
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from forge.evaluator import EvalConfig, evaluate, resolve_problem
from forge.evaluator.result import EvalResult

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "precision"
DEFAULT_CASES = [
    f"{FIXTURES / 'matmul.py'}:{FIXTURES / 'triton_matmul.py'}",
    f"{FIXTURES / 'gemm_multiply_leakyrelu.py'}:{FIXTURES / 'triton_gemm_multiply_leakyrelu.py'}",
    f"{FIXTURES / 'matmul_scale_residual.py'}:{FIXTURES / 'triton_matmul_scale_residual.py'}",
]
TF32_LINE = 'INPUT_PRECISION = "tf32"'


def variants(source: str) -> dict[str, str]:
    if TF32_LINE not in source:
        return {"as given": source}
    return {
        "tl.dot tf32": source,
        "tl.dot ieee": source.replace(TF32_LINE, 'INPUT_PRECISION = "ieee"'),
    }


def per_set(checks: list) -> dict:
    """Per input set: the candidate's largest error against the strict reference, and the
    largest atol a comparison there allowed."""
    sets: dict[str, dict] = {}
    for c in checks:
        entry = sets.setdefault(c.input_set, {"max_abs_error": 0.0, "atol": 0.0})
        entry["max_abs_error"] = max(entry["max_abs_error"], c.max_abs_error)
        entry["atol"] = max(entry["atol"], c.atol or 0.0)
    return sets


def row(problem: str, variant: str, policy: str, result: EvalResult, seconds: float) -> dict:
    target = next((t for t in result.timings if t.target), None)
    precision = result.precision
    tolerance = None
    if precision and target:
        tolerance = next((t for t in precision.tolerances if t.input_set == target.input_set), None)
    checks = [c for c in result.checks if c.phase != "two_runs_agree"]
    return {
        "problem": problem,
        "candidate": variant,
        "policy": policy,
        "status": result.status.value,
        "reasons": result.reasons[:3],
        "gpu": result.environment.gpu_name,
        "target_set": target.input_set if target else None,
        "eager_ms": target.eager.median_ms if target and target.eager else None,
        "compile_ms": target.compiled.median_ms if target and target.compiled else None,
        "candidate_ms": target.candidate.median_ms if target else None,
        "speedup_vs_eager": result.speedup_vs_eager,
        "speedup_vs_compile": result.speedup_vs_compile,
        "roofline_fraction": target.roofline_fraction if target else None,
        "max_abs_error": max((c.max_abs_error for c in checks), default=None),
        "max_rel_error": max((c.max_rel_error for c in checks), default=None),
        "errors": per_set(checks),
        "atol": tolerance.atol if tolerance else (None if precision is None else "strict"),
        "atol_min": tolerance.atol_min if tolerance else None,
        "reference_error": tolerance.reference_error if tolerance else None,
        "tolerances": [t.model_dump() for t in precision.tolerances] if precision else [],
        "detected": precision.detected if precision else None,
        "detected_by": precision.inspected if precision else None,
        "precision_kernels": [k.model_dump() for k in precision.kernels] if precision else [],
        "not_inspected": precision.not_inspected if precision else [],
        "notes": result.notes,
        "seconds": round(seconds, 1),
    }


def _fmt(value, pattern: str = "{:.4f}") -> str:
    return (
        pattern.format(value)
        if isinstance(value, float)
        else str(value if value is not None else "-")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", help="PROBLEM.py:CANDIDATE.py (repeatable)")
    parser.add_argument("--policies", default="strict,tf32")
    parser.add_argument("--out", required=True, help="where the JSON rows go")
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    parser.add_argument("--no-profile", action="store_true", help="skip Nsight Compute")
    parser.add_argument(
        "--device", default="cuda", help="cpu: a smoke run of this script (no timings)"
    )
    args = parser.parse_args()
    rows = []
    for case in args.case or DEFAULT_CASES:
        problem_path, _, candidate_path = case.partition(":")
        problem = resolve_problem(problem_path)
        source = Path(candidate_path).read_text()
        for policy in args.policies.split(","):
            if policy not in problem.precisions:
                print(f"{problem.name}: skips {policy} (accepts {', '.join(problem.precisions)})")
                continue
            for variant, text in variants(source).items():
                config = EvalConfig(
                    device=args.device,
                    precision=policy,
                    trials=args.trials,
                    baselines=["eager"] if args.no_compile else ["eager", "compile"],
                    profile=not args.no_profile,
                )
                t0 = time.perf_counter()
                result = evaluate(problem, text, config)
                rows.append(row(problem.name, variant, policy, result, time.perf_counter() - t0))
                r = rows[-1]
                print(
                    f"{r['problem']:<26} {variant:<12} {policy:<7} {r['status']:<9} "
                    f"eager {_fmt(r['eager_ms'])} compile {_fmt(r['compile_ms'])} "
                    f"cand {_fmt(r['candidate_ms'])} ms  x{_fmt(r['speedup_vs_eager'], '{:.2f}')} eager "
                    f"x{_fmt(r['speedup_vs_compile'], '{:.2f}')} compile  err {_fmt(r['max_abs_error'], '{:.2e}')} "
                    f"atol {_fmt(r['atol'], '{:.2e}')}  detected {r['detected']} by {r['detected_by']}",
                    flush=True,
                )
                if r["status"] != "correct":
                    print(f"    {r['reasons'][:1]}", flush=True)
                # after every row: a run cut short by its time limit keeps what it measured
                Path(args.out).write_text(json.dumps(rows, indent=2, default=str))
    print(f"{len(rows)} rows -> {args.out}")


if __name__ == "__main__":
    main()
