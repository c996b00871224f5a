"""Do Forge's device times measure the kernel? Two checks on the GPU:

1. agreement: for legit candidates of several catalogue ops, the candidate's median device time
   per call at the target set against the sum of its kernels' durations in Nsight Compute
   (ncu runs the candidate from outside the runner, clocks unlocked).
2. slowdown: the legit Triton softmax launched 1, 2 and 4 times per call (the same output, k
   times the work): the device time and the speedup vs eager must move by about k.

    python bench/timing_agreement.py [--json out.json] [--ops triton_softmax,...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from forge.evaluator import EvalConfig, evaluate, resolve_problem
from forge.sandbox.local import LocalSandbox

ROOT = Path(__file__).resolve().parent.parent
LEGIT = ROOT / "tests/fixtures/legit"
DEFAULT_OPS = "triton_softmax,triton_layer_norm,triton_rms_norm,triton_gelu,triton_log_softmax,triton_silu_and_mul"
LAUNCH = "    _softmax_kernel[(rows,)]"


def op_of(stem: str) -> str:
    return stem.split("_", 1)[1]


def target_timing(result):
    return next((t for t in result.timings if t.target), None)


def agreement(sandbox: LocalSandbox, ops: list[str]) -> list[dict]:
    rows = []
    for stem in ops:
        config = EvalConfig(device="cuda", profile=True, baselines=["eager"])
        result = evaluate(
            resolve_problem(op_of(stem)),
            (LEGIT / f"{stem}.py").read_text(),
            config,
            sandbox=sandbox,
        )
        timing = target_timing(result)
        row = {"candidate": stem, "status": result.status.value, "reasons": result.reasons[:2]}
        if timing and result.profile and result.profile.tool == "ncu":
            ncu_ms = sum(k.duration_us or 0.0 for k in result.profile.kernels) / 1e3
            row.update(
                set=timing.input_set,
                device_ms=timing.candidate.median_ms,
                p20_ms=timing.candidate.p20_ms,
                p80_ms=timing.candidate.p80_ms,
                host_ms=timing.candidate.host_median_ms,
                ncu_ms=ncu_ms,
                ratio=timing.candidate.median_ms / ncu_ms if ncu_ms else None,
                eager_ms=timing.eager.median_ms if timing.eager else None,
                speedup_vs_eager=timing.speedup_vs_eager,
                kernels=[k.name for k in result.profile.kernels],
            )
        else:
            row["note"] = result.profile.note if result.profile else "no profile"
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def slowdown(sandbox: LocalSandbox) -> list[dict]:
    source = (LEGIT / "triton_softmax.py").read_text()
    assert LAUNCH in source
    rows = []
    for k in (1, 2, 4):
        slow = source.replace(LAUNCH, f"    for _ in range({k}):\n    " + LAUNCH)
        config = EvalConfig(device="cuda", profile=False, baselines=["eager"])
        result = evaluate(resolve_problem("softmax"), slow, config, sandbox=sandbox)
        timing = target_timing(result)
        row = {"launches": k, "status": result.status.value, "reasons": result.reasons[:2]}
        if timing:
            row.update(
                set=timing.input_set,
                device_ms=timing.candidate.median_ms,
                eager_ms=timing.eager.median_ms,
                speedup_vs_eager=timing.speedup_vs_eager,
                host_ms=timing.candidate.host_median_ms,
            )
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default="")
    parser.add_argument("--ops", default=DEFAULT_OPS)
    parser.add_argument("--skip", default="", help="agreement,slowdown")
    args = parser.parse_args()
    sandbox = LocalSandbox(cache_dir=EvalConfig().cache_dir, prestart=True)
    out = {}
    try:
        if "agreement" not in args.skip:
            out["agreement"] = agreement(sandbox, args.ops.split(","))
        if "slowdown" not in args.skip:
            out["slowdown"] = slowdown(sandbox)
    finally:
        sandbox.close()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
