"""Seconds per verdict, split into phases, for Triton and both CUDA flavours, cold and warm caches.

Cold: an empty compiler cache directory (Triton, torch extensions, cupy, inductor). Warm: the
same candidate again with that cache filled. Each evaluation is a fresh sandboxed process.

    python bench/eval_latency.py [--json out.json] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from forge.evaluator import EvalConfig, evaluate, resolve_problem

ROOT = Path(__file__).resolve().parent.parent
CANDIDATES = {
    "triton": ROOT / "tests/fixtures/legit/triton_softmax.py",
    "cuda-nvrtc": ROOT / "tests/fixtures/legit/cuda_nvrtc_softmax.py",
    "cuda-inline": ROOT / "tests/fixtures/legit/cuda_inline_softmax.py",
}
PHASES = ("static", "startup", "compile", "correctness", "timing", "profiling", "total")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default="")
    parser.add_argument("--op", default="softmax")
    parser.add_argument("--flavours", default=",".join(CANDIDATES))
    parser.add_argument("--baselines", default="eager,compile")
    args = parser.parse_args()
    problem = resolve_problem(args.op)
    rows = []
    for flavour in args.flavours.split(","):
        source = CANDIDATES[flavour].read_text()
        with tempfile.TemporaryDirectory(prefix="forge-bench-cache-") as cache:
            for state in ("cold", "warm"):
                config = EvalConfig(device="cuda", cache_dir=Path(cache), baselines=args.baselines.split(","))
                result = evaluate(problem, source, config)
                row = {"flavour": flavour, "cache": state, "status": result.status.value, **result.phase_seconds.model_dump()}
                row["speedup_vs_eager"] = result.speedup_vs_eager
                row["reasons"] = result.reasons[:2]
                rows.append(row)
                print(f"{flavour:12s} {state:5s} {result.status.value:14s} " + " ".join(f"{p}={row[p]:.2f}" for p in PHASES), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
