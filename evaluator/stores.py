"""On the CPU, proof that the output was written by the candidate's kernels.

Under TRITON_INTERPRET a kernel's `tl.store` becomes a call of the interpreter builder's
`create_masked_store` with the addresses, values and mask. Recording them during a forward lets
the runner check that every byte of the returned output was last written by a kernel store, with
exactly the bytes found there. A token launch followed by host (NumPy, Python) computation
fails this. It runs in the runner, so it is defence in depth: the GPU's proof is taken from
outside the runner's process (Nsight Compute's count of bytes the candidate's kernels wrote).
"""

from __future__ import annotations

import numpy as np
import torch

from forge.evaluator.compare import flatten


class StoreRecorder:
    def __init__(self) -> None:
        self.records: list[tuple[np.ndarray, np.ndarray]] = []
        self.atomic: list[np.ndarray] = []
        self._saved: dict[str, object] = {}

    def __enter__(self) -> StoreRecorder:
        from triton.runtime import interpreter

        builder = interpreter.InterpreterBuilder
        recorder = self
        masked_store = builder.create_masked_store
        atomic_rmw = builder.create_atomic_rmw

        def create_masked_store(this, ptrs, value, mask, *rest):
            result = masked_store(this, ptrs, value, mask, *rest)
            keep = np.asarray(mask.data, dtype=bool)
            values = np.ascontiguousarray(np.asarray(value.data))
            addresses = np.broadcast_to(np.asarray(ptrs.data, dtype=np.uint64), keep.shape)[keep]
            recorder.records.append(
                (addresses.copy(), np.broadcast_to(values, keep.shape)[keep].copy())
            )
            return result

        def create_atomic_rmw(this, rmw_op, ptr, val, mask, *rest):
            result = atomic_rmw(this, rmw_op, ptr, val, mask, *rest)
            keep = np.asarray(mask.data, dtype=bool)
            recorder.atomic.append(
                np.broadcast_to(np.asarray(ptr.data, dtype=np.uint64), keep.shape)[keep].copy()
            )
            return result

        self._saved = {"create_masked_store": masked_store, "create_atomic_rmw": atomic_rmw}
        builder.create_masked_store = create_masked_store
        builder.create_atomic_rmw = create_atomic_rmw
        return self

    def __exit__(self, *exc) -> bool:
        from triton.runtime import interpreter

        for name, fn in self._saved.items():
            setattr(interpreter.InterpreterBuilder, name, fn)
        return False

    def uncovered(self, out: object) -> str:
        """'' when each output tensor holds exactly what kernel stores last wrote to it."""
        for index, t in enumerate(flatten(out)):
            if t.numel() == 0 or t.dtype == torch.bool:
                continue
            if problem := self._check(t):
                return f"output {index} was not produced by the candidate's kernels: {problem}"
        return ""

    def _check(self, t: torch.Tensor) -> str:
        if not t.is_contiguous():
            return "a non-contiguous output cannot be traced to its stores"
        item, base = t.element_size(), t.data_ptr()
        span = t.numel() * item
        shadow = np.zeros(span, dtype=np.uint8)
        written = np.zeros(span, dtype=bool)
        for addresses, values in self.records:
            inside = (addresses >= base) & (addresses < base + span)
            if not inside.any():
                continue
            offsets = (addresses[inside] - base).astype(np.int64)
            raw = values[inside].view(np.uint8).reshape(len(offsets), -1)
            if raw.shape[1] != item:
                return "stored with a different element size than the output's"
            for k in range(item):
                shadow[offsets + k] = raw[:, k]
                written[offsets + k] = True
        atomic_bytes = np.zeros(span, dtype=bool)
        for addresses in self.atomic:
            inside = (addresses >= base) & (addresses < base + span)
            offsets = (addresses[inside] - base).astype(np.int64)
            for k in range(item):
                atomic_bytes[offsets + k] = True
        written |= atomic_bytes
        if not written.all():
            missing = int((~written).sum()) // item
            return f"{missing} of {t.numel()} elements were never stored by a kernel"
        actual = t.detach().reshape(-1).view(torch.uint8).numpy()
        differs = (actual != shadow) & ~atomic_bytes
        if differs.any():
            return f"{int(differs.sum()) // item or 1} elements differ from what the kernels stored"
        return ""
