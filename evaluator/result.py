"""The evaluator's verdict: one typed, JSON-serializable `EvalResult`.

Missing measurements are absent (None or an empty list), never -1. Logs are truncated to
`LOG_LIMIT` characters so a result always fits in a database row and a prompt.
"""

from __future__ import annotations

import math
import statistics
from enum import Enum
from typing import Literal

from pydantic import BaseModel, Field, field_validator

LOG_LIMIT = 8000


def truncate(text: str, limit: int = LOG_LIMIT) -> str:
    """Keep the head and the tail of a long log: errors sit at both ends."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n... [{len(text) - limit} characters cut] ...\n{text[-half:]}"


class Status(str, Enum):
    compile_error = "compile_error"
    runtime_error = "runtime_error"
    timeout = "timeout"
    rejected = "rejected"
    incorrect = "incorrect"
    correct = "correct"
    compiled = "compiled"


class Check(BaseModel):
    """One whole-output comparison of the candidate against the reference."""

    input_set: str
    seed_index: int
    phase: str = Field(
        description="before_reference | after_reference (the candidate's first and second call "
        "on a seed's inputs; v1 names: the reference now runs in the trusted process) | timed | "
        "after_timing"
    )
    output_index: int = 0
    passed: bool
    max_abs_error: float = Field(description="over finite positions; inf when a NaN/inf mismatches")
    max_rel_error: float
    mismatches: int
    numel: int
    first_bad_index: list[int] = Field(default_factory=list, description="empty when all match")
    atol: float | None = Field(None, description="the tolerance this comparison used")
    rtol: float | None = None
    note: str = ""

    @field_validator("max_abs_error", "max_rel_error", mode="before")
    @classmethod
    def _finite_or_inf(cls, v: float) -> float:
        return math.inf if v != v else v


class TimingStats(BaseModel):
    """Statistics of one implementation's per-call times on one input set (milliseconds)."""

    n: int
    median_ms: float
    p20_ms: float
    p80_ms: float
    mean_ms: float
    cv: float = Field(description="standard deviation over mean of the per-call times")
    host_median_ms: float = Field(
        description="host launch overhead per call (median): the time the call took to return "
        "while the GPU was busy, reported apart from the device time"
    )

    @classmethod
    def from_samples(cls, event_ms: list[float], host_ms: list[float]) -> TimingStats:
        ordered = sorted(event_ms)
        mean = statistics.fmean(ordered)
        std = statistics.pstdev(ordered) if len(ordered) > 1 else 0.0
        return cls(
            n=len(ordered),
            median_ms=statistics.median(ordered),
            p20_ms=quantile(ordered, 0.2),
            p80_ms=quantile(ordered, 0.8),
            mean_ms=mean,
            cv=std / mean if mean > 0 else 0.0,
            host_median_ms=statistics.median(host_ms),
        )


def quantile(ordered: list[float], q: float) -> float:
    """The q-quantile of sorted values, interpolated linearly between neighbours."""
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class SetTiming(BaseModel):
    """Candidate and baselines on one input set: device time per call, interleaved by batch."""

    input_set: str
    target: bool = Field(False, description="a target set: its speedups drive the loop and library")
    candidate: TimingStats
    eager: TimingStats | None = None
    compiled: TimingStats | None = None
    compiled_from_cache: bool = Field(
        False, description="torch.compile's times reused from the cache"
    )
    speedup_vs_eager: float | None = None
    speedup_vs_compile: float | None = None
    floor_ms: float | None = Field(None, description="roofline floor: max(bytes/bw, flops/peak)")
    roofline_fraction: float | None = Field(None, description="floor_ms / candidate median")
    rechecks: int = Field(0, description="timed calls whose outputs were re-verified")
    host_in_series: bool = Field(
        False,
        description="the candidate's calls block the host (a synchronize or .item() in forward), "
        "so its device time includes its own host overhead",
    )


class KernelPrecision(BaseModel):
    """Number formats one kernel computes in beyond fp32/fp64, and where that was read."""

    kernel: str
    formats: list[str] = Field(description="names from forge.evaluator.isa.FORMAT_NAMES")
    evidence: list[str] = Field(default_factory=list, description="instructions or counters")
    source: str = Field(
        description="PTX | SASS (files the trusted process read from the compiler cache) | "
        "Nsight Compute (tensor-path counters of the profiled call, from outside the runner)"
    )


