"""Where a model's time goes: operators ranked by device time, and the model's graph cut into
items worth a kernel (library operators, fusible chains, other heavy nodes).

Two measurements of the same forward, both under torch.profiler:
- ATen operators: every `aten::` event's self time (device time on a GPU: the kernels each op
  launched; CPU time on the CPU), grouped by (operator, input shapes, input dtypes);
- graph nodes: the model is traced with `torch.fx.symbolic_trace` and run node by node, each
  node inside a `record_function` range, so every node (a module call such as `nn.Linear`, a
  function such as `torch.softmax`) gets the device time of what it launched.

symbolic_trace rather than torch.export: it keeps the model's own vocabulary (call_module
`nn.LayerNorm`, `F.gelu`, residual adds) that a problem file and the runtime's adapters speak,
runs in milliseconds with real tensors (ShapeProp gives every node's shape and dtype), and needs
no compiler. torch.export gives an ATen graph after decompositions (layer_norm already split,
linear as addmm/view), further from both. Models with data-dependent control flow cannot be
symbolically traced: the operator ranking is still given, the items are not (the reason says
so).

Items: a chain is a contraction (`nn.Linear`, `nn.Conv*d`, `F.linear`, `matmul`/`@`, `bmm`,
`F.conv*d`) followed by single-use elementwise nodes (bias/residual add, mul, relu, silu, tanh,
dropout in eval...): one kernel with an epilogue could do it. An operator the library can serve
from ATen (`softmax`, `layer_norm`, `gelu`, ...) is its own item, since a winner for it is
served back into the unchanged model; a library elementwise op right after a chain (gelu after
a linear) is noted as fusible into that chain's epilogue. What torch.compile does with an item
is "not checked" unless `check_compile` is given: then the model is compiled with inductor and
run under the profiler, and each item lists the compiled kernels whose (inductor-generated)
names mention its operators: a heuristic read of kernel names, labelled as such.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

CONTRACTION_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONTRACTION_FUNCTIONS = {
    F.linear,
    torch.matmul,
    operator.matmul,
    torch.bmm,
    torch.mm,
    F.conv1d,
    F.conv2d,
    F.conv3d,
}
ELEMENTWISE_MODULES = (
    nn.ReLU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Dropout,
    nn.Identity,
    nn.LeakyReLU,
    nn.Hardswish,
)
ELEMENTWISE_FUNCTIONS = {
    operator.add,
    operator.mul,
    operator.sub,
    operator.truediv,
    torch.add,
    torch.mul,
    torch.relu,
    F.relu,
    F.silu,
    torch.tanh,
    torch.sigmoid,
    F.dropout,
    F.leaky_relu,
}
ELEMENTWISE_METHODS = {"add", "mul", "sub", "div", "relu", "tanh", "sigmoid"}
LIBRARY_MODULES = {
    nn.LayerNorm: "layer_norm",
    nn.Softmax: "softmax",
    nn.LogSoftmax: "log_softmax",
    nn.GELU: "gelu",
    nn.GroupNorm: "group_norm",
    **({nn.RMSNorm: "rms_norm"} if hasattr(nn, "RMSNorm") else {}),
}
LIBRARY_FUNCTIONS = {
    F.layer_norm: "layer_norm",
    torch.layer_norm: "layer_norm",
    F.softmax: "softmax",
    torch.softmax: "softmax",
    F.log_softmax: "log_softmax",
    torch.log_softmax: "log_softmax",
    F.gelu: "gelu",
    F.group_norm: "group_norm",
    F.scaled_dot_product_attention: "sdpa",
    **({F.rms_norm: "rms_norm", torch.rms_norm: "rms_norm"} if hasattr(F, "rms_norm") else {}),
}
LIBRARY_METHODS = {"softmax": "softmax", "log_softmax": "log_softmax"}
ELEMENTWISE_LIBRARY = {"gelu"}


@dataclass
class OperatorRow:
    """One ATen operator at one (shapes, dtypes): self time per forward."""

    op: str
    shapes: list
    dtypes: list
    calls_per_forward: float
    ms_per_forward: float
    share: float = 0.0


@dataclass
class NodeInfo:
    name: str
    kind: str
    target: str
    shape: list[int]
    dtype: str
    ms: float
    library_op: str = ""


@dataclass
class Item:
    """A part of the graph worth a kernel: one library operator, a chain, or another node."""

    name: str
    kind: str  # "library", "chain" or "node"
    nodes: list[str]
    ms_per_forward: float
    shape: list[int]
    dtype: str
    library_op: str = ""
    share: float = 0.0
    fusible_into: str = ""
    compile_note: str = "not checked"
    compiled_kernels: list[str] = field(default_factory=list)


@dataclass
class ModelProfile:
    model: str
    device: str
    dtype: str
    timing: str
    forward_ms: float
    operators: list[OperatorRow]
    items: list[Item]
    traced: bool
    trace_error: str = ""
    compile_checked: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------ classification


def _target_text(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    if node.op == "call_method":
        return f".{node.target}()"
    return getattr(node.target, "__name__", str(node.target))


def classify(gm: fx.GraphModule, node: fx.Node) -> tuple[str, str]:
    """(kind, library op): kind one of contraction, elementwise, library, other, free."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        for cls, op in LIBRARY_MODULES.items():
            if type(module) is cls:
                return "library", op
        if isinstance(module, CONTRACTION_MODULES):
            return "contraction", ""
        if isinstance(module, ELEMENTWISE_MODULES):
            return "elementwise", ""
        return "other", ""
    if node.op == "call_function":
        try:
            if node.target in LIBRARY_FUNCTIONS:
                return "library", LIBRARY_FUNCTIONS[node.target]
            if node.target in CONTRACTION_FUNCTIONS:
                return "contraction", ""
            if node.target in ELEMENTWISE_FUNCTIONS:
                return "elementwise", ""
        except TypeError:
            return "other", ""
        return "other", ""
    if node.op == "call_method":
        if node.target in LIBRARY_METHODS:
            return "library", LIBRARY_METHODS[node.target]
        if node.target in ELEMENTWISE_METHODS:
            return "elementwise", ""
        return "other", ""
    return "free", ""


