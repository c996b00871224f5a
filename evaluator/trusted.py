"""The trusted side of an evaluation: inputs, reference, comparison, timing checks, verdict.

It runs as the sandbox worker's job and starts the runner (candidate code) as a separate, more
tightly contained process. What only this process holds: the problem's `Model` and its
outputs, the secret seeds, the choice of which timed calls are re-verified (made after they
ran), its own clock over each timed batch, and the result channel to the host. The runner gets
inputs and empty output slots in shared memory; whatever it does, the values in those slots
are compared here (see docs/evaluator.md).

Order per input set and seed: the reference on private copies of the inputs (under strict its
float64 copy too, for the tolerance), then the candidate twice on shared copies (outputs
poisoned with NaN before each call), the inputs checked unchanged after each call, then the two
candidate outputs compared with each other.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import itertools
import json
import math
import os
import random
import secrets
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from forge.evaluator import compare as cmp
from forge.evaluator import compiled_code, precision, problem_module, profiling, protocol, timing
from forge.evaluator.isa import FORMAT_NAMES
from forge.evaluator.precision_math import (
    FLOAT64_FAILURES,
    float64_copy,
    in_float64,
    policy_math,
    under_policy,
)
from forge.evaluator.protocol import (
    BufferSpec,
    EvalJob,
    RawTiming,
    Reply,
    Request,
    TensorSpec,
    TrustedReport,
    Value,
)
from forge.evaluator.result import PrecisionReport, SetTolerance
from forge.evaluator.shared import DTYPES, SharedBuffer, dtype_name
from forge.sandbox import gpu_lock
from forge.sandbox.policy import NOBODY

# A batch the host cannot queue within this much sleep (20 ms per call at the default batch of
# 10) is timed with the host in series: its calls block the host (`time_with_host_in_series`).
MAX_SLEEP_MS = 200.0
# The trusted clock's allowance over a batch's sleep + fixed work + reported calls: the request,
# the reply and the final device synchronize, on a host that may be busy compiling elsewhere.
WALL_SLACK_MS = 5.0
WALL_SLACK_RATIO = 1.3
# A batch the trusted clock disagrees with is timed again, on fresh inputs, this many times
# before the disagreement rejects: a host hiccup does not repeat (seen on the H200, 2026-12-02:
# one batch of an honest elementwise kernel 0.86 ms past its bound rejected it, in a drain of
# 17 evaluations), while work hidden from the events is in every batch, and fresh inputs leave
# nothing to reuse.
WALL_RETRIES = 2


def announce(phase: str) -> None:
    """Tell the host which phase the evaluation is in (a line on this process's stderr, which
    the runner cannot write to)."""
    sys.stderr.flush()
    sys.stderr.buffer.write(protocol.PHASE_MARK + phase.encode() + b"\n")
    sys.stderr.buffer.flush()


class Verdict(Exception):
    """Evaluation ends here with this status and reason."""

    def __init__(self, status: str, reason: str, detail: str = ""):
        super().__init__(reason)
        self.status, self.reason, self.detail = status, reason, detail


# ---- the runner process -------------------------------------------------------------------------


class RunnerProcess:
    """The candidate's process: started ahead of the job, asked one request at a time, each
    with a deadline after which it is killed."""

    def __init__(self, device: str, workdir: Path, argv_prefix: list[str] | None = None):
        self.device, self.workdir = device, workdir
        workdir.mkdir(parents=True, exist_ok=True)
        cache = _runner_cache()
        for path in (workdir, cache):
            path.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                os.chown(path, NOBODY, NOBODY)
        if os.geteuid() == 0:
            os.chmod(workdir.parent, 0o711)  # traversable for uid 65534, not listable
        env = {
            **os.environ,
            "HOME": str(workdir),
            "TMPDIR": str(workdir),
            "XDG_CACHE_HOME": str(cache / "xdg"),
            "TRITON_CACHE_DIR": str(cache / "triton"),
            "TORCH_EXTENSIONS_DIR": str(cache / "torch_extensions"),
            "CUPY_CACHE_DIR": str(cache / "cupy"),
            "FORGE_WORKER_DEVICE": device,
            "FORGE_RUNNER_WRITABLE": os.pathsep.join([str(workdir), str(cache)]),
        }
        if argv_prefix:
            env["FORGE_RUNNER_PROFILED"] = "1"
        for name in ("TORCHINDUCTOR_CACHE_DIR", gpu_lock.PATH_VAR, gpu_lock.AHEAD_VAR):
            env.pop(name, None)
        self.sock, child = socket.socketpair()
        self.log_path = workdir.parent / f"{workdir.name}.log"
        log = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child, closed below
        self.proc = subprocess.Popen(
            [
                *(argv_prefix or []),
                sys.executable,
                "-P",
                "-m",
                "forge.evaluator.runner",
                str(child.fileno()),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=workdir,
            env=env,
            pass_fds=(child.fileno(),),
            # its own process group (killed whole on a deadline) in the worker's session, which
            # the sandbox backend kills whole when the job ends
            preexec_fn=os.setpgrp,
        )
        log.close()
        child.close()
        self.hello: Reply | None = None
        self.seconds: collections.Counter[str] = collections.Counter()

    def wait_ready(self, timeout_s: float) -> bool:
        """Whether the runner has said it is ready (or has died) within `timeout_s`; its hello
        stays unread, for `start`."""
        readable, _, _ = select.select([self.sock], [], [], max(0.0, timeout_s))
        return bool(readable)

    def start(self, deadline_s: float) -> Reply:
        if self.hello is None:
            self.hello = self._receive("start-up", deadline_s)[0]
        return self.hello

    def ask(self, request: Request, deadline_s: float, fds: list[int] | None = None) -> Reply:
        t0 = time.perf_counter()
        try:
            protocol.send(self.sock, request, fds)
        except OSError as exc:
            raise self._died(request.what or request.op) from exc
        reply, _ = self._receive(request.what or request.op, deadline_s)
        self.seconds[f"runner.{request.op}"] += time.perf_counter() - t0
        if not reply.ok and reply.failure is not None:
            raise Verdict(reply.failure.status, reply.failure.reason, reply.failure.detail)
        return reply

    def _receive(self, what: str, deadline_s: float) -> tuple[Reply, list[int]]:
        self.sock.settimeout(deadline_s)
        try:
            reply, fds = protocol.receive(self.sock, Reply)
        except TimeoutError as exc:
            self.kill()
            raise Verdict(
                "timeout", f"killed after the {deadline_s:.0f} s wall-clock limit of {what}"
            ) from exc
        except protocol.ProtocolError as exc:
            if "closed the channel" in str(exc):
                raise self._died(what) from exc
            self.kill()
            raise Verdict("rejected", f"result channel tampered: {exc}") from exc
        for fd in fds:
            os.close(fd)
        return reply, fds

    def _died(self, what: str) -> Verdict:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.proc.returncode
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        tail = self.log()[-300:].strip()
        return Verdict(
            "runtime_error", f"the runner died without a result ({how}) during {what}: {tail}"
        )

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                protocol.send(self.sock, Request(op="exit"))
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
            self.kill()
        self.sock.close()

    def log(self) -> str:
        try:
            return self.log_path.read_bytes()[-8000:].decode(errors="replace")
        except OSError:
            return ""


def _cache_root() -> Path:
    """The job's compiler-cache directory (set by the sandbox backend)."""
    triton_cache = os.environ.get("TRITON_CACHE_DIR")
    return Path(triton_cache).parent if triton_cache else Path.cwd() / "cache"


