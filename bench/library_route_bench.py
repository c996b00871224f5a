"""Per-call cost of the kernel library runtime's two routes (issue 13): `torch.softmax` on a tiny
tensor, PyTorch alone against `kl.enable(route="python")`, `kl.enable(route="cxx")` (served calls
replayed from C++ after the key's second call, docs/library.md "Launch replay") and
`kl.enable(route="cxx", replay=False)`, for a call the library does not serve (dim 100: no entry
for the shape bucket) and one it serves.

The library holds one softmax entry for the [7, 127] set:
- `--device cpu`: the legit Triton fixture verified by the evaluator on this CPU (Triton under
  TRITON_INTERPRET=1, which this script sets); the CPU cannot time kernels, so the entry's
  speedups are attached as placeholders (1.5x) for promotion to accept it. A served call runs the
  Triton interpreter: its figure is the interpreter's cost, not the dispatch's.
- `--device cuda`: the fixture evaluated and timed on the GPU, promoted at threshold 0 (a tiny
  softmax is launch-bound; only the dispatch path is measured).

Per variant, `--repeats` samples of `--calls` calls each (the variants interleaved, one round of
warm-up first; on cuda each sample is synchronized at both ends); min and median us per call,
and per variant the paired differences from PyTorch's sample of the same round (median and
quartiles): short rounds, many of them, keep a host's drift out of the comparison. Each enable
is followed by three untimed calls: two served (the first serves the key, the second records it
for replay) and one unserved (a key's first call decides it, in Python). The stats are checked to count every call exactly; the report says how
many served calls of the cxx route were replayed from C++ (none on the CPU, where the entry runs
under the Triton interpreter) and why any key was not.

    python3 bench/library_route_bench.py --device cpu --json /tmp/route.json
    source bench/gpu_setup.sh && python3 bench/library_route_bench.py --device cuda --json "$OUT/route.json"
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LEGIT = ROOT / "tests" / "fixtures" / "legit"
SERVED = (7, 127)
UNSERVED = (7, 100)


def build_library(device: str, directory: Path) -> str:
    """Write the softmax entry for `device` into `directory`; returns its id."""
    from forge.evaluator import EvalConfig, evaluate, resolve_problem
    from forge.evaluator.problem import InputSet
    from forge.evaluator.result import SetTiming, TimingStats, geomean
    from forge.kernels_library.promotion import build_entry
    from forge.kernels_library.storage import write_entry

    problem = resolve_problem("softmax")
    constants = {**problem.constants, "batch_size": SERVED[0], "dim": SERVED[1]}
    problem = problem.model_copy(
        update={"input_sets": [InputSet(name="tiny", constants=constants, cpu=True)]}
    )
    source = (LEGIT / "triton_softmax.py").read_text()
    config = EvalConfig(device=device, profile=False, baselines=["eager"])
    result = evaluate(problem, source, config)
    if result.status.value != "correct":
        sys.exit(f"error: the softmax fixture is {result.status.value} here: {result.reasons}")
    if device == "cpu":

        def stats(ms: float) -> TimingStats:
            return TimingStats(
                n=50, median_ms=ms, p20_ms=ms, p80_ms=ms, mean_ms=ms, cv=0.0, host_median_ms=ms
            )

        timings = [
            SetTiming(
                input_set="tiny", candidate=stats(1.0), eager=stats(1.5), speedup_vs_eager=1.5
            )
        ]
        result = result.model_copy(
            update={
                "timings": timings,
                "timing_meaningful": True,
                "speedup_vs_eager": geomean([1.5]),
            }
        )
    record = build_entry(problem, source, result, 0.0)
    write_entry(record, directory)
    return record.meta.id


def per_call_us(fn, calls: int, sync) -> float:
    sync()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    return (time.perf_counter() - t0) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--calls", type=int, default=1000, help="calls per sample")
    parser.add_argument(
        "--served-calls",
        type=int,
        default=0,
        help="calls per sample of the served variants (default: --calls on cuda, 20 on cpu, "
        "where the Triton interpreter runs each)",
    )
    parser.add_argument("--repeats", type=int, default=60, help="samples per variant")
    parser.add_argument("--json", default="", help="write the results here")
    args = parser.parse_args()
    if args.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported

    import torch

    import forge.kernels_library as kl
    from forge.kernels_library import cxx_route, runtime

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda needs a CUDA GPU")
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    torch.set_num_threads(1)
    library = Path(tempfile.mkdtemp(prefix="forge-route-bench-"))
    entry = build_library(args.device, library)
    t0 = time.perf_counter()
    cxx_route.extension()
    build_s = time.perf_counter() - t0
    served_calls = args.served_calls or (args.calls if args.device == "cuda" else 20)

    x = torch.randn(*SERVED, device=args.device)
    miss = torch.randn(*UNSERVED, device=args.device)
    routes = {  # name: (route, replay)
        "pytorch": None,
        "python route": ("python", False),
        "cxx route": ("cxx", True),
        "cxx route, no replay": ("cxx", False),
    }
    samples: dict[str, list[float]] = {}
    made = {name: [0, 0] for name, r in routes.items() if r is not None}  # unserved, served
    replayed = 0
    kl.disable()
    for i in range(args.repeats + 1):  # round 0 warms up and is not kept
        for name, variant in routes.items():
            kl.disable()
            if variant is not None:
                route, replay = variant
                report = kl.enable(
                    ["softmax"], path=library, devices=[args.device], route=route, replay=replay
                )
                assert report.registered == {"softmax": 1}, report
                before = kl.stats()["ops"]["softmax"]["replayed_calls"]
                for _ in range(2):  # served, then recorded for replay
                    torch.softmax(x, -1)
                made[name][1] += 2
                torch.softmax(miss, -1)  # the key's first call decides it, in Python
                made[name][0] += 1
            for what, tensor, calls in (
                ("unserved", miss, args.calls),
                ("served", x, served_calls),
            ):
                n = calls if i else 10
                us = per_call_us(lambda t=tensor: torch.softmax(t, -1), n, sync)
                if variant is not None:
                    made[name][what == "served"] += n
                if i:
                    samples.setdefault(f"{what}, {name}", []).append(us)
            if name == "cxx route":
                replayed += kl.stats()["ops"]["softmax"]["replayed_calls"] - before
        kl.disable()
    counts = kl.stats()["ops"]["softmax"]
    total_unserved = sum(m[0] for m in made.values())
    total_served = sum(m[1] for m in made.values())
    assert counts["fallbacks"] == {runtime.NO_BUCKET: total_unserved}, counts
    assert counts["library_calls"] == total_served, counts
    assert counts["replayed_calls"] == replayed, counts  # only the cxx route with replay on
    replay_note = (
        f"{replayed} of the cxx route's {made['cxx route'][1]} served calls replayed from C++"
        + (f"; not replayed: {counts['not_replayed']}" if counts["not_replayed"] else "")
    )

    rows = {
        name: {"min_us": min(v), "median_us": statistics.median(v), "samples_us": v}
        for name, v in samples.items()
    }

    def over(name: str, base: str) -> dict:
        # the variants of a round run back to back: a sample's difference from PyTorch's sample
        # of the same round cancels drift that min and median of each column do not
        paired = [a - b for a, b in zip(samples[name], samples[base], strict=True)]
        q1, _, q3 = statistics.quantiles(paired, n=4) if len(paired) > 1 else paired * 3
        return {
            "min_us": rows[name]["min_us"] - rows[base]["min_us"],
            "median_us": rows[name]["median_us"] - rows[base]["median_us"],
            "paired_median_us": statistics.median(paired),
            "paired_quartiles_us": [q1, q3],
        }

    out = {
        "date": time.strftime("%Y-%m-%d"),
        "device": args.device,
        "torch": torch.__version__,
        "entry": entry,
        "served_shape": list(SERVED),
        "unserved_shape": list(UNSERVED),
        "calls_per_sample": args.calls,
        "served_calls_per_sample": served_calls,
        "samples": args.repeats,
        "cxx_route_load_s": build_s,
        "rows": rows,
        "overhead_over_pytorch_us": {
            "unserved, python route": over("unserved, python route", "unserved, pytorch"),
            "unserved, cxx route": over("unserved, cxx route", "unserved, pytorch"),
            "unserved, cxx route, no replay": over(
                "unserved, cxx route, no replay", "unserved, pytorch"
            ),
            "served, python route": over("served, python route", "served, pytorch"),
            "served, cxx route": over("served, cxx route", "served, pytorch"),
            "served, cxx route, no replay": over("served, cxx route, no replay", "served, pytorch"),
        },
        "replay": {
            "served_calls_cxx_route": made["cxx route"][1],
            "replayed_calls": replayed,
            "not_replayed": counts["not_replayed"],
        },
        "stats": {
            "fallbacks": counts["fallbacks"],
            "library_calls": counts["library_calls"],
            "replayed_calls": counts["replayed_calls"],
        },
    }
    print(
        f"{args.device}, torch {torch.__version__}; {args.repeats} samples x {args.calls} calls "
        f"({served_calls} served); C++ route loaded in {build_s:.1f} s"
    )
    print(
        f"  {'variant':32s} {'min us/call':>12s} {'median':>10s} {'over PyTorch (min/median)':>28s}"
        f" {'paired median [quartiles]':>30s}"
    )
    for name, r in rows.items():
        extra = out["overhead_over_pytorch_us"].get(name)
        tail = f"{extra['min_us']:+13.2f} / {extra['median_us']:+.2f}" if extra else ""
        paired = (
            f"{extra['paired_median_us']:+.2f} [{extra['paired_quartiles_us'][0]:+.2f}, "
            f"{extra['paired_quartiles_us'][1]:+.2f}]"
            if extra
            else ""
        )
        print(f"  {name:32s} {r['min_us']:12.2f} {r['median_us']:10.2f} {tail:>28s} {paired:>30s}")
    print(f"  replay: {replay_note}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
