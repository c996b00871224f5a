"""The untrusted side of an evaluation: `python -P -m forge.evaluator.runner FD`.

It imports the candidate and runs its calls on the trusted process's request, over the socket
FD, reading inputs from and writing outputs to buffers the trusted process shares. It holds no
reference, no expected output, no seed and no result-channel token: anything candidate code
reaches here can at most make the runner lie, and every verdict-relevant reply is checked by
the trusted process (outputs compared there, timings against its own clock).

The checks that do run here (ATen monitor, proof that the candidate's kernels ran and wrote the
output, thread count, identities of the modules it uses) are defence in depth.
"""

from __future__ import annotations

import os
import sys
import time

STARTED = time.perf_counter()

import importlib.util  # noqa: E402 - STARTED is taken before the imports
import re  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

from forge.evaluator import protocol  # noqa: E402
from forge.evaluator.protocol import Failure, OutputMeta, Reply, Request, Value  # noqa: E402

COMPILE_SECONDS = 120.0


class CandidateFailure(Exception):
    """Candidate code raised or misbehaved; carries the verdict it earns."""

    def __init__(self, status: str, reason: str, detail: str = ""):
        super().__init__(reason)
        self.failure = Failure(status=status, reason=reason, detail=detail[-6000:])


def failure_status(exc: BaseException) -> str:
    name, text = exc.__class__.__name__, str(exc).lower()
    compiled = "compil" in text or "nvcc" in text or "ninja" in text
    if isinstance(exc, SyntaxError) or "CompilationError" in name or compiled:
        return "compile_error"
    return "runtime_error"


def short(exc: BaseException) -> str:
    text = f"{exc.__class__.__name__}: {exc}".strip()
    return text.splitlines()[0][:400] if text else exc.__class__.__name__


CAUSED = "\nThe above exception was the direct cause of the following exception:\n\n"
DURING = "\nDuring handling of the above exception, another exception occurred:\n\n"


def candidate_traceback() -> str:
    """The frames of the candidate's own file and the error, not the runner's or torch's; for
    an error raised from another (Triton's interpreter wraps an error inside a kernel body), the
    chain's earlier errors that passed through the candidate's file come first, as Python
    prints them."""
    chain: list[BaseException] = []
    exc: BaseException | None = sys.exc_info()[1]
    while exc is not None and exc not in chain and len(chain) < 4:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    text = ""
    for error in reversed(chain):
        frames = traceback.extract_tb(error.__traceback__)
        own = [f for f in frames if f.filename.endswith("forge_candidate.py")]
        if not own and error is not chain[0]:
            continue
        if text:
            text += CAUSED if error.__cause__ is not None else DURING
        text += "".join(traceback.format_list(own or frames[-3:]))
        text += "".join(traceback.format_exception_only(type(error), error))
    return text


