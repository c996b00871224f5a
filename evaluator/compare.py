"""Whole-output comparison, NaN/inf-aware, in float64 on the outputs' device.

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


def compare(out: torch.Tensor, ref: torch.Tensor, atol: float, rtol: float) -> dict:
    """Max abs/rel error over finite positions, mismatch count and first bad index."""
    c = out.detach().to(torch.float64)
    e = ref.detach().to(torch.float64)
    finite = torch.isfinite(c) & torch.isfinite(e)
    diff = torch.where(finite, (c - e).abs(), torch.zeros_like(c))
    scale = torch.where(finite, e.abs(), torch.zeros_like(e))
    ok = finite & (diff <= atol + rtol * scale)
    ok |= torch.isinf(e) & (c == e)
    ok |= torch.isnan(e) & torch.isnan(c)
    bad = ~ok
    mismatches = int(bad.sum())
    first: list[int] = []
    if mismatches:
        flat = int(torch.nonzero(bad.reshape(-1))[0])
        first = (
            [int(i) for i in torch.unravel_index(torch.tensor(flat), tuple(c.shape))]
            if c.dim()
            else []
        )
    max_abs = float(diff.max()) if c.numel() else 0.0
    rel = diff / scale.clamp_min(atol if atol > 0 else 1e-30)
    max_rel = float(rel.max()) if c.numel() else 0.0
    nonfinite_mismatch = bool((bad & ~finite).any())
    return {
        "passed": mismatches == 0,
        "max_abs_error": float("inf") if nonfinite_mismatch else max_abs,
        "max_rel_error": float("inf") if nonfinite_mismatch else max_rel,
        "mismatches": mismatches,
        "numel": c.numel(),
        "first_bad_index": first,
    }


def degenerate(ref: torch.Tensor, atol: float, rtol: float) -> str:
    """Why this reference output cannot tell a cheat from a kernel ('' when it can)."""
    if not ref.is_floating_point() or ref.numel() == 0:
        return ""
    if compare(torch.zeros_like(ref), ref, atol, rtol)["passed"]:
        return "an all-zeros output passes its tolerance"
    mean = ref.to(torch.float64).mean()
    if ref.numel() > 1 and compare(torch.full_like(ref, float(mean)), ref, atol, rtol)["passed"]:
        return "a constant (mean) output passes its tolerance"
    return ""


def max_difference(out: torch.Tensor, ref: torch.Tensor) -> float:
    """The largest |out - ref| over the output; inf where one is finite and the other not
    (positions holding the same infinity, or NaN in both, count as 0)."""
    c = out.detach().to(torch.float64)
    e = ref.detach().to(torch.float64)
    if c.numel() == 0:
        return 0.0
    finite = torch.isfinite(c) & torch.isfinite(e)
    same = (torch.isinf(e) & (c == e)) | (torch.isnan(e) & torch.isnan(c))
    if bool((~finite & ~same).any()):
        return float("inf")
    return float(torch.where(finite, (c - e).abs(), torch.zeros_like(c)).max())
