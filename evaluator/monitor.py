"""Runtime proof of work (EXPLOITS row 17): which ATen ops a candidate's forward ran, whether
its output is a vendor-library call's result, and whether its own kernel executed."""

from __future__ import annotations

import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

# Allocation, views, metadata and plain copies: what a kernel launcher legitimately needs.
# Everything else (arithmetic, reductions, activations...) means PyTorch did the work, except
# the vendor-library GEMMs and convolutions of LIBRARY_ATEN below.
ALLOWED_ATEN = frozenset(
    """
    empty empty_like empty_strided new_empty new_empty_strided new_zeros new_ones new_full zeros zeros_like
    ones ones_like full full_like fill_ zero_ arange scalar_tensor
    view _unsafe_view reshape _reshape_alias as_strided t transpose permute expand expand_as unsqueeze
    squeeze select slice narrow detach alias view_as flatten unflatten split split_with_sizes chunk
    unbind contiguous clone copy_ _to_copy to set_ lift_fresh lift_fresh_copy resize_ _local_scalar_dense
    is_same_size _has_compatible_shallow_copy_type
    """.split()
)


# Vendor-library GEMMs and convolutions (cuBLAS, cuDNN), as the ATen ops the calls of
# forge.evaluator.static.rules.LIBRARY_CALLS / LIBRARY_MODULES reach below autograd: allowed, so
# a GEMM + epilogue candidate can keep cuBLAS for the product, but recorded (`library`), and their
# results tracked so that an output computed by them alone is told apart. The composite names
# (matmul, linear, conv2d...) decompose before this mode sees them; they are listed in case a
# backend dispatches them whole. Matrix-vector ops (mv, addmv, dot) are not library calls.
LIBRARY_ATEN = frozenset(
    """
    mm bmm addmm baddbmm matmul linear convolution _convolution convolution_overrideable
    cudnn_convolution cudnn_convolution_transpose mkldnn_convolution conv1d conv2d conv3d
    conv_transpose1d conv_transpose2d conv_transpose3d
    """.split()
)
# Allowed ops that carry a tensor's values into a new storage (copies, casts, device moves) or
# into an existing one (copy_): a library result copied this way is still a library result.
# Views share the storage and need no entry.
COPY_ATEN = frozenset(
    """
    clone _to_copy to contiguous copy_ _copy_from _copy_from_and_resize lift_fresh_copy
    """.split()
)


def _storages(value) -> list[torch.UntypedStorage]:
    """The storages of the dense tensors in `value` (a tensor or a nested structure)."""
    return [
        t.untyped_storage()
        for t in tree_leaves(value)
        if isinstance(t, torch.Tensor) and t.layout == torch.strided and t.numel() > 0
    ]


def _key(storage: torch.UntypedStorage) -> tuple[str, int]:
    return str(storage.device), storage.data_ptr()


class AtenMonitor(TorchDispatchMode):
    """Records every ATen op of the calls made inside it: `forbidden` (PyTorch computing),
    `library` (vendor-library GEMM / convolution, allowed), and the storages holding a library
    result or a copy of one (kept alive while the monitor lives, so their addresses are not
    handed to another tensor): `output_from_library(out)`."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # TorchDispatchMode wraps a subclass's __torch_dispatch__ in torch._disable_dynamo
        # unless it opts out here, and that wrapper imports torch._dynamo (and sympy) on its
        # first call: 4.6 s of each runner's start-up on the H200 host (2026-12-02). Nothing
        # that runs under this monitor is compiled by Dynamo (candidates may not call
        # torch.compile; the trusted side's compiled baseline runs outside it).
        return False

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []
        self.forbidden: list[str] = []
        self.library: list[str] = []
        self.host_to_device_bytes = 0
        self._library_storages: dict[tuple[str, int], torch.UntypedStorage] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        self.ops.append(name)
        library = name in LIBRARY_ATEN
        if library:
            self.library.append(f"aten::{name}")
        elif name not in ALLOWED_ATEN:
            self.forbidden.append(f"aten::{name}")
        copied = name in COPY_ATEN and self._from_library((args, kwargs))
        result = func(*args, **kwargs)
        if name in COPY_ATEN:
            self.host_to_device_bytes += _uploaded(args, result)
        if library or copied:
            self._mark(result)  # copy_ returns its destination
        return result

    def _mark(self, value) -> None:
        for storage in _storages(value):
            self._library_storages[_key(storage)] = storage

    def _from_library(self, value) -> bool:
        return any(_key(s) in self._library_storages for s in _storages(value))

    def output_from_library(self, output) -> bool:
        """Whether any tensor of `output` (a tensor or a nested structure) lives in the storage
        of a library op's result, or of a copy of one: the result itself, a view of it, or a
        clone / cast / copy_ of it. An epilogue written in place into the library's result
        counts too: write the output into a tensor of your own."""
        return self._from_library(output)


def warm_monitor() -> None:
    """Use the monitor once, before any job, so that whatever its first use imports or sets up
    is done before identities of the process's modules are snapshotted."""
    with AtenMonitor():
        torch.empty(1).fill_(0)


def _uploaded(args, result) -> int:
    """Bytes a copy op moved from host memory into device memory (0 for any other copy)."""
    sources = [a for a in args if isinstance(a, torch.Tensor)]
    if not isinstance(result, torch.Tensor) or result.device.type == "cpu":
        return 0
    if any(s.device.type == "cpu" and s.numel() > 1 for s in sources):
        return result.numel() * result.element_size()
    return 0


def kernel_definitions(module, kernel_names: list[str]) -> dict:
    """Where the candidate's jit kernels are defined (through autotune/heuristics wrappers):
    (file, function name) -> (kernel, first line, last line). The interpreter runs a rewritten
    copy of each kernel's code, so identity cannot be compared; file, name and the kernel's own
    line span can (a helper that merely shares a kernel's name lives on other lines)."""
    codes = {}
    for name in kernel_names:
        obj = getattr(module, name, None)
        for _ in range(8):
            if obj is None or hasattr(obj, "__code__"):
                break
            obj = getattr(obj, "fn", None)
        if obj is not None and hasattr(obj, "__code__"):
            code = obj.__code__
            last = max(
                (line for _, _, line in code.co_lines() if line), default=code.co_firstlineno
            )
            codes[(code.co_filename, code.co_name)] = (name, code.co_firstlineno, last)
    return codes


class KernelCodeWatch:
    """On the CPU the Triton interpreter executes a kernel's Python body: a profile hook sees a
    frame running one of the candidate's jit kernels, defined where that kernel is defined."""

    def __init__(self, module, kernel_names: list[str]):
        self.codes = kernel_definitions(module, kernel_names)
        self.ran: list[str] = []
        self._previous = None

    def _hook(self, frame, event, arg):
        if event == "call":
            code = frame.f_code
            entry = self.codes.get((code.co_filename, code.co_name))
            if (
                entry is not None
                and entry[1] <= code.co_firstlineno <= entry[2]
                and entry[0] not in self.ran
            ):
                self.ran.append(entry[0])

    def __enter__(self):
        self._previous = sys.getprofile()
        sys.setprofile(self._hook)
        return self

    def __exit__(self, *exc):
        sys.setprofile(self._previous)
        return False
