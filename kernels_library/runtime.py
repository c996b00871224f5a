"""The runtime: library kernels inside an eager PyTorch program, through `torch.library`.

`enable()` reads the library directories (hash-checked), keeps the entries verified on this
machine (same arch and torch / triton / CUDA major.minor), indexes them per operator by
(arch, dtype, shape bucket) keeping the fastest per key, and registers one Python kernel per
mapped ATen operator with `torch.library.Library("aten", "IMPL")`. That kernel serves a call
from the library when the call is one the entry verified (see `adapters`) and an entry covers
its dtype, shape bucket and device; otherwise it calls PyTorch's own kernel, obtained with
`torch.library.get_kernel` before registering, and counts the reason (`stats()`, and a debug
log line the first time each reason is seen). `disable()` destroys the registrations, which
restores PyTorch's kernels exactly.

With the C++ route (the default, `cxx_route`), the kernel registered is a boxed C++ kernel in
front of that Python kernel: a call whose key (its arguments' devices, dtypes, shapes, strides,
scalar values, and grad mode) Python has already left to PyTorch, for a reason that depends on
that key alone, is answered in C++ (PyTorch's kernel called, the reason counted there and merged
into `stats()`); every other call runs the Python kernel as before. A served key is recorded
once and then replayed in C++ as well (`replay`: its Triton launches repeated without Python).

Needs torch >= 2.9 for `torch.library.get_kernel`; `load()` works with any torch.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
from pydantic import BaseModel, Field

from forge.kernels_library import adapters as _adapters
from forge.kernels_library import cxx_route
from forge.kernels_library import replay as _replay
from forge.kernels_library.keys import (
    Machine,
    bucket_of,
    bucket_text,
    incompatibility,
    major_minor,
    pow2_bucket,
)
from forge.kernels_library.storage import (
    EntryRecord,
    LibraryError,
    library_dirs,
    read_library,
)

log = logging.getLogger("forge.kernels_library")

DISABLE_ENV = "FORGE_KERNELS_DISABLE"
# Fallback reasons decided by the runtime itself (the adapters add the argument/shape ones).
REENTRANT = "re-entrant call from inside a library kernel"
SUBCLASS = "tensor subclass input (FakeTensor, torch.compile tracing, ...)"
DISPATCH_MODE = "a TorchDispatchMode is active"
AUTOGRAD = "input requires grad (the kernel has no backward)"
NO_DTYPE = "no entry for this dtype on this machine"
OTHER_MACHINE = "entries exist only for other machines (run `forge library verify`)"
NO_BUCKET = "no entry for this shape bucket"
UNBINDABLE = "the entry's ModelNew does not have the Model's parameters"


class RuntimeConfig(BaseModel):
    """What `kl.enable` registers."""

    ops: list[str] | None = None
    """Catalogue operators to dispatch to the library (None: every ATen-mapped operator that has
    an entry usable on this machine)."""

    devices: list[Literal["cuda", "cpu"]] = Field(default_factory=lambda: ["cuda"])
    """Device types whose ATen kernels are replaced. `cuda` is the product; `cpu` replaces CPU
    kernels with entries verified on `cpu` (Triton under TRITON_INTERPRET=1) and exists so the
    registration path can be tested without a GPU."""

    path: list[str] | None = None
    """Library directories to read (None: `$FORGE_LIBRARY`, else `$FORGE_HOME/library`)."""

    route: cxx_route.Route = "cxx"
    """How calls reach the routing: `cxx` registers a C++ kernel that answers the calls already
    decided for PyTorch without entering Python (built on first use; see docs/library.md),
    `python` registers the Python kernel directly."""

    replay: bool = True
    """With the C++ route on CUDA: record a served call's Triton launches once per key and
    replay them from C++ for the key's later calls (`kernels_library/replay.py`). False keeps
    every served call on the Python kernel (for debugging; `$FORGE_KERNELS_REPLAY=0` too)."""


@dataclass
class EnableReport:
    """What `enable` did: operators registered (with their entry counts), operators left to
    PyTorch and why, and entries skipped and why. `enabled` is True only when at least one
    operator is dispatched to the library (as `enabled()` and `stats()["enabled"]`)."""

    enabled: bool
    registered: dict[str, int] = field(default_factory=dict)
    not_registered: dict[str, str] = field(default_factory=dict)
    skipped_entries: list[dict] = field(default_factory=list)
    disabled_reason: str | None = None
    library_dirs: list[str] = field(default_factory=list)
    route: str = ""


# ------------------------------------------------------------------------------------ machine


def triton_version() -> str:
    """The installed triton's version ('' when absent), without importing it."""
    try:
        return importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return ""


