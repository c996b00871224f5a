"""Throughput of the `local` executor: evaluations per minute on this machine's GPU(s), as a batch
drives it, without LLM latency.

N independent evaluations of the catalogue's legit Triton fixtures (tests/fixtures/legit/
triton_*.py, in turn) go through one `local` executor, submitted from `--concurrency` threads at
once, as `forge batch --concurrency C` items share it: each job waits for a free worker of its
device (one per visible GPU), runs in that worker's sandbox (its next process started ahead),
and the static check and the verdict's arithmetic run outside the worker. The evaluation
settings are Forge's defaults (as a batch's items use them: timing against eager and
torch.compile, profiling), on a compiler cache folder of its own: a fixture's first evaluation
compiles cold, its repeats find its kernels (and the torch.compile baseline) cached, as a
batch's later rounds find their baselines. Prints evaluations per minute and the
per-evaluation phase split (mean seconds; `wait`: from submission to holding a worker).

    python bench/local_throughput.py [--n 26] [--concurrency 2] [--time-limit S] [--json FILE]
    python bench/local_throughput.py --device cpu --n 4 --only triton_softmax,triton_gelu
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from forge.bench.legit_sweep import op_of
from forge.bench.results import write_json
from forge.evaluator.config import EvalConfig
from forge.evaluator.executors import make_executor, visible_gpus
from forge.evaluator.problem import resolve_problem

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = sorted((ROOT / "tests/fixtures/legit").glob("triton_*.py"))
PHASES = ("static", "prepare", "startup", "compile", "correctness", "timing", "profiling", "total")


def evaluate_one(executor, config: EvalConfig, path: Path, index: int) -> dict:  # noqa: ANN001
    problem = resolve_problem(op_of(path))
    submitted = time.time()
    result = executor.evaluate(problem, path.read_text(), config)
    info = result.sandbox
    held_from = info.held_from if info and info.held_from else submitted
    return {
        "index": index,
        "fixture": path.stem,
        "status": result.status.value,
        "reasons": result.reasons[:2],
        "worker": info.worker if info else "",
        "wait": held_from - submitted,
        "held": (info.held_until - info.held_from) if info and info.held_until else None,
        "seconds": time.time() - submitted,
        **{phase: getattr(result.phase_seconds, phase) for phase in PHASES},
        "detail": result.phase_seconds.detail,
    }


def phase_means(rows: list[dict]) -> dict[str, float]:
    return {p: statistics.fmean(r[p] for r in rows) for p in ("wait", *PHASES)} if rows else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2 * len(FIXTURES), help="evaluations")
    parser.add_argument(
        "--concurrency", type=int, default=2, help="threads submitting at once (batch items)"
    )
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--executor", default="local", help="local, local:N, local:gpus=LIST")
    parser.add_argument("--only", default="", help="fixture names, comma-separated")
    parser.add_argument("--no-profile", action="store_true", help="skip the kernel profile")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=0.0,
        help="seconds after which no new evaluation starts (those in flight finish and count)",
    )
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    chosen = [p for p in FIXTURES if not args.only or p.stem in args.only.split(",")]
    if not chosen:
        parser.error(f"--only {args.only}: no fixture of {[p.stem for p in FIXTURES]}")
    jobs = [chosen[i % len(chosen)] for i in range(args.n)]
    with tempfile.TemporaryDirectory(prefix="forge-throughput-cache-") as cache:
        os.chmod(cache, 0o755)
        config = EvalConfig(
            device=args.device,
            executor=args.executor,
            cache_dir=Path(cache),
            profile=not args.no_profile,
        )
        executor = make_executor(config)
        gate = threading.Lock()
        done: list[dict] = []

        def run(index: int) -> None:
            if args.time_limit and time.perf_counter() - started > args.time_limit:
                return
            row = evaluate_one(executor, config, jobs[index], index)
            with gate:
                done.append(row)
                print(
                    f"{len(done):>3}/{args.n} {row['fixture']:<28} {row['status']:<9} "
                    f"{row['worker']:<6} wait={row['wait']:.2f} total={row['total']:.2f} "
                    f"compile={row['compile']:.2f} timing={row['timing']:.2f} "
                    f"profiling={row['profiling']:.2f}",
                    flush=True,
                )

        started = time.perf_counter()
        try:
            with ThreadPoolExecutor(args.concurrency) as pool:
                list(pool.map(run, range(args.n)))
        finally:
            executor.close()
        wall = time.perf_counter() - started
    seen: set[str] = set()
    for row in sorted(done, key=lambda r: r["index"]):
        row["cold"] = row["fixture"] not in seen
        seen.add(row["fixture"])
    per_minute = 60 * len(done) / wall
    workers = sorted({r["worker"] for r in done})
    if not done:
        raise SystemExit("no evaluation finished within --time-limit")
    print(
        f"{len(done)} evaluations of {len(chosen)} fixtures in {wall:.1f} s on {args.device} "
        f"(workers {', '.join(workers)}; concurrency {args.concurrency}): "
        f"{per_minute:.1f} evaluations per minute"
    )
    statuses = {s: sum(r["status"] == s for r in done) for s in {r["status"] for r in done}}
    print("verdicts: " + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())))
    split = {
        "all": phase_means(done),
        "cold": phase_means([r for r in done if r["cold"]]),
        "warm": phase_means([r for r in done if not r["cold"]]),
    }
    print(f"{'mean s':<6} {'n':>3} " + " ".join(f"{p:>11}" for p in ("wait", *PHASES)))
    for name, means in split.items():
        count = sum(1 for r in done if name == "all" or r["cold"] == (name == "cold"))
        if means:
            print(f"{name:<6} {count:>3} " + " ".join(f"{means[p]:>11.2f}" for p in means))
    if args.json:
        write_json(
            args.json,
            {
                "device": args.device,
                "gpus": visible_gpus() if args.device == "cuda" else [],
                "concurrency": args.concurrency,
                "executor": args.executor,
                "wall_s": wall,
                "evaluations_per_minute": per_minute,
                "phase_means": split,
                "rows": sorted(done, key=lambda r: r["index"]),
            },
        )


if __name__ == "__main__":
    main()
