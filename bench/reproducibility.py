"""The same candidate evaluated N times, each in a separate process: spread of its speedups.

python bench/reproducibility.py [--runs 5] [--candidate tests/fixtures/legit/triton_softmax.py]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from forge.evaluator import EvalConfig, evaluate, resolve_problem

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--op", default="softmax")
    parser.add_argument("--candidate", default=str(ROOT / "tests/fixtures/legit/triton_softmax.py"))
    parser.add_argument("--json", default="")
    parser.add_argument("--trials", type=int, default=50)
    args = parser.parse_args()
    problem = resolve_problem(args.op)
    source = Path(args.candidate).read_text()
    runs = []
    for i in range(args.runs):
        r = evaluate(problem, source, EvalConfig(device="cuda", profile=False, trials=args.trials))
        per_set = {
            t.input_set: {
                "speedup_vs_eager": t.speedup_vs_eager,
                "speedup_vs_compile": t.speedup_vs_compile,
                "median_ms": t.candidate.median_ms,
                "cv": t.candidate.cv,
            }
            for t in r.timings
        }
        runs.append(
            {
                "status": r.status.value,
                "speedup_vs_eager": r.speedup_vs_eager,
                "speedup_vs_compile": r.speedup_vs_compile,
                "sets": per_set,
            }
        )
        print(
            f"run {i}: {r.status.value} geomean vs eager {r.speedup_vs_eager} vs compile {r.speedup_vs_compile}",
            flush=True,
        )
    summary = {}
    for key in ("speedup_vs_eager", "speedup_vs_compile"):
        values = [run[key] for run in runs if run[key]]
        if len(values) > 1:
            summary[key] = {
                "mean": statistics.fmean(values),
                "cv": statistics.pstdev(values) / statistics.fmean(values),
                "values": values,
            }
    for name in runs[0]["sets"] if runs else []:
        values = [
            run["sets"][name]["speedup_vs_eager"]
            for run in runs
            if run["sets"].get(name, {}).get("speedup_vs_eager")
        ]
        if len(values) > 1:
            summary[f"set:{name}"] = {
                "mean": statistics.fmean(values),
                "cv": statistics.pstdev(values) / statistics.fmean(values),
            }
    for key, s in summary.items():
        print(f"{key:24s} mean {s['mean']:.3f}  CV {s['cv']:.2%}")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