def _runner_cache() -> Path:
    return _cache_root() / "runner"


_SPARE: dict[str, RunnerProcess] = {}


def prestart_runner(device: str) -> None:
    """Start the runner before the job arrives (imports, CUDA and profiler start-up overlap the
    wait); it has no candidate code until the job's `load`. On a GPU host with Nsight Compute, a
    second runner starts under ncu for the profile: both must start before this process is put
    under Landlock, which the CUDA driver's start-up in a new process does not survive (seen on
    an H200 host: error 304)."""
    from forge.evaluator.monitor import warm_monitor

    _SPARE[device] = RunnerProcess(device, Path.cwd() / "runner")
    if device == "cuda" and profiling.ncu_path():
        _SPARE["profiled"] = RunnerProcess(
            device, Path.cwd() / "profiled", profiling.ncu_command(_ncu_log())
        )
    warm_monitor()  # the reference runs under it once per evaluation


_STARTUP: dict[str, float] = {}
"""When this worker's start-up steps ended, in seconds from its start (`sandbox.worker.prepare`,
where it starts its runners ahead); the evaluation reports them as `worker_start.*` in its
phase detail."""


def mark_worker_ready(step: str, started: float) -> None:
    """When this worker's start-up step `step` was done (`_STARTUP`)."""
    _STARTUP[step] = time.perf_counter() - started


def wait_for_prestarted_runners(timeout_s: float, started: float) -> None:
    """Until the runners `prestart_runner` started have each said they are ready (CUDA and ncu
    up) or died, at most `timeout_s` in all; when each was, in `_STARTUP` (seconds from
    `started`, this process's start)."""
    end = time.monotonic() + timeout_s
    for name, runner in _SPARE.items():
        runner.wait_ready(end - time.monotonic())
        mark_worker_ready("profiled_ready" if name == "profiled" else "runner_ready", started)


def _ncu_log() -> Path:
    return Path.cwd() / "ncu.csv"


# ---- the evaluation -----------------------------------------------------------------------------