def _interpreter_problem() -> str | None:
    """Why Triton kernels cannot run on CPU tensors in this process (None: they can)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return "devices=['cpu'] runs Triton kernels through the interpreter: set TRITON_INTERPRET=1 in the environment before enabling"
    language = sys.modules.get("triton.language")
    if language is not None and type(language.standard.max).__name__ != "InterpretedFunction":
        return "triton was imported before TRITON_INTERPRET=1 was set, so its standard library is compiled, not interpreted: set it before triton is first imported"
    return None


def machines(device_type: str) -> dict[int, Machine]:
    """This process's devices of a type, by device index (-1 for the CPU)."""
    torch_mm = major_minor(torch.__version__)
    triton_mm = major_minor(triton_version())
    if device_type == "cpu":
        return {-1: Machine("cpu", "cpu", torch_mm, triton_mm, "")}
    if not torch.cuda.is_available():
        return {}
    cuda_mm = major_minor(torch.version.cuda or "")
    found = {}
    for index in range(torch.cuda.device_count()):
        major, minor = torch.cuda.get_device_capability(index)
        found[index] = Machine("cuda", f"sm_{major}{minor}", torch_mm, triton_mm, cuda_mm)
    return found


def _incompatible(record: EntryRecord, machine: Machine) -> str | None:
    m = record.meta
    return incompatibility(
        machine,
        arch=m.arch,
        torch=m.torch_version,
        triton=m.triton_version,
        cuda=m.cuda_version,
        backend=m.backend,
    )


# ------------------------------------------------------------------------------------ modules

_LOCK = threading.RLock()
_CLASSES: dict[tuple, type] = {}


class _Local(threading.local):
    """Per thread: the re-entrancy flag and the ModelNew instances (their parameter slots are
    rebound per call, so threads must not share them). `depth` is 0 outside the library, 1
    inside a library kernel (an ATen call from there is a counted re-entrant fallback), and
    `BYPASS` where the runtime itself calls PyTorch's op (the custom ops' fallback, fake and
    backward implementations): PyTorch's kernel runs with nothing counted."""

    def __init__(self) -> None:
        self.depth = 0
        self.modules: dict = {}


_local = _Local()
BYPASS = 2
# the C++ route's copy of `_local.depth` (its kernels send every call made at depth > 0 to
# Python); None until the extension is loaded
_mirror_depth: Callable[[int], int] | None = None


def _set_depth(depth: int) -> int:
    previous = _local.depth
    _local.depth = depth
    if _mirror_depth is not None:
        _mirror_depth(depth)
    return previous


def module_class(record: EntryRecord) -> type:
    """The entry's `ModelNew` class, executed once per process from the hash-checked source
    (the text that was verified, compiled with the entry's kernel.py as its file name so that
    Triton can read the kernels' source)."""
    key = (
        record.meta.id,
        record.meta.files.get("kernel.py", ""),
        os.environ.get("TRITON_INTERPRET", ""),
    )
    cls = _CLASSES.get(key)
    if cls is not None:
        return cls
    with _LOCK:
        cls = _CLASSES.get(key)
        if cls is not None:
            return cls
        if record.path is None:
            raise LibraryError(f"library entry {record.meta.id} has no folder on disk to load from")
        filename = str(record.path / "kernel.py")
        name = f"forge_library_{record.meta.id}"
        spec = importlib.util.spec_from_file_location(name, filename)
        module = importlib.util.module_from_spec(spec)
        code = compile(record.kernel_source, filename, "exec")
        sys.modules[name] = module
        try:
            exec(code, module.__dict__)
        except ImportError as exc:
            del sys.modules[name]
            raise LibraryError(
                f"library entry {record.path} ({record.meta.op}) cannot be loaded here: {exc}"
            ) from exc
        cls = getattr(module, "ModelNew", None)
        if not isinstance(cls, type):
            raise LibraryError(f"library entry {record.path} defines no class ModelNew")
        cls.forge_entry = record.meta
        _CLASSES[key] = cls
        return cls


# ------------------------------------------------------------------------------------ counters

_COUNTS: dict[str, dict[str, int]] = {}
_ENTRY_COUNTS: dict[str, dict[str, int]] = {}
_SEEN: set[tuple[str, str]] = set()


class _Numbering:
    """Names <-> the small integers the C++ route counts under, at most `limit()` of them."""

    def __init__(self, limit: Callable[[], int]) -> None:
        self.ids: dict[str, int] = {}
        self.names: list[str] = []
        self._limit = limit

    def id(self, name: str) -> int | None:
        """The name's number (None: more distinct names than the C++ route counts)."""
        number = self.ids.get(name)
        if number is None:
            with _LOCK:
                number = self.ids.get(name)
                if number is None:
                    if len(self.names) >= self._limit():
                        return None
                    number = self.ids[name] = len(self.names)
                    self.names.append(name)
        return number


# fallback reasons and library entries, as the C++ route counts them
_REASONS = _Numbering(lambda: cxx_route.extension().MAX_REASONS)
_ENTRIES = _Numbering(lambda: cxx_route.extension().MAX_ENTRIES)


_DETAILS_SEEN: set[tuple] = set()
_MAX_DETAILS = 1000
# replayed library calls per operator; keys not replayed per operator, by reason
_REPLAYED: dict[str, int] = {}
_NOT_REPLAYED: dict[str, dict[str, int]] = {}


