"""The runtime on the CPU: the real torch.library registration path, exercised with entries
verified on `cpu` (legit Triton fixtures under TRITON_INTERPRET=1) via the documented
`devices=["cpu"]` option; every fallback path; enable/disable/use leaving results
bit-identical; kl.load; FORGE_KERNELS_DISABLE."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from test_library_helpers import LEGIT, cpu_entry, foreign_entry, interpreted_runtime, write_all
from torch.utils._python_dispatch import TorchDispatchMode

import forge.kernels_library as kl
from forge.kernels_library import adapters, runtime

# Triton decides at import whether its kernels (and its standard library) are interpreted, so
# TRITON_INTERPRET=1 is set (by the `interpreter` fixture) before this process first imports
# triton, which only library kernels loaded here do. Only on a host without a GPU.
pytestmark = [
    pytest.mark.skipif(
        torch.cuda.is_available(),
        reason="CPU-dispatch tests run on a host without a GPU (TRITON_INTERPRET)",
    ),
    pytest.mark.usefixtures("clean_library"),
]

CPU = ["cpu"]


@pytest.fixture(scope="module", autouse=True)
def interpreter(forge_cache_dir):
    with interpreted_runtime(forge_cache_dir):
        yield


@pytest.fixture(scope="module")
def entries():
    softmax = cpu_entry("softmax", "triton_softmax.py", {"tiny": 1.5, "odd": 1.5})
    # the same kernel (a comment apart): faster on 'tiny', slower on 'odd'
    softmax_b = cpu_entry(
        "softmax",
        "triton_softmax.py",
        {"tiny": 2.0, "odd": 1.2},
        source=(LEGIT / "triton_softmax.py").read_text() + "\n# variant b\n",
    )
    return {
        "softmax": softmax,
        "softmax_b": softmax_b,
        "softmax_fp16_sm90": foreign_entry("softmax", "triton_softmax.py", dtype="float16"),
        "layer_norm": cpu_entry("layer_norm", "triton_layer_norm.py"),
        "gelu": cpu_entry("gelu", "triton_gelu.py"),
        "rms_norm_sm90": foreign_entry("rms_norm", "triton_rms_norm.py"),
    }


@pytest.fixture(scope="module")
def library(tmp_path_factory, entries):
    return write_all(tmp_path_factory.mktemp("library"), *entries.values())


def op_stats(op: str) -> dict:
    return kl.stats()["ops"][op]


def fallbacks(op: str) -> dict:
    return op_stats(op)["fallbacks"]


def test_importing_the_package_is_light():
    code = "import sys, forge.kernels_library as kl; print(sorted(m for m in ('torch', 'sqlmodel', 'litellm', 'typer', 'pydantic', 'forge.db') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_default_enable_touches_no_cpu_kernel(library):
    x = torch.randn(7, 127)
    ln = torch.nn.LayerNorm(127)
    before = (torch.softmax(x, -1), ln(x), F.gelu(x))
    dump = torch._C._dispatch_dump("aten::_softmax")
    report = kl.enable(path=library)  # devices=["cuda"]: no GPU here
    assert report.registered == {}
    assert all("no cuda device" in s["reason"] for s in report.skipped_entries)
    after = (torch.softmax(x, -1), ln(x), F.gelu(x))
    assert torch._C._dispatch_dump("aten::_softmax") == dump
    with kl.use(path=library):
        inside = (torch.softmax(x, -1), ln(x), F.gelu(x))
    for a, b, c in zip(before, after, inside, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_registration_is_real_and_reversible(library):
    report = kl.enable(path=library, devices=CPU)
    assert report.registered == {"softmax": 2, "layer_norm": 1, "gelu": 1}
    assert "forge library verify" in report.not_registered["rms_norm"]
    assert report.not_registered["log_softmax"] == "no entry in the library"
    assert "kernels_library/runtime.py" in torch._C._dispatch_dump("aten::_softmax")
    assert op_stats("layer_norm")["dispatch_keys"] == ["AutogradCPU", "CPU"]
    assert op_stats("softmax")["dispatch_keys"] == ["CPU"]
    kl.disable()
    assert "kernels_library/runtime.py" not in torch._C._dispatch_dump("aten::_softmax")
    assert "kernels_library/runtime.py" not in torch._C._dispatch_dump("aten::layer_norm")


def test_library_kernels_serve_matching_calls(library, entries):
    x = torch.randn(5, 127)  # batch 5 is in the pow2 bucket 8 of the 'tiny' set (7 x 127)
    x3 = torch.randn(2, 20, 1000)  # 40 rows: bucket 64 of 'odd' (33 x 1000)
    ln = torch.nn.LayerNorm(127)
    torch.nn.init.uniform_(ln.weight, 0.5, 1.5)
    torch.nn.init.uniform_(ln.bias, -0.5, 0.5)
    g = torch.randn(6, 100)  # gelu bucket: batch 8, dim 128 (tiny 7 x 127)
    reference = (torch.softmax(x, -1), torch.softmax(x3, -1), ln(x).detach(), F.gelu(g))
    kl.enable(path=library, devices=CPU)
    with torch.no_grad():
        got = (torch.softmax(x, -1), torch.softmax(x3, -1), ln(x), F.gelu(g))
    for ref, out in zip(reference, got, strict=True):
        assert out.shape == ref.shape and out.dtype == ref.dtype
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert op_stats("softmax")["library_calls"] == 2
    assert op_stats("layer_norm")["library_calls"] == 1
    assert op_stats("gelu")["library_calls"] == 1
    # the fastest entry per bucket: variant b on 'tiny' (2.0x), the original on 'odd' (1.5x)
    assert op_stats("softmax")["library_calls_by_entry"] == {
        entries["softmax_b"].meta.id: 1,
        entries["softmax"].meta.id: 1,
    }
    assert all(not v for v in (fallbacks("softmax"), fallbacks("layer_norm"), fallbacks("gelu")))


def test_parameters_are_the_calls_not_the_module_defaults(library):
    kl.enable(path=library, devices=CPU)
    x = torch.randn(7, 127)
    w, b = torch.rand(127) + 0.5, torch.randn(127)
    with torch.no_grad():
        out = F.layer_norm(x, (127,), w, b)
        out2 = F.layer_norm(x, (127,), w * 2, b)
    kl.disable()
    torch.testing.assert_close(out, F.layer_norm(x, (127,), w, b), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out2, F.layer_norm(x, (127,), w * 2, b), atol=1e-5, rtol=1e-5)


def assert_fallback(op: str, reason: str, fn) -> None:
    """`fn()` gives PyTorch's bits exactly with the library enabled, and counts `reason`."""
    expected = fn()
    count = fallbacks(op).get(reason, 0) if op in kl.stats()["ops"] else 0
    with kl.use(path=library_path[0], devices=CPU):
        got = fn()
        assert fallbacks(op).get(reason, 0) == count + 1, kl.stats()["ops"][op]
    if isinstance(expected, Exception):
        assert type(got) is type(expected) and str(got) == str(expected)
    else:
        assert torch.equal(got, expected)