class Evaluation:
    def __init__(self, job: EvalJob):
        self.job = job
        self.device = job.device
        self.dtype = DTYPES[job.dtype]
        self.report = TrustedReport(status="correct")
        self.rng = random.Random(secrets.randbits(64))
        self.buffers: list[SharedBuffer] = []
        self.next_id = 0
        self.runner: RunnerProcess | None = None
        self.degenerate: list[str] = []
        self.set_sizes: dict[str, int] = {}
        self.problem_per_set: dict[tuple, object] = {}
        self.library_only = False
        self.policy = precision.POLICIES[job.precision]
        self.started_at = time.time()
        self.report.precision = PrecisionReport(
            policy=self.policy.name,
            allowed=precision.allowed_formats(self.policy.name, job.dtype),
            safety=precision.SAFETY,
        )
        self.seconds: collections.Counter[str] = collections.Counter()
        self.float64_refs: dict[str, torch.nn.Module] = {}

    @contextlib.contextmanager
    def gpu_alone(self):
        """The block runs while no pre-started worker starts up on this device: the device lock
        held exclusive (`forge.sandbox.gpu_lock`), the wait for it in `gpu_lock_wait`. Without a
        lock (no worker started ahead while jobs run), the block just runs."""
        lock = gpu_lock.inherited()
        if lock is None:
            yield
            return
        with lock.exclusive() as waited:
            self.seconds["gpu_lock_wait"] += waited
            yield

    def note_runner_startup(self, runner: str, hello: Reply) -> None:
        """A runner's start-up steps (its hello's seconds per step) in the phase detail."""
        self.seconds.update({f"{runner}.startup.{k}": v for k, v in hello.startup.items()})

    @contextlib.contextmanager
    def timed(self, what: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[what] += time.perf_counter() - t0

    def run(self) -> TrustedReport:
        t0 = time.perf_counter()
        self.runner = _SPARE.pop(self.device, None) or RunnerProcess(
            self.device, Path.cwd() / "runner"
        )
        try:
            with self.timed("setup"):
                self.setup()
            with self.timed("runner_wait"):
                hello = self.runner.start(self.job.limits.load_s + 60)
            self.note_runner_startup("runner", hello)
            self.seconds.update({f"worker_start.{k}": v for k, v in _STARTUP.items()})
            self.report.containment = hello.containment
            self.report.environment = {**self.report.environment, **hello.environment}
            self.report.phase_seconds["startup"] = time.perf_counter() - t0
            self.report.phase_seconds["prepare"] = hello.seconds
            if self.device == "cpu":
                self.report.precision.note = precision.cpu_note(
                    self.job.candidate_source, self.policy.name, self.job.dtype
                )
            if self.job.compile_only:
                self.compile_only()
            else:
                self.load()
                self.verify()
                failed = self.failed()
                if self.device == "cuda":
                    # also after a mismatch: narrower math is then the likely cause, and the
                    # verdict says so
                    self.check_compiled_precision()
                if self.device == "cuda" and not failed:
                    self.time_all()
                if self.device == "cuda" and self.job.profile and not self.failed():
                    self.profile()
                    self.check_counted_precision()
                self.report.status = "incorrect" if self.failed() else "correct"
        except Verdict as verdict:
            # a hang or crash on a later input set does not hide a mismatch already seen
            kept = verdict.status in ("timeout", "runtime_error") and self.failed()
            self.report.status = "incorrect" if kept else verdict.status
            self.report.reasons.insert(len(self.report.reasons) if kept else 0, verdict.reason)
            if verdict.status == "compile_error":
                self.report.compile_log = verdict.detail
            else:
                self.report.runner_stderr = verdict.detail
        finally:
            self.runner.close()
            if spare := _SPARE.pop("profiled", None):
                spare.close()
            self.report.runner_stderr = (
                self.report.runner_stderr + "\n" + self.runner.log()
            ).strip()
            for buffer in self.buffers:
                buffer.release()
        self.report.phase_seconds["worker_total"] = time.perf_counter() - t0
        self.report.phase_detail = {**self.seconds, **self.runner.seconds}
        return self.report

    # ---- steps -----------------------------------------------------------------------------
    def setup(self) -> None:
        if self.device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            torch.set_float32_matmul_precision("highest")
            props = torch.cuda.get_device_properties(0)
            self.report.environment = {
                "sm_count": props.multi_processor_count,
                "l2_bytes": props.L2_cache_size,
            }
        self.problem = _load_problem(self.job.problem_source, {})

    def compile_only(self) -> None:
        t0 = time.perf_counter()
        reply = self.runner.ask(
            Request(op="compile", source=self.job.candidate_source), self.job.limits.compile_only_s
        )
        self.report.compile_log = reply.compile_log
        self.report.phase_seconds["compile"] = time.perf_counter() - t0
        self.report.status = "compiled"
        self.report.reasons.append(
            "compiled with nvcc; CUDA kernels cannot run without a GPU (no correctness verdict on --device cpu)"
        )

    def load(self) -> None:
        t0 = time.perf_counter()
        announce("compile/load")
        self.load_candidate()
        self.report.work = self.work_per_set()
        self.report.phase_seconds["compile"] = time.perf_counter() - t0

    def load_candidate(self) -> None:
        """The candidate's source into the current runner (compiled there)."""
        request = Request(
            op="load",
            source=self.job.candidate_source,
            kernel_names=self.job.kernel_names,
            allow_tf32=self.policy.tf32,
        )
        self.runner.ask(request, self.job.limits.load_s)

    def verify(self) -> None:
        t0 = time.perf_counter()
        first_call_s = 0.0
        for index, input_set in enumerate(self.job.input_sets):
            phase = f"correctness on '{input_set.name}'"
            announce(phase)
            with self.buffers_of(phase):
                first_call_s += self.verify_set(index, input_set)
        self.report.phase_seconds["compile"] = (
            self.report.phase_seconds.get("compile", 0.0) + first_call_s
        )
        self.report.phase_seconds["correctness"] = time.perf_counter() - t0 - first_call_s

    def verify_set(self, index: int, input_set) -> float:
        """Every seed on one input set; the seconds of the evaluation's first call (it compiles)."""
        first_call_s = 0.0
        with self.timed("set_build"):
            ref = self.build(input_set)
        self.build_float64(ref, input_set.name)
        in_slots = out_slots = None
        for seed_index, seed in enumerate(self.job.seeds):
            with self.timed("inputs"):
                inputs = self.make_inputs(input_set, seed, seed_index)
            with self.timed("reference"):
                expected = self.reference(ref, inputs, watch=index == 0 and seed_index == 0)
            with self.timed("tolerance"):
                tol = self.tolerance(ref, inputs, expected, input_set.name)
            if in_slots is None:
                self.set_sizes[input_set.name] = sum(
                    x.numel() for x in inputs if isinstance(x, torch.Tensor)
                )
                self.report.output_bytes[input_set.name] = timing.tensor_bytes(
                    cmp.flatten(expected)
                )
                in_slots = self.share_like(inputs)
                out_slots = self.share_like(cmp.flatten(expected))
            if seed_index == 0:
                with self.timed("degenerate"):
                    self.note_degenerate(input_set.name, expected, tol)
            outputs = []
            for phase in ("before_reference", "after_reference"):
                c0 = time.perf_counter()
                watch = seed_index == 0 and phase == "before_reference"
                outputs.append(
                    self.check_call(
                        input_set.name,
                        seed_index,
                        inputs,
                        expected,
                        in_slots,
                        out_slots,
                        phase,
                        watch,
                        tol,
                    )
                )
                if index == 0 and watch:
                    first_call_s = time.perf_counter() - c0
            with self.timed("agreement"):
                self.record_agreement(input_set.name, seed_index, *outputs, tol)
        with self.timed("float64_drop"):
            self.drop_float64(input_set.name)
        return first_call_s

    def check_call(
        self, set_name, seed_index, inputs, expected, in_slots, out_slots, phase, watch, tol
    ) -> list[torch.Tensor]:
        with self.timed("stage"):
            for slot, x in zip(in_slots, inputs, strict=True):
                if isinstance(slot, torch.Tensor):
                    slot.copy_(x)
            self.poison(out_slots, expected)
            self.sync()
        limit = self.job.limits.first_call_s if watch else self.job.limits.call_s
        what = (
            f"forward on '{set_name}'"
            if phase == "before_reference"
            else f"forward on '{set_name}' after the reference"
        )
        reply = self.runner.ask(
            Request(
                op="call",
                what=what,
                args=self.values(in_slots),
                outputs=self.specs(out_slots),
                watch=watch,
            ),
            limit,
        )
        with self.timed("call_checks"):
            self.check_reply(reply, set_name, inputs, in_slots, expected, watch)
        with self.timed("compare"):
            got = [t.clone() for t in out_slots]
            checks = self.record(set_name, seed_index, phase, got, cmp.flatten(expected), tol)
        if reply.provenance_gap and all(c["passed"] for c in checks):
            raise Verdict("rejected", f"{what}: {reply.provenance_gap}")
        return got

    def check_reply(self, reply: Reply, set_name: str, inputs, in_slots, expected, watch) -> None:
        if watch:
            self.note_watch(reply)
        self.check_library(reply, set_name)
        for i, (slot, x) in enumerate(zip(in_slots, inputs, strict=True)):
            if isinstance(x, torch.Tensor) and not torch.equal(slot, x):
                raise Verdict(
                    "incorrect", f"input set '{set_name}': the candidate modified input {i}"
                )
        self.check_structure(reply, expected, set_name)

    def note_watch(self, reply: Reply) -> None:
        self.report.kernels_seen = sorted(set(self.report.kernels_seen) | set(reply.kernels_seen))
        if reply.kernel_durations_us and not self.report.kernel_durations_us:
            self.report.kernel_durations_us = reply.kernel_durations_us
        if self.device == "cuda" and reply.host_to_device_bytes:
            self.report.notes.append(
                f"{reply.host_to_device_bytes} bytes copied host-to-device during forward"
            )

    def check_library(self, reply: Reply, set_name: str) -> None:
        if reply.library_ops and self.library_only:
            raise Verdict(
                "rejected",
                f"input set '{set_name}': the problem is a library call ({', '.join(reply.library_ops)}) and the "
                "candidate calls it: its own kernels must compute the operator",
            )
        if reply.output_from_library:
            raise Verdict(
                "rejected",
                f"input set '{set_name}': the output is the result of a library call "
                f"({', '.join(reply.library_ops)}); the candidate's own kernels must do the rest of the work",
            )

    def check_structure(self, reply: Reply, expected, set_name: str) -> None:
        flat = cmp.flatten(expected)
        want = "tensor" if isinstance(expected, torch.Tensor) else type(expected).__name__
        if reply.structure != want or len(reply.outputs) != len(flat):
            raise Verdict(
                "incorrect",
                f"input set '{set_name}': output is {reply.structure} of {len(reply.outputs)}, expected {want} of {len(flat)}",
            )
        for i, (meta, e) in enumerate(zip(reply.outputs, flat, strict=True)):
            where = "output" if len(flat) == 1 else f"output[{i}]"
            if meta.type_name != "torch.Tensor":
                raise Verdict(
                    "incorrect",
                    f"input set '{set_name}': {where} is {meta.type_name}, expected a plain torch.Tensor",
                )
            if meta.device.split(":")[0] != e.device.type:
                raise Verdict(
                    "incorrect",
                    f"input set '{set_name}': {where} is on {meta.device}, expected {e.device}",
                )
            if meta.dtype != dtype_name(e.dtype):
                raise Verdict(
                    "incorrect",
                    f"input set '{set_name}': {where} dtype torch.{meta.dtype}, expected {e.dtype}",
                )
            if meta.shape != list(e.shape):
                raise Verdict(
                    "incorrect",
                    f"input set '{set_name}': {where} shape {tuple(meta.shape)}, expected {tuple(e.shape)}",
                )
            if not meta.has_storage:
                raise Verdict("incorrect", f"input set '{set_name}': {where} has no storage")

    def record(
        self, set_name: str, seed_index: int, phase: str, got: list, expected: list, tol
    ) -> list[dict]:
        checks = []
        atol, rtol = tol
        for i, (o, e) in enumerate(zip(got, expected, strict=True)):
            result = cmp.compare(o, e, atol, rtol)
            checks.append(
                {
                    "input_set": set_name,
                    "seed_index": seed_index,
                    "phase": phase,
                    "output_index": i,
                    **result,
                    "atol": atol,
                    "rtol": rtol,
                }
            )
        self.report.checks.extend(checks)
        return checks

    def record_agreement(
        self, set_name: str, seed_index: int, first: list, second: list, tol
    ) -> None:
        atol, rtol = tol
        for i, (a, b) in enumerate(zip(first, second, strict=True)):
            result = cmp.compare(b, a, atol, rtol)
            bitwise = bool(torch.equal(a, b)) if result["passed"] else False
            self.report.checks.append(
                {
                    "input_set": set_name,
                    "seed_index": seed_index,
                    "phase": "two_runs_agree",
                    "output_index": i,
                    **result,
                    "atol": atol,
                    "rtol": rtol,
                    "note": "bitwise identical" if bitwise else "runs differ",
                }
            )

    # ---- precision -------------------------------------------------------------------------
    def tolerance(self, ref, inputs: list, expected, set_name: str) -> tuple[float, float]:
        """(atol, rtol) for comparing an output on `inputs` with `expected`: rtol the job's, atol
        `precision.SAFETY` times the reference's own error on exactly these inputs
        (`reference_error`), never below the job's atol. An input set with outliers gets the
        looser bound it needs, a plain one not."""
        with self.timed("reference_error"):
            error = self.reference_error(ref, inputs, expected, set_name)
        if error is None:
            return self.job.atol, self.job.rtol
        atol = precision.scaled_tolerance(self.job.atol, error)
        self.note_tolerance(set_name, atol, error)
        return atol, self.job.rtol

    def reference_error(self, ref, inputs: list, expected, set_name: str) -> float | None:
        """How far `expected` is from the same math done otherwise on the same inputs. Under a
        policy: the reference run again under it (the rounding a kernel that honours the policy
        also has). Under strict: the reference's float64 copy, on each correctness seed (its
        rounding in the problem's dtype, which a more accurate kernel does not share); where no
        copy runs (timing), the set's largest error measured on those seeds. None: no measure,
        the job's atol."""
        if self.policy.name != precision.STRICT:
            return self.policy_error(ref, inputs, expected, set_name)
        if set_name in self.float64_refs:
            return self.float64_error(inputs, expected, set_name)
        measured = next(
            (t for t in self.report.precision.tolerances if t.input_set == set_name), None
        )
        return measured.reference_error if measured else None

    def policy_error(self, ref, inputs: list, expected, set_name: str) -> float | None:
        # on the GPU, TF32 both as cuBLAS/cuDNN do it and emulated (operands cut to TF32):
        # cuBLAS may pick a non-TF32 kernel for a small shape, and may round where a kernel cuts
        emulations = (
            [False, True] if self.device == "cuda" and not self.policy.autocast else [False]
        )
        error = 0.0
        for emulate in emulations:
            with policy_math(self.policy, self.device, emulate_tf32=emulate):
                relaxed = self.reference(ref, inputs)
            error = max(error, _largest_difference(relaxed, expected))
        if not math.isfinite(error):
            line = (
                f"input set '{set_name}': the reference itself is not finite under --precision "
                f"{self.policy.name} where it is under strict"
            )
            if line not in self.degenerate:
                self.degenerate.append(line)
            return None
        return error

    def build_float64(self, ref, set_name: str) -> None:
        """Under strict, a float64 copy of the set's reference, made before the reference's first
        call and then called once after each of its correctness calls, on the same inputs: a
        forward that updates the model's state updates the copy's alike, never the reference's."""
        if self.policy.name != precision.STRICT or self.dtype == torch.float64:
            return
        try:
            with self.timed("reference_error"):
                self.float64_refs[set_name] = float64_copy(ref)
        except FLOAT64_FAILURES as exc:
            self.note_float64_failure(set_name, "be copied", exc)

    def float64_error(self, inputs: list, expected, set_name: str) -> float | None:
        """The largest |expected - the float64 copy's output| on `inputs`; the float64 tensors
        are freed (and PyTorch's cache emptied) before the candidate is called again."""
        try:
            with torch.no_grad():
                exact = self.float64_refs[set_name](*in_float64(inputs))
            error = _largest_difference(exact, expected)
            del exact
        except FLOAT64_FAILURES as exc:
            self.drop_float64(set_name)
            self.note_float64_failure(set_name, "run", exc)
            return None
        finally:
            self.release_cache()
        if not math.isfinite(error):
            self.note_precision(
                f"input set '{set_name}': the reference and its float64 run are not finite at "
                f"the same positions (an overflow in {self.job.dtype}); those comparisons keep "
                f"atol={self.job.atol:g}"
            )
            return None
        return error

    def drop_float64(self, set_name: str) -> None:
        if self.float64_refs.pop(set_name, None) is not None:
            self.release_cache()

    def release_cache(self) -> None:
        """Give PyTorch's cached GPU memory back to the driver (a no-op on the CPU)."""
        if self.device == "cuda":
            torch.cuda.empty_cache()

    def note_float64_failure(self, set_name: str, what: str, exc: Exception) -> None:
        first_line = (str(exc).strip().splitlines() or [""])[0][:200]
        self.note_precision(
            f"input set '{set_name}': the reference could not {what} in float64 "
            f"({type(exc).__name__}: {first_line}); its rounding error was not measured there "
            f"and atol stays {self.job.atol:g} where none was"
        )

    def note_precision(self, line: str) -> None:
        report = self.report.precision
        if line not in report.note:
            report.note = f"{report.note}; {line}" if report.note else line

    def note_tolerance(self, set_name: str, atol: float, error: float) -> None:
        tolerances = self.report.precision.tolerances
        entry = next((t for t in tolerances if t.input_set == set_name), None)
        if entry is None:
            tolerances.append(
                SetTolerance(
                    input_set=set_name,
                    atol=atol,
                    atol_min=atol,
                    rtol=self.job.rtol,
                    reference_error=error,
                    comparisons=1,
                )
            )
            return
        entry.atol, entry.atol_min = max(entry.atol, atol), min(entry.atol_min, atol)
        entry.reference_error = max(entry.reference_error, error)
        entry.comparisons += 1

    def check_compiled_precision(self) -> None:
        """The formats the candidate's compiled kernels use, read from the compiler cache by
        this process (`compiled_code`); a format the policy does not allow rejects."""
        meta = self.runner.ask(Request(op="metadata"), self.job.limits.call_s)
        self.report.triton_kernels = meta.triton_kernels
        inspection = compiled_code.inspect(
            _runner_cache(),
            self.job.kernel_names,
            [k.get("hash", "") for k in meta.triton_kernels],
            meta.compiled_modules,
            self.started_at,
            str((self.runner.workdir / "forge_candidate.py").resolve()),
        )
        report = self.report.precision
        report.kernels.extend(inspection.kernels)
        report.inspected = sorted(set(report.inspected) | inspection.sources)
        ran = {profiling.kernel_base_name(k) for k in self.report.kernels_seen}
        report.not_inspected = sorted(
            k for k in self.job.kernel_names if k in ran and k not in inspection.found
        )
        for line in inspection.notes:
            self.note_precision(line)
        self.judge_precision()

    def check_counted_precision(self) -> None:
        """Nsight Compute's tensor-path counters of every kernel in the profiled call."""
        log = _ncu_log()
        rows = profiling.parse_ncu_csv(log.read_text(errors="replace"), []) if log.exists() else []
        counted = [
            r for r in rows if any(m in r["metrics"] for m in profiling.NCU_PRECISION_METRICS)
        ]
        if not counted:
            return
        report = self.report.precision
        report.kernels.extend(compiled_code.ncu_uses(counted))
        report.inspected = sorted({*report.inspected, "Nsight Compute"})
        self.judge_precision()

    def judge_precision(self) -> None:
        report = self.report.precision
        used = {f for k in report.kernels for f in k.formats}
        report.detected = [f for f in FORMAT_NAMES if f in used]
        lines = precision.violations(report.kernels, report.allowed, self.policy.name)
        if lines:
            self.report.reasons.extend(lines[1:])
            raise Verdict("rejected", lines[0])

    def note_degenerate(self, set_name: str, expected, tol) -> None:
        for t in cmp.flatten(expected):
            if reason := cmp.degenerate(t, *tol):
                self.degenerate.append(f"input set '{set_name}': {reason}")

    def failed(self) -> bool:
        for d in self.degenerate:
            if (line := f"problem cannot verify: {d}") not in self.report.reasons:
                self.report.reasons.append(line)
        if self.degenerate:
            return True
        bad = [c for c in self.report.checks if not c["passed"]]
        if bad:
            c = bad[0]
            where = f" at index {c['first_bad_index']}" if c["first_bad_index"] else ""
            reason = (
                f"mismatch on input set '{c['input_set']}' seed {c['seed_index']} ({c['phase']}): "
                f"{c['mismatches']}/{c['numel']} elements, max abs error {c['max_abs_error']:.3g}{where}"
            )
            if reason not in self.report.reasons:
                self.report.reasons.insert(0, reason)
        return bool(bad)

    # ---- problem, inputs, shared memory ----------------------------------------------------
    def work_per_set(self) -> dict:
        flops, moved = (
            getattr(self.problem, "forge_flops", None),
            getattr(self.problem, "forge_bytes", None),
        )
        if flops is None or moved is None:
            return {}
        return {
            s.name: {"flops": float(flops(**s.constants)), "bytes": float(moved(**s.constants))}
            for s in self.job.input_sets
        }

    def set_constants(self, input_set) -> None:
        """The problem module executed with the set's constants (`problem_module`), once per set."""
        key = tuple(sorted(input_set.constants.items()))
        if key not in self.problem_per_set:
            self.problem_per_set[key] = _load_problem(self.job.problem_source, input_set.constants)
        self.problem = self.problem_per_set[key]

    def build(self, input_set):
        """The reference model here, and the candidate's in the runner from the same init seed
        and the reference's parameters."""
        self.set_constants(input_set)
        init = list(self.problem.get_init_inputs())
        init_seed = secrets.randbits(62)
        torch.manual_seed(init_seed)
        # built on the device: built on the host, KernelBench L2/56's large Linear took 22.5 s of
        # reference_build per input set on the H200 machine (dev-set run, 2026-12-01)
        with self.timed("reference_build"), torch.device(self.device):
            ref = self.problem.Model(*init)
        _forget_seed()
        state = {k: v.detach() for k, v in ref.state_dict().items()}
        state_slots = self.share_like(list(state.values()))
        for slot, v in zip(state_slots, state.values(), strict=True):
            slot.copy_(v)
        init_values = []
        for x in init:
            if isinstance(x, torch.Tensor):
                (slot,) = self.share_like([x])
                slot.copy_(x)
                init_values.append(Value(tensor=self.spec(slot)))
            else:
                init_values.append(Value(json_value=x))
        self.sync()
        request = Request(
            op="build",
            what=f"ModelNew() for '{input_set.name}'",
            init_args=init_values,
            init_seed=init_seed,
            state={k: self.spec(s) for k, s in zip(state, state_slots, strict=True)},
            dtype=self.job.dtype,
        )
        reply = self.runner.ask(request, self.job.limits.call_s)
        self.report.notes.extend(n for n in reply.notes if n not in self.report.notes)
        ref = ref.to(self.device).eval()
        if self.dtype != torch.float32:
            ref = ref.to(self.dtype)
        return ref

    def make_inputs(self, input_set, seed: int, seed_index: int) -> list:
        self.set_constants(input_set)
        style = self.job.distributions[seed_index % len(self.job.distributions)]
        torch.manual_seed(seed)
        with torch.device(self.device):
            raw = list(self.problem.get_inputs())
        _forget_seed()
        inputs = []
        for x in raw:
            if isinstance(x, torch.Tensor):
                x = x.to(self.device)
                if x.is_floating_point():
                    x = _distribute(x.to(self.dtype), style, seed)
                x = x.contiguous()
            inputs.append(x)
        return inputs

    def reference(self, ref, inputs: list, watch: bool = False):
        """The reference's outputs; with `watch`, also whether the problem is a vendor-library
        call and nothing else (then keeping that call is not allowed: it would be the whole op)."""
        from forge.evaluator.monitor import AtenMonitor

        clones = [x.clone() if isinstance(x, torch.Tensor) else x for x in inputs]
        monitor = AtenMonitor()
        with torch.no_grad(), monitor if watch else contextlib.nullcontext():
            out = ref(*clones)
        if watch:
            self.library_only = not monitor.forbidden and bool(monitor.library)
        self.sync()
        return out

    def share_like(self, items: list) -> list:
        """Shared buffers shaped like `items` (non-tensors pass through), announced to the runner."""
        with self.timed("share"):
            return self._share_like(items)

    def _share_like(self, items: list) -> list:
        slots, new = [], []
        for x in items:
            if not isinstance(x, torch.Tensor):
                slots.append(x)
                continue
            self.release_cache()  # buffers are plain cudaMalloc: PyTorch's cache gives way
            buffer = SharedBuffer(self.next_id, x.numel() * x.element_size(), self.device)
            self.next_id += 1
            self.buffers.append(buffer)
            new.append(buffer)
            slot = buffer.view(x.dtype, list(x.shape))
            slot.forge_buffer = buffer.id
            slots.append(slot)
        if new:
            specs = [BufferSpec(id=b.id, nbytes=b.nbytes, ipc_handle=b.ipc_handle) for b in new]
            fds = [b.fd for b in new if b.fd >= 0]
            self.runner.ask(Request(op="share", buffers=specs), self.job.limits.call_s, fds)
        return slots

    @contextlib.contextmanager
    def buffers_of(self, phase: str):
        """The buffers shared within the block are released when it ends without an error.
        After an error (the runner may be hung or dead) they wait for the end of the
        evaluation, where the runner is closed before they are freed."""
        first_id = self.next_id
        yield
        self.release([b for b in self.buffers if b.id >= first_id], phase)

    def release(self, buffers: list[SharedBuffer], phase: str) -> None:
        """The runner unmaps `buffers` and drops what it made from them; on the CPU they are
        then freed here. Only this process names them (the runner's reply carries no ids) and
        each leaves `self.buffers` as it is freed, so none is freed twice; GPU buffers, and any
        the runner cannot release (it hangs, dies), are freed at the end, after the runner has
        exited."""
        if not buffers:
            return
        with self.timed("release"):
            self._release(buffers, phase)

    def _release(self, buffers: list[SharedBuffer], phase: str) -> None:
        self.sync()
        self.runner.ask(
            Request(op="release", what=f"release after {phase}", released=[b.id for b in buffers]),
            self.job.limits.call_s,
        )
        if self.device == "cuda":
            # kept until the runner has exited: legacy CUDA IPC leaves a cudaFree of memory
            # another process still maps undefined, and the runner only says it unmapped
            self.release_cache()
            return
        for buffer in buffers:
            buffer.release()
            self.buffers.remove(buffer)

    def spec(self, slot: torch.Tensor) -> TensorSpec:
        return TensorSpec(
            buffer=slot.forge_buffer, dtype=dtype_name(slot.dtype), shape=list(slot.shape)
        )

    def specs(self, slots: list) -> list[TensorSpec]:
        return [self.spec(s) for s in slots]

    def values(self, items: list) -> list[Value]:
        return [
            Value(tensor=self.spec(x)) if isinstance(x, torch.Tensor) else Value(json_value=x)
            for x in items
        ]

    def poison(self, slots: list, expected) -> None:
        for slot, e in zip(slots, cmp.flatten(expected), strict=True):
            if slot.dtype == torch.bool:
                slot.copy_(~e)
            elif slot.numel():
                slot.reshape(-1).view(torch.uint8).fill_(0xFF)

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    # ---- timing ----------------------------------------------------------------------------
    def target_sets(self) -> list:
        named = set(self.job.target_sets)
        if named:
            return [s for s in self.job.input_sets if s.name in named]
        largest = max(self.job.input_sets, key=lambda s: self.set_sizes.get(s.name, 0))
        return [largest]

    def time_all(self) -> None:
        t0 = time.perf_counter()
        targets = self.target_sets()
        self.report.target_sets = [s.name for s in targets]
        extra = [
            s for s in self.job.input_sets if s.name in self.job.timing_sets and s not in targets
        ]
        self.flush = timing.L2Flush()
        for input_set in [*targets, *extra]:
            phase = f"timing on '{input_set.name}'"
            announce(phase)
            with self.buffers_of(phase):
                raw = SetTimer(self, input_set).run()
            raw.target = input_set in targets
            self.report.timings.append(raw)
        self.report.phase_seconds["timing"] = time.perf_counter() - t0

    # ---- profile ---------------------------------------------------------------------------
    def profile(self) -> None:
        """One call of the candidate at the largest target set under Nsight Compute, in a second
        runner that ncu starts and watches from outside."""
        if not profiling.ncu_path():
            self.report.ncu_note = "Nsight Compute (ncu) not found: torch.profiler durations only"
            return
        t0 = time.perf_counter()
        announce("profile (Nsight Compute)")
        log = _ncu_log()
        profiled = _SPARE.pop("profiled", None) or RunnerProcess(
            self.device, Path.cwd() / "profiled", profiling.ncu_command(log)
        )
        main, self.runner = self.runner, profiled
        try:
            with self.gpu_alone():
                self.profiled_session()
        except Verdict as verdict:
            self.report.ncu_note = f"profiling run failed: {verdict.reason}"
        finally:
            self.runner.close()
            self.runner = main
        text = log.read_text(errors="replace") if log.exists() else ""
        self.report.ncu_kernels = profiling.parse_ncu_csv(text, self.job.kernel_names)
        if not self.report.ncu_kernels and not self.report.ncu_note:
            self.report.ncu_note = f"ncu reported no candidate kernel: {text[-400:].strip()}"
        self.report.phase_seconds["profiling"] = time.perf_counter() - t0
        self.report.profiled_set = self.report.target_sets[0]

    def profiled_session(self) -> None:
        self.note_runner_startup("profiled", self.runner.start(self.job.limits.load_s + 60))
        input_set = next(s for s in self.job.input_sets if s.name == self.report.target_sets[0])
        self.load_candidate()
        with self.buffers_of("profiling"):
            self.profiled_call(input_set)

    def profiled_call(self, input_set) -> None:
        self.build(input_set)
        inputs = self.make_inputs(input_set, self.job.seeds[0], 0)
        in_slots = self.share_like(inputs)
        for slot, x in zip(in_slots, inputs, strict=True):
            if isinstance(slot, torch.Tensor):
                slot.copy_(x)
        self.sync()
        args = self.values(in_slots)
        self.runner.ask(
            Request(op="call", what="profiling warm-up", args=args),
            self.job.limits.first_call_s,
        )
        self.runner.ask(
            Request(op="call", what="profiled call", args=args, nvtx=True),
            self.job.limits.call_s * 4,
        )


class SetTimer:
    """Candidate (in the runner) and baselines (here) on one input set, interleaved by batch,
    each batch of the candidate checked against this process's clock and some of its calls
    re-verified after the batch ran."""

    def __init__(self, evaluation: Evaluation, input_set):
        self.ev, self.set = evaluation, input_set
        self.job = evaluation.job
        self.name = input_set.name
        self.rotating = timing.ROTATING

    def run(self) -> RawTiming:
        ev, job = self.ev, self.job
        self.ref = ev.build(self.set)
        seeds = _derive(job.timing_seed, self.name)
        self.private = [ev.make_inputs(self.set, next(seeds), 0)]
        self.expected_example = ev.reference(self.ref, self.private[0])
        count = self.calls_per_batch()
        self.private += [ev.make_inputs(self.set, next(seeds), i) for i in range(1, count)]
        self.shared = [ev.share_like(x) for x in self.private]
        self.out_slots = ev.share_like(cmp.flatten(self.expected_example))
        impls = {"candidate": None}
        if "eager" in job.baselines:
            impls["eager"] = under_policy(self.ref, job.precision, ev.device)
        compiled_cached = self.cached_compiled()
        if "compile" in job.baselines and compiled_cached is None:
            # compiled and called under the policy: inductor reads the TF32 flags when it
            # lowers, dynamo traces autocast into the graph
            compiled = torch.compile(self.ref, dynamic=False)
            impls["compiled"] = under_policy(compiled, job.precision, ev.device)
        slots = timing.rotating_slots(self.private[0], self.rotating)
        raw = RawTiming(
            input_set=self.name, samples={k: {"device_ms": [], "host_ms": []} for k in impls}
        )
        warm = job.warmup + ev.rng.randrange(job.warmup + 1)
        with torch.no_grad():
            # the first warm-up call of each baseline (torch.compile compiles in it) comes
            # before the device lock, the rest of the warm-up and every clocked batch under it
            for fn in impls.values():
                if fn is not None:
                    fn(*self.private[0])
            ev.sync()
            with ev.gpu_alone():
                self.time_rounds(raw, impls, slots, seeds, warm)
        if compiled_cached is not None:
            raw.samples["compiled"] = compiled_cached
            raw.compiled_from_cache = True
        elif "compiled" in raw.samples:
            self.store_compiled(raw.samples["compiled"])
        self.after_timing()
        return raw

    def time_rounds(self, raw: RawTiming, impls: dict, slots: list, seeds, warm: int) -> None:
        ev, samples = self.ev, raw.samples
        self.cycles_per_ms = timing.sleep_cycles_per_ms()
        raw.persisting_l2_reset = timing.reset_persisting_l2()
        null = self.null_span(slots)
        for fn in impls.values():
            if fn is not None:
                for _ in range(warm - 1):
                    fn(*self.private[0])
        ev.sync()
        for r in range(math.ceil(self.job.trials / len(self.private))):
            self.refill(seeds)
            if r == 0:
                # the generation's temporaries go back to the driver before the runner's
                # warm-up allocates; later rounds reuse the cached blocks (a release per round
                # would make every round allocate GBs again)
                ev.release_cache()
            order = list(impls)
            ev.rng.shuffle(order)
            for key in order:
                if key == "candidate":
                    if r == 0:
                        self.warm_candidate(warm)
                        # the warm-up saw these inputs: timed calls get inputs it never saw
                        self.refill(seeds)
                    self.time_candidate(raw, samples[key], null, seeds)
                else:
                    batch = self.time_baseline(impls[key], slots)
                    samples[key]["device_ms"] += batch.device_ms
                    samples[key]["host_ms"] += batch.host_ms
            timed = [s["device_ms"] for s in samples.values()]
            if timing.settled(timed, self.job.min_trials, self.job.settle_spread):
                break

    def calls_per_batch(self) -> int:
        """The job's calls per batch, fewer where this GPU's free memory cannot hold that many
        distinct inputs and kept outputs of this set (a note says so)."""
        if self.ev.device != "cuda":
            return self.job.batch
        self.ev.release_cache()
        free, _ = torch.cuda.mem_get_info()
        inputs = timing.tensor_bytes(self.private[0])
        self.rotating = timing.rotation(inputs, timing.l2_bytes())
        count = timing.calls_that_fit(
            self.job.batch,
            inputs,
            timing.tensor_bytes(cmp.flatten(self.expected_example)),
            free,
            self.rotating,
        )
        if count < self.job.batch:
            self.ev.report.notes.append(
                f"timing on '{self.name}': batches of {count} calls, not {self.job.batch}: the "
                f"GPU's free memory ({free / 2**30:.1f} GiB) holds no more distinct inputs and "
                "kept outputs of this set"
            )
        return count

    def refill(self, seeds) -> None:
        for i in range(len(self.private)):
            fresh = self.ev.make_inputs(self.set, next(seeds), i)
            for private, shared, x in zip(self.private[i], self.shared[i], fresh, strict=True):
                if isinstance(x, torch.Tensor):
                    private.copy_(x)
                    shared.copy_(x)
            fresh = x = None
        self.ev.sync()

    def time_baseline(self, fn, slots: list) -> timing.Batch:
        """A baseline batch here, repeated with a longer sleep while the GPU caught up with the
        host (a starved batch would count launch gaps into the baseline's time)."""
        sleep_ms = max(1.0, len(self.private) * 0.2)
        while True:
            batch = timing.measure_batch(
                fn, self.private, slots, self.ev.flush, self.sleep_cycles(sleep_ms), False
            )
            if not batch.starved or sleep_ms >= MAX_SLEEP_MS:
                return batch
            sleep_ms *= 4

    def sleep_cycles(self, ms: float) -> int:
        return int(self.cycles_per_ms * ms)

    def null_span(self, slots: list) -> float:
        """This process's own time for everything in a batch but the calls (input copies, L2
        flushes, events, output clones), from a call that returns a ready output: the first
        call's copy and the last call's clone included, which for a KernelBench-sized set
        (6.4 GB in and out) are ~3 ms each, more than the wall check's fixed slack."""
        out = self.expected_example

        def ready(*args):
            return out

        batch = timing.measure_batch(
            ready, self.private, slots, self.ev.flush, self.sleep_cycles(1.0)
        )
        return batch.span_ms

    def warm_candidate(self, warmup: int) -> None:
        """Untimed calls (a randomized number, row 20) that also let the runner allocate its
        rotating buffers and L2 flush before the first clocked batch."""
        request = Request(
            op="warm",
            what=f"warm-up on '{self.name}'",
            staged=[self.ev.values(x) for x in self.shared],
            warmup=warmup,
        )
        self.ev.runner.ask(request, self.job.limits.call_s * (warmup + 1))

    def time_candidate(self, raw: RawTiming, sample: dict, null_ms: float, seeds) -> None:
        ev, job = self.ev, self.job
        request = Request(
            op="time",
            what=f"timed calls on '{self.name}'",
            staged=[ev.values(x) for x in self.shared],
        )
        for attempt in range(WALL_RETRIES + 1):
            reply, wall_ms, sleep_ms = self.candidate_batch(raw, request, seeds)
            disagreement = self.cross_check(raw, reply, wall_ms, sleep_ms, null_ms)
            if disagreement is None:
                break
            if attempt == WALL_RETRIES:
                raise Verdict("rejected", disagreement)
            ev.report.notes.append(f"{disagreement}; timed again on fresh inputs")
            self.refill(seeds)
        sample["device_ms"] += reply.device_ms
        sample["host_ms"] += reply.host_ms
        for index in ev.rng.sample(
            range(len(self.private)), min(job.verify_per_batch, len(self.private))
        ):
            self.verify_timed(index, raw)

    def candidate_batch(
        self, raw: RawTiming, request: Request, seeds
    ) -> tuple[Reply, float, float]:
        """One timed batch of the candidate: its reply, the trusted clock's ms over it, and the
        sleep head it ran behind (longer while the GPU caught up with the host). A batch asked
        again gets fresh inputs: calls that met their inputs before could return what they
        kept from them."""
        ev, job = self.ev, self.job
        sleep_ms = 0.0 if raw.host_in_series else max(1.0, len(self.private) * 0.2)
        while True:
            request.sleep_cycles = self.sleep_cycles(sleep_ms)
            t0 = time.perf_counter()
            reply = ev.runner.ask(request, job.limits.call_s * len(self.private) + sleep_ms / 1e3)
            wall_ms = (time.perf_counter() - t0) * 1e3
            if not reply.starved or raw.host_in_series:
                break
            self.refill(seeds)
            if sleep_ms >= MAX_SLEEP_MS:
                self.time_with_host_in_series(raw)
                sleep_ms = 0.0
                continue
            sleep_ms *= 4
        if len(reply.device_ms) != len(self.private) or len(reply.host_ms) != len(self.private):
            raise Verdict(
                "rejected",
                f"result channel tampered: {len(reply.device_ms)} timings for {len(self.private)} calls",
            )
        return reply, wall_ms, sleep_ms

    def time_with_host_in_series(self, raw: RawTiming) -> None:
        """The host could not queue a batch within the longest sleep: the candidate's calls
        block it (a synchronize or `.item()` in forward). Its batches are then timed without a
        sleep head: each span also holds the host work that the GPU waited for, which can only
        make the candidate slower, never faster."""
        raw.host_in_series = True
        note = (
            f"'{self.name}': the host could not queue {len(self.private)} calls within "
            f"{MAX_SLEEP_MS:.0f} ms (does forward synchronize?), so the candidate was timed with "
            "the host in series: its device time includes its host overhead"
        )
        if note not in self.ev.report.notes:
            self.ev.report.notes.append(note)

    def cross_check(
        self, raw: RawTiming, reply: Reply, wall_ms: float, sleep_ms: float, null_ms: float
    ) -> str | None:
        """The batch took `wall_ms` on this process's clock. Honest device times add up to it
        with the sleep, the batch's fixed work (`null_ms`, measured here) and a small slack;
        work hidden from the events makes the wall clock longer than that: returned as the
        disagreement (None when they agree). More device time than wall time rejects at once."""
        claimed = sum(reply.device_ms)
        if claimed > wall_ms + WALL_SLACK_MS or min(reply.device_ms) < 0:
            raise Verdict(
                "rejected",
                f"timing forged on '{self.name}': {claimed:.3f} ms of device time reported in a {wall_ms:.3f} ms batch",
            )
        bound = WALL_SLACK_RATIO * (sleep_ms + null_ms + claimed) + WALL_SLACK_MS
        if wall_ms > bound:
            return (
                f"timing disagrees with the trusted clock on '{self.name}': the batch took {wall_ms:.2f} ms, "
                f"at most {bound:.2f} ms is explained by the reported {claimed:.3f} ms of calls "
                "(time the call's start and end events did not see: work on another stream, or "
                "queued after forward returned)"
            )
        raw.wall_checks.append(f"{wall_ms:.2f} ms <= {bound:.2f} ms")
        return None

    def verify_timed(self, index: int, raw: RawTiming) -> None:
        ev = self.ev
        expected = ev.reference(self.ref, self.private[index])
        tol = ev.tolerance(self.ref, self.private[index], expected, self.name)
        ev.poison(self.out_slots, expected)
        ev.sync()
        reply = ev.runner.ask(
            Request(op="collect", indices=[index], outputs=ev.specs(self.out_slots)),
            self.job.limits.call_s,
        )
        ev.check_structure(reply, expected, self.name)
        ev.record(
            self.name,
            len(raw.samples.get("candidate", {}).get("device_ms", [])),
            "timed",
            [t.clone() for t in self.out_slots],
            cmp.flatten(expected),
            tol,
        )
        raw.rechecks += 1

    def after_timing(self) -> None:
        ev = self.ev
        inputs = ev.make_inputs(self.set, secrets.randbits(62), 1)
        expected = ev.reference(self.ref, inputs)
        ev.check_call(
            self.name,
            0,
            inputs,
            expected,
            self.shared[0],
            self.out_slots,
            "after_timing",
            watch=False,
            tol=ev.tolerance(self.ref, inputs, expected, self.name),
        )

    # ---- torch.compile baseline cache ----------------------------------------------------
    def cache_path(self) -> Path | None:
        if not self.job.reuse_baselines:
            return None
        env = self.ev.report.environment
        key = json.dumps(
            [
                self.job.problem_source,
                self.set.constants,
                self.job.dtype,
                env.get("gpu_name"),
                torch.__version__,
                env.get("triton_version"),
                self.job.trials,
                self.job.precision,
            ],
            sort_keys=True,
        )
        return _cache_root() / "baselines" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"

    def cached_compiled(self) -> dict | None:
        path = self.cache_path()
        if path is None or "compile" not in self.job.baselines or not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            return {
                "device_ms": [float(v) for v in data["device_ms"]],
                "host_ms": [float(v) for v in data["host_ms"]],
            }
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def store_compiled(self, sample: dict) -> None:
        path = self.cache_path()
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{secrets.token_hex(6)}.tmp")  # workers run side by side
        tmp.write_text(json.dumps(sample))
        tmp.replace(path)


def _largest_difference(other, expected) -> float:
    """The largest |other - expected| over the floating-point outputs (an index output that a
    rounding moves would otherwise widen every tolerance by the index distance)."""
    pairs = zip(cmp.flatten(other), cmp.flatten(expected), strict=True)
    return max((cmp.max_difference(o, e) for o, e in pairs if e.is_floating_point()), default=0.0)


def _derive(secret: int, salt: str):
    return (protocol.derive_seed(secret, salt, i) for i in itertools.count())


def _load_problem(source: str, constants: dict[str, int]):
    path = Path.cwd() / f"{problem_module.MODULE_NAME}.py"  # tracebacks show its lines
    path.write_text(source)
    return problem_module.execute(source, constants, str(path))


def _forget_seed() -> None:
    """Reseed the global RNG from fresh entropy after using a secret seed."""
    torch.manual_seed(secrets.randbits(62))


def _distribute(x: torch.Tensor, style: str, seed: int) -> torch.Tensor:
    """Per-seed input styles: uniform-looking data lets cheats that use the mean pass (row 6)."""
    if style in ("normal", "as_given"):
        return x
    g = torch.Generator(device=x.device).manual_seed(seed ^ 0x5EED)
    # at most one input-sized temporary besides x and the result (`timing.WORKSPACE_INPUTS`):
    # KernelBench sets reach 8.7 GB per input, and the outliers style once took six of them
    if style == "heavy_tailed":
        scale = torch.randn(x.shape, generator=g, device=x.device, dtype=torch.float32)
        return scale.exp_().mul_(x).to(x.dtype)
    if style == "outliers":
        hit = torch.rand(x.shape, generator=g, device=x.device) < 1e-3
        where = hit.reshape(-1).nonzero().squeeze(1)
        del hit
        out = torch.empty_like(x, memory_format=torch.contiguous_format).copy_(x)
        flat = out.view(-1)
        sign = torch.where(torch.rand(where.numel(), generator=g, device=x.device) < 0.5, -1.0, 1.0)
        flat[where] = (sign * 50.0 * flat[where].float().abs().clamp_min(1.0)).to(x.dtype)
        return out
    if style == "positive":
        return x.abs() + 1e-3
    raise ValueError(f"unknown input distribution {style!r}")


def run_job(job: dict) -> dict:
    return Evaluation(EvalJob.model_validate(job)).run().model_dump()