def _counts(op: str) -> dict[str, int]:
    return _COUNTS.setdefault(op, {})


def _first_time(op: str, reason: str) -> None:
    if (op, reason) not in _SEEN:
        _SEEN.add((op, reason))
        log.debug("%s: falling back to PyTorch: %s", op, reason)


# ------------------------------------------------------------------------------------ dispatch


@dataclass
class _Choice:
    record: EntryRecord
    speedup: float
    broken: bool = False
    key: str = ""

    def __post_init__(self) -> None:
        self.key = self.record.meta.id


@dataclass
class _OpState:
    adapter: _adapters.Adapter
    pow2: tuple[bool, ...]
    index: dict[tuple, dict[tuple, _Choice]]
    foreign_dtypes: set
    entries: int
    library: torch.library.Library | None = None
    keys: list[str] = field(default_factory=list)
    routes: list = field(default_factory=list)
    """The C++ route's registrations (`route.cpp`'s Route), one per key."""
    custom: Callable | None = None
    """The forge::<op> custom op's kernel (torch.compile path): routes like the ATen one."""
    decide: Callable | None = None
    """(ATen args, kwargs) -> None when the library would serve the call, else the reason;
    asked at trace time by `compile_backend` (no kernel runs)."""


@dataclass
class _State:
    config: RuntimeConfig
    report: EnableReport
    ops: dict[str, _OpState]
    archs: dict[int, str]


_STATE: _State | None = None


def _instance(
    choice: _Choice, init_args: tuple, adapter: _adapters.Adapter, x: torch.Tensor, cache: dict
):
    """A ModelNew of this thread for (entry, constructor args, device, dtype), with the slots
    its parameters are bound through; None when the entry cannot bind the Model's parameters."""
    key = (choice.key, init_args, x.get_device(), x.dtype)
    slot = cache.get(key)
    if slot is not None:
        return slot
    cls = module_class(choice.record)
    module = cls(*init_args).to(x.device)
    if x.dtype != torch.float32:
        module = module.to(x.dtype)
    module.eval()
    binds = []
    for name in adapter.params:
        prefix, _, leaf = name.rpartition(".")
        try:
            owner = module.get_submodule(prefix) if prefix else module
        except AttributeError:
            owner = None
        if owner is None or leaf not in owner._parameters:
            choice.broken = True
            log.warning(
                "library entry %s (%s): ModelNew has no parameter '%s': not used for ATen calls",
                choice.key,
                adapter.op,
                name,
            )
            return None
        binds.append((owner._parameters, leaf))
    slot = (module.forward, tuple(binds))
    cache[key] = slot
    return slot


def _bucketer(pow2: tuple[bool, ...]):
    """constants -> bucket, specialised for the common one- and two-constant problems."""
    if pow2 == (True, False):
        return lambda c: (1 if c[0] <= 1 else 1 << (c[0] - 1).bit_length(), c[1])
    if pow2 == (True, True):
        return lambda c: (
            1 if c[0] <= 1 else 1 << (c[0] - 1).bit_length(),
            1 if c[1] <= 1 else 1 << (c[1] - 1).bit_length(),
        )
    return lambda c: tuple(pow2_bucket(v) if p else v for v, p in zip(c, pow2, strict=True))


def _detail_text(adapter: _adapters.Adapter, detail: tuple) -> str:
    arch, dtype, bucket = detail
    text = f"{arch}, {str(dtype).removeprefix('torch.')}"
    return (
        text
        if bucket is None
        else f"{text}, bucket {bucket_text(dict(zip(adapter.constants, bucket, strict=True)))}"
    )


class _Miss(NamedTuple):
    """A routing decision to call PyTorch's kernel: the reason, and the (arch, dtype, bucket)
    it was made for."""

    reason: str
    detail: tuple | None = None


class _Routes(threading.local):
    """Per thread and registration: (device, dtype, constants, constructor args) -> the
    decision, so that a repeated shape costs one dict lookup."""

    LIMIT = 4096

    def __init__(self) -> None:
        self.table: dict = {}


def _tables_by_device(state: _OpState, archs: dict[int, str]) -> dict[tuple, dict]:
    """(device index, dtype) -> bucket table: the arch lookup done once, at registration."""
    return {
        (device, dtype): table
        for (arch, dtype), table in state.index.items()
        for device, a in archs.items()
        if a == arch
    }


def _dtype_miss(state: _OpState, archs: dict[int, str], device: int, dtype) -> _Miss:
    return _Miss(
        OTHER_MACHINE if dtype in state.foreign_dtypes else NO_DTYPE,
        (archs.get(device), dtype, None),
    )


def _log_decision(op: str, adapter: _adapters.Adapter, miss: _Miss) -> None:
    """The first time a (reason, arch, dtype, bucket) is decided: a debug line with the details
    (decisions are cached, so this runs once per key, never per call)."""
    if (
        miss.detail is not None
        and len(_DETAILS_SEEN) < _MAX_DETAILS
        and log.isEnabledFor(logging.DEBUG)
        and (op, miss.reason, miss.detail) not in _DETAILS_SEEN
    ):
        _DETAILS_SEEN.add((op, miss.reason, miss.detail))
        log.debug("%s: %s (%s)", op, miss.reason, _detail_text(adapter, miss.detail))


