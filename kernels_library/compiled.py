"""torch.compile with the library: a backend that puts `forge::<op>` custom ops into the graph.

    kl.enable()
    compiled = torch.compile(model, backend=kl.compile_backend())   # inductor around them
    compiled(x)

Under plain `torch.compile` the library's ATen kernels never run: inductor traces the model
with FakeTensors (which the runtime leaves to PyTorch) and generates its own code. The backend
here receives Dynamo's graph first and replaces each call the enabled library would serve
(decided on the traced shapes and dtypes, by the same adapters, buckets and entries as eager
calls) with the matching custom op (`forge.kernels_library.custom_ops`), then hands the graph to
the inner backend (`inductor` by default; any registered backend name or callable). Inductor
compiles everything around the custom ops and calls them as opaque kernels; autograd through
them is PyTorch's backward (see custom_ops).

Calls are recognised as Dynamo records them: `torch.softmax`, `F.softmax`, `x.softmax(...)`,
`nn.Softmax` (inlined), and the same for log_softmax; `F.gelu`; `F.layer_norm` (so
`nn.LayerNorm`); `F.rms_norm`; `F.group_norm`; `F.scaled_dot_product_attention`. What each
backend did is kept in its `replaced` and `kept` lists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from forge.kernels_library import runtime
from forge.kernels_library.custom_ops import custom_op, define_all


def _f_softmax(input, dim=None, _stacklevel=3, dtype=None):  # noqa: A002 (torch's names)
    return None if dim is None or dtype is not None else ((input, dim, False), {})


def _t_softmax(input, dim, dtype=None):  # noqa: A002
    return None if dtype is not None else ((input, dim, False), {})


def _gelu(input, approximate="none"):  # noqa: A002
    return (input,), {"approximate": approximate}


def _layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5, cudnn_enable=True):  # noqa: A002
    return (input, list(normalized_shape), weight, bias, eps, cudnn_enable), {}


def _rms_norm(input, normalized_shape, weight=None, eps=None):  # noqa: A002
    return (input, list(normalized_shape), weight, eps), {}


def _group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, cudnn_enabled=True):  # noqa: A002
    return (input, num_groups, weight, bias, eps, cudnn_enabled), {}


def _sdpa(
    query,
    key,
    value,
    attn_mask=None,
    dropout_p=0.0,
    is_causal=False,
    scale=None,
    enable_gqa=False,
):
    return (query, key, value, attn_mask, dropout_p, is_causal), {
        "scale": scale,
        "enable_gqa": enable_gqa,
    }


# (node op, target) -> (catalogue operator, binder to the ATen operator's arguments)
SPELLINGS: dict[tuple[str, object], tuple[str, Callable]] = {
    ("call_function", F.softmax): ("softmax", _f_softmax),
    ("call_function", torch.softmax): ("softmax", _t_softmax),
    ("call_function", torch.Tensor.softmax): ("softmax", _t_softmax),
    ("call_method", "softmax"): ("softmax", _t_softmax),
    ("call_function", F.log_softmax): ("log_softmax", _f_softmax),
    ("call_function", torch.log_softmax): ("log_softmax", _t_softmax),
    ("call_function", torch.Tensor.log_softmax): ("log_softmax", _t_softmax),
    ("call_method", "log_softmax"): ("log_softmax", _t_softmax),
    ("call_function", F.gelu): ("gelu", _gelu),
    ("call_function", F.layer_norm): ("layer_norm", _layer_norm),
    ("call_function", torch.layer_norm): ("layer_norm", _layer_norm),
    ("call_function", F.rms_norm): ("rms_norm", _rms_norm),
    ("call_function", torch.rms_norm): ("rms_norm", _rms_norm),
    ("call_function", F.group_norm): ("group_norm", _group_norm),
    ("call_function", torch.group_norm): ("group_norm", _group_norm),
    ("call_function", F.scaled_dot_product_attention): ("sdpa", _sdpa),
}


@dataclass
class Decision:
    """One recognised call of a traced graph: replaced by the custom op, or kept and why."""

    op: str
    node: str
    shape: list[int]
    dtype: str
    reason: str = ""

    def as_dict(self) -> dict:
        return {
            "op": self.op,
            "node": self.node,
            "shape": self.shape,
            "dtype": self.dtype,
            "reason": self.reason,
        }


def _example(value):
    if isinstance(value, torch.fx.Node):
        return value.meta.get("example_value", value.meta.get("val"))
    if isinstance(value, list | tuple):
        return type(value)(_example(v) for v in value)
    return value


def _spelling(node: torch.fx.Node) -> tuple[str, Callable] | None:
    if node.op not in ("call_function", "call_method"):
        return None
    try:
        return SPELLINGS.get((node.op, node.target))
    except TypeError:  # an unhashable target
        return None


def rewrite(gm: torch.fx.GraphModule) -> tuple[list[Decision], list[Decision]]:
    """Replace, in place, the calls of `gm` that the enabled library serves by custom ops;
    (replaced, kept) with the reason each kept call stays PyTorch's."""
    define_all()
    replaced: list[Decision] = []
    kept: list[Decision] = []
    for node in list(gm.graph.nodes):
        spelling = _spelling(node)
        if spelling is None:
            continue
        op, binder = spelling
        bound = binder(*node.args, **node.kwargs)
        example = _example(node.args[0]) if node.args else None
        decision = Decision(
            op,
            node.name,
            list(example.shape) if isinstance(example, torch.Tensor) else [],
            str(example.dtype).removeprefix("torch.") if isinstance(example, torch.Tensor) else "",
        )
        if bound is None:
            decision.reason = "arguments the library's operator does not take (dtype=, dim=None)"
            kept.append(decision)
            continue
        args, kwargs = bound
        decide = runtime.decider(op)
        if decide is None:
            decision.reason = "the library is not enabled for this operator"
            kept.append(decision)
            continue
        fake_args, fake_kwargs = _example(args), {k: _example(v) for k, v in kwargs.items()}
        if not isinstance(fake_args[0], torch.Tensor):
            decision.reason = "no traced value for its input"
            kept.append(decision)
            continue
        why = runtime.bypassed(decide, fake_args, fake_kwargs)
        if why is not None:
            decision.reason = why
            kept.append(decision)
            continue
        with gm.graph.inserting_before(node):
            new = gm.graph.call_function(custom_op(op), tuple(args), dict(kwargs))
        new.meta.update(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        replaced.append(decision)
    if replaced:
        gm.graph.lint()
        gm.recompile()
    return replaced, kept


@dataclass
class CompileBackend:
    """A torch.compile backend: the library's custom ops in, then `inner` compiles the graph."""

    inner: str | Callable = "inductor"
    replaced: list[Decision] = field(default_factory=list)
    kept: list[Decision] = field(default_factory=list)

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list):
        replaced, kept = rewrite(gm)
        self.replaced.extend(replaced)
        self.kept.extend(kept)
        inner = (
            torch._dynamo.lookup_backend(self.inner) if isinstance(self.inner, str) else self.inner
        )
        return inner(gm, example_inputs)


def compile_backend(inner: str | Callable = "inductor") -> CompileBackend:
    """A backend for `torch.compile(model, backend=...)`: the calls the enabled library serves
    become `forge::<op>` custom ops, the rest is compiled by `inner` (a backend name such as
    "inductor" or "aot_eager", or a backend callable). Enable the library before compiling:
    the replacement is decided when Dynamo traces, each call is routed again when it runs."""
    return CompileBackend(inner)
