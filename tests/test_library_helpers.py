"""Shared builders for the library tests (imported by tests/test_library_*.py), and the tests of
the pure key functions.

EvalResults are built two ways: by the real evaluator on the CPU (Triton under the interpreter:
real checks, no timings), to which timings are then added explicitly because the CPU cannot
time (that is the EvalResult interface, the evaluator's own output format); or constructed
whole, for the promotion rules.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from forge.evaluator import EvalConfig, evaluate, resolve_problem
from forge.evaluator.problem import Problem
from forge.evaluator.result import (
    Check,
    Environment,
    EvalResult,
    SetTiming,
    Status,
    TimingStats,
    geomean,
)
from forge.kernels_library import runtime
from forge.kernels_library.keys import Machine, bucket_of, incompatibility, major_minor, pow2_bucket
from forge.kernels_library.promotion import build_entry
from forge.kernels_library.runtime import triton_version
from forge.kernels_library.storage import EntryRecord, write_entry

LEGIT = Path(__file__).parent / "fixtures" / "legit"
TORCH = torch.__version__
TRITON = triton_version()


def timing(ms: float) -> TimingStats:
    return TimingStats(
        n=50,
        median_ms=ms,
        p20_ms=ms * 0.99,
        p80_ms=ms * 1.01,
        mean_ms=ms,
        cv=0.01,
        host_median_ms=ms,
    )


def environment(
    device: str = "cuda",
    arch: str = "sm_90",
    torch_version: str = "2.11.0+cu130",
    triton: str = "3.6.0",
    cuda: str = "13.0",
) -> Environment:
    return Environment(
        device=device,
        gpu_name="NVIDIA H100" if device == "cuda" else "",
        arch=arch,
        torch_version=torch_version,
        triton_version=triton,
        cuda_version=cuda,
    )


def cpu_environment() -> Environment:
    return environment("cpu", "cpu", TORCH, TRITON, "")


def checks_for(
    sets: list[str], seeds: int = 3, failed: tuple[str, int] | None = None
) -> list[Check]:
    out = []
    for name in sets:
        for seed in range(seeds):
            bad = failed == (name, seed)
            out.append(
                Check(
                    input_set=name,
                    seed_index=seed,
                    phase="before_reference",
                    passed=not bad,
                    max_abs_error=0.5 if bad else 1e-7,
                    max_rel_error=1e-6,
                    mismatches=3 if bad else 0,
                    numel=100,
                )
            )
    return out


def timings_for(
    speedups: dict[str, float], *, eager: bool = True, compile_ratio: float = 0.8
) -> list[SetTiming]:
    out = []
    for name, x in speedups.items():
        t = SetTiming(input_set=name, candidate=timing(1.0))
        if eager:
            t.eager = timing(x)
            t.speedup_vs_eager = x
        t.compiled = timing(x * compile_ratio)
        t.speedup_vs_compile = x * compile_ratio
        out.append(t)
    return out


def make_result(
    problem: Problem,
    speedups: dict[str, float] | None = None,
    *,
    status: Status = Status.correct,
    seeds: int = 3,
    sets: list[str] | None = None,
    failed: tuple[str, int] | None = None,
    suspicious: bool = False,
    env: Environment | None = None,
    eager: bool = True,
) -> EvalResult:
    names = sets if sets is not None else [s.name for s in problem.input_sets]
    speedups = {n: 1.5 for n in names} if speedups is None else speedups
    timings = timings_for(speedups, eager=eager)
    return EvalResult(
        status=status,
        reasons=[] if status is Status.correct else ["output mismatch on set 'tiny'"],
        problem=problem.name,
        backend="triton",
        environment=env or environment(),
        checks=checks_for(names, seeds, failed),
        timings=timings,
        timing_meaningful=bool(timings),
        speedup_vs_eager=geomean([t.speedup_vs_eager for t in timings if t.speedup_vs_eager]),
        speedup_vs_compile=geomean([t.speedup_vs_compile for t in timings if t.speedup_vs_compile]),
        suspicious=suspicious,
        suspicious_reasons=["'large': 14.0x faster than eager (> 10x)"] if suspicious else [],
        kernels_seen=["_softmax_kernel"],
    )


def cpu_problem(op: str, **update) -> Problem:
    """The catalogue problem restricted to its CPU input sets (what a CPU evaluation covers)."""
    problem = resolve_problem(op)
    return problem.model_copy(update={"input_sets": problem.sets_for("cpu"), **update})


@functools.cache
def real_cpu_result(op: str, fixture: str) -> EvalResult:
    """The evaluator's verdict on a legit Triton fixture on the CPU (interpreter), once per session."""
    result = evaluate(resolve_problem(op), (LEGIT / fixture).read_text(), EvalConfig(device="cpu"))
    assert result.status is Status.correct, result.reasons
    return result


