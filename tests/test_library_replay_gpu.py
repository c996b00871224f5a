"""Launch replay on a GPU: a served key's second call is recorded (kernels_library/replay.py) and
every later call with that key is answered by the C++ route (csrc/route.cpp), which allocates
the outputs and launches the recorded Triton kernels with cuLaunchKernel, without entering
Python (observed with `sys.setprofile`). Checked: outputs equal to PyTorch's and bit-identical to
the Python route's, each call's own inputs and parameters used, an input that loses the
alignment Triton specialised on served by Python, fallbacks unchanged, a forward that computes
besides its kernel not replayed (with its reason), CUDA-graph capture of a replayed call, the
switch, and the build of the extension here.

The entries are the legit Triton fixtures with verdicts constructed for this machine (its arch
and torch / triton / CUDA versions; no evaluation here: the evaluator's GPU path is
tests/test_library_gpu.py), so the test runs in seconds once the route is built.

Run on the GPU machine: `pytest -m gpu tests/test_library_replay_gpu.py -rA -s`.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_library_helpers import (
    LEGIT,
    cpu_problem,
    environment,
    make_result,
    python_kernel_calls,
    write_all,
)

import forge.kernels_library as kl
from forge.kernels_library import adapters, cxx_route, runtime
from forge.kernels_library.promotion import build_entry
from forge.kernels_library.storage import EntryRecord

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.usefixtures("clean_library"),
]

N = 12


@pytest.fixture(scope="module", autouse=True)
def home(forge_cache_dir):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FORGE_HOME", str(forge_cache_dir))
        for name in (
            "FORGE_KERNELS_DISABLE",
            "FORGE_KERNELS_ROUTE",
            "FORGE_KERNELS_REPLAY",
            "FORGE_LIBRARY",
        ):
            mp.delenv(name, raising=False)
        yield
    kl.disable()


def machine_entry(op: str, fixture: str, source: str | None = None) -> EntryRecord:
    """An entry of a legit fixture, verified (by construction) on this machine."""
    major, minor = torch.cuda.get_device_capability()
    env = environment(
        "cuda",
        f"sm_{major}{minor}",
        torch.__version__,
        runtime.triton_version(),
        torch.version.cuda,
    )
    problem = cpu_problem(op)
    text = source if source is not None else (LEGIT / fixture).read_text()
    return build_entry(problem, text, make_result(problem, env=env), 0.0)


@pytest.fixture(scope="module")
def lib(tmp_path_factory) -> Path:
    return write_all(
        tmp_path_factory.mktemp("replay-library"),
        machine_entry("softmax", "triton_softmax.py"),
        machine_entry("layer_norm", "triton_layer_norm.py"),
    )


def op_stats(op: str) -> dict:
    return kl.stats()["ops"][op]


def route(op: str, key: str = "CUDA"):
    state = runtime._STATE.ops[op]
    return state.routes[state.keys.index(key)]


def test_the_route_builds_here_and_reaches_the_driver():
    torch.zeros(1, device="cuda")  # CUDA initialised: libcuda.so.1 is loaded
    started = time.perf_counter()
    extension = cxx_route.extension()
    print(
        f"C++ route built or loaded in {time.perf_counter() - started:.1f} s; current stream "
        f"through {extension.STREAM_SOURCE}"
    )
    assert extension.driver_problem() == ""
    device = torch.cuda.current_device()
    assert extension.current_stream(device) == torch.cuda.current_stream(device).cuda_stream
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        assert extension.current_stream(device) == side.cuda_stream != 0


def test_served_softmax_calls_are_replayed_from_cxx(lib):
    xs = [torch.randn(5, 127, device="cuda") for _ in range(N)]
    expected = [torch.softmax(x, -1) for x in xs]
    kl.enable(["softmax"], path=lib)
    first = [torch.softmax(x, -1) for x in xs[:2]]  # served in Python; the second recorded
    assert route("softmax").plans() == 1, op_stats("softmax")["not_replayed"]
    with python_kernel_calls() as entered:
        rest = [torch.softmax(x, -1) for x in xs[2:]]
    assert entered[0] == 0
    stats = op_stats("softmax")
    assert (stats["library_calls"], stats["replayed_calls"]) == (N, N - 2)
    assert sum(stats["library_calls_by_entry"].values()) == N and stats["not_replayed"] == {}
    for got, want in zip(first + rest, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    kl.enable(["softmax"], path=lib, route="python")
    python = [torch.softmax(x, -1) for x in xs[2:]]
    assert all(torch.equal(r, p) for r, p in zip(rest, python, strict=True))  # the same kernel


def test_a_reshaped_call_is_replayed_in_its_shape(lib):
    xs = [torch.randn(3, 11, 1000, device="cuda") for _ in range(4)]  # 33 rows: bucket 64
    expected = [torch.softmax(x, -1) for x in xs]
    kl.enable(["softmax"], path=lib)
    got = [torch.softmax(x, -1) for x in xs]
    stats = op_stats("softmax")
    assert stats["replayed_calls"] == 2, f"not replayed: {stats['not_replayed']}"
    for g, e in zip(got, expected, strict=True):
        assert g.shape == (3, 11, 1000) and g.is_contiguous()
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


def test_an_input_off_the_alignment_triton_specialised_on_is_served_by_python(lib):
    x = torch.randn(5, 127, device="cuda")
    base = torch.randn(5 * 127 + 1, device="cuda")
    shifted = base[1:].view(5, 127)  # the same key (sizes, strides, dtype), 4 bytes off
    expected = torch.softmax(shifted, -1)
    kl.enable(["softmax"], path=lib)
    for _ in range(3):
        torch.softmax(x, -1)
    assert op_stats("softmax")["replayed_calls"] == 1
    with python_kernel_calls() as entered:
        out = torch.softmax(shifted, -1)
    assert entered[0] == 1 and op_stats("softmax")["replayed_calls"] == 1
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.softmax(x, -1)
    assert op_stats("softmax")["replayed_calls"] == 2


def test_layer_norm_replays_use_each_calls_weight_and_bias(lib):
    x = torch.randn(7, 127, device="cuda")
    params = [
        (torch.rand(127, device="cuda") + 0.5, torch.randn(127, device="cuda")) for _ in range(5)
    ]
    expected = [F.layer_norm(x, (127,), w, b) for w, b in params]
    kl.enable(["layer_norm"], path=lib)
    with torch.no_grad():
        got = [F.layer_norm(x, (127,), w, b) for w, b in params]
    stats = op_stats("layer_norm")
    assert (stats["library_calls"], stats["replayed_calls"]) == (5, 3), stats
    assert route("layer_norm", "AutogradCUDA").plans() == 1
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


def test_unserved_calls_still_go_to_pytorch(lib):
    cases = {
        runtime.NO_BUCKET: torch.randn(7, 100, device="cuda"),
        runtime.NO_DTYPE: torch.randn(7, 127, device="cuda", dtype=torch.float64),
        adapters.NON_CONTIGUOUS: torch.randn(127, 7, device="cuda").t(),
    }
    expected = {reason: torch.softmax(x, -1) for reason, x in cases.items()}
    kl.enable(["softmax"], path=lib)
    for _ in range(3):
        for reason, x in cases.items():
            assert torch.equal(torch.softmax(x, -1), expected[reason])
    stats = op_stats("softmax")
    assert stats["fallbacks"] == dict.fromkeys(cases, 3)
    assert (stats["library_calls"], stats["replayed_calls"]) == (0, 0)
    assert route("softmax").known() == 3 and route("softmax").plans() == 0


def test_a_forward_that_computes_besides_its_kernel_is_not_replayed(tmp_path):
    source = (LEGIT / "triton_softmax.py").read_text()
    assert "    x = x.contiguous()\n" in source
    source = source.replace("    x = x.contiguous()\n", "    x = x.contiguous() * 1.0\n")
    library = write_all(tmp_path, machine_entry("softmax", "triton_softmax.py", source))
    xs = [torch.randn(5, 127, device="cuda") for _ in range(4)]
    expected = [torch.softmax(x, -1) for x in xs]
    kl.enable(["softmax"], path=library)
    with python_kernel_calls() as entered:
        got = [torch.softmax(x, -1) for x in xs]
    assert entered[0] == 4
    stats = op_stats("softmax")
    assert (stats["library_calls"], stats["replayed_calls"]) == (4, 0)
    ((reason, keys),) = stats["not_replayed"].items()
    assert reason.startswith("the forward runs aten.mul.Tensor") and keys == 1
    assert route("softmax").plans() == 0 and route("softmax").not_replayed() == 1
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


def test_cuda_graph_capture_of_a_replayed_call(lib):
    x = torch.randn(5, 127, device="cuda")
    kl.enable(["softmax"], path=lib)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            torch.softmax(x, -1)  # served, recorded, replayed
    torch.cuda.current_stream().wait_stream(side)
    assert route("softmax").plans() == 1 and op_stats("softmax")["replayed_calls"] == 1
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = torch.softmax(x, -1)
    assert op_stats("softmax")["replayed_calls"] == 2  # the captured call came from C++
    for _ in range(3):
        x.copy_(torch.randn(5, 127, device="cuda"))
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(y.cpu(), torch.softmax(x.cpu(), -1), atol=1e-5, rtol=1e-5)
    assert op_stats("softmax")["replayed_calls"] == 2


def test_replay_off_keeps_served_calls_in_python(lib):
    x = torch.randn(5, 127, device="cuda")
    kl.enable(["softmax"], path=lib, replay=False)
    with python_kernel_calls() as entered:
        for _ in range(5):
            torch.softmax(x, -1)
    assert entered[0] == 5 and kl.stats()["replay"] is False
    assert op_stats("softmax")["replayed_calls"] == 0 and route("softmax").plans() == 0


def test_reset_and_disable_drop_the_plans(lib):
    x = torch.randn(5, 127, device="cuda")
    kl.enable(["softmax"], path=lib)
    for _ in range(3):
        torch.softmax(x, -1)
    softmax = route("softmax")
    assert softmax.plans() == 1
    kl.reset_stats()
    assert softmax.plans() == 0
    for _ in range(3):
        torch.softmax(x, -1)
    assert softmax.plans() == 1 and op_stats("softmax")["replayed_calls"] == 1
    kl.disable()
    assert softmax.plans() == 0
