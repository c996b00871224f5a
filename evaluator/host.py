"""Host side of an evaluation: static checks, the sandboxed job, and the `EvalResult`.

The host never imports candidate code. Statistics, speedups and flags are computed here from
the worker's raw samples, out of the candidate's reach (row 14).
"""

from __future__ import annotations

import ast
import hashlib
import secrets
import time

from forge.evaluator.config import EvalConfig
from forge.evaluator.gpus import ceilings_for, floor_ms
from forge.evaluator.problem import Problem
from forge.evaluator.profiling import kernel_base_name
from forge.evaluator.result import (
    Check,
    Environment,
    EvalResult,
    KernelProfile,
    PhaseSeconds,
    Profile,
    SetTiming,
    Status,
    TimingStats,
    geomean,
)
from forge.evaluator.static import check_source


class EvaluatorError(RuntimeError):
    """The evaluation could not be run at all (not a verdict on the candidate)."""


def model_init_params(problem_source: str) -> list[str] | None:
    for node in ast.parse(problem_source).body:
        if isinstance(node, ast.ClassDef) and node.name == "Model":
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    args = item.args
                    return [a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]][1:]
            return []
    return None


def _derive_seeds(secret: int, count: int, salt: int) -> list[int]:
    """Test seeds from the secret per-evaluation seed through SHA-256: one seed reveals no other."""
    return [int.from_bytes(hashlib.sha256(f"{secret}:{salt}:{i}".encode()).digest()[:8], "little") >> 2 for i in range(count)]


def _sandbox(config: EvalConfig):
    if config.sandbox == "docker":
        from forge.sandbox.docker import DockerSandbox

        return DockerSandbox(cache_dir=config.cache_dir)
    from forge.sandbox.local import LocalSandbox

    return LocalSandbox(cache_dir=config.cache_dir)


def _require_gpu() -> None:
    import torch

    if not torch.cuda.is_available():
        raise EvaluatorError("--device cuda needs a CUDA GPU and none is visible here: use --device cpu")


def evaluate(problem: Problem, source: str, config: EvalConfig | None = None, sandbox=None) -> EvalResult:
    config = config or EvalConfig()
    started = time.perf_counter()
    report = check_source(source, config.backend, model_init_params(problem.source))
    backend = config.backend or report.backend or "triton"
    base = {"problem": problem.name, "backend": backend, "candidate_kernels": report.kernel_names}
    env = Environment(device=config.device)
    static_s = time.perf_counter() - started
    if getattr(report, "syntax_error", False):
        return EvalResult(status=Status.compile_error, reasons=report.violations, environment=env, phase_seconds=PhaseSeconds(static=static_s, total=static_s), **base)
    if config.static_checks and not report.ok:
        return EvalResult(status=Status.rejected, reasons=report.violations, environment=env, phase_seconds=PhaseSeconds(static=static_s, total=static_s), **base)
    if config.device == "cpu" and backend == "cuda":
        return _compile_only(source, base, env, static_s, started)
    if config.device == "cuda":
        _require_gpu()
    sandbox = sandbox or _sandbox(config)
    secret = secrets.randbits(62)
    payload = {
        "kind": "evaluate",
        "device": config.device,
        "backend": backend,
        "problem_source": problem.source,
        "candidate_source": source,
        "dtype": problem.dtype,
        "atol": problem.atol,
        "rtol": problem.rtol,
        "distributions": problem.distributions,
        "input_sets": [s.model_dump() for s in problem.sets_for(config.device)],
        "seeds": _derive_seeds(secret, config.seeds, 1),
        "timing_seeds": _derive_seeds(secret, config.rotate_buffers + config.trials + 2, 2),
        "kernel_names": report.kernel_names,
        "trials": config.trials,
        "warmup": config.warmup,
        "recheck_every": config.recheck_every,
        "rotate_buffers": config.rotate_buffers,
        "baselines": list(config.baselines),
        "timing_sets": list(config.timing_sets),
        "profile": config.profile,
    }
    from forge.sandbox.base import SandboxJob

    outcome = sandbox.run(SandboxJob(payload=payload, timeout_s=config.timeout_s, gpu=config.device == "cuda"))
    result = _from_outcome(outcome, base, env, config, problem)
    result.phase_seconds.static = static_s
    if result.status is Status.correct and config.device == "cuda" and config.profile:
        result.profile = _profile(sandbox, payload, config, result)
    result.phase_seconds.total = time.perf_counter() - started
    return result