def _make_decide(op: str, state: _OpState, archs: dict[int, str]):
    """`decide(args, kwargs)`: None when the library would serve this call (by its arguments,
    dtype, device and shape bucket), else the reason. For `compile_backend`, on the FakeTensors
    of a traced graph: nothing is instantiated or run."""
    adapter = state.adapter
    by_device = _tables_by_device(state, archs)
    bucketer = _bucketer(state.pow2)

    def decide(args: tuple, kwargs: dict) -> str | None:
        call = adapter.prepare(*args, **kwargs)
        if call.__class__ is str:
            return call
        x = args[0]
        device = x.get_device()
        table = by_device.get((device, x.dtype))
        if table is None:
            return _dtype_miss(state, archs, device, x.dtype).reason
        constants = call[0]
        if not all(type(c) is int for c in constants):
            return "symbolic (dynamic) shape: decided per call only for static shapes"
        choice = table.get(bucketer(constants))
        if choice is None:
            return NO_BUCKET
        return UNBINDABLE if choice.broken else None

    return decide


def _make_impl(
    op: str,
    state: _OpState,
    original,
    keyset,
    archs: dict[int, str],
    composite_level: bool,
    remember: Callable[[int], bool] | None = None,
    replayer: _replay.Replayer | None = None,
):
    """The Python kernel. `remember` (the C++ route's, when it calls this kernel) is told each
    fallback decided by the call's key alone, so that C++ answers the next calls with that key;
    `replayer` (the C++ route's on CUDA, replay on) records a served key's second call."""
    adapter = state.adapter
    prepare = adapter.prepare
    by_device = _tables_by_device(state, archs)
    served_keys = frozenset(by_device)
    counts = _counts(op)
    by_entry = _ENTRY_COUNTS.setdefault(op, {})
    tensor_types = (torch.Tensor, torch.nn.Parameter)
    bucketer = _bucketer(state.pow2)
    current_device = torch.cuda.current_device
    several_gpus = _several_gpus(archs)  # one GPU: it is the current device
    grad_enabled = torch.is_grad_enabled
    dispatch_modes = torch._C._len_torch_dispatch_stack
    local = _local
    routes = _Routes()
    call_original = original.call_boxed

    def fallback_now(args, kwargs, reason):
        """PyTorch's kernel for this call only (a reason not decided by the call's key)."""
        counts[reason] = counts.get(reason, 0) + 1
        if (op, reason) not in _SEEN:
            _first_time(op, reason)
        return call_original(keyset, *args, **kwargs)

    def fallback(args, kwargs, reason):
        """PyTorch's kernel, for a reason that every call with this key shares."""
        if remember is not None:
            rid = _REASONS.id(reason)
            if rid is not None:
                remember(rid)
        return fallback_now(args, kwargs, reason)

    def route(device: int, dtype: torch.dtype, constants: tuple, init_args: tuple, x: torch.Tensor):
        """(forward, parameter slots, entry id) of the entry serving these calls, or a _Miss."""
        table = by_device[(device, dtype)]
        bucket = bucketer(constants)
        choice = table.get(bucket)
        if choice is None:
            return _Miss(NO_BUCKET, (archs.get(device), dtype, bucket))
        slot = None if choice.broken else _instance(choice, init_args, adapter, x, local.modules)
        if slot is None:
            return _Miss(UNBINDABLE)
        return (*slot, choice.key)

    def serve(forward, inputs, out_shape, args, kwargs, device, entry):
        if replayer is not None and device >= 0 and replayer.due():
            return replayer.record(
                lambda: _run(forward, inputs, out_shape), args, kwargs, device, entry
            )
        return _run(forward, inputs, out_shape)

    def decided(key, decision):
        table = routes.table
        if len(table) >= _Routes.LIMIT:
            table.clear()
        table[key] = decision
        if decision.__class__ is _Miss:
            _log_decision(op, adapter, decision)
        return decision

    def impl(*args, **kwargs):
        x = args[0]
        if local.depth:
            if local.depth == BYPASS:
                return call_original(keyset, *args, **kwargs)
            return fallback_now(args, kwargs, REENTRANT)
        if type(x) not in tensor_types:
            return fallback_now(args, kwargs, SUBCLASS)
        if composite_level:
            if dispatch_modes():
                return fallback_now(args, kwargs, DISPATCH_MODE)
            if grad_enabled():
                for a in (*args, *kwargs.values()):
                    if isinstance(a, torch.Tensor) and a.requires_grad:
                        return fallback(args, kwargs, AUTOGRAD)
        device = x.get_device()
        dtype = x.dtype
        if (device, dtype) not in served_keys:
            # no entry for this dtype on this device: decided before looking at the arguments
            key = (device, dtype)
            decision = routes.table.get(key) or decided(
                key, _dtype_miss(state, archs, device, dtype)
            )
            return fallback(args, kwargs, decision.reason)
        call = prepare(*args, **kwargs)
        if call.__class__ is str:
            return fallback(args, kwargs, call)
        constants, init_args, params, inputs, out_shape = call
        key = (device, dtype, constants, init_args)
        decision = routes.table.get(key)
        if decision is None:
            decision = decided(key, route(device, dtype, constants, init_args, x))
        if decision.__class__ is _Miss:
            return fallback(args, kwargs, decision.reason)
        forward, binds, entry = decision
        if binds:
            for (slots, name), tensor in zip(binds, params, strict=True):
                slots[name] = tensor
        local.depth = 1
        mirror_depth = _mirror_depth
        if mirror_depth is not None:
            mirror_depth(1)
        try:
            if several_gpus and device >= 0 and device != current_device():
                with torch.cuda.device(device):
                    out = serve(forward, inputs, out_shape, args, kwargs, device, entry)
            else:
                out = serve(forward, inputs, out_shape, args, kwargs, device, entry)
        finally:
            local.depth = 0
            if mirror_depth is not None:
                mirror_depth(0)
            for slots, name in binds:
                slots[name] = None
        by_entry[entry] = by_entry.get(entry, 0) + 1
        return out

    return impl