library_path: list = []


@pytest.fixture
def lib(library):
    library_path[:] = [library]
    return library


def test_fallback_softmax_arguments_and_shapes(lib):
    x = torch.randn(7, 127)
    assert_fallback(
        "softmax",
        adapters.NOT_LAST_DIM,
        lambda: torch.softmax(torch.randn(127, 7, generator=torch.Generator().manual_seed(0)), 0),
    )
    assert_fallback("softmax", adapters.NON_CONTIGUOUS, lambda: torch.softmax(x.t(), -1))
    assert_fallback(
        "softmax", runtime.NO_BUCKET, lambda: torch.softmax(x[:, :100].contiguous(), -1)
    )
    assert_fallback(
        "softmax", runtime.NO_BUCKET, lambda: torch.softmax(torch.zeros(200, 127), -1)
    )  # batch bucket 256
    assert_fallback("softmax", runtime.NO_DTYPE, lambda: torch.softmax(x.double(), -1))
    assert_fallback("softmax", adapters.ZERO_DIM, lambda: torch.softmax(torch.tensor(3.0), -1))
    assert_fallback("softmax", adapters.EMPTY, lambda: torch.softmax(torch.zeros(0, 127), -1))


def test_fallback_when_only_another_machine_has_an_entry(lib):
    # a float16 softmax entry exists, verified on sm_90: not used here
    x = torch.randn(7, 127).half()
    assert_fallback("softmax", runtime.OTHER_MACHINE, lambda: torch.softmax(x, -1))


