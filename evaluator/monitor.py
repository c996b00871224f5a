"""Runtime proof of work (EXPLOITS row 17): which ATen ops a candidate's forward ran, and whether
its own kernel executed."""

from __future__ import annotations

import sys

from torch.utils._python_dispatch import TorchDispatchMode

# Allocation, views, metadata and plain copies: what a kernel launcher legitimately needs.
# Everything else (arithmetic, reductions, matmul, activations...) means PyTorch did the work.
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


class AtenMonitor(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []
        self.forbidden: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.ops.append(name)
        if name not in ALLOWED_ATEN:
            self.forbidden.append(f"aten::{name}")
        return func(*args, **(kwargs or {}))


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
            last = max((line for _, _, line in code.co_lines() if line), default=code.co_firstlineno)
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
            if entry is not None and entry[1] <= code.co_firstlineno <= entry[2] and entry[0] not in self.ran:
                self.ran.append(entry[0])

    def __enter__(self):
        self._previous = sys.getprofile()
        sys.setprofile(self._hook)
        return self

    def __exit__(self, *exc):
        sys.setprofile(self._previous)
        return False