# ------------------------------------------------------------------------------ measurement


class _RangedInterpreter(fx.Interpreter):
    def run_node(self, n: fx.Node):
        with torch.profiler.record_function(f"fx::{n.name}"):
            return super().run_node(n)


def _activities(device: str) -> list:
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    return acts


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _self_ms(event, device: str) -> float:
    us = event.self_device_time_total if device == "cuda" else event.self_cpu_time_total
    return us / 1000.0


def _total_ms(event, device: str) -> float:
    us = event.device_time_total if device == "cuda" else event.cpu_time_total
    return us / 1000.0


def operator_table(model, inputs, device: str, iters: int) -> tuple[list[OperatorRow], float]:
    """ATen operators by self time per forward; and the forward's total (sum of self times)."""
    with torch.no_grad():
        model(*inputs)
        _sync(device)
        with torch.profiler.profile(activities=_activities(device), record_shapes=True) as prof:
            for _ in range(iters):
                model(*inputs)
            _sync(device)
    groups: dict[tuple, list] = defaultdict(lambda: [0, 0.0])
    for event in prof.events():
        if not event.name.startswith("aten::"):
            continue
        key = (
            event.name,
            repr(event.input_shapes),
            repr(list(getattr(event, "input_dtypes", []) or [])),
        )
        groups[key][0] += 1
        groups[key][1] += _self_ms(event, device)
    rows = [
        OperatorRow(name, eval(shapes), eval(dtypes), count / iters, ms / iters)  # noqa: S307 (our own reprs of lists)
        for (name, shapes, dtypes), (count, ms) in groups.items()
    ]
    total = sum(r.ms_per_forward for r in rows)
    for r in rows:
        r.share = r.ms_per_forward / total if total else 0.0
    rows.sort(key=lambda r: -r.ms_per_forward)
    return rows, total


def node_times(gm: fx.GraphModule, inputs, device: str, iters: int) -> dict[str, float]:
    runner = _RangedInterpreter(gm)
    with torch.no_grad():
        runner.run(*inputs)
        _sync(device)
        with torch.profiler.profile(activities=_activities(device)) as prof:
            for _ in range(iters):
                runner.run(*inputs)
            _sync(device)
    times: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        if event.key.startswith("fx::"):
            times[event.key[4:]] += _total_ms(event, device) / iters
    return dict(times)


# ------------------------------------------------------------------------------ items


def _meta(node: fx.Node) -> tuple[list[int], str]:
    tm = node.meta.get("tensor_meta")
    if tm is None or not hasattr(tm, "shape"):
        return [], ""
    return list(tm.shape), str(tm.dtype).removeprefix("torch.")


def _first_tensor_input(node: fx.Node) -> fx.Node | None:
    for a in node.args:
        if isinstance(a, fx.Node):
            return a
    return None


COMMUTATIVE = {operator.add, operator.mul, torch.add, torch.mul, "add", "mul"}


def _continues(user: fx.Node, current: fx.Node) -> bool:
    """`user` takes the chain's value as its main input (either side of a commutative op: a
    residual `x + f(x)`)."""
    if _first_tensor_input(user) is current:
        return True
    try:
        commutative = user.target in COMMUTATIVE
    except TypeError:
        return False
    return commutative and current in user.args