def test_fallback_half_to_float_gives_pytorchs_own_error(lib):
    # a float32 input (one with an entry: the dtype is decided before the arguments), with
    # half_to_float=True, which PyTorch's CPU kernel refuses with its own error
    def call():
        try:
            return torch._softmax(torch.ones(7, 127), -1, True)
        except RuntimeError as exc:
            return exc

    assert_fallback("softmax", adapters.HALF_TO_FLOAT, call)


def test_fallback_gelu_tanh(lib):
    x = torch.randn(7, 127)
    assert_fallback("gelu", adapters.TANH, lambda: F.gelu(x, approximate="tanh"))


def test_fallback_layer_norm_arguments(lib):
    x = torch.randn(7, 127)
    w, b = torch.rand(127), torch.randn(127)
    with torch.no_grad():
        assert_fallback("layer_norm", adapters.NO_AFFINE, lambda: F.layer_norm(x, (127,)))
        assert_fallback("layer_norm", adapters.NO_AFFINE, lambda: F.layer_norm(x, (127,), w, None))
        assert_fallback("layer_norm", adapters.EPS, lambda: F.layer_norm(x, (127,), w, b, eps=1e-6))
        assert_fallback(
            "layer_norm",
            adapters.NORMALIZED_SHAPE,
            lambda: F.layer_norm(x.view(1, 7, 127), (7, 127)),
        )
        strided = torch.rand(254)[::2]
        assert_fallback("layer_norm", adapters.MIXED, lambda: F.layer_norm(x, (127,), strided, b))
        transposed = torch.randn(127, 7).t()
        assert_fallback(
            "layer_norm", adapters.NON_CONTIGUOUS, lambda: F.layer_norm(transposed, (127,), w, b)
        )


def test_fallback_autograd_keeps_gradients_identical(lib):
    x = torch.randn(7, 127)
    ln = torch.nn.LayerNorm(127)

    def grads():
        xr = x.clone().requires_grad_(True)
        ln.zero_grad()
        ln(xr).pow(2).sum().backward()
        return torch.cat([xr.grad.flatten(), ln.weight.grad, ln.bias.grad])

    assert_fallback("layer_norm", runtime.AUTOGRAD, grads)


def test_softmax_keeps_autograd_through_the_library_kernel(lib):
    x = torch.randn(7, 127)
    xr = x.clone().requires_grad_(True)
    torch.softmax(xr, -1).pow(2).sum().backward()
    with kl.use(path=lib, devices=CPU):
        xl = x.clone().requires_grad_(True)
        torch.softmax(xl, -1).pow(2).sum().backward()
        assert op_stats("softmax")["library_calls"] == 1
    torch.testing.assert_close(xl.grad, xr.grad, atol=1e-6, rtol=1e-5)


