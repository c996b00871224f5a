"""Evaluator settings: one pydantic model, a docstring per field."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field


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

    trials: int = Field(50, ge=50)
    """Timed calls per implementation and input set (interleaved with the baselines)."""

    warmup: int = Field(5, ge=1)
    """Untimed calls before timing, on randomized inputs, so compilation stays out of the numbers."""

    recheck_every: int = Field(10, ge=1)
    """Re-verify the output of about one timed call in N (which ones is a secret random choice)."""

    rotate_buffers: int = Field(3, ge=2)
    """Distinct input buffers the timed loop rotates through (defeats pointer-keyed caches)."""

    baselines: list[Literal["eager", "compile"]] = Field(default_factory=lambda: ["eager", "compile"])
    """Live baselines timed in the same process, interleaved with the candidate."""

    profile: bool = True
    """Profile the candidate's kernels (Nsight Compute when usable, else torch.profiler)."""

    timing_sets: list[str] = Field(default_factory=list)
    """Input sets to time (empty: all). Correctness always covers every set."""

    timeout_s: float = 300.0
    """Wall-clock limit of the whole sandboxed job; the process group is killed after it."""

    profile_timeout_s: float = 120.0
    """Hard limit of the Nsight Compute run."""

    sandbox: Literal["local", "docker"] = "local"
    """Where the worker runs: a fresh local process, or a Docker container."""

    static_checks: bool = True
    """Reject forbidden code before running it. Only tests of the sandbox itself turn this off."""

    suspicious_speedup: float = 10.0
    """Speedups above this (vs eager) are flagged suspicious until re-verified."""

    cache_dir: Path = Field(default_factory=lambda: forge_home() / "cache")
    """Compiler caches (Triton, torch extensions, cupy) shared by evaluations."""