def _run(forward, inputs: tuple, out_shape):
    """The entry's forward on the adapted inputs, its output in the operator's shape."""
    out = forward(*inputs)
    return out if out_shape is None else out.reshape(out_shape)


class _PublicOp:
    """PyTorch's operator called through the dispatcher, as the custom ops' fallback (the
    `original` of `_make_impl` there): the call runs with the runtime bypassed."""

    def __init__(self, overload) -> None:
        self.overload = overload

    def call_boxed(self, _keyset, *args, **kwargs):
        return bypassed(self.overload, *args, **kwargs)


def bypassed(fn, *args, **kwargs):
    """`fn(...)` with the runtime's ATen kernels passing every call to PyTorch uncounted."""
    previous = _set_depth(BYPASS)
    try:
        return fn(*args, **kwargs)
    finally:
        _set_depth(previous)


def custom_impl(op: str) -> Callable | None:
    """The enabled library's kernel for the `forge::<op>` custom op (None: not enabled for it)."""
    state = _STATE
    if state is None:
        return None
    op_state = state.ops.get(op)
    return op_state.custom if op_state is not None else None


def decider(op: str) -> Callable | None:
    """The enabled library's trace-time decision for `op` (None: not enabled for it)."""
    state = _STATE
    if state is None:
        return None
    op_state = state.ops.get(op)
    return op_state.decide if op_state is not None else None


_CATALOGUE_RULES: dict[str, dict[str, str]] = {}


def _catalogue_rules(op: str) -> dict[str, str]:
    if op not in _CATALOGUE_RULES:
        from forge.evaluator.problem import resolve_problem

        _CATALOGUE_RULES[op] = dict(resolve_problem(op).shape_buckets)
    return _CATALOGUE_RULES[op]


def _disabled_by_env() -> str | None:
    value = os.environ.get(DISABLE_ENV, "").strip().lower()
    if value and value not in ("0", "false", "no", "off"):
        return f"{DISABLE_ENV}={os.environ[DISABLE_ENV]}"
    return None


def _build(config: RuntimeConfig) -> _State:
    dirs = library_dirs(config.path)
    report = EnableReport(enabled=True, library_dirs=[str(d) for d in dirs], route=config.route)
    wanted = list(_adapters.ADAPTERS) if config.ops is None else list(config.ops)
    for op in wanted:
        if op not in _adapters.ADAPTERS:
            why = _adapters.NOT_MAPPED.get(op, "it has no ATen counterpart")
            raise LibraryError(
                f"'{op}' cannot be dispatched from ATen ({why}): use kl.load('{op}') and call it explicitly"
            )
    records = [r for r in read_library(dirs) if r.meta.op in wanted]
    archs: dict[int, str] = {}
    by_arch: dict[str, Machine] = {}
    for device in config.devices:
        for index, machine in machines(device).items():
            archs[index] = machine.arch
            by_arch[machine.arch] = machine
    if "cpu" in config.devices and any(
        r.meta.arch == "cpu" and r.meta.backend == "triton" for r in records
    ):
        problem = _interpreter_problem()
        if problem is not None:
            raise LibraryError(problem)
    ops: dict[str, _OpState] = {}
    for op in wanted:
        adapter = _adapters.ADAPTERS[op]
        rules = _catalogue_rules(op)
        state = _OpState(
            adapter, tuple(rules.get(c, "exact") == "pow2" for c in adapter.constants), {}, set(), 0
        )
        for record in (r for r in records if r.meta.op == op):
            dtype = getattr(torch, record.meta.dtype)
            why = _adapters.aten_ineligibility(op, record.problem_source)
            missing = [
                c for c in adapter.constants if any(c not in s.constants for s in record.meta.sets)
            ]
            if why is None and missing:
                why = f"its input sets do not name the constant(s) {missing}"
            if why is None and not by_arch:
                why = f"no {' or '.join(config.devices)} device in this process"
            usable: list[str] = []
            if why is None:
                verdicts = {arch: _incompatible(record, m) for arch, m in by_arch.items()}
                usable = [arch for arch, v in verdicts.items() if v is None]
                if not usable:
                    why = next(iter(verdicts.values()))
                    state.foreign_dtypes.add(dtype)
            if why is not None:
                report.skipped_entries.append(
                    {"id": record.meta.id, "op": op, "path": str(record.path), "reason": why}
                )
                continue
            state.entries += 1
            for arch in usable:
                table = state.index.setdefault((arch, dtype), {})
                for s in record.meta.sets:
                    if not s.served:
                        continue
                    bucket = tuple(bucket_of(s.constants, rules, adapter.constants).values())
                    speed = s.speedup_vs_eager or 0.0
                    best = table.get(bucket)
                    if best is None or speed > best.speedup:
                        table[bucket] = _Choice(record, speed)
        if state.index:
            ops[op] = state
        else:
            skipped = [s["reason"] for s in report.skipped_entries if s["op"] == op]
            report.not_registered[op] = (
                f"no usable entry ({skipped[0]})" if skipped else "no entry in the library"
            )
    return _State(config, report, ops, archs)