def _compile_only(source: str, base: dict, env: Environment, static_s: float, started: float) -> EvalResult:
    from forge.evaluator.cuda_compile import compile_cuda

    report = compile_cuda(source)
    log = "\n".join(s.log for s in report.sources)
    total = time.perf_counter() - started
    phases = PhaseSeconds(static=static_s, compile=report.seconds, total=total)
    if not report.ok:
        reason = report.error or "nvcc failed to compile the CUDA source"
        return EvalResult(status=Status.compile_error, reasons=[reason], compile_log=log, environment=env, phase_seconds=phases, **base)
    return EvalResult(
        status=Status.compiled,
        reasons=["compiled with nvcc; CUDA kernels cannot run without a GPU (no correctness verdict on --device cpu)"],
        compile_log=log,
        environment=env,
        phase_seconds=phases,
        **base,
    )


def _from_outcome(outcome, base: dict, env: Environment, config: EvalConfig, problem: Problem) -> EvalResult:
    message = outcome.message or {}
    common = {"stderr": outcome.stderr, "sandbox": outcome.info, **base}
    if outcome.timed_out:
        return EvalResult(status=Status.timeout, reasons=[f"killed after the {config.timeout_s:.0f} s wall-clock limit"], environment=env, **common)
    if outcome.channel_error:
        return EvalResult(status=Status.rejected, reasons=[outcome.channel_error], environment=env, **common)
    if not outcome.message:
        how = f"signal {outcome.signal}" if outcome.signal else f"exit code {outcome.exit_code}"
        return EvalResult(status=Status.runtime_error, reasons=[f"the worker died without a result ({how}): {outcome.stderr.strip()[-300:]}"], environment=env, **common)
    if "worker_error" in message:
        return EvalResult(status=Status.runtime_error, reasons=[f"evaluator error: {message['worker_error']}"], stderr=message.get("traceback", ""), environment=env, **{k: v for k, v in common.items() if k != "stderr"})
    env = Environment(device=config.device, **{k: v for k, v in message["environment"].items() if k in Environment.model_fields})
    status = Status(message["status"])
    detail = message.get("stderr_detail", "")
    result = EvalResult(
        status=status,
        reasons=message["reasons"],
        environment=env,
        checks=[Check(**c) for c in message["checks"]],
        kernels_seen=message["kernels_seen"],
        timing_meaningful=config.device == "cuda" and bool(message["timings"]),
        compile_log=detail if status is Status.compile_error else "",
        phase_seconds=PhaseSeconds(**{k: v for k, v in message["phase_seconds"].items() if k in PhaseSeconds.model_fields}),
        **{**common, "stderr": (detail + "\n" + outcome.stderr).strip() if detail else outcome.stderr},
    )
    _add_timings(result, message, config, problem)
    result.profile = _torch_profile(message)
    return result