def cpu_entry(
    op: str,
    fixture: str,
    speedups: dict[str, float] | None = None,
    *,
    source: str | None = None,
    **problem_update,
) -> EntryRecord:
    """A library entry for this CPU (arch `cpu`, this torch/triton) from a real CPU evaluation
    of the fixture, with timings added (the CPU cannot time)."""
    problem = cpu_problem(op, **problem_update)
    result = real_cpu_result(op, fixture)
    names = [s.name for s in problem.input_sets]
    timings = timings_for(speedups or {n: 1.5 for n in names})
    timed = result.model_copy(
        update={
            "timings": timings,
            "timing_meaningful": True,
            "speedup_vs_eager": geomean([t.speedup_vs_eager for t in timings]),
        }
    )
    return build_entry(
        problem, source if source is not None else (LEGIT / fixture).read_text(), timed, 1.05
    )


def foreign_entry(
    op: str, fixture: str, *, arch: str = "sm_90", dtype: str | None = None
) -> EntryRecord:
    """An entry verified on another machine (a GPU), built from constructed results."""
    update = {"dtype": dtype} if dtype else {}
    problem = cpu_problem(op, **update)
    result = make_result(problem, env=environment(arch=arch))
    return build_entry(problem, (LEGIT / fixture).read_text(), result, 1.05)


def write_all(directory: Path, *records: EntryRecord) -> Path:
    for r in records:
        write_entry(r, directory)
    return directory


# ------------------------------------------------------------------------------- key functions


def cpu_library(directory: Path) -> Path:
    """A library of the softmax, layer_norm and gelu fixtures, verified on the CPU."""
    return write_all(
        directory,
        cpu_entry("softmax", "triton_softmax.py"),
        cpu_entry("layer_norm", "triton_layer_norm.py"),
        cpu_entry("gelu", "triton_gelu.py"),
    )


@contextmanager
def interpreted_runtime(home: Path | None) -> Iterator[None]:
    """The runtime under the Triton interpreter with its own switches unset; `home`, when given,
    is $FORGE_HOME (where the C++ route is built). The library is disabled on the way out."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        if home is not None:
            mp.setenv("FORGE_HOME", str(home))
        mp.delenv("FORGE_KERNELS_DISABLE", raising=False)
        mp.delenv("FORGE_KERNELS_ROUTE", raising=False)
        mp.delenv("FORGE_LIBRARY", raising=False)
        problem = runtime._interpreter_problem()
        assert problem is None, problem
        yield
    runtime.disable()


@contextmanager
def python_kernel_calls() -> Iterator[list[int]]:
    """Counts the runtime's Python kernel (`impl`) entered on this thread inside the block."""
    seen = [0]

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_name == "impl":
            if frame.f_code.co_filename == runtime.__file__:
                seen[0] += 1

    sys.setprofile(profile)
    try:
        yield seen
    finally:
        sys.setprofile(None)


def test_major_minor():
    assert major_minor("2.11.0+cu130") == "2.11"
    assert major_minor("3.6.0") == "3.6"
    assert major_minor("13.0") == "13.0"
    assert major_minor("") == ""
    assert major_minor("nightly") == ""


def test_pow2_buckets_for_batch_like_dims_exact_for_weight_like():
    assert [pow2_bucket(v) for v in (0, 1, 2, 3, 7, 8, 9, 4096, 4097)] == [
        1,
        1,
        2,
        4,
        8,
        8,
        16,
        4096,
        8192,
    ]
    rules = {"batch_size": "pow2", "dim": "exact"}
    assert bucket_of({"batch_size": 3000, "dim": 1000}, rules) == {"batch_size": 4096, "dim": 1000}
    assert bucket_of({"batch_size": 4096, "dim": 1000}, rules) == bucket_of(
        {"batch_size": 2049, "dim": 1000}, rules
    )
    assert bucket_of({"batch_size": 4096, "dim": 1001}, rules) != bucket_of(
        {"batch_size": 4096, "dim": 1000}, rules
    )
    # a constant without a declared rule is exact
    assert bucket_of({"batch_size": 3, "num_groups": 5}, {"batch_size": "pow2"}) == {
        "batch_size": 4,
        "num_groups": 5,
    }


def test_machine_compatibility_names_every_difference():
    here = Machine("cuda", "sm_90", "2.11", "3.6", "13.0")
    same = dict(arch="sm_90", torch="2.11", triton="3.6", cuda="13.0", backend="triton")
    assert incompatibility(here, **same) is None
    why = incompatibility(here, **{**same, "arch": "sm_80", "torch": "2.10"})
    assert (
        "arch sm_80 (here sm_90)" in why and "torch 2.10" in why and "forge library verify" in why
    )
    assert "triton 3.5" in incompatibility(here, **{**same, "triton": "3.5"})
    # triton's version does not matter for a CUDA-backend kernel; CUDA's does
    assert incompatibility(here, **{**same, "triton": "3.5", "backend": "cuda"}) is None
    assert "CUDA 12.8" in incompatibility(here, **{**same, "cuda": "12.8"})
