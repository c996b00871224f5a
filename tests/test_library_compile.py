"""The runtime's torch.compile path and its cost on calls it does not serve, on the CPU (legit
Triton fixtures under TRITON_INTERPRET=1 as entries verified on `cpu`, `devices=["cpu"]`):

- unserved calls: PyTorch's bits, counted, decided once per key; operators, device types and
  dtypes without entries never reach the per-call routing;
- the `forge::<op>` custom ops: schema, fake implementation and autograd registration checked
  by `torch.library.opcheck`; fake shape/dtype/stride propagation against PyTorch's operator;
- `kl.compile_backend()`: a model compiled with `fullgraph=True` (inner backend `aot_eager`,
  which traces forward and backward through the custom ops as inductor does, without the
  minute of C++ compilation inductor costs on this machine) calls the library;
- autograd: forward served, backward equal to PyTorch's gradients over a (dtype, atol, rtol)
  table; the eager ATen path of composite operators keeps its documented fallback.
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_library_helpers import cpu_library, interpreted_runtime

import forge.kernels_library as kl
from forge.kernels_library import custom_ops, runtime

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="CPU-dispatch tests run on a host without a GPU (TRITON_INTERPRET)",
)

CPU = ["cpu"]


@pytest.fixture(scope="module", autouse=True)
def interpreter(forge_cache_dir):
    with interpreted_runtime(forge_cache_dir):
        yield


@pytest.fixture(autouse=True)
def clean():
    kl.disable()
    kl.reset_stats()
    torch._dynamo.reset()
    yield
    kl.disable()


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    return cpu_library(tmp_path_factory.mktemp("library"))


def calls(op: str) -> int:
    return kl.stats()["ops"].get(op, {}).get("library_calls", 0)


def fallbacks(op: str) -> dict:
    return kl.stats()["ops"].get(op, {}).get("fallbacks", {})


# ------------------------------------------------------------------------------ unserved calls


def test_unserved_calls_give_pytorchs_bits_and_are_decided_once(lib, caplog):
    x = torch.randn(7, 100)  # dim 100: no bucket
    d = torch.randn(7, 127, dtype=torch.float64)  # no float64 entry
    expected = (torch.softmax(x, -1), torch.softmax(d, -1), F.gelu(d))
    kl.enable(path=lib, devices=CPU)
    with caplog.at_level(logging.DEBUG, logger="forge.kernels_library"):
        for _ in range(3):
            got = (torch.softmax(x, -1), torch.softmax(d, -1), F.gelu(d))
            for e, g in zip(expected, got, strict=True):
                assert torch.equal(e, g)
    assert fallbacks("softmax") == {runtime.NO_BUCKET: 3, runtime.NO_DTYPE: 3}
    assert fallbacks("gelu") == {runtime.NO_DTYPE: 3}
    details = [r.getMessage() for r in caplog.records if "(cpu, " in r.getMessage()]
    # one line per decision (op, reason, arch, dtype, bucket), not per call
    assert sorted(details) == [
        "gelu: no entry for this dtype on this machine (cpu, float64)",
        "softmax: no entry for this dtype on this machine (cpu, float64)",
        "softmax: no entry for this shape bucket (cpu, float32, bucket batch_size=8, dim=100)",
    ]
    assert calls("softmax") == 0


def test_only_operators_and_devices_with_entries_are_registered(lib):
    before = torch._C._dispatch_dump("aten::_log_softmax")
    kl.enable(path=lib, devices=["cpu", "cuda"])
    # entries verified on `cpu` only: nothing at the CUDA key, nothing for log_softmax
    assert kl.stats()["ops"]["softmax"]["dispatch_keys"] == ["CPU"]
    assert kl.stats()["ops"]["layer_norm"]["dispatch_keys"] == ["AutogradCPU", "CPU"]
    assert torch._C._dispatch_dump("aten::_log_softmax") == before
    assert "kernels_library/runtime.py" not in before


# ------------------------------------------------------------------------------ custom ops


def op_inputs(op: str, dtype=torch.float32, grad: bool = False) -> tuple[tuple, dict]:
    g = torch.Generator().manual_seed(0)

    def t(*shape, low=None):
        v = torch.randn(*shape, generator=g, dtype=torch.float64)
        if low is not None:
            v = v.abs() + low
        return v.to(dtype).requires_grad_(grad)

    table = {
        "softmax": ((t(7, 127), -1, False), {}),
        "log_softmax": ((t(7, 127), -1, False), {}),
        "gelu": ((t(7, 127),), {"approximate": "none"}),
        "layer_norm": ((t(7, 127), [127], t(127, low=0.5), t(127), 1e-5, True), {}),
        "rms_norm": ((t(7, 127), [127], t(127, low=0.5), 1e-6), {}),
        "group_norm": ((t(2, 6, 5, 5), 3, t(6, low=0.5), t(6), 1e-5, True), {}),
        "sdpa": (
            (t(1, 2, 16, 16), t(1, 2, 16, 16), t(1, 2, 16, 16), None, 0.0, False),
            {"scale": None, "enable_gqa": False},
        ),
    }
    return table[op]


OPS = ["softmax", "log_softmax", "gelu", "layer_norm", "rms_norm", "group_norm", "sdpa"]


@pytest.mark.parametrize("op", OPS)
def test_opcheck_schema_fake_and_autograd_registration(op):
    args, kwargs = op_inputs(op, torch.float64, grad=True)
    torch.library.opcheck(custom_ops.custom_op(op), args, kwargs)


@pytest.mark.parametrize(
    "op, update",
    [
        ("softmax", {}),
        ("softmax", {"x": lambda x: x.t()}),  # strided: PyTorch's output strides
        ("layer_norm", {"x": lambda x: x.view(1, 7, 127)}),
        ("sdpa", {}),
        ("group_norm", {}),
    ],
)
def test_fake_implementation_propagates_shape_dtype_strides(op, update):
    from torch._subclasses.fake_tensor import FakeTensorMode

    args, kwargs = op_inputs(op)
    if "x" in update:
        args = (update["x"](args[0]), *args[1:])
    overload = custom_ops.custom_op(op)
    reference = custom_ops.aten_overload(custom_ops.ADAPTERS[op])
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake_args = tuple(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args)
        out = overload(*fake_args, **kwargs)
        expected = reference(*fake_args, **kwargs)
    assert (out.shape, out.dtype, out.stride()) == (
        expected.shape,
        expected.dtype,
        expected.stride(),
    )
    # half_to_float: the output dtype follows PyTorch's rule, not the input's
    with FakeTensorMode() as mode:
        half = torch.empty(4, 8, dtype=torch.float16)
        assert custom_ops.custom_op("softmax")(half, -1, True).dtype == torch.float32


def test_custom_op_is_served_when_enabled_and_pytorch_otherwise(lib):
    args, _ = op_inputs("softmax")
    softmax = custom_ops.custom_op("softmax")
    plain = softmax(*args)
    assert torch.equal(plain, torch.softmax(args[0], -1)) and calls("softmax") == 0
    kl.enable(path=lib, devices=CPU)
    served = softmax(*args)
    assert calls("softmax") == 1
    torch.testing.assert_close(served, plain, atol=1e-6, rtol=1e-5)
    unserved = softmax(torch.randn(7, 100), -1, False)  # no bucket: PyTorch's, counted
    assert fallbacks("softmax") == {runtime.NO_BUCKET: 1} and unserved.shape == (7, 100)


# ------------------------------------------------------------------------------ torch.compile


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(127)
        self.fc = nn.Linear(127, 127)
        nn.init.uniform_(self.ln.weight, 0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.fc(self.ln(x)))
        return (
            torch.softmax(h, dim=-1)
            + (2 * h).softmax(-1)
            + F.softmax(h[:, :100].contiguous(), dim=-1).amax(-1, keepdim=True)
        )


def test_compile_backend_serves_the_compiled_graph(lib):
    torch.manual_seed(0)
    model, x = Block().eval(), torch.randn(7, 127)
    with torch.no_grad():
        expected = model(x)
    kl.enable(path=lib, devices=CPU)
    backend = kl.compile_backend("aot_eager")
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    kl.reset_stats()
    with torch.no_grad():
        out = compiled(x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert sorted(d.op for d in backend.replaced) == ["gelu", "layer_norm", "softmax", "softmax"]
    assert [(d.op, d.shape, d.reason) for d in backend.kept] == [
        ("softmax", [7, 100], runtime.NO_BUCKET)
    ]
    assert (calls("layer_norm"), calls("gelu"), calls("softmax")) == (1, 1, 2)
    # the compiled code calls the custom ops: disabled, they run PyTorch's operators
    kl.disable()
    kl.reset_stats()
    with torch.no_grad():
        again = compiled(x)
    assert calls("softmax") == 0
    torch.testing.assert_close(again, expected, atol=1e-5, rtol=1e-5)


def test_compile_backend_without_the_library_replaces_nothing():
    model = Block().eval()
    backend = kl.compile_backend("aot_eager")
    with torch.no_grad():
        out = torch.compile(model, backend=backend, fullgraph=True)(torch.randn(7, 127))
    assert out.shape == (7, 127) and backend.replaced == []
    assert {d.reason for d in backend.kept} == {"the library is not enabled for this operator"}


def test_compiled_training_step_uses_the_library_forward_and_pytorchs_backward(lib):
    torch.manual_seed(0)
    model, x = Block(), torch.randn(7, 127)
    model(x).pow(2).sum().backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    kl.enable(path=lib, devices=CPU)
    backend = kl.compile_backend("aot_eager")
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    kl.reset_stats()
    compiled(x).pow(2).sum().backward()
    assert (calls("layer_norm"), calls("gelu"), calls("softmax")) == (1, 1, 2)
    for got, want in zip((p.grad for p in model.parameters()), expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------ autograd

TOLERANCES = [
    (torch.float32, 1e-5, 1e-4),
    (torch.float64, 1e-10, 1e-10),
    (torch.bfloat16, 2e-2, 2e-2),
]
SERVED = {"softmax", "layer_norm", "gelu"}  # the float32 entries of the test library


@pytest.mark.parametrize("dtype, atol, rtol", TOLERANCES, ids=lambda v: str(v))
@pytest.mark.parametrize("op", OPS)
def test_backward_matches_pytorch(lib, op, dtype, atol, rtol):
    """Forward through the custom op (served by the library where an entry covers the dtype:
    float32 softmax, layer_norm, gelu here), backward by its registered formula; gradients
    compared with PyTorch's own operator's."""
    args, kwargs = op_inputs(op, dtype, grad=True)
    reference = custom_ops.aten_overload(custom_ops.ADAPTERS[op])
    leaves = [a for a in args if isinstance(a, torch.Tensor)]
    grad_out = torch.randn(reference(*args, **kwargs).shape, generator=torch.Generator()).to(dtype)
    expected = torch.autograd.grad(reference(*args, **kwargs), leaves, grad_out)
    kl.enable(path=lib, devices=CPU)
    out = custom_ops.custom_op(op)(*args, **kwargs)
    got = torch.autograd.grad(out, leaves, grad_out)
    served = op in SERVED and dtype == torch.float32
    assert calls(op) == (1 if served else 0)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=atol, rtol=rtol)


def test_eager_composite_op_needing_grad_falls_back_whole(lib):
    """The eager ATen path of layer_norm (CompositeImplicitAutograd) under autograd: PyTorch's
    forward and backward (the documented fallback; softmax and gelu keep their served forward
    with PyTorch's backward, tested in test_library_runtime)."""
    args, _ = op_inputs("layer_norm", grad=True)
    kl.enable(path=lib, devices=CPU)
    F.layer_norm(args[0], (127,), args[2], args[3]).sum().backward()
    assert calls("layer_norm") == 0 and fallbacks("layer_norm") == {runtime.AUTOGRAD: 1}
