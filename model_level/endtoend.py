"""The model end to end: eager, eager + library, torch.compile, torch.compile + library.

Each configuration is warmed up, then timed over `iters` forwards per sample (CUDA events on a
GPU; the host clock on the CPU, where the figures say nothing about GPU speed and are marked
so), median over `repeats` samples; its output is compared with eager's (max abs and max
relative difference). The library configurations use `kl.enable()` (the library directories
of `path`, else $FORGE_LIBRARY / $FORGE_HOME/library) and `kl.compile_backend()`; their
library calls and fallbacks per forward are kl.stats() over one forward. Each operator served
in eager + library is then timed alone (`kl.use(ops=[op])`): its contribution is eager's
median minus that one's.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

import forge.kernels_library as kl

CONFIGS = ("eager", "eager+library", "compile", "compile+library")


@dataclass
class ConfigResult:
    config: str
    median_ms: float | None = None
    speedup_vs_eager: float | None = None
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    library_calls: dict[str, int] = field(default_factory=dict)
    fallbacks: dict[str, dict[str, int]] = field(default_factory=dict)
    compiled_custom_ops: list[dict] = field(default_factory=list)
    error: str = ""


@dataclass
class Contribution:
    op: str
    calls_per_forward: int
    median_ms: float
    saved_ms: float


@dataclass
class EndToEnd:
    device: str
    dtype: str
    timing: str
    meaningful: bool
    iters: int
    repeats: int
    compiler: str
    library: dict
    configs: list[ConfigResult]
    contributions: list[Contribution]

    def as_dict(self) -> dict:
        return {**asdict(self), "verdicts": self.verdicts()}

    def verdicts(self) -> list[str]:
        """Per way of running the model (eager, torch.compile): whether serving the library made
        it faster, from the medians measured here; none where they mean nothing (the CPU) or a
        configuration failed. Served operators are opaque to inductor, so a kernel that beats
        torch.compile alone can still lose the fusions around it (the H200, 2026-12-02: a CNN's
        GroupNorm kernels, 1.0-1.4x torch.compile's alone, made the compiled model 1.34x
        slower)."""
        if not self.meaningful:
            return []
        by_config = {c.config: c for c in self.configs if c.median_ms and not c.error}
        lines = []
        for base in ("eager", "compile"):
            plain, served = by_config.get(base), by_config.get(f"{base}+library")
            if plain is None or served is None:
                continue
            ratio = plain.median_ms / served.median_ms
            advice = "serve the library" if ratio > 1.0 else "leave the library off"
            lines.append(
                f"with {base}: {advice} ({served.median_ms:.3f} ms per forward with it, "
                f"{plain.median_ms:.3f} ms without: {ratio:.3f}x)"
            )
        return lines


def _outputs(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _outputs(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _outputs(v)]
    return []


def differences(reference, output) -> tuple[float, float]:
    diffs, rels = [0.0], [0.0]
    for r, o in zip(_outputs(reference), _outputs(output), strict=True):
        d = (o.float() - r.float()).abs()
        diffs.append(d.max().item() if d.numel() else 0.0)
        rels.append((d / r.float().abs().clamp_min(1e-6)).max().item() if d.numel() else 0.0)
    return max(diffs), max(rels)


def time_forward(fn: Callable, device: str, iters: int, repeats: int, warmup: int = 3) -> float:
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        samples = []
        for _ in range(repeats):
            if device == "cuda":
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(iters):
                    fn()
                end.record()
                end.synchronize()
                samples.append(start.elapsed_time(end) / iters)
            else:
                t0 = time.perf_counter()
                for _ in range(iters):
                    fn()
                samples.append((time.perf_counter() - t0) * 1000 / iters)
    return statistics.median(samples)


def _counts() -> tuple[dict, dict]:
    ops = kl.stats()["ops"]
    return (
        {op: s["library_calls"] for op, s in ops.items() if s["library_calls"]},
        {op: dict(s["fallbacks"]) for op, s in ops.items() if s["fallbacks"]},
    )


def measure(
    model: torch.nn.Module,
    inputs: list,
    *,
    device: str,
    dtype: str,
    iters: int = 20,
    repeats: int = 5,
    compiler: str = "inductor",
    path=None,
    on_step: Callable[[str], None] = lambda _text: None,
) -> EndToEnd:
    kl.disable()
    with torch.no_grad():
        reference = model(*inputs)
    devices = [device]
    results: dict[str, ConfigResult] = {}

    def run(config: str, build: Callable[[], Callable], library: bool) -> None:
        on_step(config)
        result = ConfigResult(config)
        results[config] = result
        torch._dynamo.reset()
        try:
            if library:
                report = kl.enable(path=path, devices=devices)
                if not report.enabled:
                    result.error = "the library serves none of its operators here: " + (
                        report.disabled_reason or str(report.not_registered)
                    )
            fn = build()
            kl.reset_stats()
            with torch.no_grad():
                out = fn()
            result.library_calls, result.fallbacks = _counts()
            result.max_abs_diff, result.max_rel_diff = differences(reference, out)
            backend = getattr(fn, "forge_backend", None)
            if backend is not None:
                result.compiled_custom_ops = [d.as_dict() for d in backend.replaced]
            result.median_ms = time_forward(fn, device, iters, repeats)
        except kl.LibraryError as exc:
            result.error = str(exc)
        finally:
            kl.disable()

    def compiled(backend) -> Callable[[], Callable]:
        def build() -> Callable:
            fn = torch.compile(model, backend=backend)
            call = lambda: fn(*inputs)  # noqa: E731
            if not isinstance(backend, str):
                call.forge_backend = backend
            return call

        return build

    eager = lambda: lambda: model(*inputs)  # noqa: E731
    run("eager", eager, False)
    run("eager+library", eager, True)
    run("compile", compiled(compiler), False)
    run("compile+library", lambda: compiled(kl.compile_backend(compiler))(), True)
    base = results["eager"].median_ms
    for r in results.values():
        if r.median_ms and base:
            r.speedup_vs_eager = base / r.median_ms
    contributions = []
    for op, count in results["eager+library"].library_calls.items():
        on_step(f"eager+library ({op} only)")
        try:
            with kl.use(ops=[op], path=path, devices=devices):
                alone = time_forward(lambda: model(*inputs), device, iters, repeats)
        except kl.LibraryError as exc:
            results["eager+library"].error += f"; {op} alone: {exc}"
            continue
        contributions.append(Contribution(op, count, alone, (base or 0.0) - alone))
    timing = "CUDA events" if device == "cuda" else "host clock on the CPU: not GPU figures"
    library = {"dirs": [str(d) for d in kl.library_dirs(path)], "devices": devices}
    return EndToEnd(
        device,
        dtype,
        timing,
        device == "cuda",
        iters,
        repeats,
        compiler,
        library,
        [results[c] for c in CONFIGS],
        contributions,
    )
