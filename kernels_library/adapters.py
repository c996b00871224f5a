"""How a library kernel stands in for an ATen operator.

A library entry is a verified `ModelNew` for a catalogue problem, whose `Model` fixes exactly
what is computed (softmax over the last dimension of a 2-D tensor, LayerNorm with weight, bias
and eps=1e-5, ...). An adapter maps one ATen call onto that: it checks that the call asks for
what the problem verified (otherwise it returns the reason, and the runtime calls PyTorch's own
kernel), names the problem's shape constants for the bucket lookup, the constructor arguments,
the parameters to bind (the call's weight and bias, by the Model's state_dict names) and the
inputs, viewed in the problem's layout.

Registration level:
- `backend` ops (`_softmax`, `_log_softmax`, `gelu`) have their own derivative formulas; the
  library kernel replaces their CUDA kernel below autograd, so autograd keeps working (the
  backward is PyTorch's, computed from the verified forward's inputs/output).
- `composite` ops (`layer_norm`, `rms_norm`, `group_norm`, `scaled_dot_product_attention`) are
  CompositeImplicitAutograd in ATen: the kernel is registered at Autograd<device> (and at
  <device>, reached under `torch.inference_mode`), and any call needing a gradient goes to
  PyTorch (the kernels compute no backward, nor the mean/rstd that native_layer_norm returns).

Not mapped: `cross_entropy` (ATen's `ignore_index=-100` rows would need the targets read on the
host, a device sync per call, to be ruled out); problems with no ATen counterpart
(`silu_and_mul`, `rotary`, `add_layer_norm`, `matmul_bias_gelu`, `conv2d`). All of them are
available through `kl.load(op)`.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from forge.evaluator.parsing import parse_python

CATALOGUE_DIR = Path(__file__).resolve().parent / "catalogue"

# Fallback reasons (stable strings: they are the keys of kl.stats() counters).
HALF_TO_FLOAT = "unsupported argument: half_to_float=True"
NOT_LAST_DIM = "unsupported argument: dim is not the last dimension"
ZERO_DIM = "unsupported shape: 0-d tensor"
EMPTY = "unsupported shape: empty tensor"
NON_CONTIGUOUS = "non-contiguous input"
TANH = "unsupported argument: approximate='tanh' (the entry computes exact erf GELU)"
NORMALIZED_SHAPE = "unsupported argument: normalized_shape is not the last dimension alone"
NO_AFFINE = "unsupported argument: weight or bias is None (the kernel applies both)"
NO_WEIGHT = "unsupported argument: weight is None (the kernel applies it)"
EPS = "unsupported argument: eps differs from the verified problem's"
MIXED = "unsupported argument: weight/bias dtype or device differs from the input's"
GN_SHAPE = "unsupported shape: group_norm input is not 4-D NCHW"
SDPA_ARGS = "unsupported argument: attn_mask, dropout, is_causal, scale or enable_gqa given"
SDPA_SHAPE = "unsupported shape: q, k, v are not 4-D [B, H, S, D] of one shape and dtype"


class Call(NamedTuple):
    """The layout of what `prepare` returns for a call the entry can serve (a plain tuple in
    that order, cheaper to build on the hot path): bucket constants (in the adapter's order),
    constructor arguments, parameters to bind (in the adapter's order), forward inputs, and
    the shape to give the output back (None: as returned)."""

    constants: tuple
    init_args: tuple
    params: tuple
    inputs: tuple
    out_shape: torch.Size | None


def _as_2d(x: torch.Tensor, rows: int, cols: int) -> tuple:
    """(inputs, out_shape): a 2-D input as it is, any other viewed as [rows, cols]."""
    if x.dim() == 2:
        return (x,), None
    return (x.view(rows, cols),), x.shape


@dataclass(frozen=True)
class Adapter:
    op: str
    """Catalogue operator (the problem's name)."""
    aten: str
    """ATen operator overload the kernel is registered for (`aten::_softmax`)."""
    composite: bool
    """Registered at Autograd<device> and <device>; calls needing a gradient go to PyTorch."""
    constants: tuple[str, ...]
    """The problem's shape constants, in the order `prepare` returns them."""
    params: tuple[str, ...]
    """State-dict names of the Model's parameters bound to the call's tensors, in order."""
    prepare: Callable[..., tuple | str]
    """(ATen arguments) -> a tuple laid out as `Call`, or the reason this call goes to PyTorch."""

    @property
    def registered_name(self) -> str:
        return self.aten.split("::", 1)[1]


def _rows(x: torch.Tensor, cols: int) -> int:
    return x.numel() // cols


def _softmax_like(x, dim, half_to_float):
    if half_to_float:
        return HALF_TO_FLOAT
    shape = x.shape
    nd = len(shape)
    if nd == 2 and (dim == -1 or dim == 1) and x.is_contiguous():  # the common case, fast
        rows, cols = shape
        if rows and cols:
            return ((rows, cols), (), (), (x,), None)
        return EMPTY
    if nd == 0:
        return ZERO_DIM
    if dim != -1 and dim != nd - 1:
        return NOT_LAST_DIM
    if not x.is_contiguous():
        return NON_CONTIGUOUS
    if x.numel() == 0:
        return EMPTY
    cols = shape[-1]
    rows = x.numel() // cols
    return ((rows, cols), (), (), (x.view(rows, cols),), shape)


def _gelu(x, approximate="none"):
    if approximate != "none":
        return TANH
    shape = x.shape
    nd = len(shape)
    if nd == 0:
        return ZERO_DIM
    if not x.is_contiguous():
        return NON_CONTIGUOUS
    if x.numel() == 0:
        return EMPTY
    cols = shape[-1]
    if nd == 2:
        return ((shape[0], cols), (), (), (x,), None)
    rows = x.numel() // cols
    return ((rows, cols), (), (), (x.view(rows, cols),), shape)


def _same(t, x) -> bool:
    return t.dtype == x.dtype and t.device == x.device and t.is_contiguous()


LAYER_NORM_EPS = 1e-5
RMS_NORM_EPS = 1e-6
GROUP_NORM_EPS = 1e-5


def _layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-05, cudnn_enable=True):
    if x.dim() == 0:
        return ZERO_DIM
    hidden = x.shape[-1]
    if len(normalized_shape) != 1 or normalized_shape[0] != hidden:
        return NORMALIZED_SHAPE
    if weight is None or bias is None:
        return NO_AFFINE
    if eps != LAYER_NORM_EPS:
        return EPS
    if not x.is_contiguous():
        return NON_CONTIGUOUS
    if not (_same(weight, x) and _same(bias, x)):
        return MIXED
    if x.numel() == 0:
        return EMPTY
    rows = _rows(x, hidden)
    return ((rows, hidden), (hidden,), (weight, bias), *_as_2d(x, rows, hidden))


def _rms_norm(x, normalized_shape, weight=None, eps=None):
    if x.dim() == 0:
        return ZERO_DIM
    hidden = x.shape[-1]
    if len(normalized_shape) != 1 or normalized_shape[0] != hidden:
        return NORMALIZED_SHAPE
    if weight is None:
        return NO_WEIGHT
    if eps != RMS_NORM_EPS:
        return EPS
    if not x.is_contiguous():
        return NON_CONTIGUOUS
    if not _same(weight, x):
        return MIXED
    if x.numel() == 0:
        return EMPTY
    rows = _rows(x, hidden)
    return ((rows, hidden), (hidden,), (weight,), *_as_2d(x, rows, hidden))


def _group_norm(x, num_groups, weight=None, bias=None, eps=1e-05, cudnn_enabled=True):
    if x.dim() != 4:
        return GN_SHAPE
    if weight is None or bias is None:
        return NO_AFFINE
    if eps != GROUP_NORM_EPS:
        return EPS
    if not x.is_contiguous():
        return NON_CONTIGUOUS
    if not (_same(weight, x) and _same(bias, x)):
        return MIXED
    if x.numel() == 0:
        return EMPTY
    n, c, h, w = x.shape
    return ((n, c, num_groups, h, w), (num_groups, c), (weight, bias), (x,), None)


def _sdpa(
    query,
    key,
    value,
    attn_mask=None,
    dropout_p=0.0,
    is_causal=False,
    *,
    scale=None,
    enable_gqa=False,
):
    if attn_mask is not None or dropout_p != 0.0 or is_causal or scale is not None or enable_gqa:
        return SDPA_ARGS
    if query.dim() != 4 or key.shape != query.shape or value.shape != query.shape:
        return SDPA_SHAPE
    if (
        key.dtype != query.dtype
        or value.dtype != query.dtype
        or key.device != query.device
        or value.device != query.device
    ):
        return SDPA_SHAPE
    if not (query.is_contiguous() and key.is_contiguous() and value.is_contiguous()):
        return NON_CONTIGUOUS
    if query.numel() == 0:
        return EMPTY
    b, h, s, d = query.shape
    return ((b, h, s, d), (), (), (query, key, value), None)


ADAPTERS: dict[str, Adapter] = {
    a.op: a
    for a in (
        Adapter("softmax", "aten::_softmax", False, ("batch_size", "dim"), (), _softmax_like),
        Adapter(
            "log_softmax", "aten::_log_softmax", False, ("batch_size", "dim"), (), _softmax_like
        ),
        Adapter("gelu", "aten::gelu", False, ("batch_size", "dim"), (), _gelu),
        Adapter(
            "layer_norm",
            "aten::layer_norm",
            True,
            ("batch_size", "hidden"),
            ("norm.weight", "norm.bias"),
            _layer_norm,
        ),
        Adapter(
            "rms_norm", "aten::rms_norm", True, ("batch_size", "hidden"), ("weight",), _rms_norm
        ),
        Adapter(
            "group_norm",
            "aten::group_norm",
            True,
            ("batch_size", "num_channels", "num_groups", "height", "width"),
            ("norm.weight", "norm.bias"),
            _group_norm,
        ),
        Adapter(
            "sdpa",
            "aten::scaled_dot_product_attention",
            True,
            ("batch_size", "num_heads", "seq_len", "head_dim"),
            (),
            _sdpa,
        ),
    )
}

NOT_MAPPED = {
    "cross_entropy": "ATen's ignore_index rows cannot be ruled out without reading the targets on the host (a sync per call)",
}


def _model_ast(source: str) -> str | None:
    for node in parse_python(source).body:
        if isinstance(node, ast.ClassDef) and node.name == "Model":
            return ast.dump(node, include_attributes=False)
    return None


_CATALOGUE_MODELS: dict[str, str | None] = {}


def catalogue_model(op: str) -> str | None:
    if op not in _CATALOGUE_MODELS:
        path = CATALOGUE_DIR / f"{op}.py"
        _CATALOGUE_MODELS[op] = _model_ast(path.read_text()) if path.is_file() else None
    return _CATALOGUE_MODELS[op]


def aten_ineligibility(op: str, problem_source: str) -> str | None:
    """Why an entry of `op` cannot stand in for the ATen operator (None: it can). The entry's
    problem must define the catalogue's `Model` (same code, comments aside): the adapter's
    assumptions (layout, eps, parameter names) are those of that Model."""
    if op not in ADAPTERS:
        why = NOT_MAPPED.get(op, "no ATen counterpart")
        return f"'{op}' is not dispatched from ATen ({why}): use kl.load('{op}')"
    expected = catalogue_model(op)
    if expected is None or _model_ast(problem_source) != expected:
        return f"its problem's Model differs from the catalogue's '{op}' Model: use kl.load('{op}') for it"
    return None
