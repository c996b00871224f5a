"""Whole-output comparison, NaN/inf-aware, in float64 on the outputs' device.

Outputs are compared in chunks of `CHUNK` elements, so the float64 temporaries stay at a few
hundred MB whatever the output's size: a KernelBench level-1 output of 1.6e9 fp32 elements
(4097 x 393217) would otherwise need ~13 GB per float64 copy and ~90 GB for one comparison.

A position passes when |c - e| <= atol + rtol * |e| with both finite, or when both hold the
same infinity, or when both are NaN where the reference itself produced NaN. A NaN the
reference did not produce never passes (poisoned, unwritten memory is NaN).
"""

from __future__ import annotations

import torch


def structure_error(out: object, ref: object) -> str:
    """'' when `out` has exactly the reference's structure, type, dtype, shape and device."""
    if isinstance(ref, torch.Tensor):
        if type(out) is not torch.Tensor:
            return f"output is {type(out).__module__}.{type(out).__qualname__}, expected a plain torch.Tensor"
        if out.is_meta or out.device != ref.device:
            return f"output is on {out.device}, expected {ref.device}"
        if out.dtype != ref.dtype:
            return f"output dtype {out.dtype}, expected {ref.dtype}"
        if out.shape != ref.shape:
            return f"output shape {tuple(out.shape)}, expected {tuple(ref.shape)}"
        if out.numel() and out.untyped_storage().data_ptr() == 0:
            return "output has no storage"
        return ""
    if isinstance(ref, tuple | list):
        if type(out) is not type(ref) or len(out) != len(ref):
            return f"output is {type(out).__name__} of {_len(out)}, expected {type(ref).__name__} of {len(ref)}"
        for i, (o, r) in enumerate(zip(out, ref, strict=True)):
            if err := structure_error(o, r):
                return f"output[{i}]: {err}"
        return ""
    return "" if out == ref else f"output {out!r}, expected {ref!r}"


def _len(x: object) -> str:
    return str(len(x)) if isinstance(x, tuple | list) else "1"


def flatten(out: object) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, tuple | list):
        return [t for item in out for t in flatten(item)]
    return []


CHUNK = 1 << 24
"""Elements per comparison step: 16M, 128 MB per float64 temporary."""


def _float64_chunks(t: torch.Tensor):
    """(offset, chunk in float64) over `t` flattened."""
    flat = t.detach().reshape(-1)
    for start in range(0, flat.numel(), CHUNK):
        yield start, flat[start : start + CHUNK].to(torch.float64)


def _chunks(out: torch.Tensor, ref: torch.Tensor):
    """(offset, out chunk, ref chunk) over both tensors flattened, each chunk in float64."""
    for (start, c), (_, e) in zip(_float64_chunks(out), _float64_chunks(ref), strict=True):
        yield start, c, e


def compare(out: torch.Tensor, ref: torch.Tensor, atol: float, rtol: float) -> dict:
    """Max abs/rel error over finite positions, mismatch count and first bad index."""
    mismatches, first_flat = 0, None
    max_abs = max_rel = 0.0
    nonfinite_mismatch = False
    floor = atol if atol > 0 else 1e-30
    for start, c, e in _chunks(out, ref):
        finite = torch.isfinite(c) & torch.isfinite(e)
        diff = torch.where(finite, (c - e).abs(), 0.0)
        scale = torch.where(finite, e.abs(), 0.0)
        ok = finite & (diff <= atol + rtol * scale)
        ok |= torch.isinf(e) & (c == e)
        ok |= torch.isnan(e) & torch.isnan(c)
        bad = ~ok
        count = int(bad.sum())
        if count:
            if first_flat is None:
                first_flat = start + int(torch.nonzero(bad)[0])
            nonfinite_mismatch = nonfinite_mismatch or bool((bad & ~finite).any())
        mismatches += count
        max_abs = max(max_abs, float(diff.max()))
        max_rel = max(max_rel, float((diff / scale.clamp_min(floor)).max()))
    first: list[int] = []
    if first_flat is not None and out.dim():
        first = [int(i) for i in torch.unravel_index(torch.tensor(first_flat), tuple(out.shape))]
    return {
        "passed": mismatches == 0,
        "max_abs_error": float("inf") if nonfinite_mismatch else max_abs,
        "max_rel_error": float("inf") if nonfinite_mismatch else max_rel,
        "mismatches": mismatches,
        "numel": out.numel(),
        "first_bad_index": first,
    }


def degenerate(ref: torch.Tensor, atol: float, rtol: float) -> str:
    """Why this reference output cannot tell a cheat from a kernel ('' when it can)."""
    if not ref.is_floating_point() or ref.numel() == 0:
        return ""
    if _constant_passes(ref, 0.0, atol, rtol):
        return "an all-zeros output passes its tolerance"
    total = sum(float(e.sum()) for _, e in _float64_chunks(ref))
    mean = total / ref.numel()
    if ref.numel() > 1 and _constant_passes(ref, mean, atol, rtol):
        return "a constant (mean) output passes its tolerance"
    return ""


def warm_up(device: str) -> None:
    """Run `compare` and `degenerate` once per common dtype, with mismatches, before any job: in
    a fresh process the first use of their kernels (float64 casts of strided and expanded
    tensors, nonzero, reductions) loads them, which took 2.3-3.8 s of each evaluation's
    correctness phase on the H200 (2026-12-02, `degenerate` runs first)."""
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        ref = torch.rand(1 << 20, device=device).to(dtype)
        out = ref.clone()
        out[::7] += 1
        compare(out, ref, 1e-5, 1e-4)
        degenerate(ref.view(1024, 1024), 1e-5, 1e-4)


def _constant_passes(ref: torch.Tensor, value: float, atol: float, rtol: float) -> bool:
    """Whether an output holding `value` (in the reference's dtype) everywhere passes."""
    constant = torch.tensor(value, dtype=ref.dtype, device=ref.device)
    return compare(constant.expand(ref.shape), ref, atol, rtol)["passed"]


def max_difference(out: torch.Tensor, ref: torch.Tensor) -> float:
    """The largest |out - ref| over the output; inf where one is finite and the other not
    (positions holding the same infinity, or NaN in both, count as 0)."""
    largest = 0.0
    for _, c, e in _chunks(out, ref):
        finite = torch.isfinite(c) & torch.isfinite(e)
        same = (torch.isinf(e) & (c == e)) | (torch.isnan(e) & torch.isnan(c))
        if bool((~finite & ~same).any()):
            return float("inf")
        largest = max(largest, float(torch.where(finite, (c - e).abs(), 0.0).max()))
    return largest