class SetTolerance(BaseModel):
    """The tolerances one input set was checked with: each comparison's atol is safety x the
    reference's own error on the same inputs (never below the problem's atol). Under strict that
    error is |reference - its float64 run|, measured on the correctness seeds (timed calls reuse
    the set's largest); under another policy |reference under the policy - strict reference|,
    measured for every comparison."""

    input_set: str
    atol: float = Field(description="the largest atol used on the set")
    atol_min: float = Field(description="the smallest")
    rtol: float = Field(description="the strict rtol")
    reference_error: float = Field(
        description="the largest error of the reference on the set: |reference - its float64 "
        "run| under strict, |reference under the policy - strict reference| under another policy"
    )
    comparisons: int = Field(description="comparisons made with a derived atol")


class PrecisionReport(BaseModel):
    """The precision policy of an evaluation and what the candidate's code was seen to use."""

    policy: str
    allowed: list[str] = Field(description="formats the policy allows for this problem's dtype")
    detected: list[str] = Field(
        default_factory=list, description="formats beyond fp32/fp64 found in the candidate's code"
    )
    kernels: list[KernelPrecision] = Field(default_factory=list)
    inspected: list[str] = Field(
        default_factory=list, description="what was read: PTX, SASS, Nsight Compute"
    )
    not_inspected: list[str] = Field(
        default_factory=list, description="candidate kernels whose compiled code was not found"
    )
    note: str = ""
    tolerances: list[SetTolerance] = Field(default_factory=list)
    safety: float | None = Field(None, description="atol = safety * reference_error (or more)")

    def label(self) -> str:
        """`tf32 (detected: tf32)`, `strict (detected: fp32 only)`, `strict (not detected)`."""
        if not self.inspected:
            return f"{self.policy} (not detected)"
        found = ", ".join(self.detected) if self.detected else "fp32/fp64 only"
        return f"{self.policy} (detected: {found})"


class KernelProfile(BaseModel):
    name: str
    duration_us: float | None = None
    registers_per_thread: int | None = None
    spills: int | None = None
    shared_mem_bytes: int | None = None
    metrics: dict[str, float] = Field(default_factory=dict)


class Profile(BaseModel):
    tool: str = Field(description="ncu | torch_profiler | none")
    input_set: str = ""
    kernels: list[KernelProfile] = Field(default_factory=list)
    note: str = ""


class PhaseSeconds(BaseModel):
    static: float = 0.0
    prepare: float = Field(
        0.0,
        description="the runner's own start-up: imports, CUDA, containment "
        "(overlaps the wait for the job when pre-started)",
    )
    startup: float = Field(0.0, description="from the job's arrival to the runner being ready")
    compile: float = 0.0
    correctness: float = 0.0
    timing: float = 0.0
    profiling: float = 0.0
    total: float = 0.0
    detail: dict[str, float] = Field(
        default_factory=dict,
        description="seconds per kind of step across phases (runner requests by op, reference, "
        "inputs, comparison; 'sandbox' is the host's total less the worker's; 'gpu_lock_wait' is the "
        "trusted process's wait for the device lock around its timed regions and profile (while "
        "the next job's pre-started worker started up); 'worker_wait' is the "
        "time spent waiting for a free worker of the executor's pool; 'queue_wait' (queue:DIR, "
        "ray) is the controller's time from submitting the job to its answer less the "
        "evaluation's own: waiting for a worker or task slot, and the way there and back; both "
        "left out of 'total'); where the start-up went, off the verdict's path when it was "
        "started ahead: 'runner.startup.*' and 'profiled.startup.*' are the runners' own steps "
        "(imports, monitor, triton, cuda, profiler, containment), 'worker_start.*' when the "
        "worker's own start-up and its runners were ready, in seconds from its start)",
    )


NextWorker = Literal["", "with_job", "after_job"]


