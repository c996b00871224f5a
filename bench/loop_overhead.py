"""Orchestration overhead of the optimize loop per round, without LLM latency or GPU time.

The loop runs for real (prompt rendering, answer parsing, the Judge's JSON, every database write
to a SQLite file, events) with a scripted LLM that answers at once and an evaluator that hands
back recorded verdicts at once (a realistic mix: wrong results with mismatch details, correct
ones with timings and a profile). What is left is the loop's own cost; the target is < 0.2 s per
round.

    python bench/loop_overhead.py [--rounds 20] [--json bench/out/loop_overhead.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

from forge.agents import loop
from forge.agents.llm import get_model
from forge.bench.results import write_json
from forge.db.store import RunStore
from forge.evaluator.config import EvalConfig
from forge.evaluator.problem import Problem, resolve_problem
from forge.evaluator.result import (
    Check,
    Environment,
    EvalResult,
    KernelProfile,
    Profile,
    SetTiming,
    Status,
    TimingStats,
)

ROOT = Path(__file__).resolve().parent.parent
KERNEL = (ROOT / "prompts" / "examples" / "triton_softmax.py").read_text()
PLAN = {
    "diagnosis": "The wide set reaches 20% of the roofline: rows of 32769 columns spill registers.",
    "bottleneck": "memory",
    "plan": "Loop over wide rows in blocks of 4096 with an online max/sum.",
    "expected_gain": "wide set 3x faster",
}


def _stats(ms: float) -> TimingStats:
    return TimingStats(
        n=50,
        median_ms=ms,
        p20_ms=ms * 0.98,
        p80_ms=ms * 1.02,
        mean_ms=ms,
        cv=0.02,
        host_median_ms=ms,
    )


def recorded_results(problem: Problem) -> list[EvalResult]:
    env = Environment(device="cuda", gpu_name="NVIDIA H200", arch="sm_90")
    checks = [
        Check(
            input_set=s.name,
            seed_index=i,
            phase="before_reference",
            passed=True,
            max_abs_error=1e-7,
            max_rel_error=1e-6,
            mismatches=0,
            numel=1 << 20,
        )
        for s in problem.input_sets
        for i in range(3)
    ]
    wrong = checks[:-1] + [
        checks[-1].model_copy(
            update={
                "passed": False,
                "max_abs_error": 0.3,
                "mismatches": 4096,
                "first_bad_index": [0, 4096],
            }
        )
    ]
    incorrect = EvalResult(
        status=Status.incorrect,
        reasons=["mismatch on input set 'large'"],
        problem=problem.name,
        backend="triton",
        environment=env,
        checks=wrong,
    )

    def correct(speedup: float) -> EvalResult:
        timings = [
            SetTiming(
                input_set=s.name,
                candidate=_stats(0.1 / speedup),
                eager=_stats(0.1),
                compiled=_stats(0.09),
                speedup_vs_eager=speedup,
                speedup_vs_compile=speedup / 1.1,
                floor_ms=0.05,
                roofline_fraction=0.5 * speedup,
            )
            for s in problem.input_sets
        ]
        profile = Profile(
            tool="ncu",
            input_set="large",
            kernels=[
                KernelProfile(
                    name="_softmax_row_kernel",
                    duration_us=70.0,
                    registers_per_thread=40,
                    spills=0,
                    shared_mem_bytes=0,
                    metrics={"dram__throughput.avg.pct_of_peak_sustained_elapsed": 80.0},
                )
            ],
        )
        return EvalResult(
            status=Status.correct,
            problem=problem.name,
            backend="triton",
            environment=env,
            checks=checks,
            timings=timings,
            timing_meaningful=True,
            speedup_vs_eager=speedup,
            speedup_vs_compile=speedup / 1.1,
            profile=profile,
        )

    return [incorrect, correct(1.1), correct(1.3), incorrect, correct(1.6)]


class RecordedEvaluator:
    """Hands back recorded verdicts in turn, in no time (stands in for the GPU)."""

    def __init__(self, results: list[EvalResult]):
        self.results = itertools.cycle(results)

    def __call__(self, problem: Problem, source: str) -> EvalResult:
        return next(self.results)


def script(path: Path, rounds: int, width: int) -> str:
    coder = {"role": "coder", "text": f"One pass per row.\n\n```python\n{KERNEL}```\n"}
    judge = {"role": "judge", "text": "```json\n" + json.dumps(PLAN) + "\n```"}
    path.write_text(json.dumps([coder] * rounds * width + [judge] * rounds * width))
    return f"scripted:{path}"


def measure(rounds: int, width: int, workdir: Path) -> dict:
    problem = resolve_problem("softmax")
    store = RunStore(f"sqlite:///{workdir / f'bench-{width}.db'}")
    name = script(workdir / f"script-{width}.json", rounds, width)
    config = loop.LoopConfig(
        rounds=rounds, width=width, patience=None, evaluation=EvalConfig(device="cuda")
    )
    runner = loop.start(
        problem,
        config,
        get_model(name, "coder"),
        get_model(name, "judge"),
        store,
        evaluator=RecordedEvaluator(recorded_results(problem)),
    )
    started = time.perf_counter()
    outcome = runner.run()
    seconds = time.perf_counter() - started
    played = rounds * width
    calls = len(store.llm_calls(outcome.run_id))
    assert outcome.candidates == played, outcome
    return {
        "width": width,
        "rounds": rounds,
        "rounds_played": played,
        "llm_calls": calls,
        "seconds": seconds,
        "ms_per_round": 1e3 * seconds / played,
        "ms_per_round_per_trajectory": 1e3 * seconds / rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--widths", default="1,4")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="forge-bench-") as tmp:
        rows = [measure(args.rounds, int(w), Path(tmp)) for w in args.widths.split(",")]
    print(
        f"{'width':>5} {'rounds':>7} {'LLM calls':>9} {'seconds':>8} {'ms/round':>9} {'ms/round/trajectory':>20}"
    )
    for r in rows:
        print(
            f"{r['width']:>5} {r['rounds_played']:>7} {r['llm_calls']:>9} {r['seconds']:>8.2f} {r['ms_per_round']:>9.1f} {r['ms_per_round_per_trajectory']:>20.1f}"
        )
    worst = max(r["ms_per_round_per_trajectory"] for r in rows)
    print(
        f"target < 200 ms per round: {'met' if worst < 200 else 'NOT met'} (worst {worst:.1f} ms)"
    )
    if args.json:
        write_json(
            args.json,
            {
                "rows": rows,
            },
        )


if __name__ == "__main__":
    main()