def build_items(gm: fx.GraphModule, times: dict[str, float]) -> tuple[list[NodeInfo], list[Item]]:
    infos: dict[str, NodeInfo] = {}
    kinds: dict[fx.Node, str] = {}
    for node in gm.graph.nodes:
        kind, op = classify(gm, node)
        kinds[node] = kind
        shape, dtype = _meta(node)
        infos[node.name] = NodeInfo(
            node.name, kind, _target_text(node), shape, dtype, times.get(node.name, 0.0), op
        )
    items: list[Item] = []
    taken: set[fx.Node] = set()
    chain_of: dict[fx.Node, Item] = {}
    for node in gm.graph.nodes:
        if node in taken or kinds[node] != "contraction":
            continue
        members = [node]
        current = node
        while len(current.users) == 1:
            (user,) = current.users
            if kinds.get(user) != "elementwise" or not _continues(user, current):
                break
            members.append(user)
            current = user
        taken.update(members)
        shape, dtype = _meta(members[-1])
        label = "+".join(infos[m.name].target.strip(".()") for m in members)
        item = Item(
            label,
            "chain",
            [m.name for m in members],
            sum(infos[m.name].ms for m in members),
            shape,
            dtype,
        )
        items.append(item)
        for m in members:
            chain_of[m] = item
    for node in gm.graph.nodes:
        if node in taken or kinds[node] in ("free", "contraction"):
            continue
        info = infos[node.name]
        if kinds[node] == "library":
            item = Item(
                info.library_op,
                "library",
                [node.name],
                info.ms,
                info.shape,
                info.dtype,
                info.library_op,
            )
            source = _first_tensor_input(node)
            if info.library_op in ELEMENTWISE_LIBRARY and source in chain_of:
                item.fusible_into = chain_of[source].name
            items.append(item)
        elif kinds[node] == "other" and info.ms > 0 and info.dtype:
            items.append(Item(info.target, "node", [node.name], info.ms, info.shape, info.dtype))
    total = sum(i.ms_per_forward for i in items) or 1.0
    for item in items:
        item.share = item.ms_per_forward / total
    items.sort(key=lambda i: -i.ms_per_forward)
    return list(infos.values()), items


# ------------------------------------------------------------------------------ torch.compile


OP_TOKENS = {
    "layer_norm": ["layer_norm"],
    "softmax": ["softmax", "amax", "exp"],
    "log_softmax": ["log_softmax", "amax", "exp"],
    "gelu": ["gelu", "erf"],
    "group_norm": ["group_norm"],
    "rms_norm": ["rms", "rsqrt", "pow", "mean"],
    "sdpa": ["flash", "attention", "efficient"],
}


def compiled_kernels(model, inputs, device: str, iters: int = 3) -> list[tuple[str, float]]:
    """(kernel name, ms per forward) of the inductor-compiled model."""
    torch._dynamo.reset()
    compiled = torch.compile(model)
    with torch.no_grad():
        compiled(*inputs)
        _sync(device)
        with torch.profiler.profile(activities=_activities(device)) as prof:
            for _ in range(iters):
                compiled(*inputs)
            _sync(device)
    out: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        name = event.key
        on_device = device == "cuda" and event.device_type == torch.autograd.DeviceType.CUDA
        if on_device or "fused" in name or name.startswith(("triton_", "cpp_", "extern")):
            out[name] += _self_ms(event, device) / iters
    torch._dynamo.reset()
    return sorted(out.items(), key=lambda kv: -kv[1])


def annotate_compile(items: list[Item], infos: dict[str, NodeInfo], kernels: list) -> None:
    for item in items:
        tokens: list[str] = []
        if item.library_op:
            tokens += OP_TOKENS.get(item.library_op, [item.library_op])
        for name in item.nodes:
            target = infos[name].target.strip(".()").lower()
            tokens += [
                t for t in ("relu", "gelu", "silu", "tanh", "sigmoid", "add", "mul") if t in target
            ]
        fused = [k for k, _ in kernels if "fused" in k and any(t in k for t in tokens)]
        item.compiled_kernels = fused[:4]
        if item.kind == "chain" and len(item.nodes) > 1:
            item.compile_note = (
                "inductor kernels named after its elementwise ops: " + ", ".join(fused[:2])
                if fused
                else "no inductor kernel is named after its elementwise ops"
            )
        else:
            item.compile_note = (
                "inductor kernels named after it: " + ", ".join(fused[:2])
                if fused
                else "no inductor-generated kernel named after it (extern/library kernel, or renamed)"
            )


# ------------------------------------------------------------------------------ entry point


def profile_model(
    model,
    inputs,
    *,
    name: str,
    device: str,
    dtype: str,
    iters: int = 5,
    check_compile: bool = False,
) -> ModelProfile:
    operators, total = operator_table(model, inputs, device, iters)
    timing = "device time (CUDA kernels)" if device == "cuda" else "CPU time (not GPU figures)"
    try:
        gm = fx.symbolic_trace(model)
        ShapeProp(gm).propagate(*inputs)
    except Exception as exc:  # noqa: BLE001 (any tracing failure of user code: reported, not fatal)
        return ModelProfile(
            name, device, dtype, timing, total, operators, [], False, f"{type(exc).__name__}: {exc}"
        )
    infos, items = build_items(gm, node_times(gm, inputs, device, iters))
    if check_compile:
        annotate_compile(items, {i.name: i for i in infos}, compiled_kernels(model, inputs, device))
    return ModelProfile(
        name, device, dtype, timing, total, operators, items, True, compile_checked=check_compile
    )


def trace(model, inputs) -> fx.GraphModule:
    gm = fx.symbolic_trace(model)
    ShapeProp(gm).propagate(*inputs)
    return gm