def _register(state: _State) -> None:
    if not hasattr(torch.library, "get_kernel"):
        raise LibraryError(
            f"kl.enable() needs torch >= 2.9 (torch.library.get_kernel, to call PyTorch's own kernel on "
            f"fallback); this is torch {torch.__version__}. kl.load(op) works on any torch."
        )
    from forge.kernels_library import custom_ops

    custom_ops.define_all()
    for op, op_state in state.ops.items():
        adapter = op_state.adapter
        op_state.custom = _make_impl(
            op, op_state, _PublicOp(custom_ops.aten_overload(adapter)), None, state.archs, False
        )
        op_state.decide = _make_decide(op, op_state, state.archs)
        # only the device types some entry serves: a call on another device never enters Python
        served_devices = {"cpu" if arch == "cpu" else "cuda" for arch, _ in op_state.index}
        for device in (d for d in state.config.devices if d in served_devices):
            backend_key = "CUDA" if device == "cuda" else "CPU"
            keys = (
                [(f"Autograd{backend_key}", True), (backend_key, False)]
                if adapter.composite
                else [(backend_key, False)]
            )
            for key, composite_level in keys:
                original = torch.library.get_kernel(adapter.aten, key)
                # PyTorch's kernels at these keys (native backend kernels, CompositeImplicit
                # decompositions) do not read the keyset they are called with: a constant one
                # spares the per-call conversion of `with_keyset=True`
                keyset = torch._C.DispatchKeySet(key)
                with warnings.catch_warnings():
                    # torch warns once per process that an ATen kernel is being overridden,
                    # which is what enable() is for
                    warnings.filterwarnings(
                        "ignore", message=r"(?s).*Overriding a previously registered kernel"
                    )
                    _register_key(state, op_state, original, keyset, key, composite_level)
                op_state.keys.append(key)
        state.report.registered[op] = op_state.entries
        log.debug(
            "%s: %s registered at %s with %d entries",
            op,
            adapter.aten,
            op_state.keys,
            op_state.entries,
        )


def _route_extension():
    """The C++ route's extension (built on first use), with the runtime's depth mirrored to it."""
    global _mirror_depth
    extension = cxx_route.extension()
    _mirror_depth = extension.set_depth
    return extension


def _register_key(
    state: _State, op_state: _OpState, original, keyset, key: str, composite_level: bool
) -> None:
    """Register the kernel for one dispatch key: the C++ route in front of the Python kernel, or
    the Python kernel itself."""
    op = op_state.adapter.op
    aten = op_state.adapter.aten
    if state.config.route == "cxx":
        extension = _route_extension()
        impl = _make_impl(
            op,
            op_state,
            original,
            keyset,
            state.archs,
            composite_level,
            extension.remember,
            _replayer(state, op_state, extension) if key.endswith("CUDA") else None,
        )
        debug = f"registered at {__file__} through {cxx_route.SOURCE}"
        op_state.routes.append(extension.Route(aten, key, impl, debug))
        return
    if op_state.library is None:
        op_state.library = torch.library.Library("aten", "IMPL")
    impl = _make_impl(op, op_state, original, keyset, state.archs, composite_level)
    op_state.library.impl(op_state.adapter.registered_name, impl, key)


def _replayer(state: _State, op_state: _OpState, extension) -> _replay.Replayer | None:
    """The recording side of a CUDA registration of the C++ route (None with replay off)."""
    if not state.config.replay:
        return None
    op = op_state.adapter.op
    entries = {
        choice.key: (choice.record.meta.backend, choice.record.kernel_source)
        for table in op_state.index.values()
        for choice in table.values()
    }
    return _replay.Replayer(
        op,
        extension,
        entries,
        _ENTRIES.id,
        _NOT_REPLAYED.setdefault(op, {}),
        _several_gpus(state.archs),
    )


