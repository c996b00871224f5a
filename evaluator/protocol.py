"""Typed messages between the three processes of an evaluation.

host (`evaluate`) --EvalJob--> trusted process --requests--> runner (candidate code)
host <--TrustedReport-- trusted process <--replies-- runner

The trusted process holds the reference, the secret seeds and the result channel; the runner
holds the candidate and nothing that decides the verdict. Every reply from the runner is parsed
from JSON into these models (never unpickled), so a compromised runner can send wrong numbers
but cannot run code in the trusted process.
"""

from __future__ import annotations

import hashlib
import json
import socket
import struct
from typing import Any, Literal

from pydantic import BaseModel, Field

from forge.evaluator.result import PrecisionReport

MAX_FRAME = 16 << 20
PHASE_MARK = b"FORGE-PHASE "
"""Starts a line the trusted process writes on its stderr when it reaches a phase (progress
only, for the host's display: the verdict travels on the result channel)."""
MAX_FDS = 64


def derive_seed(secret: int, salt: object, index: int) -> int:
    """A test seed from the secret per-evaluation seed through SHA-256: one seed reveals no
    other, nor the secret."""
    digest = hashlib.sha256(f"{secret}:{salt}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 2


class InputSetSpec(BaseModel):
    name: str
    constants: dict[str, int]


class EvalJob(BaseModel):
    """What the host sends the trusted process (the sandbox worker) for one evaluation."""

    kind: Literal["evaluate"] = "evaluate"
    device: Literal["cuda", "cpu"]
    backend: Literal["triton", "cuda"]
    problem_source: str
    candidate_source: str
    dtype: str
    atol: float
    rtol: float
    distributions: list[str]
    input_sets: list[InputSetSpec]
    target_sets: list[str] = Field(default_factory=list, description="empty: the largest set")
    seeds: list[int]
    timing_seed: int
    kernel_names: list[str]
    trials: int
    min_trials: int = 20
    settle_spread: float | None = Field(None, description="None: always `trials`")
    warmup: int
    batch: int
    verify_per_batch: int
    baselines: list[str]
    timing_sets: list[str] = Field(default_factory=list)
    profile: bool = False
    profile_argv: list[str] = Field(
        default_factory=list, description="ncu command wrapping a runner"
    )
    compile_only: bool = Field(
        False, description="CUDA on --device cpu: compile in the runner, no run"
    )
    limits: Limits
    reuse_baselines: bool = Field(False, description="reuse cached torch.compile timings")
    precision: str = Field("strict", description="precision policy (evaluator/precision.py)")


class Limits(BaseModel):
    """Deadlines the trusted process gives each runner request (a hung kernel costs these)."""

    load_s: float
    first_call_s: float
    call_s: float
    compile_only_s: float = 120.0


EvalJob.model_rebuild()


# ---- trusted -> runner -------------------------------------------------------------------------


class TensorSpec(BaseModel):
    """A tensor in a buffer the trusted process shares with the runner."""

    buffer: int
    dtype: str
    shape: list[int]


class BufferSpec(BaseModel):
    id: int
    nbytes: int
    ipc_handle: str = Field("", description="CUDA IPC handle (hex); empty for CPU shared memory")


class Value(BaseModel):
    """An argument: a shared tensor, or a JSON value (ints, floats, lists, None...)."""

    tensor: TensorSpec | None = None
    json_value: Any = None


class Request(BaseModel):
    op: Literal[
        "load",
        "compile",
        "share",
        "build",
        "call",
        "warm",
        "time",
        "collect",
        "metadata",
        "release",
        "exit",
    ]
    what: str = ""
    source: str = ""
    kernel_names: list[str] = Field(default_factory=list)
    buffers: list[BufferSpec] = Field(default_factory=list, description="share: new buffers")
    released: list[int] = Field(
        default_factory=list, description="release: ids of buffers to unmap before they are freed"
    )
    init_args: list[Value] = Field(default_factory=list)
    init_seed: int = 0
    state: dict[str, TensorSpec] = Field(default_factory=dict)
    dtype: str = "float32"
    args: list[Value] = Field(default_factory=list, description="call: the forward's inputs")
    outputs: list[TensorSpec] = Field(default_factory=list, description="where to copy outputs")
    watch: bool = False
    nvtx: bool = Field(False, description="call inside the NVTX range Nsight Compute profiles")
    staged: list[list[Value]] = Field(
        default_factory=list, description="time: one input list per call"
    )
    warmup: int = 0
    sleep_cycles: int = 0
    indices: list[int] = Field(default_factory=list, description="collect: which timed calls")
    allow_tf32: bool = Field(False, description="load: TF32 for the candidate's library calls")


# ---- runner -> trusted -------------------------------------------------------------------------


class OutputMeta(BaseModel):
    type_name: str
    dtype: str = ""
    shape: list[int] = Field(default_factory=list)
    device: str = ""
    has_storage: bool = True


class Failure(BaseModel):
    status: Literal["compile_error", "runtime_error", "rejected", "incorrect"]
    reason: str
    detail: str = ""


class Reply(BaseModel):
    ok: bool = True
    failure: Failure | None = None
    seconds: float = 0.0
    outputs: list[OutputMeta] = Field(default_factory=list, description="structure, as seen")
    structure: Literal["tensor", "tuple", "list", "other"] = "tensor"
    kernels_seen: list[str] = Field(default_factory=list)
    kernel_durations_us: dict[str, float] = Field(default_factory=dict)
    own_kernel_ran: bool = False
    library_ops: list[str] = Field(default_factory=list)
    output_from_library: bool = False
    provenance_gap: str = Field("", description="why the output is not what the kernels stored")
    host_to_device_bytes: int = 0
    notes: list[str] = Field(default_factory=list)
    device_ms: list[float] = Field(default_factory=list, description="time: per call")
    host_ms: list[float] = Field(default_factory=list, description="time: launch overhead per call")
    starved: bool = Field(False, description="time: the GPU caught up with the host mid-batch")
    environment: dict[str, Any] = Field(default_factory=dict)
    triton_kernels: list[dict[str, Any]] = Field(default_factory=list)
    compiled_modules: list[str] = Field(
        default_factory=list, description="metadata: extension modules the candidate loaded"
    )
    compile_log: str = ""
    containment: dict[str, Any] = Field(default_factory=dict)
    startup: dict[str, float] = Field(
        default_factory=dict, description="hello: seconds of each start-up step of the runner"
    )


# ---- trusted -> host ---------------------------------------------------------------------------


class RawTiming(BaseModel):
    input_set: str
    samples: dict[str, dict[str, list[float]]] = Field(description="impl -> device_ms/host_ms")
    rechecks: int = 0
    wall_checks: list[str] = Field(default_factory=list, description="trusted-clock disagreements")
    compiled_from_cache: bool = False
    persisting_l2_reset: bool = False
    target: bool = False
    host_in_series: bool = Field(
        False, description="the candidate's calls block the host: timed without a sleep head"
    )


class TrustedReport(BaseModel):
    status: Literal[
        "compile_error", "runtime_error", "rejected", "incorrect", "correct", "compiled", "timeout"
    ]
    reasons: list[str] = Field(default_factory=list)
    checks: list[dict[str, Any]] = Field(default_factory=list)
    timings: list[RawTiming] = Field(default_factory=list)
    kernels_seen: list[str] = Field(default_factory=list)
    kernel_durations_us: dict[str, float] = Field(default_factory=dict)
    profiled_set: str = ""
    triton_kernels: list[dict[str, Any]] = Field(default_factory=list)
    work: dict[str, dict[str, float]] = Field(default_factory=dict)
    environment: dict[str, Any] = Field(default_factory=dict)
    phase_seconds: dict[str, float] = Field(default_factory=dict)
    phase_detail: dict[str, float] = Field(
        default_factory=dict, description="seconds per kind of step, across phases"
    )
    notes: list[str] = Field(default_factory=list)
    compile_log: str = ""
    runner_stderr: str = ""
    containment: dict[str, Any] = Field(default_factory=dict)
    ncu_kernels: list[dict[str, Any]] = Field(default_factory=list)
    ncu_note: str = ""
    target_sets: list[str] = Field(default_factory=list)
    output_bytes: dict[str, int] = Field(default_factory=dict, description="per input set")
    precision: PrecisionReport | None = None


# ---- framing -----------------------------------------------------------------------------------


class ProtocolError(RuntimeError):
    """The peer sent something that is not a well-formed message."""


def send(sock: socket.socket, message: BaseModel, fds: list[int] | None = None) -> None:
    # json.dumps, not model_dump_json: an infinite error must stay Infinity, not become null
    body = json.dumps(message.model_dump()).encode()
    frame = struct.pack("<Q", len(body)) + body
    sent = socket.send_fds(sock, [frame], fds) if fds else 0
    sock.sendall(frame[sent:])


def receive(sock: socket.socket, model: type[BaseModel]) -> tuple[Any, list[int]]:
    """One message and the file descriptors that came with it; ProtocolError on garbage."""
    head, fds = b"", []
    while len(head) < 8:
        chunk, more_fds, _, _ = socket.recv_fds(sock, 8 - len(head), MAX_FDS)
        if not chunk:
            raise ProtocolError("the peer closed the channel")
        head += chunk
        fds += more_fds
    (size,) = struct.unpack("<Q", head)
    if size > MAX_FRAME:
        raise ProtocolError(f"message of {size} bytes exceeds {MAX_FRAME}")
    body = bytearray()
    while len(body) < size:
        chunk = sock.recv(min(size - len(body), 1 << 20))
        if not chunk:
            raise ProtocolError("the peer closed the channel mid-message")
        body += chunk
    try:
        return model.model_validate(json.loads(body)), fds
    except ValueError as exc:
        raise ProtocolError(f"malformed message: {str(exc)[:300]}") from exc
