"""Seconds per verdict, split into phases, for Triton and both CUDA flavours, cold and warm caches.

States (`--states`, the first three by default):

- cold: an empty compiler cache directory (Triton, torch extensions, cupy, inductor), in this
  process (`forge.evaluator.evaluate`), a fresh sandboxed process per evaluation;
- warm: the same candidate again with that cache filled;
- warm-prestarted: as the optimize loop runs, with the worker process started ahead of its job;
- one-shot: `--repeat` runs of `forge eval` as a user types it, each its own process (the first
  is cold unless an in-process state ran before it);
- resident: a `forge worker --queue DIR` started once, then `--repeat` runs of `forge eval
  --executor queue:DIR`, `--idle` seconds apart (the worker starts the next job's sandbox
  process and runner as a GPU job starts while another is pending, else as the job ends; see
  SandboxConfig.overlap_prestart).

"verdict" is the time until correct/incorrect is known: static + startup (which includes
waiting for the runner's own start-up, `prepare`, where it was not done ahead) + compile +
correctness. For one-shot and resident, "wall" is the `forge eval` process's seconds from start
to exit: what a user waits for the printed verdict (timing and profile included, unless
`--no-profile`). `--baselines` applies to the in-process states; `forge eval` times eager and
torch.compile.

    python bench/eval_latency.py [--json out.json] [--device cpu --flavours triton]
    python bench/eval_latency.py --states one-shot,resident --flavours triton --no-profile
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
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
IN_PROCESS = ("cold", "warm", "warm-prestarted")
STATES = (*IN_PROCESS, "one-shot", "resident")


def row_of(flavour: str, state: str, result: dict, wall: float | None = None) -> dict:
    """One line of the table from an EvalResult's JSON form; printed as it comes."""
    row = {"flavour": flavour, "cache": state, "status": result["status"]}
    row.update(result["phase_seconds"])
    row["verdict"] = sum(row[p] for p in ("static", "startup", "compile", "correctness"))
    row["wall"] = wall
    row["speedup_vs_eager"] = result.get("speedup_vs_eager")
    row["reasons"] = result.get("reasons", [])[:2]
    shown = f" wall={wall:.2f}" if wall is not None else ""
    print(
        f"{flavour:12s} {state:16s} {row['status']:8s} verdict={row['verdict']:.2f}{shown} "
        + " ".join(f"{p}={row[p]:.2f}" for p in PHASES),
        flush=True,
    )
    print(
        "  detail: " + " ".join(f"{k}={v:.2f}" for k, v in sorted(row["detail"].items())),
        flush=True,
    )
    return row


def in_process(args, problem, flavour: str, source: str, home: Path) -> list[dict]:  # noqa: ANN001
    config = EvalConfig(
        device=args.device,
        cache_dir=home / "cache",
        baselines=args.baselines.split(","),
        profile=not args.no_profile,
    )
    prestarted = LocalSandbox(cache_dir=config.cache_dir, prestart=True)
    rows = []
    try:
        for state in [s for s in IN_PROCESS if s in args.states]:
            if state == "warm-prestarted":
                # leaves a worker started ahead
                evaluate(problem, source, config, sandbox=prestarted)
                time.sleep(args.idle)
            sandbox = prestarted if state == "warm-prestarted" else None
            result = evaluate(problem, source, config, sandbox=sandbox)
            rows.append(row_of(flavour, state, json.loads(result.model_dump_json())))
    finally:
        prestarted.close()
    return rows


def forge_eval(args, flavour: str, env: dict, *extra: str) -> tuple[dict, float]:  # noqa: ANN001
    """`forge eval` in its own process: its EvalResult and its wall seconds."""
    command = [sys.executable, "-m", "forge.cli.main", "eval", args.op, str(CANDIDATES[flavour])]
    command += ["--device", args.device, "--json", *extra]
    command += ["--no-profile"] if args.no_profile else []
    started = time.perf_counter()
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - started
    if not out.stdout.strip():
        raise SystemExit(f"forge eval gave no result (exit {out.returncode}): {out.stderr}")
    return json.loads(out.stdout), wall


def one_shot(args, flavour: str, env: dict) -> list[dict]:  # noqa: ANN001
    rows = []
    for i in range(args.repeat):
        result, wall = forge_eval(args, flavour, env)
        rows.append(row_of(flavour, f"one-shot #{i + 1}", result, wall))
    return rows


def resident(args, flavour: str, env: dict, home: Path) -> list[dict]:  # noqa: ANN001
    queue = home / "queue"
    worker = subprocess.Popen(
        [sys.executable, "-m", "forge.cli.main", "worker", "--queue", str(queue)]
        + ["--device", args.device],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    rows = []
    try:
        for i in range(args.repeat):
            time.sleep(args.idle)  # the worker's next sandbox process and runner start meanwhile
            result, wall = forge_eval(args, flavour, env, "--executor", f"queue:{queue}")
            rows.append(row_of(flavour, f"resident #{i + 1}", result, wall))
    finally:
        worker.send_signal(signal.SIGINT)
        _, log = worker.communicate(timeout=60)
        print("  worker: " + log.strip().replace("\n", "\n  worker: "), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default="")
    parser.add_argument("--op", default="softmax")
    parser.add_argument("--flavours", default=",".join(CANDIDATES))
    parser.add_argument("--baselines", default="eager,compile")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu (Triton interpreter)")
    parser.add_argument("--states", default=",".join(IN_PROCESS), help=", ".join(STATES))
    parser.add_argument("--no-profile", action="store_true", help="no profile in any state")
    parser.add_argument(
        "--repeat", type=int, default=3, help="one-shot, resident: evaluations per flavour"
    )
    parser.add_argument(
        "--idle",
        type=float,
        default=15.0,
        help="seconds the pre-started worker gets to prepare (warm-prestarted, resident)",
    )
    args = parser.parse_args()
    args.states = args.states.split(",")
    unknown = set(args.states) - set(STATES)
    if unknown:
        parser.error(f"unknown states {sorted(unknown)}: use {', '.join(STATES)}")
    problem = resolve_problem(args.op)
    rows = []
    for flavour in args.flavours.split(","):
        source = CANDIDATES[flavour].read_text()
        with tempfile.TemporaryDirectory(prefix="forge-bench-home-") as tmp:
            home = Path(tmp)
            os.chmod(home, 0o755)  # a sandbox that drops privileges reaches its cache
            env = {**os.environ, "FORGE_HOME": str(home)}
            rows += in_process(args, problem, flavour, source, home)
            if "one-shot" in args.states:
                rows += one_shot(args, flavour, env)
            if "resident" in args.states:
                rows += resident(args, flavour, env, home)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
