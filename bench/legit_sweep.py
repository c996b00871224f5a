"""Every legitimate candidate under tests/fixtures/legit, evaluated on the GPU: verdict and
speedups on its largest input set. Also the GPU acceptance check for those candidates.

    python bench/legit_sweep.py [--json out.json] [--profile]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from forge.evaluator import EvalConfig, evaluate, resolve_problem
from forge.sandbox.local import LocalSandbox

ROOT = Path(__file__).resolve().parent.parent
LEGIT = sorted((ROOT / "tests/fixtures/legit").glob("*.py"))


def op_of(path: Path) -> str:
    """As tests/test_legit.py: a docstring starting `Problem: <name>.`, else the file name."""
    declared = re.match(r'"""Problem: ([\w-]+)\.', path.read_text())
    if declared:
        return declared.group(1)
    for prefix in ("triton_", "cuda_inline_", "cuda_nvrtc_"):
        if path.stem.startswith(prefix):
            return path.stem[len(prefix) :]
    raise ValueError(path.name)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default="")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--only", default="")
    args = parser.parse_args()
    rows = []
    sandbox = LocalSandbox(cache_dir=EvalConfig().cache_dir, prestart=True)
    for path in LEGIT:
        if args.only and path.stem not in args.only.split(","):
            continue
        problem = resolve_problem(op_of(path))
        profile = args.profile or path.stem == "triton_softmax"
        r = evaluate(
            problem, path.read_text(), EvalConfig(device="cuda", profile=profile), sandbox=sandbox
        )
        big = r.timings[-1] if r.timings else None
        row = {
            "candidate": path.stem,
            "status": r.status.value,
            "reasons": r.reasons[:2],
            "largest_set": big.input_set if big else "",
            "cand_ms": big.candidate.median_ms if big else None,
            "eager_ms": big.eager.median_ms if big and big.eager else None,
            "compile_ms": big.compiled.median_ms if big and big.compiled else None,
            "vs_eager": big.speedup_vs_eager if big else None,
            "vs_compile": big.speedup_vs_compile if big else None,
            "roofline": big.roofline_fraction if big else None,
            "geomean_vs_eager": r.speedup_vs_eager,
            "suspicious": r.suspicious_reasons,
            "seconds": r.phase_seconds.total,
            "profile": r.profile.model_dump() if r.profile else None,
            "sandbox": r.sandbox.model_dump() if r.sandbox else None,
        }
        rows.append(row)
        fmt = lambda v, f: format(v, f) if v is not None else "-"  # noqa: E731
        print(
            f"{row['candidate']:26s} {row['status']:13s} {row['largest_set']:8s} cand {fmt(row['cand_ms'], '.4f')} eager {fmt(row['eager_ms'], '.4f')} "
            f"compile {fmt(row['compile_ms'], '.4f')} x{fmt(row['vs_eager'], '.2f')} xc{fmt(row['vs_compile'], '.2f')} roof {fmt(row['roofline'], '.0%')} "
            f"{row['seconds']:.1f}s {'; '.join(row['reasons'])[:160]}",
            flush=True,
        )
        if r.profile and profile:
            print(
                f"  profile {r.profile.tool} {r.profile.note[:200]} "
                + "; ".join(
                    f"{k.name[:30]} regs={k.registers_per_thread} metrics={len(k.metrics)}"
                    for k in r.profile.kernels[:3]
                ),
                flush=True,
            )
    sandbox.close()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
