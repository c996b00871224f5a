"""The batch controller's own cost per evaluation, without LLM latency or GPU time.

`forge batch` runs for real, in this process (suite reading, planning, every database write to a
SQLite file, the items' loops in threads, the line-per-evaluation display, the summary), over a
TOML suite of catalogue operators, with a scripted LLM that answers at once and an executor,
`recorded`, that hands back recorded verdicts at once (loop_overhead.py's mix: wrong results
with mismatch details, correct ones with timings and a profile). It is registered in the
executor registry as any executor is, and items share one of it as they share `local`. What is
left is the controller's own cost: batch wall time / evaluations; the target is < 50 ms.

    python bench/batch_overhead.py [--items 6] [--rounds 6] [--repeats 5] [--history 10] [--json FILE]
    python bench/batch_overhead.py --profile 30 --widths 1 --concurrency 1   # cProfile, top 30
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import platform
import pstats
import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from forge.bench.loop_overhead import recorded_results, script
from forge.bench.results import write_json
from forge.cli.main import app
from forge.db.batches import BatchStore
from forge.db.store import RunStore
from forge.evaluator.config import EvalConfig
from forge.evaluator.executors import EXECUTORS, ExecutorKind, ExecutorSpecError
from forge.evaluator.problem import Problem
from forge.evaluator.result import EvalResult

OPS = [
    "softmax",
    "layer_norm",
    "rms_norm",
    "gelu",
    "log_softmax",
    "cross_entropy",
    "group_norm",
    "add_layer_norm",
]


class RecordedExecutor:
    """An executor that answers every evaluation at once with the next recorded verdict for its
    problem (stands in for the GPU); thread-safe, as executors must be."""

    def __init__(self) -> None:
        self._verdicts: dict[str, itertools.cycle] = {}
        self._lock = threading.Lock()
        self.evaluations = 0

    @classmethod
    def from_spec(cls, argument: str, config: EvalConfig) -> RecordedExecutor:
        executor = cls()
        CREATED.append(executor)
        return executor

    def evaluate(self, problem: Problem, source: str, config: EvalConfig) -> EvalResult:
        with self._lock:
            if problem.name not in self._verdicts:
                self._verdicts[problem.name] = itertools.cycle(recorded_results(problem))
            self.evaluations += 1
            return next(self._verdicts[problem.name])

    def close(self) -> None:
        """Nothing is held."""


CREATED: list[RecordedExecutor] = []
"""The executors the registry built (a batch's items share one)."""


def _no_argument(argument: str) -> str:
    if argument:
        raise ExecutorSpecError(f"the recorded executor takes no argument, got '{argument}'")
    return ""


def register() -> None:
    EXECUTORS["recorded"] = ExecutorKind(
        "recorded", _no_argument, RecordedExecutor.from_spec, shares_device=True
    )


@dataclass
class Setting:
    items: int
    rounds: int
    width: int
    concurrency: int

    @property
    def evaluations(self) -> int:
        return self.items * self.rounds * self.width

    def label(self) -> str:
        return f"{self.items} items x {self.rounds} rounds x width {self.width}, concurrency {self.concurrency}"


def suite_file(path: Path, setting: Setting) -> Path:
    items = "".join(f'[[item]]\nop = "{op}"\n\n' for op in OPS[: setting.items])
    path.write_text(items)
    return path


def run_batch(setting: Setting, workdir: Path, tag: str, history: Path | None = None) -> dict:
    """One `forge batch` in this process, on a fresh SQLite file or a copy of `history` (a
    database earlier batches filled); its wall time and what it evaluated."""
    suite = suite_file(workdir / f"suite-{tag}.toml", setting)
    model = script(workdir / f"script-{tag}.json", setting.rounds, setting.width)
    path = workdir / f"batch-{tag}.db"
    if history is not None and history != path:
        shutil.copyfile(history, path)
    elif history is None:
        path.unlink(missing_ok=True)
    db = f"sqlite:///{path}"
    args = [
        "batch",
        str(suite),
        "--model",
        model,
        "--executor",
        "recorded",
        "--rounds",
        str(setting.rounds),
        "--width",
        str(setting.width),
        "--patience",
        "0",
        "--concurrency",
        str(setting.concurrency),
        "--db",
        db,
    ]
    CREATED.clear()
    started = time.perf_counter()
    result = CliRunner().invoke(app, args)
    seconds = time.perf_counter() - started
    batches = BatchStore(RunStore(db))
    items = batches.items(batches.list(1)[0].id) if result.exit_code in (0, 1) else []
    if result.exit_code != 0:
        failed = "\n".join(f"{i.label}: {i.error}" for i in items if i.status == "failed")
        raise RuntimeError(
            f"forge batch exited {result.exit_code} ({result.exception!r}):\n"
            f"{failed or result.output[-3000:]}"
        )
    evaluations = sum(e.evaluations for e in CREATED)
    runs = [item.run_id for item in items]
    stored = sum(len(batches.runs.candidates(run_id)) for run_id in runs if run_id is not None)
    if not (evaluations == stored == setting.evaluations):
        raise RuntimeError(
            f"expected {setting.evaluations} evaluations, the executor saw {evaluations}, "
            f"the database holds {stored} candidates"
        )
    return {"seconds": seconds, "evaluations": evaluations}


def fill_history(batches: int, workdir: Path) -> tuple[Path | None, int]:
    """A database holding `batches` earlier batches of every operator (width 3, 6 rounds), as a
    user's grows; (its path, the evaluations in it)."""
    if not batches:
        return None, 0
    earlier = Setting(len(OPS), 6, 3, 1)
    for n in range(batches):
        run_batch(earlier, workdir, "history", history=workdir / "batch-history.db" if n else None)
    return workdir / "batch-history.db", batches * earlier.evaluations


def measure(setting: Setting, repeats: int, workdir: Path, history: Path | None) -> dict:
    tags = [f"{setting.width}-{setting.concurrency}-{i}" for i in range(repeats)]
    runs = [run_batch(setting, workdir, tag, history) for tag in tags]
    per_eval = [1e3 * r["seconds"] / r["evaluations"] for r in runs]
    return {
        **setting.__dict__,
        "evaluations": setting.evaluations,
        "seconds": [r["seconds"] for r in runs],
        "ms_per_evaluation": per_eval,
        "min_ms": min(per_eval),
        "median_ms": statistics.median(per_eval),
    }


def profile(
    setting: Setting, workdir: Path, top: int, sort: str, only: str, history: Path | None
) -> str:
    """cProfile of one batch over every thread (the items' loops run in threads of their own)."""
    profilers = [cProfile.Profile()]

    def profile_this_thread(*_event: object) -> None:
        profilers.append(cProfile.Profile())
        profilers[-1].enable()

    threading.setprofile(profile_this_thread)
    profilers[0].enable()
    try:
        run_batch(setting, workdir, "profile", history)
    finally:
        profilers[0].disable()
        threading.setprofile(None)
    out = io.StringIO()
    pstats.Stats(*profilers, stream=out).sort_stats(sort).print_stats(only, top)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=6, help=f"catalogue operators (<= {len(OPS)})")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--widths", default="1,3")
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--profile", type=int, default=0, help="print cProfile's top N of one batch instead"
    )
    parser.add_argument("--sort", default="tottime", help="cProfile's order (with --profile)")
    parser.add_argument(
        "--only", default="", help="with --profile: functions whose path matches this regex"
    )
    parser.add_argument(
        "--history",
        type=int,
        default=0,
        help=f"earlier batches in the database, each of {len(OPS)} items x 6 rounds x width 3",
    )
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    register()
    settings = [
        Setting(args.items, args.rounds, int(w), int(c))
        for w in args.widths.split(",")
        for c in args.concurrency.split(",")
    ]
    with tempfile.TemporaryDirectory(prefix="forge-bench-") as tmp:
        run_batch(settings[0], Path(tmp), "warmup")  # imports, first Alembic migration
        history, earlier = fill_history(args.history, Path(tmp))
        if args.profile:
            print(profile(settings[0], Path(tmp), args.profile, args.sort, args.only, history))
            return
        rows = [measure(s, args.repeats, Path(tmp), history) for s in settings]
    print(f"database before each batch: {earlier} evaluations of {args.history} earlier batches")
    print(f"{'setting':<52} {'evals':>5} {'min ms/eval':>11} {'median ms/eval':>14}")
    for r in rows:
        print(
            f"{Setting(r['items'], r['rounds'], r['width'], r['concurrency']).label():<52} "
            f"{r['evaluations']:>5} {r['min_ms']:>11.1f} {r['median_ms']:>14.1f}"
        )
        print("  ms/eval per repeat: " + ", ".join(f"{v:.1f}" for v in r["ms_per_evaluation"]))
    worst = max(r["median_ms"] for r in rows)
    print(
        f"target < 50 ms per evaluation: {'met' if worst < 50 else 'NOT met'} (worst median {worst:.1f} ms)"
    )
    if args.json:
        write_json(
            args.json,
            {
                "processor": platform.processor(),
                "evaluations_in_database_before": earlier,
                "rows": rows,
            },
        )


if __name__ == "__main__":
    main()
