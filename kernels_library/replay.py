"""Launch replay: served calls answered by the C++ route without entering Python.

The C++ route (`csrc/route.cpp`) sends a call the library serves to the runtime's Python kernel,
which runs the entry's `forward`. Replay records that forward once per key and lets C++ repeat
it: the second served call of a key (the first has JIT-compiled the Triton kernels and run any
autotuning) runs under a recorder that captures

- every Triton launch at the launcher boundary (`CompiledKernel.run`, the object Triton's JIT
  calls with the grid, stream, CUfunction, packed metadata, hooks and the kernel's arguments):
  the launch configuration and each argument the launcher packs, constexprs skipped exactly as
  it skips them (`launch_record`);
- every ATen op the forward dispatches (a TorchDispatchMode), keeping the tensors the allocation
  ops return.

`build_plan` (pure: recorded call in, plan or reason out) accepts a call whose ATen ops are all
allocations or views, whose launches are plain ones (no cluster, cooperative or PDL launch, no
global or profile scratch, no TMA descriptor, no launch hook, no argument type whose packing the
supported launchers disagree on), whose pointer arguments each lie in exactly one input of the
call or one tensor it allocated, and whose outputs are tensors it allocated. The plan (no Python
objects: sizes, dtypes, CUfunction handles and parameter bytes) goes to C++, which checks each
launch's parameter sizes against the kernel's own (cuFuncGetParamInfo) and then serves every
later call with that key: allocate, launch on the current stream, return. A call that cannot be
replayed leaves its key on the Python path for good, with the reason counted in `kl.stats()`.

Triton's launcher packs the arguments itself, and its interface changed between releases: 3.6
generates a C launcher per signature (`make_launcher`), 3.9 has one generic launcher driven by
`kernel_signature`. Both are recognised and checked (`launcher_interface`); anything else is
refused rather than guessed.
"""

from __future__ import annotations

import logging
import os
import struct
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from forge.kernels_library.storage import LibraryError

log = logging.getLogger("forge.kernels_library")

REPLAY_ENV = "FORGE_KERNELS_REPLAY"
_SWITCH = {"": True, "1": True, "on": True, "true": True, "yes": True}
_SWITCH.update({"0": False, "off": False, "false": False, "no": False})


def chosen_replay(requested: bool | None) -> bool:
    """Replay on or off: `requested`, else `$FORGE_KERNELS_REPLAY` (default on), checked."""
    if requested is not None:
        return bool(requested)
    value = os.environ.get(REPLAY_ENV, "").strip().lower()
    if value not in _SWITCH:
        raise LibraryError(f"{REPLAY_ENV}={os.environ[REPLAY_ENV]!r} is not one of 1, 0, on, off")
    return _SWITCH[value]


ALLOCATIONS = frozenset({"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"})
# `reshape` is logged whole by some torch builds (2.11 with CUDA: the runtime's reshape of a
# forward's output to the operator's shape) and as `view` by others. Where it copies instead,
# the copy is no allocation the plan knows: an output or launch pointer in it is refused.
VIEWS = frozenset(
    {
        "view",
        "reshape",
        "_unsafe_view",
        "_reshape_alias",
        "as_strided",
        "t",
        "transpose",
        "permute",
        "unsqueeze",
        "squeeze",
        "select",
        "slice",
        "narrow",
        "expand",
        "detach",
        "alias",
        "split",
        "split_with_sizes",
        "unbind",
    }
)

# The two launcher interfaces understood here (see the module docstring).
GENERATED = "generated C launcher (Triton 3.4-3.6)"
GENERIC = "generic C launcher (Triton 3.7+)"
INTERFACES = (GENERATED, GENERIC)
# Both append the global and the profile scratch pointers after the kernel's own arguments.
SCRATCH_POINTERS = {GENERATED: 2, GENERIC: 2}
POINTER_SIZE = 8
# How both launchers pack a scalar argument type: struct format (fp16: IEEE half, rounded as
# PyFloat_Pack2 does; bf16: the top 16 bits of the float32, truncated, as the launchers do).
SCALARS = {
    "i8": "<b",
    "i16": "<h",
    "i32": "<i",
    "i64": "<q",
    "u8": "<B",
    "u16": "<H",
    "u32": "<I",
    "u64": "<Q",
    "fp16": "<e",
    "bf16": "<f",
    "fp32": "<f",
    "f32": "<f",
    "fp64": "<d",
}
SIZES = {**{ty: struct.calcsize(fmt) for ty, fmt in SCALARS.items()}, "bf16": 2}
# i1 / u1: Triton 3.6's launcher packs them in 1 byte, 3.9's in 4; refused rather than guessed.
DISAGREEING = {"i1", "u1"}
C_SIZES = {
    "int8_t": 1,
    "int16_t": 2,
    "int32_t": 4,
    "int64_t": 8,
    "uint8_t": 1,
    "uint16_t": 2,
    "uint32_t": 4,
    "uint64_t": 8,
    "CUdeviceptr": 8,
}
MAX_SHARED = 228 * 1024  # above it Triton 3.9 adds a launch attribute


