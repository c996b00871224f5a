"""The library's operators as torch.library custom ops, for torch.compile.

One custom op `forge::<op>` per ATen-mapped catalogue operator (`forge::softmax`,
`forge::layer_norm`, ...), with the schema of the ATen operator it stands in for:

- its kernel routes each call like the eager runtime (the same adapter, shape buckets and
  entries): served by the library when `kl.enable()` has an entry for it, else PyTorch's ATen
  operator, so a compiled graph holding it is always correct, enabled or not;
- its fake implementation is PyTorch's operator on the FakeTensors (exact output shape, dtype
  and strides, whatever the arguments);
- its autograd formula is PyTorch's backward: the library has no backward kernels. softmax,
  log_softmax and gelu use ATen's backward ops on the saved output/input (no recomputation);
  layer_norm recomputes mean and rstd then calls `native_layer_norm_backward`; rms_norm,
  group_norm and sdpa recompute the forward with PyTorch and differentiate it. Forward served,
  backward PyTorch's.

`compile_backend` (forge.kernels_library.compiled) puts these ops into a traced graph. They are
defined once per process, on the first `kl.enable()` or `define_all()`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

from forge.kernels_library import runtime
from forge.kernels_library.adapters import ADAPTERS, Adapter

NAMESPACE = "forge"
_DEFINED: dict[str, object] = {}
_LOCK = threading.Lock()


def aten_overload(adapter: Adapter):
    """`aten::_softmax` -> torch.ops.aten._softmax.default."""
    name = adapter.registered_name
    return getattr(torch.ops.aten, name).default


def qualified_name(op: str) -> str:
    return f"{NAMESPACE}::{op}"


def custom_op(op: str):
    """The `torch.ops.forge.<op>.default` overload (defined on first use)."""
    define_all()
    return getattr(getattr(torch.ops, NAMESPACE), op).default


def _schema(adapter: Adapter) -> str:
    text = str(aten_overload(adapter)._schema)
    return text[text.index("(") :]


# ------------------------------------------------------------------------------------ backward


def _save_all(ctx, inputs: tuple, output, keyword_only_inputs: dict | None = None) -> None:
    ctx.positions = [i for i, a in enumerate(inputs) if isinstance(a, torch.Tensor)]
    ctx.inputs = [None if isinstance(a, torch.Tensor) else a for a in inputs]
    ctx.keyword_only = dict(keyword_only_inputs or {})
    ctx.save_for_backward(*(inputs[i] for i in ctx.positions))


def _recompute_backward(adapter: Adapter):
    """Backward by differentiating PyTorch's forward, recomputed from the saved inputs."""
    overload = aten_overload(adapter)

    def backward(ctx, grad):
        inputs = list(ctx.inputs)
        leaves = []
        with torch.enable_grad():
            for position, saved in zip(ctx.positions, ctx.saved_tensors, strict=True):
                need = ctx.needs_input_grad[position]
                leaf = saved.detach().requires_grad_(need)
                inputs[position] = leaf
                if need:
                    leaves.append((position, leaf))
            out = runtime.bypassed(overload, *inputs, **ctx.keyword_only)
            grads = torch.autograd.grad(out, [leaf for _, leaf in leaves], grad)
        result: list = [None] * len(inputs)
        for (position, _), g in zip(leaves, grads, strict=True):
            result[position] = g
        return tuple(result)

    return _save_all, backward


def _softmax_backward(backward_op):
    def setup(ctx, inputs, output):
        x, dim, _half_to_float = inputs
        ctx.dim, ctx.input_dtype = dim, x.dtype
        ctx.save_for_backward(output)

    def backward(ctx, grad):
        (output,) = ctx.saved_tensors
        return backward_op(grad, output, ctx.dim, ctx.input_dtype), None, None

    return setup, backward


def _gelu_backward():
    def setup(ctx, inputs, output, keyword_only_inputs):
        (x,) = inputs
        ctx.approximate = keyword_only_inputs["approximate"]
        ctx.save_for_backward(x)

    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return torch.ops.aten.gelu_backward(grad, x, approximate=ctx.approximate)

    return setup, backward


def _layer_norm_backward():
    def setup(ctx, inputs, output):
        x, normalized_shape, weight, bias, eps, _cudnn = inputs
        ctx.normalized_shape, ctx.eps = list(normalized_shape), eps
        ctx.save_for_backward(x, weight, bias)

    def backward(ctx, grad):
        x, weight, bias = ctx.saved_tensors
        _, mean, rstd = torch.ops.aten.native_layer_norm(
            x, ctx.normalized_shape, weight, bias, ctx.eps
        )
        needs = ctx.needs_input_grad
        mask = [needs[0], weight is not None and needs[2], bias is not None and needs[3]]
        gx, gw, gb = torch.ops.aten.native_layer_norm_backward(
            grad, x, ctx.normalized_shape, mean, rstd, weight, bias, mask
        )
        return gx, None, gw, gb, None, None

    return setup, backward


def _autograd(adapter: Adapter) -> tuple[Callable, Callable]:
    """(setup_context, backward) of an operator."""
    if adapter.op == "softmax":
        return _softmax_backward(torch.ops.aten._softmax_backward_data)
    if adapter.op == "log_softmax":
        return _softmax_backward(torch.ops.aten._log_softmax_backward_data)
    if adapter.op == "gelu":
        return _gelu_backward()
    if adapter.op == "layer_norm":
        return _layer_norm_backward()
    return _recompute_backward(adapter)


# ------------------------------------------------------------------------------------ definition


def _define(adapter: Adapter) -> None:
    overload = aten_overload(adapter)
    op = adapter.op

    def kernel(*args, **kwargs):
        served = runtime.custom_impl(op)
        if served is None:
            return runtime.bypassed(overload, *args, **kwargs)
        return served(*args, **kwargs)

    def fake(*args, **kwargs):
        return runtime.bypassed(overload, *args, **kwargs)

    kernel.__name__ = fake.__name__ = op
    defined = torch.library.custom_op(
        qualified_name(op), kernel, mutates_args=(), schema=_schema(adapter)
    )
    defined.register_fake(fake)
    setup, backward = _autograd(adapter)
    defined.register_autograd(backward, setup_context=setup)
    _DEFINED[op] = defined


def define_all() -> None:
    """Define every `forge::<op>` (once per process)."""
    if len(_DEFINED) == len(ADAPTERS):
        return
    with _LOCK:
        for op, adapter in ADAPTERS.items():
            if op not in _DEFINED:
                _define(adapter)