def _several_gpus(archs: dict[int, str]) -> bool:
    """Whether the registration covers more than one GPU (device indices >= 0 in `archs`)."""
    return sum(1 for d in archs if d >= 0) > 1


def _drain(state: _State) -> None:
    """Add the C++ route's counts into the Python counters (and zero them there)."""
    for op, op_state in state.ops.items():
        for route in op_state.routes:
            drained = route.drain()
            if drained:
                counts = _counts(op)
                for rid, n in drained:
                    reason = _REASONS.names[rid]
                    counts[reason] = counts.get(reason, 0) + n
            replays = route.drain_replays()
            if replays:
                by_entry = _ENTRY_COUNTS.setdefault(op, {})
                for eid, n in replays:
                    entry = _ENTRIES.names[eid]
                    by_entry[entry] = by_entry.get(entry, 0) + n
                    _REPLAYED[op] = _REPLAYED.get(op, 0) + n


def _unregister(state: _State) -> None:
    _drain(state)
    for op_state in state.ops.values():
        for route in op_state.routes:
            route.unregister()
        op_state.routes = []
        op_state.keys = []
        if op_state.library is not None:
            op_state.library._destroy()
            op_state.library = None
        op_state.custom = None
        op_state.decide = None


# ------------------------------------------------------------------------------------ public API


def enable(
    ops: Sequence[str] | None = None,
    *,
    path=None,
    devices: Sequence[str] = ("cuda",),
    route: str | None = None,
    replay: bool | None = None,
) -> EnableReport:
    """Dispatch the mapped ATen operators of `ops` (default: all with a usable entry) to the
    library, replacing what an earlier `enable` registered. `route`: `cxx` (default, else
    `$FORGE_KERNELS_ROUTE`) or `python`, see `RuntimeConfig.route`. `replay`: default True, else
    `$FORGE_KERNELS_REPLAY`, see `RuntimeConfig.replay`. With FORGE_KERNELS_DISABLE set, it
    registers nothing and says so in the report."""
    global _STATE
    config = RuntimeConfig(
        ops=list(ops) if ops is not None else None,
        devices=list(devices),
        path=[str(p) for p in (path if isinstance(path, list | tuple) else [path])]
        if path is not None
        else None,
        route=cxx_route.chosen_route(route),
        replay=_replay.chosen_replay(replay),
    )
    with _LOCK:
        reason = _disabled_by_env()
        if reason is not None:
            disable()
            log.info("forge kernels library disabled by %s: PyTorch's kernels are used", reason)
            return EnableReport(enabled=False, disabled_reason=reason)
        state = _build(config)  # a library that cannot be read leaves the current state alone
        if state.ops and config.route == "cxx":
            _route_extension()  # a build that fails leaves the current state alone too
        disable()
        if not state.ops:
            log.info(
                "forge kernels library: nothing registered (%s)",
                state.report.not_registered or "no entries",
            )
        try:
            _register(state)
        except BaseException:
            _unregister(state)
            raise
        _STATE = state
        # the same answer as `enabled()` / `stats()["enabled"]`: True only when something is
        # dispatched to the library (`not_registered` says why nothing is)
        state.report.enabled = enabled()
        return state.report


def disable() -> None:
    """Remove every registration: PyTorch's own kernels run again."""
    global _STATE
    with _LOCK:
        if _STATE is not None:
            _unregister(_STATE)
            _STATE = None


def enabled() -> bool:
    """Whether any operator is dispatched to the library now (what `enable`'s report and
    `stats()["enabled"]` say too)."""
    return _STATE is not None and bool(_STATE.ops)


@contextmanager
def use(
    ops: Sequence[str] | None = None,
    *,
    path=None,
    devices: Sequence[str] = ("cuda",),
    route: str | None = None,
    replay: bool | None = None,
) -> Iterator[EnableReport]:
    """Within the block, dispatch exactly `ops` (default all) to the library; afterwards restore
    whatever was enabled before (or nothing)."""
    with _LOCK:
        previous = _STATE.config if _STATE is not None else None
    try:
        yield enable(ops, path=path, devices=devices, route=route, replay=replay)
    finally:
        disable()
        if previous is not None:
            enable(
                previous.ops,
                path=previous.path,
                devices=previous.devices,
                route=previous.route,
                replay=previous.replay,
            )


