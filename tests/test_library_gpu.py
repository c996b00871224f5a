"""The library's served path on a GPU: entries built here by the evaluator (the legit Triton
fixtures for softmax, layer_norm and gelu, evaluated on this GPU on the catalogue's small sets,
promoted at threshold 0 so that every verified kernel is served whatever its speed), then:
served calls and their outputs, fallbacks bit-identical to PyTorch, autograd (forward served,
backward equal to PyTorch's over a dtype table), CUDA-graph capture and replay of served calls,
and torch.compile (inductor, fullgraph) with `kl.compile_backend()`.

Run on the GPU machine: `pytest -m gpu tests/test_library_gpu.py -rA` (about 2-4 minutes: three
evaluations, then inductor compiles).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import forge.kernels_library as kl
from forge.evaluator import EvalConfig, evaluate, resolve_problem
from forge.kernels_library import adapters, custom_ops, runtime
from forge.kernels_library.promotion import build_entry
from forge.kernels_library.storage import write_entry

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

LEGIT = Path(__file__).parent / "fixtures" / "legit"
OPS = {
    "softmax": "triton_softmax.py",
    "layer_norm": "triton_layer_norm.py",
    "gelu": "triton_gelu.py",
}


@pytest.fixture(scope="module")
def lib(tmp_path_factory, forge_cache_dir):
    directory = tmp_path_factory.mktemp("gpu-library")
    for op, fixture in OPS.items():
        problem = resolve_problem(op)
        # timed (so served) at both small sets: the speedups, and the buckets they serve, are
        # taken at the target sets only, by default the largest
        cpu_sets = problem.sets_for("cpu")
        problem = problem.model_copy(
            update={"input_sets": cpu_sets, "target_sets": [s.name for s in cpu_sets]}
        )
        source = (LEGIT / fixture).read_text()
        result = evaluate(
            problem,
            source,
            EvalConfig(
                device="cuda", profile=False, baselines=["eager"], cache_dir=forge_cache_dir
            ),
        )
        assert result.status.value == "correct", (op, result.reasons)
        write_entry(build_entry(problem, source, result, 0.0), directory)
    return directory


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    monkeypatch.delenv("FORGE_KERNELS_DISABLE", raising=False)
    kl.disable()
    kl.reset_stats()
    torch._dynamo.reset()
    yield
    kl.disable()


def calls(op: str) -> int:
    return kl.stats()["ops"].get(op, {}).get("library_calls", 0)


def fallbacks(op: str) -> dict:
    return kl.stats()["ops"].get(op, {}).get("fallbacks", {})


def test_served_calls_match_pytorch(lib):
    x = torch.randn(5, 127, device="cuda")  # bucket 8 x 127 ('tiny')
    ln = nn.LayerNorm(127).cuda()
    nn.init.uniform_(ln.weight, 0.5, 1.5)
    with torch.no_grad():
        expected = (torch.softmax(x, -1), ln(x), F.gelu(x))
        report = kl.enable(path=lib)
        assert report.registered == {"softmax": 1, "layer_norm": 1, "gelu": 1}
        got = (torch.softmax(x, -1), ln(x), F.gelu(x))
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)
    assert (calls("softmax"), calls("layer_norm"), calls("gelu")) == (1, 1, 1), kl.stats()["ops"]


def test_unserved_calls_are_pytorchs_bits(lib):
    x = torch.randn(7, 100, device="cuda")
    transposed = torch.randn(127, 7, device="cuda")
    cases = {
        runtime.NO_BUCKET: lambda: torch.softmax(x, -1),
        runtime.NO_DTYPE: lambda: torch.softmax(x.double(), -1),
        adapters.NON_CONTIGUOUS: lambda: torch.softmax(transposed.t(), -1),
    }
    expected = {k: f() for k, f in cases.items()}
    kl.enable(path=lib)
    for reason, fn in cases.items():
        assert torch.equal(fn(), expected[reason])
        assert fallbacks("softmax").get(reason) == 1, kl.stats()["ops"]["softmax"]
    cpu = torch.randn(7, 127)
    assert torch.equal(torch.softmax(cpu, -1), torch.softmax(cpu.clone(), -1))
    assert kl.stats()["ops"]["softmax"]["dispatch_keys"] == ["CUDA"]  # the CPU key untouched


TOLERANCES = [
    (torch.float32, 1e-5, 1e-4),
    (torch.bfloat16, 2e-2, 2e-2),
    (torch.float16, 2e-3, 2e-3),
]


@pytest.mark.parametrize("dtype, atol, rtol", TOLERANCES, ids=lambda v: str(v))
@pytest.mark.parametrize("shape", ["tiny", "odd_3d"])
@pytest.mark.parametrize("op", ["softmax", "gelu"])
def test_eager_backward_matches_pytorch(lib, op, shape, dtype, atol, rtol):
    """softmax and gelu have their own derivative formulas: the library serves the forward
    (float32 entries here; other dtypes fall back) and PyTorch's backward runs on its output.
    Shapes in the buckets of the sets 'tiny' and 'odd' (33 rows; here as 3 x 11)."""
    fn = (lambda t: torch.softmax(t, -1)) if op == "softmax" else F.gelu
    dims = {"tiny": (5, 127), "odd_3d": (3, 11, 1000 if op == "softmax" else 129)}[shape]
    x = torch.randn(*dims, device="cuda", dtype=dtype)
    g = torch.randn_like(x)
    xr = x.clone().requires_grad_(True)
    fn(xr).backward(g)
    kl.enable(path=lib)
    xl = x.clone().requires_grad_(True)
    fn(xl).backward(g)
    assert calls(op) == (1 if dtype == torch.float32 else 0), kl.stats()["ops"][op]
    torch.testing.assert_close(xl.grad, xr.grad, atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype, atol, rtol", TOLERANCES, ids=lambda v: str(v))
def test_custom_op_layer_norm_backward_matches_pytorch(lib, dtype, atol, rtol):
    x = torch.randn(5, 127, device="cuda", dtype=dtype, requires_grad=True)
    w = (torch.rand(127, device="cuda") + 0.5).to(dtype).requires_grad_(True)
    b = torch.randn(127, device="cuda", dtype=dtype, requires_grad=True)
    g = torch.randn(5, 127, device="cuda", dtype=dtype)
    expected = torch.autograd.grad(F.layer_norm(x, (127,), w, b), (x, w, b), g)
    kl.enable(path=lib)
    out = custom_ops.custom_op("layer_norm")(x, [127], w, b, 1e-5, True)
    got = torch.autograd.grad(out, (x, w, b), g)
    assert calls("layer_norm") == (1 if dtype == torch.float32 else 0)
    for e, r in zip(expected, got, strict=True):
        torch.testing.assert_close(r, e, atol=atol, rtol=rtol)


def test_cuda_graph_capture_replays_served_kernels(lib):
    x = torch.randn(5, 127, device="cuda")
    kl.enable(path=lib)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            torch.softmax(x, -1)  # warm up (Triton compiles outside the capture)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = F.gelu(torch.softmax(x, -1))
    served = calls("softmax")
    for _ in range(3):
        x.copy_(torch.randn(5, 127, device="cuda"))
        graph.replay()
        torch.cuda.synchronize()
        kl.disable()
        torch.testing.assert_close(y, F.gelu(torch.softmax(x, -1)), atol=1e-5, rtol=1e-5)
        kl.enable(path=lib)
    assert served == 3 and calls("softmax") == served  # replays run no Python


def test_compiled_model_uses_the_library(lib):
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln = nn.LayerNorm(127)
            self.fc = nn.Linear(127, 127)

        def forward(self, x):
            return torch.softmax(F.gelu(self.fc(self.ln(x))), dim=-1)

    model = Block().cuda().eval()
    x = torch.randn(5, 127, device="cuda")
    with torch.no_grad():
        expected = model(x)
    kl.enable(path=lib)
    backend = kl.compile_backend()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    kl.reset_stats()
    with torch.no_grad():
        for _ in range(3):
            out = compiled(x)
    assert sorted(d.op for d in backend.replaced) == ["gelu", "layer_norm", "softmax"]
    assert (calls("layer_norm"), calls("gelu"), calls("softmax")) == (3, 3, 3)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