class Runner:
    def __init__(self, sock: socket.socket, device: str):
        import torch

        self.torch = torch
        self.sock, self.device = sock, device
        self.buffers: dict[int, object] = {}
        self.candidate = None
        self.model = None
        self.kernel_names: list[str] = []
        self.kept: list[object] = []
        self.slots: list[list] = []
        self.flush = None
        self.threads_before = threading.active_count()
        self.identity = None

    # ---- the loop ----------------------------------------------------------------------------
    def serve(self) -> None:
        handlers = {
            "load": self.load,
            "compile": self.compile_cuda,
            "share": self.share,
            "build": self.build,
            "call": self.call,
            "warm": self.warm,
            "time": self.time_batch,
            "collect": self.collect,
            "metadata": self.metadata,
            "release": self.release,
        }
        while True:
            request, fds = protocol.receive(self.sock, Request)
            if request.op == "exit":
                return
            t0 = time.perf_counter()
            try:
                reply = handlers[request.op](request, fds)
            except CandidateFailure as failure:
                reply = Reply(ok=False, failure=failure.failure)
            reply.seconds = time.perf_counter() - t0
            protocol.send(self.sock, reply)

    # ---- handlers ----------------------------------------------------------------------------
    def load(self, request: Request, fds: list[int]) -> Reply:
        from forge.evaluator.integrity import IdentitySnapshot

        self.kernel_names = request.kernel_names
        # the policy's setting for the candidate's own library calls (cuBLAS/cuDNN), as the
        # baselines get it; whatever the candidate computes is checked by the trusted process
        self.torch.backends.cuda.matmul.allow_tf32 = request.allow_tf32
        self.torch.backends.cudnn.allow_tf32 = request.allow_tf32
        self.identity = IdentitySnapshot(self)
        self.identity.take()
        path = Path.cwd() / "forge_candidate.py"
        path.write_text(request.source)
        spec = importlib.util.spec_from_file_location("forge_candidate", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["forge_candidate"] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - any failure to import candidate code is its verdict
            raise CandidateFailure(
                failure_status(exc),
                f"candidate failed to load: {short(exc)}",
                candidate_traceback(),
            ) from exc
        self.after_candidate_code("import")
        if not hasattr(module, "ModelNew"):
            raise CandidateFailure("rejected", "candidate defines no ModelNew")
        self.candidate = module
        return Reply()

    def compile_cuda(self, request: Request, fds: list[int]) -> Reply:
        from forge.evaluator.toolchain import compile_cuda

        report = compile_cuda(request.source, timeout_s=COMPILE_SECONDS)
        log = "\n".join(s.log for s in report.sources)
        if not report.ok:
            first = next(
                (line.strip() for line in log.splitlines() if "error" in line or "memory" in line),
                "",
            )
            reason = report.error or "nvcc failed to compile the CUDA source"
            reason = f"{reason}: {first[:300]}" if first else reason
            return Reply(
                ok=False, failure=Failure(status="compile_error", reason=reason, detail=log[-6000:])
            )
        return Reply(compile_log=log)

    def share(self, request: Request, fds: list[int]) -> Reply:
        from forge.evaluator.shared import MappedBuffer

        fd_iter = iter(fds)
        for spec in request.buffers:
            fd = -1 if spec.ipc_handle else next(fd_iter)
            self.buffers[spec.id] = MappedBuffer(spec.nbytes, self.device, spec.ipc_handle, fd)
        return Reply()

    def release(self, request: Request, fds: list[int]) -> Reply:
        """The trusted process is done with a phase (an input set verified or timed, the
        profile): drop what was made for it (the model built from its buffers, the rotating
        inputs, the kept outputs) and unmap its buffers, which the trusted process frees next."""
        self.model = None
        self.slots, self.kept = [], []
        if self.device == "cuda":
            self.torch.cuda.synchronize()
        for buffer_id in request.released:
            self.buffers.pop(buffer_id).close()
        if self.device == "cuda":
            self.torch.cuda.empty_cache()
        return Reply()

    def build(self, request: Request, fds: list[int]) -> Reply:
        torch = self.torch
        init = [self.value(v) for v in request.init_args]
        torch.manual_seed(request.init_seed)
        try:
            with torch.device(self.device):  # as the reference is built: on the device
                model = self.candidate.ModelNew(*init)
        except Exception as exc:  # noqa: BLE001 - a constructor error is the candidate's verdict
            raise CandidateFailure(
                failure_status(exc),
                f"ModelNew(*get_init_inputs()) failed: {short(exc)}",
                candidate_traceback(),
            ) from exc
        self.after_candidate_code("ModelNew()")
        notes = []
        state = {k: self.tensor(spec) for k, spec in request.state.items()}
        own = model.state_dict()
        if state and {k: tuple(v.shape) for k, v in own.items()} == {
            k: tuple(v.shape) for k, v in state.items()
        }:
            model.load_state_dict(state)
        elif state:
            notes.append("ModelNew's parameters differ in names/shapes from Model's: not copied")
        model = model.to(self.device).eval()
        if request.dtype != "float32":
            from forge.evaluator.shared import DTYPES

            model = model.to(DTYPES[request.dtype])
        self.model = model
        self.slots = []
        return Reply(notes=notes)

    def call(self, request: Request, fds: list[int]) -> Reply:
        args = [self.value(v) for v in request.args]
        reply = Reply()
        if request.nvtx:
            from forge.evaluator.profiling import NVTX_RANGE

            self.poison_free_memory()
            self.torch.cuda.nvtx.range_push(NVTX_RANGE)
            with self.torch.no_grad():
                out = self.guarded(request.what, sync=True)(*args)
            self.torch.cuda.nvtx.range_pop()
        elif request.watch:
            out = self.watched(args, request.what, reply)
        else:
            out = self.monitored(args, request.what, reply)
        self.deliver(out, request.outputs, reply)
        return reply

    def warm(self, request: Request, fds: list[int]) -> Reply:
        from forge.evaluator import timing
        from forge.evaluator.monitor import AtenMonitor

        staged = [[self.value(v) for v in call] for call in request.staged]
        copies = timing.rotation(timing.tensor_bytes(staged[0]), timing.l2_bytes())
        self.slots = timing.rotating_slots(staged[0], copies)
        self.flush = self.flush or timing.L2Flush()
        fn = self.guarded(request.what)
        reply = Reply()
        monitor = AtenMonitor()
        with self.torch.no_grad(), monitor:
            for i in range(request.warmup):
                out = fn(*staged[i % len(staged)])
            self.torch.cuda.synchronize()
        self.after_candidate_code(request.what)
        if request.warmup:
            self.judge_monitor(monitor, out, reply)
        return reply

    def time_batch(self, request: Request, fds: list[int]) -> Reply:
        """Timed calls run without the op monitor: its Python cost would count into the launch
        overhead reported for them. The warm-up calls (a secret random number) are monitored,
        and the timed calls' outputs are re-verified by the trusted process."""
        from forge.evaluator import timing

        staged = [[self.value(v) for v in call] for call in request.staged]
        fn = self.guarded(request.what)
        self.kept = []  # the last batch's outputs go before this one's are cloned
        with self.torch.no_grad():
            batch = timing.measure_batch(fn, staged, self.slots, self.flush, request.sleep_cycles)
        self.after_candidate_code(request.what)
        self.kept = batch.outputs
        return Reply(device_ms=batch.device_ms, host_ms=batch.host_ms, starved=batch.starved)

    def collect(self, request: Request, fds: list[int]) -> Reply:
        reply = Reply()
        self.deliver(self.kept[request.indices[0]], request.outputs, reply)
        return reply

    def metadata(self, request: Request, fds: list[int]) -> Reply:
        from forge.evaluator import profiling

        return Reply(
            triton_kernels=profiling.triton_kernel_metadata(self.candidate, self.kernel_names),
            compiled_modules=extension_modules(),
        )

    # ---- calls -------------------------------------------------------------------------------

    def guarded(self, what: str, sync: bool = False):
        """The model as a plain callable whose errors become the candidate's verdict."""
        torch, model = self.torch, self.model

        def call(*args):
            try:
                out = model(*args)
                if sync and self.device == "cuda":
                    torch.cuda.synchronize()
                return out
            except Exception as exc:  # noqa: BLE001 - a kernel error is an observation for the Judge
                raise CandidateFailure(
                    failure_status(exc), f"{what}: {short(exc)}", candidate_traceback()
                ) from exc

        return call

    def run_once(self, args: list, what: str, poison: bool = True):
        if poison:
            self.poison_free_memory()
        with self.torch.no_grad():
            out = self.guarded(what, sync=True)(*args)
        self.after_candidate_code(what)
        return out

    def monitored(self, args: list, what: str, reply: Reply):
        from forge.evaluator.monitor import AtenMonitor

        monitor = AtenMonitor()
        with monitor:
            out = self.run_once(args, what)
        self.judge_monitor(monitor, out, reply)
        return out

    def watched(self, args: list, what: str, reply: Reply):
        """A monitored call that also proves the candidate's own kernels ran and wrote the
        output: a profiler trace on the GPU, the Triton interpreter's stores on the CPU."""
        from forge.evaluator import profiling
        from forge.evaluator.monitor import AtenMonitor, KernelCodeWatch

        monitor = AtenMonitor()
        if self.device == "cuda":
            self.poison_free_memory()
            with cuda_kernel_trace() as prof, monitor:
                out = self.run_once(args, what, poison=False)
            events = [
                e
                for e in prof.function_events
                if e.device_type == self.torch.autograd.DeviceType.CUDA
            ]
            for e in events:
                reply.kernel_durations_us[e.name] = (
                    reply.kernel_durations_us.get(e.name, 0.0) + e.device_time
                )
            reply.kernels_seen = sorted({e.name for e in events})
            own = [
                k for k in reply.kernels_seen if profiling.kernel_base_name(k) in self.kernel_names
            ]
            reply.own_kernel_ran = bool(own)
            foreign = [
                k for k in reply.kernels_seen if k not in own and not SUPPORTING_KERNEL.search(k)
            ]
            if foreign:
                reply.provenance_gap = f"kernels other than the candidate's computed during forward: {', '.join(foreign[:3])}"
        else:
            from forge.evaluator.stores import StoreRecorder

            watch = KernelCodeWatch(self.candidate, self.kernel_names)
            with watch, monitor, StoreRecorder() as stores:
                out = self.run_once(args, what)
            reply.kernels_seen = list(watch.ran)
            reply.own_kernel_ran = bool(watch.ran)
            reply.provenance_gap = stores.uncovered(out) if reply.own_kernel_ran else ""
        self.judge_monitor(monitor, out, reply)
        if not reply.own_kernel_ran:
            traced = ", ".join(reply.kernels_seen[:6]) or "nothing"
            raise CandidateFailure(
                "rejected",
                f"the candidate's own kernel never ran on {what.split(' on ')[-1]} "
                f"(defined: {', '.join(self.kernel_names) or 'none'}; traced: {traced})",
            )
        return out

    def judge_monitor(self, monitor, out, reply: Reply) -> None:
        from forge.evaluator.compare import flatten

        reply.host_to_device_bytes = monitor.host_to_device_bytes
        produced = sum(t.numel() * t.element_size() for t in flatten(out))
        if self.device == "cuda" and produced and monitor.host_to_device_bytes >= produced // 2:
            reply.provenance_gap = (
                f"{monitor.host_to_device_bytes} bytes were copied host-to-device during forward for an output of "
                f"{produced}: the output was computed on the host, not by the candidate's kernels"
            )
        if monitor.forbidden:
            ops = sorted(set(monitor.forbidden))
            raise CandidateFailure(
                "rejected",
                f"PyTorch computed part of the result: {', '.join(ops[:6])} ran during forward",
            )
        reply.library_ops = sorted(set(getattr(monitor, "library", [])))
        if reply.library_ops and hasattr(monitor, "output_from_library"):
            reply.output_from_library = any(monitor.output_from_library(t) for t in flatten(out))

    def deliver(self, out, specs: list, reply: Reply) -> None:
        """Copy the outputs into the trusted process's slots, after describing what they are
        (the trusted side compares the description and the values)."""
        from forge.evaluator.compare import flatten

        torch = self.torch
        flat = flatten(out)
        reply.structure = (
            "tensor"
            if isinstance(out, torch.Tensor)
            else type(out).__name__
            if isinstance(out, tuple | list)
            else "other"
        )
        for t in flat:
            plain = type(t) is torch.Tensor
            reply.outputs.append(
                OutputMeta(
                    type_name=f"{type(t).__module__}.{type(t).__qualname__}",
                    dtype=str(t.dtype).removeprefix("torch.") if plain else "",
                    shape=list(t.shape) if plain else [],
                    device=str(t.device) if plain else "",
                    has_storage=bool(
                        plain and (t.numel() == 0 or t.untyped_storage().data_ptr() != 0)
                    ),
                )
            )
        if len(flat) != len(specs):
            return
        for t, spec in zip(flat, specs, strict=True):
            if type(t) is not torch.Tensor or list(t.shape) != spec.shape:
                continue
            slot = self.tensor(spec)
            if t.dtype == slot.dtype and t.device == slot.device:
                slot.copy_(t)
        if self.device == "cuda":
            torch.cuda.synchronize()

    # ---- helpers -----------------------------------------------------------------------------
    def tensor(self, spec):
        from forge.evaluator.shared import DTYPES

        return self.buffers[spec.buffer].view(DTYPES[spec.dtype], spec.shape)

    def value(self, value: Value):
        return self.tensor(value.tensor) if value.tensor is not None else value.json_value

    def poison_free_memory(self) -> None:
        """Fill every free block of the caching allocator with NaN bytes, so an output that
        reuses freed memory reads NaN instead of an earlier answer."""
        if self.device != "cuda":
            return
        from forge.evaluator.shared import _device_view

        for segment in self.torch.cuda.memory_snapshot():
            address = segment["address"]
            for block in segment["blocks"]:
                if block["state"] == "inactive" and block["size"] > 0:
                    _device_view(address, block["size"], None).fill_(0xFF)
                address += block["size"]
        self.torch.cuda.synchronize()

    def after_candidate_code(self, what: str) -> None:
        if self.identity is not None and (changed := self.identity.changed()):
            raise CandidateFailure("rejected", f"{what} tampered with {', '.join(changed[:5])}")
        if threading.active_count() > self.threads_before:
            raise CandidateFailure("rejected", f"{what} started a background thread")


def extension_modules() -> list[str]:
    """Files of the compiled extension modules loaded from the compiler cache (load_inline)."""
    cache = os.environ.get("TORCH_EXTENSIONS_DIR", "")
    if not cache:
        return []
    files = (getattr(m, "__file__", None) for m in list(sys.modules.values()))
    return sorted({f for f in files if isinstance(f, str) and f.startswith(cache)})


# Device work a legitimate forward may trace besides its own kernels: fills and copies (allocation,
# layout) and the vendor-library GEMMs / convolutions the static rules allow.
SUPPORTING_KERNEL = re.compile(
    r"Fill|[Cc]opy|[Mm]emset|Memcpy|gemm|cutlass|cublas|xmma|cudnn|conv|sm\d+_", re.I
)


def environment(device: str) -> dict:
    import torch

    facts = {"torch_version": torch.__version__}
    try:
        import triton

        facts["triton_version"] = triton.__version__
    except ImportError:
        facts["triton_version"] = ""
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        facts.update(
            gpu_name=props.name,
            arch=f"sm_{props.major}{props.minor}",
            cuda_version=torch.version.cuda or "",
        )
    else:
        facts.update(gpu_name="", arch="cpu", cuda_version="")
    return facts


def cuda_kernel_trace():
    """Kineto's trace of CUDA activity only: the profiler `torch.profiler.profile` wraps, without
    the wrapper, whose start asks `hasattr(torch, "_inductor")` and so imports torch._inductor,
    torch._dynamo and sympy (2.1 s on the CPU machine; the runner's start-up on the H200 paid it
    in its profiler step once the op monitor no longer imported Dynamo, 2026-12-02)."""
    from torch.autograd.profiler import profile

    return profile(use_device="cuda", use_cpu=False, use_kineto=True)


def prepare(device: str) -> dict[str, float]:
    """Imports and, on a GPU, CUDA and the profiler's start-up, before any candidate code.
    Returns the seconds each step took."""
    steps: dict[str, float] = {}
    mark = time.perf_counter()

    def step(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        steps[name] = now - mark
        mark = now

    if device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    import forge.evaluator.integrity  # noqa: F401
    import forge.evaluator.shared  # noqa: F401
    import forge.evaluator.timing  # noqa: F401
    from forge.evaluator.monitor import warm_monitor

    step("imports")
    warm_monitor()
    step("monitor")
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except ImportError:
        pass
    step("triton")
    if device == "cuda":
        from forge.evaluator.shared import cudart

        torch.cuda.init()
        cudart()
        step("cuda")
        with cuda_kernel_trace():
            torch.empty(1, device="cuda").fill_(1)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        step("profiler")
    else:
        import forge.evaluator.stores  # noqa: F401
    return steps


def main() -> None:
    fd = int(sys.argv[1])
    device = os.environ.get("FORGE_WORKER_DEVICE", "cpu")
    sock = socket.socket(fileno=fd)
    from forge.sandbox import containment

    keep = [
        p
        for p in os.environ.get("FORGE_RUNNER_WRITABLE", "").split(os.pathsep)
        if p and Path(p) != Path.cwd()
    ]
    if os.environ.get("FORGE_RUNNER_PROFILED"):
        # Seen on an H200 host: under Nsight Compute, CUDA fails to start (error 304) in a private
        # mount namespace; the profiled run (of a candidate already verified) keeps the host's.
        applied = {
            "containment_notes": ["profiled run: no private mount namespace (Nsight Compute)"]
        }
    else:
        applied = containment.before_imports(Path.cwd(), device == "cuda", keep_dirs=keep)
    startup = {"before_prepare": time.perf_counter() - STARTED}
    startup.update(prepare(device))
    contained = time.perf_counter()
    applied.update(containment.after_imports(writable=[str(Path.cwd()), *keep, "/dev"]))
    startup["containment"] = time.perf_counter() - contained
    protocol.send(
        sock,
        Reply(
            environment=environment(device),
            containment=applied,
            seconds=time.perf_counter() - STARTED,
            startup=startup,
        ),
    )
    try:
        Runner(sock, device).serve()
    except protocol.ProtocolError:
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