# ------------------------------------------------------------------------------------ records


class LaunchRecord(NamedTuple):
    """One Triton launch as the launcher received it."""

    kernel: str
    interface: str
    """One of INTERFACES, else why the launcher is not understood."""
    function: int
    grid: tuple[int, int, int]
    stream: int
    num_warps: int
    num_ctas: int
    shared: int
    cooperative: bool
    pdl: bool
    global_scratch: int
    profile_scratch: int
    hooks: bool
    """A launch enter/exit hook was passed (replay would skip it)."""
    params: tuple[tuple[object, object], ...]
    """(signature type, value) of every argument the launcher packs, in order."""


class RecordedCall(NamedTuple):
    """What the recorder saw of one served call, for `build_plan`."""

    inputs: Sequence
    """The operator's arguments in schema order (what C++ has on its stack)."""
    ops: Sequence[str]
    """Every ATen op the forward dispatched, as `aten.<name>.<overload>`."""
    allocations: Sequence[torch.Tensor]
    """The tensors the allocation ops among them returned."""
    launches: Sequence[LaunchRecord]
    outputs: Sequence
    """What the operator returns, in order."""
    device: torch.device
    stream: int
    """The current stream of `device` during the call (replay launches on the current stream)."""


class PlanAllocation(NamedTuple):
    sizes: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: torch.dtype


class PlanLaunch(NamedTuple):
    kernel: str
    function: int
    grid: tuple[int, int, int]
    block: int
    shared: int
    params: bytes
    """8 bytes per parameter, the scalars packed and the pointer slots zero."""
    sizes: tuple[int, ...]
    """Each parameter's size as the launcher packs it (checked against the kernel's in C++)."""
    pointers: tuple[tuple[int, int, int, int, bool], ...]
    """(parameter, source 0 input / 1 allocation, index, byte offset, 16-byte aligned)."""
    scratch: int
    """The trailing scratch pointers among them (the kernel may not declare them)."""


class PlanOutput(NamedTuple):
    allocation: int
    whole: bool
    """The allocation itself (else a view of it with the layout below)."""
    sizes: tuple[int, ...]
    strides: tuple[int, ...]
    storage_offset: int


class Plan(NamedTuple):
    allocations: tuple[PlanAllocation, ...]
    launches: tuple[PlanLaunch, ...]
    outputs: tuple[PlanOutput, ...]


# ------------------------------------------------------------------------------------ launches


def launcher_params(signature: Sequence, values: Sequence) -> tuple[tuple[object, object], ...]:
    """(type, value) of each argument a Triton launcher packs: tuples flattened, constexprs
    skipped (both launchers walk `src.signature` this way)."""
    if len(signature) != len(values):
        raise ValueError(f"{len(values)} arguments for a signature of {len(signature)}")
    out: list[tuple[object, object]] = []
    for ty, value in zip(signature, values, strict=True):
        if isinstance(ty, tuple):
            out.extend(launcher_params(ty, value))
        elif ty != "constexpr":
            out.append((ty, value))
    return tuple(out)


def _generated_mismatch(module, types: Sequence) -> str | None:
    """Where the generated launcher's own type map (`ty_to_cpp`, `FLOAT_STORAGE_TYPE`) packs a
    type otherwise than SCALARS / POINTER_SIZE say."""
    for ty in types:
        if not isinstance(ty, str) or ty in DISAGREEING or ty.startswith(("tensordesc", "nvTma")):
            continue  # refused by build_plan with its own reason
        if ty.startswith("*"):
            size, expected = C_SIZES.get(module.ty_to_cpp(ty)), POINTER_SIZE
        elif ty in SCALARS:
            ctype = module.FLOAT_STORAGE_TYPE.get(ty) or module.ty_to_cpp(ty)
            size, expected = C_SIZES.get(ctype), SIZES[ty]
        else:
            continue
        if size != expected:
            return f"the installed Triton launcher packs {ty} in {size} bytes, not {expected}"
    return None


