"""Model-level GPU measurements (issue 13): a GPT-2-small-sized transformer block stack (fp32 and
bf16) and a small CNN, each:

1. profiled (forge.model_level.profile: ATen operators and torch.fx items by device time);
2. its top operators that the runtime serves from ATen written as problems at the model's real
   shapes (forge.model_level.problems: the catalogue Model, the model's shape as set `model`);
3. "optimized" without an LLM (the device machine reaches none): the legit Triton fixture of each
   operator (tests/fixtures/legit/triton_<op>.py) evaluated by forge.evaluator on that problem on
   this GPU, then promoted into two libraries: `promoted` under the real rules (threshold
   --threshold, default 1.05: an operator whose kernel does not beat eager at the model's shape
   stays PyTorch's) and `all` at threshold 0 (every verified kernel served: the mechanism's
   end-to-end cost);
4. measured end to end (forge.model_level.endtoend): eager, eager + library, torch.compile
   (inductor), torch.compile + library (kl.compile_backend), with max output differences vs
   eager, library calls per forward and each served operator's contribution.

What `forge optimize-model` does with an LLM in step 3 is what `forge batch` does; this script
measures everything around it on the GPU with known kernels.

    source bench/gpu_setup.sh
    python3 bench/model_bench.py --out "$OUT/model_bench.json"                      # all
    python3 bench/model_bench.py --models gpt2 --dtypes bfloat16 --out "$OUT/m.json" # a part

`--device cpu` (Triton interpreter; small sizes, e.g. `--layers 1 --batch 1 --seq 16
--cnn-batch 1 --dtypes float32`) runs the same steps on the CPU, to check the script itself
before a GPU call: CPU timings, no GPU figures.

The JSON is rewritten after every model, so a run stopped by a time limit keeps what it did.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from forge.evaluator import EvalConfig, evaluate, resolve_problem
from forge.kernels_library.promotion import PromotionRefused, build_entry
from forge.kernels_library.storage import write_entry
from forge.model_level.endtoend import measure
from forge.model_level.problems import write_problems
from forge.model_level.profile import profile_model, trace

ROOT = Path(__file__).resolve().parent.parent
LEGIT = ROOT / "tests" / "fixtures" / "legit"


class GPT2Block(nn.Module):
    """GPT-2 small's block (d 768, 12 heads, 4x MLP), attention written out with a causal mask
    and softmax as its own operator, exact-erf GELU (GPT-2's tanh approximation is not what the
    library's gelu entries compute)."""

    def __init__(self, d: int = 768, heads: int = 12, max_seq: int = 1024) -> None:
        super().__init__()
        self.heads = heads
        # a causal mask buffer of the sequence length the model runs at (torch.fx cannot trace
        # torch.ones(s, s) from the input's shape, nor slice a buffer with it)
        mask = torch.ones(max_seq, max_seq, dtype=torch.bool).triu(1)
        self.register_buffer("mask", mask, persistent=False)
        self.ln_1 = nn.LayerNorm(d)
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.c_fc = nn.Linear(d, 4 * d)
        self.act = nn.GELU()
        self.mlp_proj = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        h = self.heads
        q, k, v = self.c_attn(self.ln_1(x)).view(b, s, 3, h, d // h).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-2, -1)) * (d // h) ** -0.5
        att = torch.softmax(scores.masked_fill(self.mask, float("-inf")), dim=-1)
        x = x + self.c_proj((att @ v).transpose(1, 2).reshape(b, s, d))
        return x + self.mlp_proj(self.act(self.c_fc(self.ln_2(x))))


class GPT2Stack(nn.Module):
    def __init__(self, layers: int = 12, max_seq: int = 1024) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[GPT2Block(max_seq=max_seq) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(768)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln_f(self.blocks(x))


class SmallCNN(nn.Module):
    """Conv / GroupNorm / ReLU stages with pooling and a linear head (GroupNorm, not BatchNorm:
    a library operator, and what small-batch vision models use)."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        layers, c_in = [], 3
        for c_out in (64, 128, 256, 512):
            layers += [
                nn.Conv2d(c_in, c_out, 3, padding=1),
                nn.GroupNorm(32, c_out),
                nn.ReLU(),
                nn.Conv2d(c_out, c_out, 3, padding=1),
                nn.GroupNorm(32, c_out),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.head(self.features(x).mean(dim=(2, 3))), dim=-1)


def models(layers: int, batch: int, seq: int, cnn_batch: int) -> dict:
    return {
        "gpt2": (
            lambda: GPT2Stack(layers, max_seq=seq),
            lambda: [torch.randn(batch, seq, 768)],
            f"GPT-2 small sized: {layers} blocks, d 768, 12 heads, batch {batch}, seq {seq}",
        ),
        "cnn": (
            SmallCNN,
            lambda: [torch.randn(cnn_batch, 3, 128, 128)],
            f"small CNN: 8 conv/GroupNorm/ReLU layers, batch {cnn_batch}, 3x128x128",
        ),
    }


def build_libraries(written, root: Path, threshold: float, device: str, log) -> tuple[dict, list]:
    libs = {"promoted": root / "promoted", "all": root / "all"}
    for lib in libs.values():
        lib.mkdir(parents=True, exist_ok=True)
    rows = []
    for w in written.written:
        op = w.problem_name
        fixture = LEGIT / f"triton_{op}.py"
        row = {"op": op, "problem": str(w.path), "item_ms_per_forward": w.item.ms_per_forward}
        rows.append(row)
        if not fixture.is_file():
            row["status"] = f"no fixture kernel for {op}"
            continue
        problem = resolve_problem(str(w.path))
        t0 = time.perf_counter()
        result = evaluate(
            problem,
            fixture.read_text(),
            EvalConfig(device=device, profile=False, baselines=["eager", "compile"]),
        )
        model_set = next((t for t in result.timings if t.input_set == "model"), None)
        row.update(
            status=result.status.value,
            reasons=result.reasons[:3],
            evaluate_s=round(time.perf_counter() - t0, 1),
            kernel_ms=model_set.candidate.median_ms if model_set else None,
            eager_ms=model_set.eager.median_ms if model_set and model_set.eager else None,
            compile_ms=model_set.compiled.median_ms if model_set and model_set.compiled else None,
            vs_eager=model_set.speedup_vs_eager if model_set else None,
            vs_compile=model_set.speedup_vs_compile if model_set else None,
        )
        for name, at in (("promoted", threshold), ("all", 0.0)):
            try:
                write_entry(build_entry(problem, fixture.read_text(), result, at), libs[name])
                row[name] = True
            except PromotionRefused as refused:
                row[name] = refused.reasons
        log(
            f"    {op} {problem.input_sets[0].constants}: {row['status']}, "
            f"kernel {row.get('kernel_ms')} ms vs eager {row.get('eager_ms')} / compile "
            f"{row.get('compile_ms')}; promoted: {row.get('promoted') is True}"
        )
    return libs, rows


def run_model(name: str, spec, dtype: str, args, root: Path, log) -> dict:
    build, inputs_fn, description = spec
    torch.manual_seed(0)
    target = getattr(torch, dtype)
    model = build().to(args.device, target).eval()
    torch.manual_seed(1)
    inputs = [x.to(args.device, target) for x in inputs_fn()]
    log(f"\n== {name} {dtype}: {description}")
    profile = profile_model(
        model,
        inputs,
        name=name,
        device=args.device,
        dtype=dtype,
        iters=args.profile_iters,
        check_compile=args.check_compile,
    )
    log(f"  forward {profile.forward_ms:.3f} ms (sum of ATen self device times); top items:")
    for item in profile.items[:8]:
        log(
            f"    {item.name:24s} {item.kind:8s} {str(item.shape):22s} "
            f"{item.ms_per_forward:8.4f} ms {item.share:6.1%}  {item.compile_note[:60]}"
        )
    if not profile.traced:
        log(f"  torch.fx could not trace it ({profile.trace_error}): no problems, no library")
        return {"model": name, "dtype": dtype, "profile": profile.as_dict()}
    folder = root / f"{name}-{dtype}"
    written = write_problems(
        trace(model, inputs), profile.items, args.top, folder / "problems", dtype, name, True
    )
    libs, entries = build_libraries(written, folder / "library", args.threshold, args.device, log)
    ends = {}
    for lib_name, lib in libs.items():
        if not any(lib.iterdir()):
            ends[lib_name] = {"skipped": "no entry promoted into this library"}
            continue
        log(f"  end to end with library '{lib_name}':")
        result = measure(
            model,
            inputs,
            device=args.device,
            dtype=dtype,
            iters=args.iters,
            repeats=args.repeats,
            path=lib,
            on_step=lambda step: log(f"    {step}"),
        )
        for r in result.configs:
            log(
                f"    {r.config:16s} {r.median_ms or float('nan'):9.3f} ms "
                f"{r.speedup_vs_eager or float('nan'):6.3f}x  max abs diff {r.max_abs_diff or 0:.2e}"
                f"  calls {r.library_calls} {r.error[:60]}"
            )
        for c in result.contributions:
            log(f"      {c.op}: {c.calls_per_forward}/forward, saves {c.saved_ms:+.3f} ms")
        ends[lib_name] = result.as_dict()
    return {
        "model": name,
        "dtype": dtype,
        "description": description,
        "profile": profile.as_dict(),
        "problems": [
            {"item": w.item.name, "problem": w.problem_name, "file": str(w.path)}
            for w in written.written
        ],
        "not_written": [{"item": w.item.name, "reason": w.note} for w in written.skipped],
        "entries": entries,
        "end_to_end": ends,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="", help="write the JSON here (after every model)")
    parser.add_argument("--models", default="gpt2,cnn")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--cnn-batch", type=int, default=32)
    parser.add_argument("--top", type=int, default=4, help="servable operators to optimize")
    parser.add_argument("--threshold", type=float, default=1.05)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile-iters", type=int, default=3)
    parser.add_argument("--check-compile", action="store_true")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: bench/model_bench.py --device cuda needs a CUDA GPU (or --device cpu)")
    if args.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported
    import triton

    gpu = torch.cuda.get_device_properties(0) if args.device == "cuda" else None
    out: dict = {
        "environment": {
            "gpu": gpu.name if gpu else "cpu",
            "arch": f"sm_{gpu.major}{gpu.minor}" if gpu else "cpu",
            "torch": torch.__version__,
            "triton": triton.__version__,
            "cuda": torch.version.cuda,
        },
        "date": time.strftime("%Y-%m-%d"),
        "settings": vars(args),
        "runs": [],
    }

    def log(text: str) -> None:
        print(text, flush=True)

    def save() -> None:
        if args.out:
            Path(args.out).write_text(
                json.dumps(
                    out,
                    indent=2,
                    default=lambda v: (
                        None if isinstance(v, float) and not math.isfinite(v) else str(v)
                    ),
                )
            )

    log(f"{out['environment']['gpu']}, torch {torch.__version__}, triton {triton.__version__}")
    root = Path(tempfile.mkdtemp(prefix="forge-model-bench-"))
    specs = models(args.layers, args.batch, args.seq, args.cnn_batch)
    for name in args.models.split(","):
        for dtype in args.dtypes.split(","):
            out["runs"].append(run_model(name, specs[name], dtype, args, root, log))
            save()
            if gpu:
                torch.cuda.empty_cache()
    if args.out:
        log(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
