"""Seconds per verdict, split into phases, for Triton and both CUDA flavours, cold and warm caches.

Cold: an empty compiler cache directory (Triton, torch extensions, cupy, inductor). Warm: the
same candidate again with that cache filled. Warm-prestarted: as the optimize loop runs, with
the worker process started ahead of its job. Each evaluation is a fresh sandboxed process.
"verdict" is the time until correct/incorrect is known: static + startup (which includes
waiting for the runner's own start-up, `prepare`, where it was not done ahead) + compile +
correctness.

    python bench/eval_latency.py [--json out.json] [--device cpu --flavours triton]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from forge.evaluator import EvalConfig, evaluate, resolve_problem
from forge.sandbox.local import LocalSandbox

ROOT = Path(__file__).resolve().parent.parent
CANDIDATES = {
    "triton": ROOT / "tests/fixtures/legit/triton_softmax.py",
    "cuda-nvrtc": ROOT / "tests/fixtures/legit/cuda_nvrtc_softmax.py",
    "cuda-inline": ROOT / "tests/fixtures/legit/cuda_inline_softmax.py",
}
PHASES = ("static", "prepare", "startup", "compile", "correctness", "timing", "profiling", "total")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default="")
    parser.add_argument("--op", default="softmax")
    parser.add_argument("--flavours", default=",".join(CANDIDATES))
    parser.add_argument("--baselines", default="eager,compile")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu (Triton interpreter)")
    parser.add_argument(
        "--idle", type=float, default=15.0, help="seconds the pre-started worker gets to prepare"
    )
    args = parser.parse_args()
    problem = resolve_problem(args.op)
    rows = []
    for flavour in args.flavours.split(","):
        source = CANDIDATES[flavour].read_text()
        with tempfile.TemporaryDirectory(prefix="forge-bench-cache-") as cache:
            os.chmod(cache, 0o755)
            config = EvalConfig(
                device=args.device, cache_dir=Path(cache), baselines=args.baselines.split(",")
            )
            prestarted = LocalSandbox(cache_dir=Path(cache), prestart=True)
            for state in ("cold", "warm", "warm-prestarted"):
                if state == "warm-prestarted":
                    evaluate(
                        problem, source, config, sandbox=prestarted
                    )  # leaves a worker started ahead
                    time.sleep(args.idle)
                result = evaluate(
                    problem,
                    source,
                    config,
                    sandbox=prestarted if state == "warm-prestarted" else None,
                )
                row = {
                    "flavour": flavour,
                    "cache": state,
                    "status": result.status.value,
                    **result.phase_seconds.model_dump(),
                }
                row["verdict"] = sum(
                    row[p] for p in ("static", "startup", "compile", "correctness")
                )
                row["speedup_vs_eager"] = result.speedup_vs_eager
                row["reasons"] = result.reasons[:2]
                rows.append(row)
                print(
                    f"{flavour:12s} {state:16s} {result.status.value:8s} verdict={row['verdict']:.2f} "
                    + " ".join(f"{p}={row[p]:.2f}" for p in PHASES),
                    flush=True,
                )
                print(
                    "  detail: "
                    + " ".join(f"{k}={v:.2f}" for k, v in sorted(row["detail"].items())),
                    flush=True,
                )
            prestarted.close()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