def launcher_interface(launcher, signature: Sequence, types: Sequence) -> str:
    """Which of INTERFACES `launcher` (a CompiledKernel's `run`) has, checked against the
    kernel's signature (`types`: the packed arguments' types, as `launcher_params` flattens
    it); otherwise why it is not understood."""
    cls = type(launcher)
    where = f"{cls.__module__}.{cls.__qualname__}"
    if where != "triton.backends.nvidia.driver.CudaLauncher":
        return f"unsupported Triton launcher {where}"
    module = sys.modules[cls.__module__]
    if getattr(launcher, "gsan_enabled", False):
        return "the Triton launcher adds GSan arguments"
    if hasattr(launcher, "kernel_signature") and hasattr(module, "make_kernel_signature"):
        if bytes(module.make_kernel_signature(list(signature))) != bytes(launcher.kernel_signature):
            return "the Triton launcher packs other arguments than the kernel's signature lists"
        return GENERIC
    if hasattr(module, "make_launcher") and hasattr(module, "FLOAT_STORAGE_TYPE"):
        return _generated_mismatch(module, types) or GENERATED
    return "unknown Triton launcher interface"


def launch_record(kernel, launcher, args: tuple) -> LaunchRecord:
    """The launch `kernel.run(*args)` makes: `args` as Triton's JIT passes them (grid x/y/z,
    stream, CUfunction, packed metadata (num_warps, num_ctas, shared), launch metadata, enter
    hook, exit hook, then the kernel's arguments in signature order)."""
    try:
        return _launch_record(kernel, launcher, args)
    except (AttributeError, TypeError, ValueError) as exc:
        name = str(getattr(kernel, "name", "?"))
        why = f"unexpected Triton launch arguments ({type(exc).__name__}: {exc})"
        return LaunchRecord(name, why, 0, (0, 0, 0), 0, 0, 0, 0, False, False, 0, 0, False, ())


def _launch_record(kernel, launcher, args: tuple) -> LaunchRecord:
    grid_x, grid_y, grid_z, stream, function, packed, _meta, enter, leave, *values = args
    signature = list(kernel.src.signature.values())
    num_warps, num_ctas, shared = packed
    params = launcher_params(signature, values)
    return LaunchRecord(
        kernel=str(kernel.name),
        interface=launcher_interface(launcher, signature, [ty for ty, _ in params]),
        function=int(function),
        grid=(int(grid_x), int(grid_y), int(grid_z)),
        stream=int(stream),
        num_warps=int(num_warps),
        num_ctas=int(num_ctas),
        shared=int(shared),
        cooperative=bool(getattr(launcher, "launch_cooperative_grid", False)),
        pdl=bool(getattr(launcher, "launch_pdl", False)),
        global_scratch=int(getattr(launcher, "global_scratch_size", 0) or 0),
        profile_scratch=int(getattr(launcher, "profile_scratch_size", 0) or 0),
        hooks=hook_installed(enter) or hook_installed(leave),
        params=params,
    )


def hook_installed(hook) -> bool:
    """Whether a launch hook the JIT passes would run. Triton >= 3.4 always passes a `HookChain`
    (`triton.knobs.runtime.launch_enter_hook`), empty unless someone added a hook; older
    releases pass None or the function."""
    if hook is None:
        return False
    calls = getattr(hook, "calls", None)
    return bool(calls) if isinstance(calls, list) else True


# ------------------------------------------------------------------------------------ plans


class _Range(NamedTuple):
    start: int
    end: int
    source: int  # 0 input, 1 allocation
    index: int


def _span(t: torch.Tensor) -> int:
    """Bytes from the tensor's first element to one past its last."""
    if t.numel() == 0:
        return 0
    return (1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride(), strict=True))) * t.itemsize


def _ranges(call: RecordedCall) -> list[_Range]:
    out = [
        _Range(t.data_ptr(), t.data_ptr() + _span(t), 0, i)
        for i, t in enumerate(call.inputs)
        if isinstance(t, torch.Tensor) and t.device == call.device and _span(t)
    ]
    out.extend(
        _Range(t.data_ptr(), t.data_ptr() + _span(t), 1, j)
        for j, t in enumerate(call.allocations)
        if _span(t)
    )
    return out


def _address(value) -> int | None:
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    data_ptr = getattr(value, "data_ptr", None)
    return int(data_ptr()) if callable(data_ptr) else None


