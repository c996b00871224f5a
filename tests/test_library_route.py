"""The runtime's C++ route on the CPU (kernels_library/csrc/route.cpp, built once per session into
the session's cache): calls the Python side has decided to leave to PyTorch are answered in C++
and counted exactly in `kl.stats()`; served calls still reach the library; what the decision
reads besides the call's key (grad mode, a TorchDispatchMode, a call from inside a library
kernel or from the runtime's own bypass) is never answered from a stale decision; `disable()`
restores PyTorch's kernel. Whether Python ran is observed with `sys.setprofile` (the Python
kernel's calls on this thread)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_library_helpers import (
    LEGIT,
    cpu_entry,
    cpu_library,
    interpreted_runtime,
    python_kernel_calls,
    write_all,
)
from torch.utils._python_dispatch import TorchDispatchMode

import forge.kernels_library as kl
from forge.kernels_library import adapters, custom_ops, cxx_route, replay, runtime

pytestmark = [
    pytest.mark.skipif(
        torch.cuda.is_available(),
        reason="CPU-dispatch tests run on a host without a GPU (TRITON_INTERPRET)",
    ),
    pytest.mark.usefixtures("clean_library"),
]

CPU = ["cpu"]
N = 200


@pytest.fixture(scope="module", autouse=True)
def interpreter(forge_cache_dir):
    with interpreted_runtime(forge_cache_dir):
        yield


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    return cpu_library(tmp_path_factory.mktemp("library"))


def fallbacks(op: str) -> dict:
    return kl.stats()["ops"].get(op, {}).get("fallbacks", {})


def library_calls(op: str) -> int:
    return kl.stats()["ops"].get(op, {}).get("library_calls", 0)


def test_repeated_unserved_calls_run_python_once_and_are_counted_exactly(lib):
    x = torch.randn(4, 100)  # dim 100: no bucket
    d = torch.randn(7, 127, dtype=torch.float64)  # no float64 entry
    t = torch.randn(127, 7).t()  # not contiguous
    expected = (torch.softmax(x, -1), torch.softmax(d, -1), torch.softmax(t, -1), F.gelu(x))
    report = kl.enable(path=lib, devices=CPU)
    assert report.route == "cxx" and kl.stats()["route"] == "cxx"
    assert "route.cpp" in torch._C._dispatch_dump("aten::_softmax")
    with python_kernel_calls() as entered:
        for _ in range(N):
            got = (torch.softmax(x, -1), torch.softmax(d, -1), torch.softmax(t, -1), F.gelu(x))
    for e, g in zip(expected, got, strict=True):
        assert torch.equal(e, g)
    # one Python decision per key (4 keys), every other call answered in C++
    assert entered[0] == 4
    assert fallbacks("softmax") == {
        runtime.NO_BUCKET: N,
        runtime.NO_DTYPE: N,
        adapters.NON_CONTIGUOUS: N,
    }
    assert fallbacks("gelu") == {runtime.NO_BUCKET: N}
    kl.reset_stats()
    assert fallbacks("softmax") == {}
    torch.softmax(x, -1)
    torch.softmax(x, -1)
    assert fallbacks("softmax") == {runtime.NO_BUCKET: 2}


def test_the_python_route_enters_python_per_call(lib):
    x = torch.randn(4, 100)
    report = kl.enable(path=lib, devices=CPU, route="python")
    assert report.route == "python"
    assert "route.cpp" not in torch._C._dispatch_dump("aten::_softmax")
    with python_kernel_calls() as entered:
        for _ in range(10):
            torch.softmax(x, -1)
    assert entered[0] == 10 and fallbacks("softmax") == {runtime.NO_BUCKET: 10}


def test_route_env_and_bad_values(lib, monkeypatch):
    monkeypatch.setenv("FORGE_KERNELS_ROUTE", "python")
    assert kl.enable(path=lib, devices=CPU).route == "python"
    assert kl.enable(path=lib, devices=CPU, route="cxx").route == "cxx"  # the argument wins
    monkeypatch.setenv("FORGE_KERNELS_ROUTE", "rust")
    with pytest.raises(
        kl.LibraryError, match=r"FORGE_KERNELS_ROUTE='rust' is not one of cxx, python"
    ):
        kl.enable(path=lib, devices=CPU)
    with pytest.raises(kl.LibraryError, match=r"route='fast' is not one of"):
        kl.enable(path=lib, devices=CPU, route="fast")


def test_served_shapes_stay_served_between_unserved_ones(lib):
    served = torch.randn(5, 127)  # bucket 8 x 127 ('tiny')
    unserved = torch.randn(5, 100)
    reference = (torch.softmax(served, -1), torch.softmax(unserved, -1))
    kl.enable(path=lib, devices=CPU)
    for _ in range(5):
        got = (torch.softmax(served, -1), torch.softmax(unserved, -1))
        torch.testing.assert_close(got[0], reference[0], atol=1e-6, rtol=1e-5)
        assert torch.equal(got[1], reference[1])
    assert library_calls("softmax") == 5
    assert fallbacks("softmax") == {runtime.NO_BUCKET: 5}


def test_grad_mode_and_requires_grad_change_the_decision(lib):
    ln = torch.nn.LayerNorm(127)  # weight and bias require grad
    torch.nn.init.uniform_(ln.weight, 0.5, 1.5)
    x = torch.randn(7, 127)
    expected = F.layer_norm(x, (127,), ln.weight, ln.bias).detach()
    xr = x.clone().requires_grad_(True)
    (F.layer_norm(xr, (127,), ln.weight.detach(), ln.bias.detach()) ** 2).sum().backward()
    kl.enable(path=lib, devices=CPU)
    for _ in range(3):
        out = ln(x)  # grad enabled, parameters require grad: PyTorch's, with a graph
        assert out.requires_grad and torch.equal(out.detach(), expected)
    assert fallbacks("layer_norm") == {runtime.AUTOGRAD: 3} and library_calls("layer_norm") == 0
    with torch.no_grad():  # the same tensors: served
        for _ in range(3):
            torch.testing.assert_close(ln(x), expected, atol=1e-5, rtol=1e-5)
    assert library_calls("layer_norm") == 3
    ln.requires_grad_(False)  # grad enabled, nothing requires grad: served
    for _ in range(3):
        ln(x)
    assert library_calls("layer_norm") == 6
    for _ in range(3):  # the input requires grad: PyTorch's again, gradients exact
        xg = x.clone().requires_grad_(True)
        (ln(xg) ** 2).sum().backward()
        assert torch.equal(xg.grad, xr.grad)
    assert fallbacks("layer_norm") == {runtime.AUTOGRAD: 6} and library_calls("layer_norm") == 6


class Passthrough(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def test_a_dispatch_mode_is_never_answered_from_a_remembered_decision(lib):
    w, b = torch.rand(100) + 0.5, torch.randn(100)
    x = torch.randn(7, 100)  # hidden 100: no bucket
    w2, b2 = torch.rand(127) + 0.5, torch.randn(127)
    x2 = torch.randn(7, 127)  # served
    kl.enable(path=lib, devices=CPU)
    with torch.no_grad():
        for _ in range(3):
            F.layer_norm(x, (100,), w, b)
            F.layer_norm(x2, (127,), w2, b2)
        assert fallbacks("layer_norm") == {runtime.NO_BUCKET: 3}
        assert library_calls("layer_norm") == 3
        with Passthrough():
            for _ in range(2):
                assert torch.equal(F.layer_norm(x, (100,), w, b), F.layer_norm(x, (100,), w, b))
                F.layer_norm(x2, (127,), w2, b2)
        assert fallbacks("layer_norm") == {runtime.NO_BUCKET: 3, runtime.DISPATCH_MODE: 6}
        F.layer_norm(x, (100,), w, b)
        F.layer_norm(x2, (127,), w2, b2)
    assert fallbacks("layer_norm")[runtime.NO_BUCKET] == 4
    assert library_calls("layer_norm") == 4


def test_fake_tensors_are_left_to_python(lib):
    from torch._subclasses.fake_tensor import FakeTensorMode

    kl.enable(path=lib, devices=CPU)
    with torch.no_grad():
        for _ in range(2):
            F.layer_norm(torch.randn(7, 127), (127,), torch.ones(127), torch.zeros(127))
        with FakeTensorMode():
            fake = torch.randn(7, 127)
            out = F.layer_norm(fake, (127,), torch.ones(127), torch.zeros(127))
            assert out.shape == (7, 127)
    assert fallbacks("layer_norm") == {runtime.SUBCLASS: 1}
    assert library_calls("layer_norm") == 2


class Plain(torch.Tensor):
    """A subclass without __torch_dispatch__ (no Python dispatch key): only its type differs."""


def test_a_subclass_with_a_remembered_key_is_still_a_subclass(lib):
    x = torch.randn(4, 100)
    kl.enable(path=lib, devices=CPU)
    for _ in range(3):
        torch.softmax(x, -1)
    for _ in range(2):
        out = torch.softmax(x.as_subclass(Plain), -1)
        assert torch.equal(out, torch.softmax(x, -1))
    assert fallbacks("softmax") == {runtime.NO_BUCKET: 5, runtime.SUBCLASS: 2}


def test_calls_from_inside_a_library_kernel_are_reentrant_not_remembered(tmp_path):
    # a gelu entry whose forward also calls torch.softmax on a shape no softmax entry serves
    source = (
        (LEGIT / "triton_gelu.py")
        .read_text()
        .replace(
            "        return gelu_forward(x)",
            "        torch.softmax(x[:, :100].contiguous(), -1)\n        return gelu_forward(x)",
        )
    )
    library = write_all(
        tmp_path / "lib",
        cpu_entry("softmax", "triton_softmax.py"),
        cpu_entry("gelu", "triton_gelu.py", source=source),
    )
    kl.enable(path=library, devices=CPU)
    for _ in range(3):
        torch.softmax(torch.randn(7, 100), -1)  # decided (no bucket) and remembered in C++
    for _ in range(2):
        F.gelu(torch.randn(7, 127))  # served; its inner softmax is the same key
    assert library_calls("gelu") == 2
    assert fallbacks("softmax") == {runtime.NO_BUCKET: 3, runtime.REENTRANT: 2}


def test_the_runtimes_own_bypass_is_not_counted(lib):
    x = torch.randn(7, 100)
    softmax = custom_ops.custom_op("softmax")
    kl.enable(path=lib, devices=CPU)
    for _ in range(3):
        torch.softmax(x, -1)  # remembered in C++
    # the custom op decides (no bucket, counted once) and calls aten::_softmax bypassed
    out = softmax(x, -1, False)
    assert torch.equal(out, torch.softmax(x, -1))
    assert fallbacks("softmax") == {runtime.NO_BUCKET: 5}


def test_calls_answered_in_cxx_from_several_threads_are_all_counted(lib):
    x = torch.randn(4, 100)
    expected = torch.softmax(x, -1)
    kl.enable(path=lib, devices=CPU)
    torch.softmax(x, -1)
    wrong = []

    def work():
        for _ in range(N):
            if not torch.equal(torch.softmax(x, -1), expected):
                wrong.append(1)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong
    assert fallbacks("softmax") == {runtime.NO_BUCKET: 2 * N + 1}


def test_disable_restores_pytorchs_kernel_and_keeps_the_counts(lib):
    x = torch.randn(4, 100)
    before = torch._C._dispatch_dump("aten::_softmax")
    kl.enable(path=lib, devices=CPU)
    routes = runtime._STATE.ops["softmax"].routes
    for _ in range(4):
        torch.softmax(x, -1)
    assert routes[0].registered and routes[0].known() == 1
    kl.disable()
    assert torch._C._dispatch_dump("aten::_softmax") == before
    assert not routes[0].registered and routes[0].known() == 0
    with python_kernel_calls() as entered:
        out = torch.softmax(x, -1)
    assert entered[0] == 0
    assert torch.equal(out, torch.ops.aten._softmax.default(x, -1, False))
    assert fallbacks("softmax") == {runtime.NO_BUCKET: 4}


def test_a_failed_build_is_a_clear_error_and_the_python_route_still_works(lib, tmp_path):
    code = (
        "import forge.kernels_library as kl, sys\n"
        "try:\n"
        f"    kl.enable(path={str(lib)!r}, devices=['cpu'])\n"
        "except kl.LibraryError as exc:\n"
        "    print('ERROR', exc)\n"
        f"print('PYTHON', sorted(kl.enable(path={str(lib)!r}, devices=['cpu'], route='python').registered.items()))\n"
    )
    env = {
        **os.environ,
        "FORGE_HOME": str(tmp_path / "home"),
        "CXX": str(tmp_path / "no-such-compiler"),
        "TRITON_INTERPRET": "1",
    }
    env.pop("FORGE_KERNELS_ROUTE", None)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    error = next(line for line in out.stdout.splitlines() if line.startswith("ERROR"))
    assert "C++ route could not be built" in error
    assert "route='python'" in error and "FORGE_KERNELS_ROUTE=python" in error
    assert "PYTHON [('gelu', 1), ('layer_norm', 1), ('softmax', 1)]" in out.stdout
    assert not any(Path(tmp_path / "home").rglob("*.so"))


def test_a_plan_crosses_into_cxx_in_the_form_install_takes():
    """The recorder's plan (replay.build_plan, here from CPU tensors) converts to install()'s
    arguments; outside a call of the route there is nothing to install it for."""
    x = torch.randn(5, 127)
    y = torch.empty_like(x)
    record = replay.LaunchRecord(
        "_softmax_kernel", replay.GENERATED, 0x1234, (5, 1, 1), 0, 4, 1, 0, False, False, 0, 0,
        False, (("*fp32", x), ("*fp32", y), ("i32", 127), ("fp32", 0.5)),
    )  # fmt: skip
    call = replay.RecordedCall(
        (x, -1, False), ["aten.empty_like.default"], [y], [record], (y,), x.device, 0
    )
    plan = replay.build_plan(call)
    extension = cxx_route.extension()
    with pytest.raises(RuntimeError, match=r"install\(\) outside a call of the C\+\+ route"):
        extension.install(0, 0, False, *map(list, plan))
    assert not extension.served() and not extension.refuse()
    assert extension.driver_problem() == "libcuda.so.1 is not loaded in this process"