class SandboxInfo(BaseModel):
    backend: str
    exit_code: int | None = None
    signal: int | None = None
    network_isolated: bool = False
    filesystem_restricted: bool = False
    reads_restricted: bool = Field(False, description="Landlock read allowlist in force")
    privileges_dropped: bool = False
    processes_isolated: bool = Field(False, description="own PID namespace and /proc")
    process_limit: str = Field("rlimit", description="rlimit | cgroup | container | none")
    killed_on_timeout: bool = False
    runner_uid: int | None = None
    """uid the candidate's runner ended up with (65534 once privileges are dropped)."""
    kept_capabilities: list[str] = Field(default_factory=list)
    """Capabilities the runner kept (only CAP_DAC_READ_SEARCH, when its interpreter lies under a
    directory uid 65534 cannot traverse and that directory could not be masked)."""
    private_tmp: bool = False
    """The runner had a fresh tmpfs on /tmp (host and other jobs' files out of sight)."""
    private_dev_shm: bool = False
    """The runner had a fresh tmpfs on /dev/shm."""
    dev_limited: bool = False
    """The runner's /dev was a read-only tmpfs holding only the job's device nodes."""
    unix_sockets_blocked: bool = False
    """seccomp made socket(AF_UNIX) fail in the runner (no host daemon sockets, pathname or
    abstract)."""
    containment_notes: list[str] = Field(default_factory=list)
    """Why a containment measure did not apply (not root, no CAP_SYS_ADMIN, architecture)."""
    worker: str = ""
    """The executor's evaluation worker that ran the job: `gpu 0` (its sandbox saw only
    CUDA_VISIBLE_DEVICES=0), `cpu 1`, `ray HOST gpu 0`."""
    held_from: float | None = None
    """Unix time the job took its worker (`local`: no other job holds that worker meanwhile)."""
    held_until: float | None = None
    """Unix time the job let go of its worker."""
    next_worker: NextWorker = ""
    """When the sandbox started the worker of its next job (`LocalSandbox(prestart=True)`):
    `with_job` as this job started, because another job was waiting (its start-up can add to
    this job's `phase_seconds.detail.gpu_lock_wait`); `after_job` once this job had ended;
    empty where none is kept started."""


class Environment(BaseModel):
    device: str
    gpu_name: str = ""
    arch: str = ""
    torch_version: str = ""
    triton_version: str = ""
    cuda_version: str = ""


class EvalResult(BaseModel):
    status: Status
    reasons: list[str] = Field(default_factory=list, description="why, most important first")
    problem: str
    backend: str
    environment: Environment
    checks: list[Check] = Field(default_factory=list)
    timings: list[SetTiming] = Field(default_factory=list)
    timing_meaningful: bool = False
    speedup_vs_eager: float | None = Field(None, description="geometric mean over the target sets")
    speedup_vs_compile: float | None = None
    suspicious: bool = False
    suspicious_reasons: list[str] = Field(default_factory=list)
    reverified: bool = Field(
        False,
        description="flagged for its speed, then correct in a second, stricter evaluation: it "
        "counts (the flag's reasons stay in suspicious_reasons, suspicious is false)",
    )
    precision: PrecisionReport | None = Field(
        None, description="the precision policy and what the candidate's compiled code used"
    )
    candidate_kernels: list[str] = Field(default_factory=list)
    target_sets: list[str] = Field(
        default_factory=list, description="sets the speedups are taken at"
    )
    notes: list[str] = Field(
        default_factory=list, description="facts worth knowing that are not failures"
    )
    kernels_seen: list[str] = Field(default_factory=list, description="device kernels traced")
    profile: Profile | None = None
    phase_seconds: PhaseSeconds = Field(default_factory=PhaseSeconds)
    compile_log: str = ""
    stderr: str = ""
    sandbox: SandboxInfo | None = None

    @field_validator("compile_log", "stderr")
    @classmethod
    def _truncate_logs(cls, v: str) -> str:
        return truncate(v)

    @property
    def passed(self) -> bool:
        return self.status is Status.correct

    @property
    def first_failure(self) -> Check | None:
        return next((c for c in self.checks if not c.passed), None)

    @property
    def roofline_at_targets(self) -> float | None:
        """How close the candidate runs to the speed of light at the target sets: the geometric
        mean of their roofline fractions (floor / device time); None when a target set has no
        floor or nothing was timed."""
        fractions = [t.roofline_fraction for t in self.timings if t.target]
        if not fractions or None in fractions:
            return None
        return geomean(fractions)


def geomean(values: list[float]) -> float | None:
    positive = [v for v in values if v > 0]
    if not positive:
        return None
    return math.exp(sum(math.log(v) for v in positive) / len(positive))