def _pack(ty: str, value) -> bytes | str:
    """The bytes the launchers pass for a scalar argument, or why it is not packed here."""
    fmt = SCALARS[ty]
    try:
        if ty == "bf16":
            return struct.pack("<f", float(value))[2:]  # the float32's top half, truncated
        if fmt[1] in "efd":
            return struct.pack(fmt, float(value))
        if fmt[1].isupper():  # unsigned: the launchers take the low bits
            return struct.pack(fmt, int(value) & ((1 << (8 * struct.calcsize(fmt))) - 1))
        return struct.pack(fmt, int(value))
    except (struct.error, OverflowError, TypeError, ValueError) as exc:
        return f"{ty} argument {value!r} cannot be packed ({exc})"


def _launch_refusal(record: LaunchRecord, stream: int) -> str | None:
    """Why a launch's configuration cannot be replayed with a plain cuLaunchKernel."""
    checks = (
        (record.interface not in INTERFACES, record.interface),
        (record.hooks, "a Triton launch hook is installed"),
        (record.global_scratch > 0, "the kernel needs global scratch memory"),
        (record.profile_scratch > 0, "the kernel needs profile scratch memory"),
        (record.num_ctas != 1, "a cluster launch (num_ctas > 1)"),
        (record.cooperative, "a cooperative launch"),
        (record.pdl, "a programmatic dependent launch"),
        (record.shared > MAX_SHARED, "shared memory above 228 KiB"),
        (record.stream != stream, "launched on a stream other than the current one"),
        (
            len(record.params) + SCRATCH_POINTERS.get(record.interface, 0) > 64,
            "more than 64 kernel parameters",
        ),
    )
    for refused, why in checks:
        if refused:
            return f"{record.kernel}: {why}"
    return None


def _plan_launch(record: LaunchRecord, stream: int, ranges: list[_Range]) -> PlanLaunch | str:
    why = _launch_refusal(record, stream)
    if why is not None:
        return why
    params = bytearray()
    sizes: list[int] = []
    pointers: list[tuple[int, int, int, int, bool]] = []
    for i, (ty, value) in enumerate(record.params):
        if not isinstance(ty, str):
            return f"{record.kernel}: argument {i} has type {ty!r}"
        if ty.startswith(("tensordesc", "nvTma")):
            return f"{record.kernel}: a TMA descriptor argument"
        if ty in DISAGREEING:
            return f"{record.kernel}: an {ty} argument (Triton's launchers differ in its size)"
        if ty.startswith("*"):
            address = _address(value)
            if address is None:
                return f"{record.kernel}: pointer argument {i} is a {type(value).__name__}"
            if address:
                hits = [r for r in ranges if r.start <= address < r.end]
                if len(hits) != 1:
                    return (
                        f"{record.kernel}: pointer argument {i} lies in several tensors (aliased inputs)"
                        if hits
                        else f"{record.kernel}: pointer argument {i} is neither in an input nor in a tensor the forward allocated"
                    )
                r = hits[0]
                pointers.append((i, r.source, r.index, address - r.start, address % 16 == 0))
            packed = bytes(POINTER_SIZE)
        elif ty in SCALARS:
            if ty in ("i64", "u64") and any(r.start <= int(value) < r.end for r in ranges):
                return f"{record.kernel}: integer argument {i} holds an address in a tensor"
            packed = _pack(ty, value)
            if isinstance(packed, str):
                return f"{record.kernel}: {packed}"
        else:
            return f"{record.kernel}: an argument of type {ty}"
        sizes.append(len(packed))
        params += packed.ljust(8, b"\0")
    for _ in range(SCRATCH_POINTERS[record.interface]):
        sizes.append(POINTER_SIZE)
        params += bytes(POINTER_SIZE)
    return PlanLaunch(
        record.kernel,
        record.function,
        record.grid,
        32 * record.num_warps,
        record.shared,
        bytes(params),
        tuple(sizes),
        tuple(pointers),
        SCRATCH_POINTERS[record.interface],
    )