def stats() -> dict:
    """Per operator: calls served by the library (`replayed_calls` of them replayed from C++,
    `not_replayed`: served keys left on the Python kernel, by reason) and fallbacks to PyTorch by
    reason; what is registered, what is not and why, and skipped entries. Counters are per
    process (approximate under concurrent threads) and survive disable(); `reset_stats()` clears
    them. The C++ route's counts are included."""
    state = _STATE
    if state is not None:
        _drain(state)
    ops = {}
    for op in sorted(set(_COUNTS) | (set(state.ops) if state else set())):
        counts = dict(_COUNTS.get(op, {}))
        library = sum(_ENTRY_COUNTS.get(op, {}).values())
        op_state = state.ops.get(op) if state else None
        ops[op] = {
            "registered": op_state is not None and bool(op_state.keys),
            "aten": _adapters.ADAPTERS[op].aten if op in _adapters.ADAPTERS else "",
            "dispatch_keys": list(op_state.keys) if op_state else [],
            "entries": op_state.entries if op_state else 0,
            "library_calls": library,
            "library_calls_by_entry": dict(_ENTRY_COUNTS.get(op, {})),
            "replayed_calls": _REPLAYED.get(op, 0),
            "not_replayed": dict(_NOT_REPLAYED.get(op, {})),
            "fallbacks": counts,
        }
    return {
        "enabled": enabled(),
        "disabled_reason": _disabled_by_env(),
        "devices": list(state.config.devices) if state else [],
        "route": state.config.route if state else "",
        "replay": bool(state and state.config.route == "cxx" and state.config.replay),
        "library_dirs": list(state.report.library_dirs) if state else [],
        "ops": ops,
        "not_registered": dict(state.report.not_registered) if state else {},
        "skipped_entries": list(state.report.skipped_entries) if state else [],
    }


def reset_stats() -> None:
    """Zero every counter (registered kernels keep counting into the same dictionaries); the C++
    route forgets its keys and plans, so that the next call of each runs the Python kernel again
    (and logs its reason once more, or is recorded again)."""
    state = _STATE
    if state is not None:
        for op_state in state.ops.values():
            for route in op_state.routes:
                route.drain()
                route.drain_replays()
                route.forget()
    for counts in (*_COUNTS.values(), *_ENTRY_COUNTS.values(), *_NOT_REPLAYED.values()):
        counts.clear()
    _REPLAYED.clear()
    _SEEN.clear()
    _DETAILS_SEEN.clear()


def entries(path=None) -> list[EntryRecord]:
    """Every entry in the library directories (hash-checked)."""
    return read_library(library_dirs(path))


def best_entry(
    op: str, *, dtype=None, shape: dict | None = None, device: str | None = None, path=None
) -> EntryRecord:
    """The fastest entry for `op` verified on this machine (for `device`, default cuda when a GPU
    is visible, else cpu), optionally for a dtype and a shape (the problem's constants, e.g.
    `{"batch_size": 4096, "dim": 8192}`: only entries serving its bucket)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dirs = library_dirs(path)
    records = [r for r in read_library(dirs) if r.meta.op == op]
    where = ", ".join(str(d) for d in dirs)
    if not records:
        raise LibraryError(
            f"no library entry for '{op}' in {where}: promote one (`forge library promote`) or point FORGE_LIBRARY at a library"
        )
    found = machines(device)
    if not found:
        raise LibraryError(f"no {device} device in this process to run '{op}' on")
    index = torch.cuda.current_device() if device == "cuda" else -1
    machine = found[index]
    verdicts = [(r, _incompatible(r, machine)) for r in records]
    usable = [r for r, v in verdicts if v is None]
    if not usable:
        raise LibraryError(
            f"no entry for '{op}' verified on this machine ({machine.describe()}): {len(records)} entr{'y' if len(records) == 1 else 'ies'} {verdicts[0][1]}"
        )
    if dtype is not None:
        name = str(dtype).removeprefix("torch.")
        usable = [r for r in usable if r.meta.dtype == name]
        if not usable:
            raise LibraryError(f"no entry for '{op}' in {name} on this machine")
    if shape is None:
        return max(usable, key=lambda r: r.meta.speedup_vs_eager or 0.0)
    scored = []
    for r in usable:
        names = list(r.meta.shape_buckets) or sorted(shape)
        if any(n not in shape for n in names):
            raise LibraryError(f"shape for '{op}' must give {names}, got {sorted(shape)}")
        want = bucket_of(shape, r.meta.shape_buckets, names)
        for s in r.meta.sets:
            if s.served and {k: s.bucket[k] for k in names if k in s.bucket} == want:
                scored.append((s.speedup_vs_eager or 0.0, r))
    if not scored:
        raise LibraryError(
            f"no entry for '{op}' serves the shape bucket {bucket_text(bucket_of(shape, usable[0].meta.shape_buckets, list(usable[0].meta.shape_buckets) or sorted(shape)))} on this machine"
        )
    return max(scored, key=lambda pair: pair[0])[1]


def load(
    op: str, *, dtype=None, shape: dict | None = None, device: str | None = None, path=None
) -> type:
    """The `ModelNew` class of the best entry for `op` on this machine (see `best_entry`), for
    explicit use: construct it with the problem's `get_init_inputs()` arguments and load the
    reference Model's state_dict. Its `forge_entry` attribute is the entry's metadata. Works
    for every library operator, with or without an ATen counterpart."""
    return module_class(best_entry(op, dtype=dtype, shape=shape, device=device, path=path))