def _add_timings(result: EvalResult, message: dict, config: EvalConfig, problem: Problem) -> None:
    ceilings = ceilings_for(result.environment.gpu_name)
    for raw in message["timings"]:
        stats = {k: TimingStats.from_samples(v["event_ms"], v["host_ms"]) for k, v in raw["samples"].items()}
        cand = stats["candidate"]
        timing = SetTiming(input_set=raw["input_set"], candidate=cand, eager=stats.get("eager"), compiled=stats.get("compiled"), rechecks=raw["rechecks"])
        if timing.eager:
            timing.speedup_vs_eager = timing.eager.median_ms / cand.median_ms
        if timing.compiled:
            timing.speedup_vs_compile = timing.compiled.median_ms / cand.median_ms
        work = message.get("work", {}).get(raw["input_set"])
        if ceilings and work:
            timing.floor_ms = floor_ms(ceilings, work["flops"], work["bytes"], problem.dtype)
            timing.roofline_fraction = timing.floor_ms / cand.median_ms
        result.timings.append(timing)
        _flag(result, timing, config)
    result.speedup_vs_eager = geomean([t.speedup_vs_eager for t in result.timings if t.speedup_vs_eager])
    result.speedup_vs_compile = geomean([t.speedup_vs_compile for t in result.timings if t.speedup_vs_compile])
    if result.timings and not all(r.get("persisting_l2_reset") for r in message["timings"]):
        result.suspicious_reasons.append("persisting L2 could not be reset before timing")


def _flag(result: EvalResult, t: SetTiming, config: EvalConfig) -> None:
    reasons = []
    if t.speedup_vs_eager and t.speedup_vs_eager > config.suspicious_speedup:
        reasons.append(f"'{t.input_set}': {t.speedup_vs_eager:.1f}x faster than eager (> {config.suspicious_speedup:g}x)")
    if t.roofline_fraction and t.roofline_fraction > 1.0:
        reasons.append(f"'{t.input_set}': faster than the roofline floor ({t.candidate.median_ms:.4f} ms < {t.floor_ms:.4f} ms)")
    host, event = t.candidate.host_median_ms, t.candidate.median_ms
    if host > 1.5 * event + 0.05:
        reasons.append(f"'{t.input_set}': host clock {host:.3f} ms disagrees with events {event:.3f} ms")
    if reasons:
        result.suspicious = True
        result.suspicious_reasons.extend(reasons)


def _torch_profile(message: dict) -> Profile | None:
    durations = message.get("kernel_durations_us", {})
    triton = {k["name"]: k for k in message.get("triton_kernels", [])}
    if not durations and not triton:
        return None
    kernels = []
    for name, us in durations.items():
        meta = triton.get(kernel_base_name(name), {})
        kernels.append(
            KernelProfile(
                name=name,
                duration_us=us,
                registers_per_thread=meta.get("registers_per_thread"),
                spills=meta.get("spills"),
                shared_mem_bytes=meta.get("shared_mem_bytes"),
            )
        )
    return Profile(tool="torch_profiler", input_set=message.get("profiled_set", ""), kernels=kernels)


def _profile(sandbox, payload: dict, config: EvalConfig, result: EvalResult) -> Profile | None:
    from forge.evaluator.profiling import ncu_path, profile_with_ncu

    fallback = result.profile
    if not ncu_path():
        if fallback:
            fallback.note = "Nsight Compute (ncu) not found: torch.profiler durations only"
        return fallback
    largest = payload["input_sets"][-1]["name"]
    ncu = profile_with_ncu(sandbox, {**payload, "profile_set": largest}, config.profile_timeout_s)
    result.phase_seconds.profiling = ncu["seconds"]
    if not ncu["kernels"]:
        if fallback:
            fallback.note = ncu["note"]
        return fallback
    triton = {kernel_base_name(k.name): k for k in (fallback.kernels if fallback else [])}
    kernels = []
    for k in ncu["kernels"]:
        m = k["metrics"]
        meta = triton.get(kernel_base_name(k["name"]))
        kernels.append(
            KernelProfile(
                name=k["name"],
                duration_us=m.get("gpu__time_duration.sum", 0.0) / 1e3 if "gpu__time_duration.sum" in m else None,
                registers_per_thread=int(m["launch__registers_per_thread"]) if "launch__registers_per_thread" in m else None,
                spills=meta.spills if meta else None,
                shared_mem_bytes=int(m.get("launch__shared_mem_per_block_static", 0) + m.get("launch__shared_mem_per_block_dynamic", 0)),
                metrics=m,
            )
        )
    return Profile(tool="ncu", input_set=largest, kernels=kernels, note=ncu["note"])