def _plan_outputs(
    call: RecordedCall, layouts: list[tuple[tuple, tuple]]
) -> tuple[PlanOutput, ...] | str:
    """Each output as an allocation (its layout in `layouts` replaced by the output's when the
    output covers it exactly) or a view of one."""
    storages = {t.untyped_storage().data_ptr(): j for j, t in enumerate(call.allocations)}
    out: list[PlanOutput] = []
    for o in call.outputs:
        if not isinstance(o, torch.Tensor):
            return f"the forward returned a {type(o).__name__}, not a tensor"
        j = storages.get(o.untyped_storage().data_ptr()) if o.untyped_storage().nbytes() else None
        if j is None:
            return "an output is not a tensor the forward allocated (an input, a view of one, or a tensor kept elsewhere)"
        if any(p.allocation == j for p in out):
            return "two outputs share one allocation"
        a = call.allocations[j]
        if o.dtype != a.dtype:
            return "an output views its allocation with another dtype"
        whole = o.storage_offset() == 0 and _span(o) == _span(a)
        if whole:
            layouts[j] = (tuple(o.shape), tuple(o.stride()))
        out.append(PlanOutput(j, whole, tuple(o.shape), tuple(o.stride()), o.storage_offset()))
    return tuple(out)


def _allocation_refusal(call: RecordedCall) -> str | None:
    for t in call.allocations:
        if t.device != call.device or t.layout != torch.strided or t.storage_offset() != 0:
            return f"the forward allocates a tensor on {t.device} ({t.layout}, offset {t.storage_offset()})"
    return None


def _op_refusal(ops: Sequence[str]) -> str | None:
    for op in ops:
        namespace, _, rest = op.partition(".")
        name = rest.partition(".")[0]
        if namespace != "aten" or name not in ALLOCATIONS | VIEWS:
            return (
                f"the forward runs {op} (only allocations, views and Triton launches are replayed)"
            )
    return None


def build_plan(call: RecordedCall) -> Plan | str:
    """The plan that replays `call`, or why it cannot be replayed."""
    why = _op_refusal(call.ops) or _allocation_refusal(call)
    if why is not None:
        return why
    if not call.launches:
        return "the forward made no Triton launch"
    layouts = [(tuple(t.shape), tuple(t.stride())) for t in call.allocations]
    outputs = _plan_outputs(call, layouts)
    if isinstance(outputs, str):
        return outputs
    ranges = _ranges(call)
    launches = []
    for record in call.launches:
        launch = _plan_launch(record, call.stream, ranges)
        if isinstance(launch, str):
            return launch
        launches.append(launch)
    return _renumbered(call, layouts, tuple(launches), outputs)


def _renumbered(
    call: RecordedCall,
    layouts: list[tuple[tuple, tuple]],
    launches: tuple[PlanLaunch, ...],
    outputs: tuple[PlanOutput, ...],
) -> Plan:
    """The plan with only the allocations some launch or output uses (renumbered)."""
    used = sorted(
        {o.allocation for o in outputs}
        | {p[2] for launch in launches for p in launch.pointers if p[1] == 1}
    )
    number = {j: n for n, j in enumerate(used)}
    return Plan(
        tuple(PlanAllocation(*layouts[j], call.allocations[j].dtype) for j in used),
        tuple(
            launch._replace(
                pointers=tuple(
                    (p[0], p[1], number[p[2]] if p[1] == 1 else p[2], p[3], p[4])
                    for p in launch.pointers
                )
            )
            for launch in launches
        ),
        tuple(o._replace(allocation=number[o.allocation]) for o in outputs),
    )


# ------------------------------------------------------------------------------------ recorder


class _Ops(TorchDispatchMode):
    """Logs every ATen op dispatched inside it and keeps what the allocation ops return."""

    def __init__(self, ops: list[str], allocations: list[torch.Tensor]) -> None:
        super().__init__()
        self.ops = ops
        self.allocations = allocations

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.append(str(func))
        if func.namespace == "aten" and func.overloadpacket.__name__ in ALLOCATIONS:
            self.allocations.append(out)
        return out


@dataclass
class Recording:
    ops: list[str] = field(default_factory=list)
    allocations: list[torch.Tensor] = field(default_factory=list)
    launches: list[LaunchRecord] = field(default_factory=list)
    kernels: list = field(default_factory=list)
    """The CompiledKernels launched (kept alive while a plan uses their CUfunctions)."""
    problem: str | None = None
    """Why Triton's launches cannot be recorded here (None when they are)."""


_local = threading.local()
_PATCH_LOCK = threading.Lock()
_patch_users = 0
_original_run: property | None = None


def _recording_run(kernel):
    """`CompiledKernel.run` while patched: the launcher, wrapped on a recording thread."""
    launcher = _original_run.fget(kernel)
    rec: Recording | None = getattr(_local, "recording", None)
    if rec is None:
        return launcher

    def run(*args):
        rec.launches.append(launch_record(kernel, launcher, args))
        rec.kernels.append(kernel)
        return launcher(*args)

    return run


