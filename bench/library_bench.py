"""GPU measurements of the kernel library runtime (issue 4):

(a) dispatch overhead: `torch.softmax` on a tiny tensor with `kl.enable()` (served by the
    library) against calling the same library module directly, host clock over many calls
    with a device sync at both ends (launch-bound, so this is the CPU cost per call), CUDA
    events as a cross-check; also the cost of a fallback (enabled, shape not in the library)
    against PyTorch alone. Target: <= 3 us per call over the direct call.
(b) a transformer block (LayerNorm, attention with an explicit softmax, GELU MLP) in eager
    PyTorch against the same module with `kl.enable()`: median time per forward and the max
    output difference.

The library is built here, in a temporary directory, by evaluating the legit Triton fixtures
(tests/fixtures/legit/triton_{softmax,layer_norm,gelu}.py) with the evaluator on this GPU, on
input sets equal to the shapes the block uses, and promoting them:
- `promoted`: the real promotion rules at --threshold (default 1.05): an operator whose kernel
  does not beat eager there is not in this library and runs as PyTorch;
- `all`: the same evaluations promoted at threshold 0 (correctness and suspicion rules still
  apply), so every operator of the block is dispatched: the mechanism's end-to-end cost.
The overhead entry (a) is also promoted at threshold 0: a tiny softmax is launch-bound and no
kernel beats eager there; only the dispatch path is being measured.

    source bench/gpu_setup.sh
    python3 bench/library_bench.py --json "$OUT/library_bench.json"
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import forge.kernels_library as kl
from forge.evaluator import EvalConfig, evaluate, resolve_problem, timing
from forge.evaluator.problem import InputSet
from forge.evaluator.result import (
    Check,
    Environment,
    EvalResult,
    SetTiming,
    Status,
    TimingStats,
    geomean,
)
from forge.kernels_library.promotion import PromotionRefused, build_entry
from forge.kernels_library.storage import write_entry

ROOT = Path(__file__).resolve().parent.parent
LEGIT = ROOT / "tests" / "fixtures" / "legit"

# the block's shapes
B, S, D, H = 8, 512, 1024, 16
SHAPES = {
    "softmax": {"batch_size": B * H * S, "dim": S},  # attention probabilities [B, H, S, S]
    "layer_norm": {"batch_size": B * S, "hidden": D},  # [B, S, D]
    "gelu": {"batch_size": B * S, "dim": 4 * D},  # MLP hidden [B, S, 4D]
}
TINY = {"batch_size": 4, "dim": 128}


class Block(nn.Module):
    """Pre-norm transformer block; attention written out so that softmax is its own op."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = (
            self.qkv(self.ln1(x)).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        )
        att = torch.softmax((q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5, dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, s, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


def evaluate_on(op: str, fixture: str, sets: dict[str, dict], baselines: list[str]):
    problem = resolve_problem(op)
    problem = problem.model_copy(
        update={
            "input_sets": [
                InputSet(name=n, constants={**problem.constants, **c}) for n, c in sets.items()
            ]
        }
    )
    source = (LEGIT / fixture).read_text()
    t0 = time.perf_counter()
    result = evaluate(
        problem, source, EvalConfig(device="cuda", profile=False, baselines=baselines)
    )
    print(
        f"  evaluated {fixture} on {sets}: {result.status.value} in {time.perf_counter() - t0:.0f} s"
        + (f", {result.speedup_vs_eager:.3f}x vs eager" if result.speedup_vs_eager else "")
        + (f" ({'; '.join(result.reasons[:2])})" if result.reasons else ""),
        flush=True,
    )
    return problem, source, result


def _module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure_on(op: str, fixture: str, sets: dict[str, dict], baselines: list[str]):
    """`--entries measured`: this script's own check instead of the evaluator's, with the
    evaluator's timing protocol (3 seeds per set compared with the problem's tolerances; 30
    device-time samples of kernel and eager, interleaved by batch, median). Weaker than the evaluator (no integrity checks, no
    torch.compile baseline): for when the evaluator cannot run here."""
    problem = resolve_problem(op)
    problem = problem.model_copy(
        update={
            "input_sets": [
                InputSet(name=n, constants={**problem.constants, **c}) for n, c in sets.items()
            ]
        }
    )
    ref_mod = _module(f"bench_problem_{op}", Path(problem.path))
    cand_mod = _module(f"bench_candidate_{op}", LEGIT / fixture)
    checks, timings = [], []
    for input_set in problem.input_sets:
        for key, value in input_set.constants.items():
            setattr(ref_mod, key, value)
        init = ref_mod.get_init_inputs()
        torch.manual_seed(0)
        ref = ref_mod.Model(*init).cuda().eval()
        cand = cand_mod.ModelNew(*init).cuda().eval()
        cand.load_state_dict(ref.state_dict())
        with torch.no_grad():
            for seed in range(3):
                torch.manual_seed(seed + 1)
                inputs = [x.cuda() for x in ref_mod.get_inputs()]
                expected, got = ref(*inputs), cand(*inputs)
                err = (got - expected).abs()
                ok = bool(torch.allclose(got, expected, atol=problem.atol, rtol=problem.rtol))
                checks.append(
                    Check(
                        input_set=input_set.name,
                        seed_index=seed,
                        phase="before_reference",
                        passed=ok,
                        max_abs_error=err.max().item(),
                        max_rel_error=(err / expected.abs().clamp_min(1e-6)).max().item(),
                        mismatches=0 if ok else 1,
                        numel=expected.numel(),
                    )
                )
            # the evaluator's device-time protocol (evaluator/timing.py): 3 batches of 10 calls
            # per implementation, interleaved, host launch overhead apart
            samples = {"candidate": [], "eager": []}
            flush, cycles = timing.L2Flush(), timing.sleep_cycles_per_ms()
            staged = [inputs] * 10
            slots = timing.rotating_slots(inputs, 3)
            for _ in range(3):
                for name, model in (("candidate", cand), ("eager", ref)):
                    batch = timing.measure_batch(
                        model, staged, slots, flush, int(2 * cycles), keep_outputs=False
                    )
                    samples[name] += zip(batch.device_ms, batch.host_ms, strict=True)
        stats = {
            k: TimingStats.from_samples([e for e, _ in v], [h for _, h in v])
            for k, v in samples.items()
        }
        timings.append(
            SetTiming(
                input_set=input_set.name,
                candidate=stats["candidate"],
                eager=stats["eager"],
                speedup_vs_eager=stats["eager"].median_ms / stats["candidate"].median_ms,
            )
        )
    import triton

    props = torch.cuda.get_device_properties(0)
    env = Environment(
        device="cuda",
        gpu_name=props.name,
        arch=f"sm_{props.major}{props.minor}",
        torch_version=torch.__version__,
        triton_version=triton.__version__,
        cuda_version=torch.version.cuda or "",
    )
    passed = all(c.passed for c in checks)
    result = EvalResult(
        status=Status.correct if passed else Status.incorrect,
        problem=op,
        backend="triton",
        environment=env,
        checks=checks,
        timings=timings,
        timing_meaningful=True,
        speedup_vs_eager=geomean([t.speedup_vs_eager for t in timings]),
    )
    print(
        f"  measured {fixture} on {sets}: {result.status.value}, {result.speedup_vs_eager:.3f}x vs eager (bench-measured, not the evaluator)",
        flush=True,
    )
    return problem, (LEGIT / fixture).read_text(), result


def promote_into(directory: Path, problem, source, result, threshold: float) -> dict:
    try:
        record = build_entry(problem, source, result, threshold)
    except PromotionRefused as refused:
        return {"promoted": False, "threshold": threshold, "reasons": refused.reasons}
    write_entry(record, directory)
    return {
        "promoted": True,
        "threshold": threshold,
        "id": record.meta.id,
        "served_buckets": record.meta.served_buckets,
        "speedup_vs_eager": record.meta.speedup_vs_eager,
        "speedup_vs_compile": record.meta.speedup_vs_compile,
    }


def per_call_us(fn, calls: int) -> tuple[float, float]:
    """(host us per call, CUDA-event us per call) over `calls` calls, synced at both ends."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    torch.cuda.synchronize()
    host = (time.perf_counter() - t0) / calls * 1e6
    return host, start.elapsed_time(end) * 1e3 / calls


def overhead(lib: Path, calls: int, repeats: int) -> dict:
    """Per repeat: PyTorch alone and the module called directly (library disabled), then the
    same calls through ATen with the library enabled; medians over repeats."""
    x = torch.randn(TINY["batch_size"], TINY["dim"], device="cuda")
    miss = torch.randn(TINY["batch_size"], TINY["dim"] - 28, device="cuda")  # dim 100: no entry
    module = kl.load("softmax", path=lib, shape=TINY)().cuda()
    plain = {
        "eager softmax": lambda: torch.softmax(x, -1),
        "eager softmax (dim 100)": lambda: torch.softmax(miss, -1),
        "module(x)": lambda: module(x),
        "module.forward(x)": lambda: module.forward(x),
    }
    enabled = {
        "enabled softmax (library)": lambda: torch.softmax(x, -1),
        "enabled softmax (dim 100, fallback)": lambda: torch.softmax(miss, -1),
    }
    samples: dict[str, list] = {name: [] for name in (*plain, *enabled)}
    kl.disable()
    kl.reset_stats()
    for i in range(repeats + 1):  # the first round warms up and is not kept
        kl.disable()
        for name, fn in plain.items():
            sample = per_call_us(fn, calls if i else 200)
            if i:
                samples[name].append(sample)
        report = kl.enable(["softmax"], path=lib)
        assert report.registered == {"softmax": 1}, report
        for name, fn in enabled.items():
            sample = per_call_us(fn, calls if i else 200)
            if i:
                samples[name].append(sample)
    counts = kl.stats()["ops"]["softmax"]
    kl.disable()
    assert counts["library_calls"] == repeats * calls + 200, counts
    rows = {
        name: {
            "host_us": statistics.median(h for h, _ in v),
            "event_us": statistics.median(e for _, e in v),
            "host_us_min": min(h for h, _ in v),
        }
        for name, v in samples.items()
    }
    result = {
        "shape": [TINY["batch_size"], TINY["dim"]],
        "calls_per_sample": calls,
        "samples": repeats,
        "rows_us": rows,
        # host-clock noise only ever adds time: the overheads compare the fastest samples
        # (the medians are in rows_us too)
        "dispatch_overhead_us": rows["enabled softmax (library)"]["host_us_min"]
        - rows["module.forward(x)"]["host_us_min"],
        "dispatch_overhead_vs_module_call_us": rows["enabled softmax (library)"]["host_us_min"]
        - rows["module(x)"]["host_us_min"],
        "fallback_overhead_us": rows["enabled softmax (dim 100, fallback)"]["host_us_min"]
        - rows["eager softmax (dim 100)"]["host_us_min"],
        "target_us": 3.0,
        "library_calls": counts["library_calls"],
        "fallbacks": counts["fallbacks"],
    }
    result["meets_target"] = result["dispatch_overhead_us"] <= 3.0
    result["floor"] = python_kernel_floor(x, calls, repeats)
    return result


def python_kernel_floor(x: torch.Tensor, calls: int, repeats: int) -> dict:
    """What any torch.library Python kernel costs, measured on aten::_log_softmax (not touched
    by the library here): eager, a registered kernel returning a preallocated tensor (the
    dispatcher -> Python round trip alone), and one calling PyTorch's kernel through
    get_kernel(...).call_boxed (the runtime's fallback path with no checks)."""
    original = torch.library.get_kernel("aten::_log_softmax", "CUDA")
    y = torch.log_softmax(x, -1)
    variants = {
        "eager log_softmax": None,
        "python kernel returning a tensor": lambda keyset, *a, **k: y,
        "python kernel -> call_boxed(original)": lambda keyset, *a, **k: original.call_boxed(
            keyset, *a, **k
        ),
    }
    samples: dict[str, list] = {name: [] for name in variants}
    for i in range(repeats + 1):
        for name, kernel in variants.items():
            library = None
            if kernel is not None:
                library = torch.library.Library("aten", "IMPL")
                library.impl("_log_softmax", kernel, "CUDA", with_keyset=True)
            sample = per_call_us(lambda: torch.log_softmax(x, -1), calls if i else 200)
            if library is not None:
                library._destroy()
            if i:
                samples[name].append(sample)
    return {
        name: {
            "host_us": statistics.median(h for h, _ in v),
            "event_us": statistics.median(e for _, e in v),
            "host_us_min": min(h for h, _ in v),
        }
        for name, v in samples.items()
    }


def time_model(model: nn.Module, x: torch.Tensor, iters: int, repeats: int, mode) -> list[float]:
    out = []
    with mode():
        for _ in range(3):
            model(x)
        torch.cuda.synchronize()
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                model(x)
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end) / iters)
    return out


def model_bench(libraries: dict[str, Path], iters: int, repeats: int) -> list[dict]:
    torch.manual_seed(0)
    model = Block(D, H).cuda().eval()
    x = torch.randn(B, S, D, device="cuda")
    rows = []
    for mode_name, mode in (("no_grad", torch.no_grad), ("inference_mode", torch.inference_mode)):
        kl.disable()
        with mode():
            reference = model(x).clone()
        samples: dict[str, list[float]] = {"eager": []}
        outputs, calls = {}, {}
        for name, lib in libraries.items():
            samples[name] = []
            report = kl.enable(path=lib)
            kl.reset_stats()
            with mode():
                outputs[name] = model(x).clone()
            calls[name] = {
                op: (s["library_calls"], s["fallbacks"]) for op, s in kl.stats()["ops"].items()
            }
            calls[name]["registered"] = report.registered
            kl.disable()
        for _ in range(repeats):  # interleave the configurations
            kl.disable()
            samples["eager"].extend(time_model(model, x, iters, 1, mode))
            for name, lib in libraries.items():
                kl.enable(path=lib)
                samples[name].extend(time_model(model, x, iters, 1, mode))
                kl.disable()
        eager_ms = statistics.median(samples["eager"])
        rows.append(
            {
                "mode": mode_name,
                "config": "eager",
                "median_ms": eager_ms,
                "speedup": 1.0,
                "max_abs_diff": 0.0,
                "max_rel_diff": 0.0,
                "calls": {},
            }
        )
        for name in libraries:
            diff = (outputs[name] - reference).abs()
            median = statistics.median(samples[name])
            rows.append(
                {
                    "mode": mode_name,
                    "config": name,
                    "median_ms": median,
                    "speedup": eager_ms / median,
                    "max_abs_diff": diff.max().item(),
                    "max_rel_diff": (diff / reference.abs().clamp_min(1e-6)).max().item(),
                    "calls": calls[name],
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="", help="write the results here")
    parser.add_argument(
        "--threshold",
        type=float,
        default=1.05,
        help="promotion threshold of the 'promoted' library",
    )
    parser.add_argument("--calls", type=int, default=5000, help="calls per overhead sample")
    parser.add_argument(
        "--repeats", type=int, default=11, help="samples per variant (medians reported)"
    )
    parser.add_argument("--iters", type=int, default=20, help="forwards per model sample")
    parser.add_argument("--skip-model", action="store_true")
    parser.add_argument(
        "--entries",
        choices=("evaluator", "measured"),
        default="evaluator",
        help="verify and time the fixtures with forge.evaluator (default), or with this script's own lighter check",
    )
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: bench/library_bench.py needs a CUDA GPU")
    import triton

    props = torch.cuda.get_device_properties(0)
    env = {
        "gpu": props.name,
        "arch": f"sm_{props.major}{props.minor}",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
    }
    print(
        f"{env['gpu']} ({env['arch']}), torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}",
        flush=True,
    )
    out: dict = {
        "environment": env,
        "date": time.strftime("%Y-%m-%d"),
        "library_built_by": "evaluating and promoting tests/fixtures/legit/triton_{softmax,layer_norm,gelu}.py on this GPU",
    }
    root = Path(tempfile.mkdtemp(prefix="forge-library-bench-"))
    libs = {"overhead": root / "overhead", "promoted": root / "promoted", "all": root / "all"}
    for lib in libs.values():
        lib.mkdir()

    build = evaluate_on if args.entries == "evaluator" else measure_on
    out["library_built_by"] += f" ({args.entries})"
    print(f"building the libraries ({args.entries} on this GPU):", flush=True)
    problem, source, result = build("softmax", "triton_softmax.py", {"tiny": TINY}, ["eager"])
    out["overhead_entry"] = promote_into(libs["overhead"], problem, source, result, 0.0)
    entries = {}
    if not args.skip_model:
        for op in ("softmax", "layer_norm", "gelu"):
            problem, source, result = build(
                op, f"triton_{op}.py", {"block": SHAPES[op]}, ["eager", "compile"]
            )
            entries[op] = {
                "status": result.status.value,
                "per_set": [
                    {
                        "set": t.input_set,
                        "kernel_ms": t.candidate.median_ms,
                        "eager_ms": t.eager.median_ms if t.eager else None,
                        "compile_ms": t.compiled.median_ms if t.compiled else None,
                        "vs_eager": t.speedup_vs_eager,
                        "vs_compile": t.speedup_vs_compile,
                    }
                    for t in result.timings
                ],
                "promoted": promote_into(libs["promoted"], problem, source, result, args.threshold),
                "all": promote_into(libs["all"], problem, source, result, 0.0),
            }
    out["entries"] = entries

    if not out["overhead_entry"]["promoted"]:
        print(f"overhead entry not built: {out['overhead_entry']['reasons']}", flush=True)
    else:
        o = overhead(libs["overhead"], args.calls, args.repeats)
        out["overhead"] = o
        print(
            f"\n(a) dispatch overhead, softmax {o['shape']} fp32, host clock, {o['samples']} samples x {o['calls_per_sample']} calls"
        )
        print(f"  {'variant':40s} {'min us/call':>12s} {'median us':>10s} {'event median':>13s}")
        for name, r in (*o["rows_us"].items(), *o["floor"].items()):
            print(
                f"  {name:40s} {r['host_us_min']:12.2f} {r['host_us']:10.2f} {r['event_us']:13.2f}"
            )
        print(
            f"  (min) overhead vs module.forward: {o['dispatch_overhead_us']:.2f} us (target <= 3: {'met' if o['meets_target'] else 'NOT met'}); "
            f"vs module(x): {o['dispatch_overhead_vs_module_call_us']:.2f} us; fallback path costs {o['fallback_overhead_us']:.2f} us over PyTorch alone"
        )

    if not args.skip_model:
        print("\nentries for the block's shapes:")
        for op, e in entries.items():
            p = e["per_set"][0] if e["per_set"] else {}
            verdict = (
                "promoted"
                if e["promoted"]["promoted"]
                else "not promoted: " + "; ".join(e["promoted"]["reasons"])
            )
            print(
                f"  {op:11s} {e['status']:9s} kernel {p.get('kernel_ms', float('nan')):.4f} ms, eager {p.get('eager_ms') or float('nan'):.4f}, "
                f"compile {p.get('compile_ms') or float('nan'):.4f} -> at {args.threshold:g}x: {verdict}"
            )
        usable = {
            name: libs[name]
            for name in ("promoted", "all")
            if any(e[name]["promoted"] for e in entries.values())
        }
        rows = model_bench(usable, args.iters, args.repeats)
        out["model"] = {"shape": {"batch": B, "seq": S, "d_model": D, "heads": H}, "rows": rows}
        print(
            f"\n(b) transformer block B={B} S={S} D={D} H={H} fp32, CUDA events, median ms per forward"
        )
        print(
            f"  {'mode':15s} {'library':10s} {'ms':>9s} {'speedup':>8s} {'max abs diff':>13s}  library calls per forward"
        )
        for r in rows:
            served = ", ".join(f"{op} {c[0]}" for op, c in r["calls"].items() if op != "registered")
            print(
                f"  {r['mode']:15s} {r['config']:10s} {r['median_ms']:9.3f} {r['speedup']:7.3f}x {r['max_abs_diff']:13.2e}  {served}"
            )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                out,
                indent=2,
                default=lambda v: None if isinstance(v, float) and not math.isfinite(v) else str(v),
            )
        )
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