def test_inference_mode_reaches_the_backend_registration(lib):
    ln = torch.nn.LayerNorm(127)
    x = torch.randn(7, 127)
    expected = ln(x).detach()
    with kl.use(path=lib, devices=CPU), torch.inference_mode():
        out = ln(x)
        assert op_stats("layer_norm")["library_calls"] == 1
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_fallback_for_fake_tensors_and_dispatch_modes(lib):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with kl.use(path=lib, devices=CPU), torch.no_grad():
        with FakeTensorMode():
            fake = torch.randn(7, 127)
            out = F.layer_norm(fake, (127,), torch.ones(127), torch.zeros(127))
            assert out.shape == (7, 127)
        assert fallbacks("layer_norm")[runtime.SUBCLASS] == 1

        class Passthrough(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                return func(*args, **(kwargs or {}))

        x = torch.randn(7, 127)
        with Passthrough():
            F.layer_norm(x, (127,), torch.ones(127), torch.zeros(127))
        assert fallbacks("layer_norm")[runtime.DISPATCH_MODE] == 1


def test_reentrant_calls_go_to_pytorch(tmp_path, entries):
    # a gelu kernel whose forward also calls torch.softmax (a test-only entry: its timings are
    # attached to the verified fixture's result): the inner call must not re-enter the library
    source = (
        (LEGIT / "triton_gelu.py")
        .read_text()
        .replace(
            "        return gelu_forward(x)",
            "        torch.softmax(x, -1)\n        return gelu_forward(x)",
        )
    )
    library = write_all(
        tmp_path / "lib", entries["softmax"], cpu_entry("gelu", "triton_gelu.py", source=source)
    )
    with kl.use(path=library, devices=CPU):
        F.gelu(torch.randn(7, 127))
        assert op_stats("gelu")["library_calls"] == 1
        assert fallbacks("softmax") == {runtime.REENTRANT: 1}
        torch.softmax(torch.randn(7, 127), -1)
        assert op_stats("softmax")["library_calls"] == 1


def test_use_scopes_operators_and_restores(lib):
    x = torch.randn(7, 127)
    kl.enable(["softmax"], path=lib, devices=CPU)
    with kl.use(ops=["gelu"], path=lib, devices=CPU) as report:
        assert report.registered == {"gelu": 1}
        torch.softmax(x, -1)
        F.gelu(x)
    torch.softmax(x, -1)
    F.gelu(x)
    assert op_stats("softmax")["library_calls"] == 1
    assert op_stats("gelu")["library_calls"] == 1
    assert (
        kl.stats()["ops"]["softmax"]["registered"] and not kl.stats()["ops"]["gelu"]["registered"]
    )
    kl.disable()
    with kl.use(ops=["softmax"], path=lib, devices=CPU):
        pass
    assert not kl.enabled()


def test_ops_without_an_aten_counterpart_are_refused_for_dispatch(lib):
    with pytest.raises(
        kl.LibraryError,
        match=r"'silu_and_mul' cannot be dispatched from ATen .*kl.load\('silu_and_mul'\)",
    ):
        kl.enable(["silu_and_mul"], path=lib, devices=CPU)
    with pytest.raises(kl.LibraryError, match="ignore_index"):
        kl.enable(["cross_entropy"], path=lib, devices=CPU)


def test_forge_kernels_disable(lib, monkeypatch):
    monkeypatch.setenv("FORGE_KERNELS_DISABLE", "1")
    report = kl.enable(path=lib, devices=CPU)
    assert not report.enabled and report.disabled_reason == "FORGE_KERNELS_DISABLE=1"
    with kl.use(path=lib, devices=CPU) as inner:
        assert not inner.enabled
        torch.softmax(torch.randn(7, 127), -1)
    assert not kl.enabled() and kl.stats()["disabled_reason"] == "FORGE_KERNELS_DISABLE=1"
    assert "kernels_library/runtime.py" not in torch._C._dispatch_dump("aten::_softmax")


def test_cpu_dispatch_needs_the_interpreter(lib, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(kl.LibraryError, match="TRITON_INTERPRET=1"):
        kl.enable(path=lib, devices=CPU)


def test_load_returns_the_best_module_for_explicit_use(lib, entries):
    cls = kl.load("softmax", device="cpu", path=lib)
    assert cls.__name__ == "ModelNew" and cls.forge_entry.op == "softmax"
    # by geomean: variant b (sqrt(2.0 * 1.2) = 1.55) over the original (1.5)
    assert cls.forge_entry.id == entries["softmax_b"].meta.id
    # for a shape: the fastest on its bucket
    assert (
        kl.load(
            "softmax", device="cpu", path=lib, shape={"batch_size": 40, "dim": 1000}
        ).forge_entry.id
        == entries["softmax"].meta.id
    )
    x = torch.randn(7, 127)
    torch.testing.assert_close(cls()(x), torch.softmax(x, -1), atol=1e-6, rtol=1e-5)
    layer_norm = kl.load("layer_norm", device="cpu", path=lib, dtype=torch.float32)
    reference = torch.nn.LayerNorm(127)
    module = layer_norm(127)
    module.norm.load_state_dict(reference.state_dict())
    torch.testing.assert_close(module(x), reference(x), atol=1e-5, rtol=1e-5)


def test_load_explains_what_is_missing(lib):
    with pytest.raises(
        kl.LibraryError,
        match=r"no entry for 'rms_norm' verified on this machine .*arch sm_90 \(here cpu\).*forge library verify",
    ):
        kl.load("rms_norm", device="cpu", path=lib)
    with pytest.raises(kl.LibraryError, match="no library entry for 'rotary'"):
        kl.load("rotary", device="cpu", path=lib)
    with pytest.raises(kl.LibraryError, match="no entry for 'softmax' in bfloat16"):
        kl.load("softmax", device="cpu", path=lib, dtype=torch.bfloat16)
    with pytest.raises(kl.LibraryError, match="serves the shape bucket batch_size=1024, dim=127"):
        kl.load("softmax", device="cpu", path=lib, shape={"batch_size": 1000, "dim": 127})


def test_stats_report_skipped_entries(lib):
    kl.enable(path=lib, devices=CPU)
    skipped = kl.stats()["skipped_entries"]
    assert {s["op"] for s in skipped} == {"softmax", "rms_norm"}
    assert all("forge library verify" in s["reason"] for s in skipped)


def test_an_entry_for_another_model_is_not_dispatched(tmp_path):
    # a 'softmax' problem whose Model differs from the catalogue's: usable via kl.load only
    from test_library_helpers import make_result

    from forge.evaluator.problem import resolve_problem
    from forge.kernels_library.promotion import build_entry

    problem = resolve_problem("softmax")
    other = problem.model_copy(
        update={
            "source": problem.source.replace(
                "torch.softmax(x, dim=-1)", "torch.softmax(x * 2, dim=-1)"
            )
        }
    )
    record = build_entry(other, (LEGIT / "triton_softmax.py").read_text(), make_result(other), 1.05)
    report = kl.enable(path=write_all(tmp_path / "lib", record), devices=CPU)
    assert "Model differs from the catalogue" in report.skipped_entries[0]["reason"]
    assert report.registered == {}


def test_a_library_that_cannot_be_read_leaves_the_current_state(lib, tmp_path, entries):
    kl.enable(["softmax"], path=lib, devices=CPU)
    bad = write_all(tmp_path / "bad", entries["gelu"])
    kernel = next(bad.iterdir()) / "kernel.py"
    kernel.write_text(kernel.read_text() + "\n# edited\n")
    with pytest.raises(kl.LibraryIntegrityError):
        with kl.use(path=bad, devices=CPU):
            pass
    with pytest.raises(kl.LibraryIntegrityError):
        kl.enable(path=bad, devices=CPU)
    torch.softmax(torch.randn(7, 127), -1)
    assert op_stats("softmax")["library_calls"] == 1


def test_enable_report_and_stats_agree_on_enabled(lib, tmp_path):
    report = kl.enable(["softmax"], path=lib, devices=CPU)
    assert report.enabled and kl.enabled() and kl.stats()["enabled"]
    empty = tmp_path / "empty-library"
    empty.mkdir()
    report = kl.enable(path=empty, devices=CPU)
    assert not report.enabled and not kl.enabled() and not kl.stats()["enabled"]
    assert report.not_registered["softmax"] == "no entry in the library"