def _patch() -> str | None:
    """Route Triton's launches through `_recording_run` (counted: one patch for all recording
    threads); why it cannot be done, or None."""
    global _patch_users, _original_run
    from triton.compiler.compiler import CompiledKernel

    with _PATCH_LOCK:
        if _patch_users == 0:
            original = CompiledKernel.__dict__.get("run")
            if not isinstance(original, property):
                return "triton's CompiledKernel.run is not the property this recorder wraps"
            _original_run = original
            CompiledKernel.run = property(_recording_run)
        _patch_users += 1
    return None


def _unpatch() -> None:
    global _patch_users
    from triton.compiler.compiler import CompiledKernel

    with _PATCH_LOCK:
        _patch_users -= 1
        if _patch_users == 0:
            CompiledKernel.run = _original_run


@contextmanager
def recording() -> Iterator[Recording]:
    """Records the ATen ops and the Triton launches made on this thread inside the block."""
    rec = Recording()
    rec.problem = _patch()
    _local.recording = rec
    try:
        with _Ops(rec.ops, rec.allocations):
            yield rec
    finally:
        _local.recording = None
        if rec.problem is None:
            _unpatch()


# ------------------------------------------------------------------------------------ runtime side


def entry_problem(backend: str, source: str) -> str | None:
    """Why calls of an entry cannot be recorded at all: launches other than Triton's are
    invisible to the recorder."""
    if backend != "triton":
        return f"a {backend} entry (only Triton launches are recorded)"
    from forge.evaluator.parsing import parse_python
    from forge.evaluator.static.visitor import Visitor

    analysis = Visitor(parse_python(source))
    if analysis.compiled or analysis.has_global():
        return "the entry also compiles CUDA code, whose launches the recorder cannot see"
    return None


# CompiledKernels whose CUfunctions some plan launches: kept alive (unloading one would leave a
# plan with a dangling handle).
_KEPT: dict[int, object] = {}


class Replayer:
    """The recording side of one C++ registration: asked by the Python kernel on each served
    call whether to record it (`due`), then `record` runs the forward and installs the plan in
    C++ or refuses the key."""

    def __init__(
        self,
        op: str,
        extension,
        entries: dict[str, tuple[str, str]],
        entry_id: Callable[[str], int | None],
        refused: dict[str, int],
        guard: bool,
    ) -> None:
        self.op = op
        self.due = extension.served
        self._install = extension.install
        self._refuse = extension.refuse
        self._entries = entries
        self._problems: dict[str, str | None] = {}
        self._entry_id = entry_id
        self._refused = refused
        self._guard = guard

    def refuse(self, reason: str) -> None:
        self._refuse()
        if reason not in self._refused:
            log.debug("%s: a served call is not replayed: %s", self.op, reason)
        self._refused[reason] = self._refused.get(reason, 0) + 1

    def entry_problem(self, entry: str) -> str | None:
        if entry not in self._problems:
            self._problems[entry] = entry_problem(*self._entries[entry])
        return self._problems[entry]

    def record(self, run: Callable[[], object], args: tuple, kwargs: dict, device: int, entry: str):
        """`run()` (the forward, its output reshaped) recorded; its output returned."""
        if torch.cuda.is_current_stream_capturing():
            return run()  # recorded on a later call, outside the capture
        why = self.entry_problem(entry)
        if why is not None:
            self.refuse(why)
            return run()
        with recording() as rec:
            out = run()
        why = rec.problem or self._install_plan(rec, out, args, kwargs, device, entry)
        if why is not None:
            self.refuse(why)
        return out

    def _install_plan(self, rec: Recording, out, args, kwargs, device, entry) -> str | None:
        call = RecordedCall(
            inputs=(*args, *kwargs.values()),
            ops=rec.ops,
            allocations=rec.allocations,
            launches=rec.launches,
            outputs=out if isinstance(out, tuple) else (out,),
            device=torch.device("cuda", device),
            stream=torch.cuda.current_stream(device).cuda_stream,
        )
        plan = build_plan(call)
        if isinstance(plan, str):
            return plan
        entry_id = self._entry_id(entry)
        if entry_id is None:
            return "more library entries than the C++ route counts"
        # the plan's tuples are laid out as the C++ install() takes them
        why = self._install(
            device,
            entry_id,
            self._guard,
            list(plan.allocations),
            list(plan.launches),
            list(plan.outputs),
        )
        if why:
            return why
        for kernel in rec.kernels:
            _KEPT[id(kernel)] = kernel
        return None
