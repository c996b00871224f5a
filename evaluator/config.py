"""Evaluator settings: one pydantic model, a docstring per field."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator


def forge_home() -> Path:
    return Path(os.environ.get("FORGE_HOME", Path.home() / ".forge"))


class EvalConfig(BaseModel):
    device: Literal["cuda", "cpu"] = "cuda"
    """Where candidates run: `cuda` verifies, times and profiles; `cpu` verifies Triton under the
    interpreter and compiles CUDA with nvcc (timings are not meaningful there)."""

    backend: Literal["triton", "cuda"] | None = None
    """Kernel backend of the candidate; None detects it from the source."""

    seeds: int = Field(3, ge=3)
    """Seeds per input set; each is combined with a secret per-evaluation seed."""

    trials: int = Field(50, ge=20)
    """Most timed calls per implementation at each timed input set (in batches, interleaved)."""

    min_trials: int = Field(20, ge=20)
    """Timed calls per implementation after which a set's timing may stop early (`settle_spread`)."""

    settle_spread: float | None = Field(0.01, gt=0)
    """A set's timing stops after `min_trials` once every implementation's calls take 1 ms or
    more (`timing.SETTLE_MIN_MS`) and their device times spread, (p80 - p20) / median, by at
    most this (None: always `trials`): a KernelBench-sized set pays a fresh multi-GB input per
    call, and its times spread by 0.1-0.7% (L1/33 BatchNorm on the H200)."""

    batch: int = Field(10, ge=4, le=32)
    """Calls per timed batch: each batch is queued behind a sleep kernel and checked against the
    trusted process's clock; each call gets new input data."""

    verify_per_batch: int = Field(2, ge=1)
    """Timed calls per batch whose outputs are re-verified, chosen secretly after the batch ran."""

    warmup: int = Field(5, ge=1)
    """Untimed calls before timing (plus a random number more), so compilation stays out."""

    baselines: list[Literal["eager", "compile"]] = Field(
        default_factory=lambda: ["eager", "compile"]
    )
    """Baselines timed under the same protocol, in the trusted process, interleaved by batch."""

    reuse_compile_baseline: bool = True
    """Reuse torch.compile's timings of the same problem, shapes, GPU and versions from the cache
    (compiling the baseline dominates a warm verdict's time); eager is always timed live."""

    profile: bool = True
    """Profile the candidate's kernels (Nsight Compute when usable, else torch.profiler)."""

    reverify_suspicious: bool = True
    """A correct result flagged only for its speed (more than 10x eager) is evaluated again
    before it counts (`host.reverify_config`, `host.reverified`): fresh secret seeds, three times the seeds per input set,
    every timed call's output checked, the profile on. Correct again, it counts, marked
    `reverified`; a flag for beating the roofline floor or an unreset persisting L2 stays."""

    timing_sets: list[str] = Field(default_factory=list)
    """Input sets to time besides the target sets (the problem's `forge_target_sets`, else the
    largest). Speedups that drive the loop and the library are taken at the target sets only;
    correctness always covers every set."""

    timeout_s: float | None = None
    """Caps every deadline the evaluation derives (import, first call with its compile, each
    later call); None keeps the derived ones (see `limits_for`)."""

    sandbox: Literal["local", "docker"] = "local"
    """Where the worker runs: a fresh local process, or a Docker container."""

    executor: str = "local"
    """Where evaluations run (`forge.evaluator.executors`): `local` (this machine, a worker per
    GPU; `local:N` N workers, `local:gpus=0,2` those GPUs), `queue:DIR` (job files in DIR,
    evaluated by `forge worker --queue DIR` on a GPU host that shares the directory; stored as
    an absolute path), or `ray:HOST:PORT` / `ray:auto` (Ray tasks on an existing cluster)."""

    target_gpu: str | None = None
    """The GPU that a `queue:DIR` or `ray` executor's workers have (`H200`), named in the prompts
    as the target; None: detected where evaluations run on this machine, unnamed otherwise."""

    queue_wait_s: float = Field(900.0, gt=0)
    """`queue:DIR` and `ray`: how long the controller waits for a worker to take a job before it
    fails the evaluation; once a worker holds it, the wait is the evaluation's own deadline plus
    a margin (`ray`, which cannot tell waiting from running: the sum of both)."""

    static_checks: bool = True
    """Reject forbidden code before running it. Only tests of the sandbox itself turn this off."""

    precision: str | None = None
    """Precision policy (`forge.evaluator.precision.POLICIES`): `strict`, `tf32`, `bf16` or
    `fp16`; None is `strict`. The problem must accept it; the baselines run under it, the
    tolerance is derived from the reference's own error under it (under strict, against a
    float64 run of the reference), and compiled code that computes in a narrower format than it
    allows is rejected."""

    suspicious_speedup: float = 10.0
    """Speedups above this (vs eager) are flagged suspicious until re-verified."""

    cache_dir: Path = Field(default_factory=lambda: forge_home() / "cache")
    """Compiler caches (Triton, torch extensions, cupy) shared by evaluations."""

    @field_validator("precision")
    @classmethod
    def _known_precision(cls, name: str | None) -> str | None:
        from forge.evaluator.precision import check_name

        return None if name is None else check_name(name, "precision")

    @field_validator("executor")
    @classmethod
    def _known_executor(cls, spec: str) -> str:
        from forge.evaluator.executors import check_spec

        return check_spec(spec)
