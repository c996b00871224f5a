"""Static checks of candidate source (forge.evaluator.static).

Every legitimate fixture must pass; each rule has a small inline cheat that must fail with the
rule's specific message (substring), not merely ok=False.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from forge.evaluator import cuda_source
from forge.evaluator.problem import CATALOGUE_DIR
from forge.evaluator.static import (
    THREAD_MESSAGE,
    StaticReport,
    check_source,
    class_init_params,
    detect_backend,
)
from forge.evaluator.static.rules import LIBRARY_CALLS, LIBRARY_MODULES

LEGIT_DIR = Path(__file__).parent / "fixtures" / "legit"
LEGIT_FILES = sorted(LEGIT_DIR.glob("*.py"))
CHEATS_DIR = Path(__file__).parent / "fixtures" / "cheats"

LINE_FORMAT = re.compile(r"^static check: [^\n]+$")

# --- building blocks for the inline snippets ---------------------------------------------

HEAD = """\
import torch
import torch.nn as nn
import torch.nn.functional as F
import triton
import triton.language as tl


@triton.jit
def copy_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)


"""  # 13 lines: the class starts on line 14

INIT = """\
class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x, w=None):
"""  # forward body starts on line 19

LAUNCH = """\
        y = torch.empty_like(x)
        copy_kernel[(triton.cdiv(x.numel(), 1024),)](x, y, x.numel(), BLOCK=1024)
"""  # lines 19-20; the next body line is 21


def triton_candidate(body: str, before: str = "", after: str = "", init: str = INIT) -> str:
    """A Triton candidate whose forward launches copy_kernel, then runs `body` (line 21 on)."""
    return before + HEAD + init + LAUNCH + body + after


LIBRARY_INIT = """\
class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.conv = nn.Conv2d(3, 3, 3)
        self.norm = nn.LayerNorm(4)
    def forward(self, x, w=None):
"""  # two lines longer than INIT: the body after the launch starts on line 23


def library_candidate(body: str) -> str:
    """`triton_candidate` whose model holds an nn.Linear, an nn.Conv2d and an nn.LayerNorm."""
    return triton_candidate(body, init=LIBRARY_INIT)


CUDA_OK = '''\
import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

cuda_src = """
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>

// __global__ void commented_out(float* x) {}
template <int BLOCK>
__global__ void __launch_bounds__(256) add_kernel(const float* a, const float* b, float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = fmaxf(a[i] + b[i], std::max(0.f, -1.f));
}

extern "C" __global__ void scale_kernel(float* x, float s, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= s;
}

torch::Tensor add(torch::Tensor a, torch::Tensor b) {
    TORCH_CHECK(a.is_cuda(), "a must be a CUDA tensor");
    auto out = torch::empty_like(a);
    int n = a.numel();
    auto stream = at::cuda::getCurrentCUDAStream();
    add_kernel<256><<<(n + 255) / 256, 256, 0, stream>>>(
        a.data_ptr<float>(), b.data_ptr<float>(), out.data_ptr<float>(), n);
    return out;
}
"""
cpp_src = "torch::Tensor add(torch::Tensor a, torch::Tensor b);"
ext = load_inline(name="add_ext", cpp_sources=cpp_src, cuda_sources=cuda_src, functions=["add"])


class ModelNew(nn.Module):
    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.ext = ext

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.ext.add(a.contiguous(), b.contiguous())
'''

CUPY_OK = """\
import cupy as cp
import torch
import torch.nn as nn

_src = r'''
extern "C" __global__ void relu_kernel(const float* x, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i] > 0.f ? x[i] : 0.f;
}
'''
_module = cp.RawModule(code=_src)
_relu = _module.get_function("relu_kernel")


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    @torch.no_grad()
    def forward(self, x):
        x = x.contiguous()
        y = torch.empty_like(x)
        n = x.numel()
        stream = cp.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream)
        with stream:
            _relu(((n + 255) // 256,), (256,), (cp.asarray(x), cp.asarray(y), cp.int32(n)))
        return y
"""

TRITON_LINEAR_OK = """\
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import triton
import triton.language as tl


@triton.autotune(
    configs=[triton.Config({"BM": 64, "BN": 64, "BK": 32}, num_warps=4, num_stages=3)],
    key=["M", "N", "K"],
)
@triton.jit
def linear_kernel(a_ptr, b_ptr, c_ptr, bias_ptr, M, N, K, sam, sak, sbk, sbn, scm, scn,
                  BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid = tl.program_id(0)
    pm = pid // tl.cdiv(N, BN)
    pn = pid % tl.cdiv(N, BN)
    rm = pm * BM + tl.arange(0, BM)
    rn = pn * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, K, BK):
        a = tl.load(a_ptr + rm[:, None] * sam + (k + rk)[None, :] * sak)
        b = tl.load(b_ptr + (k + rk)[:, None] * sbk + rn[None, :] * sbn)
        acc += a @ b
    acc = tl.maximum(acc + tl.load(bias_ptr + rn)[None, :], 0.0).to(tl.float32)
    tl.store(c_ptr + rm[:, None] * scm + rn[None, :] * scn, acc)


class ModelNew(nn.Module):
    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.randn(out_features) * 0.01)
        self._scale = 1.0 / math.sqrt(in_features)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor, scale: Optional[float] = None) -> torch.Tensor:
        assert x.is_cuda and x.dim() == 2, "expects a 2-D CUDA tensor"
        x = x.contiguous()
        M, K = x.shape
        w = self.linear.weight
        N = w.shape[0]
        y = torch.empty((M, N), device=x.device, dtype=torch.float32)
        grid = lambda META: (triton.cdiv(M, META["BM"]) * triton.cdiv(N, META["BN"]),)
        with torch.cuda.device(x.device):
            linear_kernel[grid](x, w, y, self.linear.bias, M, N, K, x.stride(0), x.stride(1),
                                w.stride(1), w.stride(0), y.stride(0), y.stride(1))
        return y.view(M, N).to(x.dtype)
"""


def violations(source: str, **kwargs: object) -> list[str]:
    report = check_source(source, **kwargs)  # type: ignore[arg-type]
    assert not report.ok
    assert report.violations
    for line in report.violations:
        assert LINE_FORMAT.match(line), line
    return report.violations


def has(found: list[str], needle: str) -> bool:
    return any(needle in v for v in found)


# --- legitimate candidates pass -----------------------------------------------------------


def test_legit_fixtures_exist() -> None:
    assert LEGIT_FILES, f"no legitimate candidates under {LEGIT_DIR}"


@pytest.mark.parametrize("path", LEGIT_FILES, ids=[p.name for p in LEGIT_FILES])
def test_legit_fixture_passes(path: Path) -> None:
    source = path.read_text()
    report = check_source(source)
    assert report.ok, report.violations
    assert report.violations == []
    assert report.backend in ("triton", "cuda")
    assert report.backend == detect_backend(source)
    assert report.kernel_names
    assert not report.syntax_error


@pytest.mark.parametrize(
    "source,backend,kernels,params",
    [
        (CUDA_OK, "cuda", ["add_kernel", "scale_kernel"], ["scale"]),
        (CUPY_OK, "cuda", ["relu_kernel"], []),
        (TRITON_LINEAR_OK, "triton", ["linear_kernel"], ["in_features", "out_features"]),
        (triton_candidate("        return y\n"), "triton", ["copy_kernel"], []),
    ],
    ids=["load_inline", "cupy_rawmodule", "triton_autotune_linear", "triton_minimal"],
)
def test_inline_legit_candidates_pass(
    source: str, backend: str, kernels: list[str], params: list[str]
) -> None:
    report = check_source(source, model_init_params=params)
    assert report.ok, report.violations
    assert report.backend == backend
    assert report.kernel_names == kernels
    assert report.constructor_params == params


def test_legit_softmax_report_fields() -> None:
    source = (LEGIT_DIR / "triton_softmax.py").read_text()
    report = check_source(
        source,
        backend="triton",
        model_init_params=class_init_params((CATALOGUE_DIR / "softmax.py").read_text()),
    )
    assert report == StaticReport(
        ok=True,
        backend="triton",
        violations=[],
        kernel_names=["_softmax_kernel"],
        constructor_params=[],
    )


# --- vendor-library GEMM / convolution calls are allowed ----------------------------------


def _library_call(full: str) -> str:
    """A call of the library function `full` as a candidate would write it."""
    return full.replace("torch.nn.functional.", "F.") + "(x, w)"


@pytest.mark.parametrize("full", sorted(LIBRARY_CALLS))
def test_every_library_call_of_the_table_is_allowed(full: str) -> None:
    report = check_source(triton_candidate(f"        return {_library_call(full)}\n"))
    assert report.ok, report.violations


@pytest.mark.parametrize(
    "body,before",
    [
        ("        return F.linear(x, w, y)\n", ""),
        ("        return F.conv2d(x, w, y, padding=1)\n", ""),
        ("        return torch.addmm(y, x, w, beta=0.5)\n", ""),
        ("        return y + x @ w\n", ""),
        ("        f = torch.matmul\n        return f(x, w)\n", ""),
        ("        return lin(x, w)\n", "from torch.nn.functional import linear as lin\n"),
        ("        return mm(x, w)\n", "from torch import matmul as mm\n"),
    ],
    ids=[
        "linear_bias",
        "conv_kwargs",
        "addmm_beta",
        "at_operator",
        "reference",
        "from_F",
        "from_torch",
    ],
)
def test_library_call_forms_are_allowed(body: str, before: str) -> None:
    report = check_source(triton_candidate(body, before=before))
    assert report.ok, report.violations


@pytest.mark.parametrize(
    "body",
    [
        "        return self.linear(y)\n",
        "        return self.conv(y)\n",
        "        return self.linear.forward(y)\n",
    ],
    ids=["linear", "conv", "forward"],
)
def test_library_layers_held_by_the_model_may_be_called(body: str) -> None:
    report = check_source(library_candidate(body))
    assert report.ok, report.violations
    # the layer next to them is not a library call
    assert not check_source(library_candidate("        return self.norm(y)\n")).ok


def test_library_layers_are_the_tables_layers() -> None:
    for full in sorted(LIBRARY_MODULES):
        layer = full.replace("torch.nn.", "nn.")
        init = LIBRARY_INIT.replace("nn.Linear(4, 4)", f"{layer}(4, 4, 3)")
        assert check_source(triton_candidate("        return self.linear(y)\n", init=init)).ok


def test_the_library_fixtures_verdicts() -> None:
    """A GEMM + epilogue candidate keeping cuBLAS passes; so does, statically, a candidate whose
    output is a library call's result alone (a token kernel on a scratch tensor): which tensor
    the output is, is a run-time fact, caught by the monitor (`output_from_library`) and, on
    the CPU, by the interpreter's store trace."""
    legit = check_source((LEGIT_DIR / "triton_gemm_cublas_epilogue.py").read_text())
    assert legit.ok and legit.kernel_names == ["_gelu_kernel"]
    cheat = check_source((CHEATS_DIR / "row17_library_alone.py").read_text())
    assert cheat.ok and cheat.kernel_names == ["_touch_kernel"]


# --- one scanner of CUDA text --------------------------------------------------------------

KERNEL_DECLARATIONS = {
    "attribute": 'extern "C" __global__ void __attribute__((noinline)) kern(float* y) {}',
    "launch_bounds": 'extern "C" __global__ void __launch_bounds__(256) kern(float* y) {}',
    "template": "template <int N>\n__global__ void __launch_bounds__(N) kern(float* y) {}",
}


@pytest.mark.parametrize("decl", sorted(KERNEL_DECLARATIONS))
def test_static_report_and_compile_scanner_name_the_same_kernel(decl: str) -> None:
    code = KERNEL_DECLARATIONS[decl]
    source = CUPY_OK.replace(
        'extern "C" __global__ void relu_kernel(const float* x, float* y, int n) {\n'
        "    int i = blockIdx.x * blockDim.x + threadIdx.x;\n"
        "    if (i < n) y[i] = x[i] > 0.f ? x[i] : 0.f;\n}",
        code,
    ).replace('get_function("relu_kernel")', 'get_function("kern")')
    assert code in source
    report = check_source(source)
    assert report.ok, report.violations
    assert report.kernel_names == cuda_source.kernel_names(source) == ["kern"]
    assert [d.name for d in cuda_source.kernel_decls(code)] == ["kern"]


# --- one cheat per rule -------------------------------------------------------------------

CHEATS = {
    "try_except_fallback": (
        triton_candidate(
            "        try:\n            return y\n        except Exception:\n            return x\n"
        ),
        ["static check: try statement (try/except fallbacks are forbidden) (line 21)"],
    ),
    "inherits_model": (
        "from reference import Model\n"
        + HEAD
        + "class ModelNew(Model):\n    def forward(self, x):\n"
        + LAUNCH
        + "        return super().forward(x)\n",
        [
            "static check: ModelNew inherits from Model (PyTorch fallback) (line 15)",
            "static check: forbidden import 'reference' (line 1)",
        ],
    ),
    "references_model": (
        triton_candidate("        return Model()(x)\n"),
        ["static check: references Model, the reference implementation (line 21)"],
    ),
    "F_softmax": (
        triton_candidate("        return F.softmax(y, dim=-1)\n"),
        [
            "static check: calls F.softmax (torch.nn.functional.softmax) outside a kernel (PyTorch fallback) (line 21)"
        ],
    ),
    "torch_softmax": (
        triton_candidate("        return torch.softmax(y, dim=-1)\n"),
        ["static check: calls torch.softmax outside a kernel (PyTorch fallback) (line 21)"],
    ),
    "from_import_alias": (
        triton_candidate("        return sm(y, -1)\n", before="from torch import softmax as sm\n"),
        ["static check: calls sm (torch.softmax) outside a kernel (PyTorch fallback) (line 22)"],
    ),
    "torch_function_reference": (
        triton_candidate("        f = torch.softmax\n        return f(y, -1)\n"),
        ["static check: references torch.softmax outside a kernel (PyTorch fallback) (line 21)"],
    ),
    "tensor_sum_in_forward": (
        triton_candidate("        return y / x.sum()\n"),
        ["static check: calls x.sum outside a kernel (PyTorch fallback) (line 21)"],
    ),
    "matmul_inplace_operator": (
        triton_candidate("        y @= w\n        return y\n"),
        ["static check: matrix multiply with '@=' outside a kernel (PyTorch fallback) (line 21)"],
    ),
    "import_os": (
        "import os\n" + triton_candidate("        return y\n"),
        ["static check: forbidden import 'os' (line 1)"],
    ),
    "import_threading": (
        "import threading\n" + triton_candidate("        return y\n"),
        [f"static check: {THREAD_MESSAGE} (line 1)"],
    ),
    "from_concurrent": (
        "from concurrent.futures import ThreadPoolExecutor\n"
        + triton_candidate("        return y\n"),
        [f"static check: {THREAD_MESSAGE} (line 1)"],
    ),
    "torch_cuda_stream": (
        triton_candidate("        s = torch.cuda.Stream()\n        return y\n"),
        [
            "static check: uses torch.cuda.Stream (side streams, events and CUDA graphs are forbidden) (line 21)"
        ],
    ),
    "cuda_graph": (
        triton_candidate("        g = torch.cuda.CUDAGraph()\n        return y\n"),
        [
            "static check: uses torch.cuda.CUDAGraph (side streams, events and CUDA graphs are forbidden) (line 21)"
        ],
    ),
    "patch_event_elapsed_time": (
        triton_candidate(
            "        return y\n",
            after="\n\ntorch.cuda.Event.elapsed_time = lambda self, end: 1e-3\n",
        ),
        [
            "static check: patches torch.cuda.Event.elapsed_time (timing or torch functions must not be "
            "modified) (line 24)"
        ],
    ),
    "patch_perf_counter": (
        "import time\n"
        + triton_candidate("        return y\n", after="\n\ntime.perf_counter = lambda: 0.0\n"),
        [
            "static check: patches time.perf_counter (timing or torch functions must not be modified) (line 25)",
            "static check: forbidden import 'time' (line 1)",
        ],
    ),
    "patch_module_function": (
        triton_candidate("        return y\n", after="\n\nF.softmax = lambda x, dim: x\n"),
        [
            "static check: patches F.softmax (timing or torch functions must not be modified) (line 24)"
        ],
    ),
    "getattr_string": (
        triton_candidate("        return getattr(torch, 'soft' + 'max')(y, -1)\n"),
        ["static check: forbidden name 'getattr' (line 21)"],
    ),
    "module_as_value": (
        triton_candidate("        self.t = torch\n        return y\n"),
        ["static check: uses module torch as a value"],
    ),
    "torch_private_C": (
        triton_candidate("        return torch._C._nn.gelu(y)\n"),
        ["static check: accesses private attribute torch._C (line 21)"],
    ),
    "dunder_class": (
        triton_candidate("        return x.__class__(y)\n"),
        ["static check: accesses dunder attribute x.__class__ (line 21)"],
    ),
    "module_attribute_os": (
        triton_candidate("        torch.serialization.os.system('true')\n        return y\n"),
        [
            "static check: accesses torch.serialization.os (module attribute 'os' is forbidden) (line 21)"
        ],
    ),
    "type_three_args": (
        triton_candidate("        T = type('T', (), {})\n        return y\n"),
        ["static check: forbidden name 'type' with 3 arguments (dynamic class creation) (line 21)"],
    ),
    "with_suppress": (
        "import contextlib\n"
        + triton_candidate(
            "        with contextlib.suppress(Exception):\n            return x\n        return y\n"
        ),
        [
            "static check: 'with contextlib.suppress(Exception)' is forbidden (only torch.no_grad() and "
            "torch.inference_mode() are allowed) (line 22)",
            "static check: forbidden import 'contextlib' (line 1)",
        ],
    ),
    "dead_branch_launch_with_fallback": (
        HEAD
        + INIT
        + "        y = torch.empty_like(x)\n"
        + "        if False:\n"
        + "            copy_kernel[(1,)](x, y, x.numel(), BLOCK=1024)\n"
        + "        return torch.softmax(x, dim=-1)\n",
        [
            "static check: never launches its Triton kernel copy_kernel (line 9)",
            "static check: calls torch.softmax outside a kernel (PyTorch fallback) (line 22)",
        ],
    ),
    "launch_after_return": (
        HEAD
        + INIT
        + "        y = torch.empty_like(x)\n        return y\n        copy_kernel[(1,)](x, y, 1, BLOCK=4)\n",
        ["static check: never launches its Triton kernel copy_kernel (line 9)"],
    ),
    "no_kernel": (
        "import torch\nimport torch.nn as nn\n\n\nclass ModelNew(nn.Module):\n    def forward(self, x):\n"
        "        return x\n",
        ["static check: no kernel: define a @triton.jit kernel or CUDA __global__ source"],
    ),
    "kernel_never_launched": (
        HEAD + INIT + "        return torch.empty_like(x)\n",
        ["static check: never launches its Triton kernel copy_kernel (line 9)"],
    ),
    "no_model_new": (
        HEAD + "def forward(x):\n" + LAUNCH.replace("        ", "    ") + "    return y\n",
        ["static check: no class ModelNew"],
    ),
    "nn_layer_norm_called_in_forward": (
        triton_candidate(
            "        return self.norm(y)\n",
            init="class ModelNew(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
            "        self.norm = nn.LayerNorm(4)\n\n    def forward(self, x, w=None):\n",
        ),
        [
            "static check: calls the PyTorch module self.norm in forward (PyTorch fallback) (line 22)"
        ],
    ),
    "nn_module_list_iterated": (
        triton_candidate(
            "        for layer in self.layers:\n            y = layer(y)\n        return y\n",
            init="class ModelNew(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
            "        self.layers = nn.ModuleList([nn.ReLU()])\n\n    def forward(self, x, w=None):\n",
        ),
        ["static check: calls the PyTorch module layer in forward (PyTorch fallback) (line 23)"],
    ),
    "randn_in_forward": (
        triton_candidate("        return y + torch.randn(3)\n"),
        [
            "static check: calls torch.randn outside __init__ (random tensors only initialise parameters) (line 21)"
        ],
    ),
    "synchronize": (
        triton_candidate("        torch.cuda.synchronize()\n        return y\n"),
        [
            "static check: calls torch.cuda.synchronize, which is not an allocation or metadata call (line 21)"
        ],
    ),
    "special_method": (
        triton_candidate(
            "        return y\n", after="\n    def __call__(self, x):\n        return x\n"
        ),
        [
            "static check: defines __call__ (special methods other than __init__ are forbidden) (line 23)"
        ],
    ),
    "tensor_subclass": (
        triton_candidate("        return y\n", after="\n\nclass Lazy(torch.Tensor):\n    pass\n"),
        [
            "static check: class Lazy subclasses torch.Tensor (tensor subclasses are forbidden) (line 24)"
        ],
    ),
    "cupy_compute": (
        CUPY_OK.replace(
            "        return y\n", "        return torch.as_tensor(cp.exp(cp.asarray(y)))\n"
        ),
        ["static check: calls cp.exp (cupy.exp) outside a kernel (CuPy fallback) (line 27)"],
    ),
    "cupy_stream": (
        CUPY_OK.replace(
            "        return y\n",
            "        s = cp.cuda.Stream(non_blocking=True)\n        return y\n",
        ),
        [
            "static check: uses cp.cuda.Stream (cupy.cuda.Stream) (side streams, events and CUDA graphs are "
            "forbidden) (line 27)"
        ],
    ),
    "cudaStreamCreate_in_source": (
        CUDA_OK.replace(
            "    auto stream = at::cuda::getCurrentCUDAStream();",
            "    cudaStream_t stream; cudaStreamCreate(&stream);",
        ),
        [
            "static check: CUDA source calls cudaStreamCreate (side streams, events and CUDA graphs are "
            "forbidden) (line 25)"
        ],
    ),
    "aten_in_cuda_source": (
        CUDA_OK.replace("    return out;", "    return torch::softmax(out, -1);"),
        ["static check: CUDA source calls torch::softmax (PyTorch fallback) (line 28)"],
    ),
    "cublas_in_cuda_source": (
        CUDA_OK.replace(
            "    return out;",
            "    cublasSgemm(handle, 0, 0, n, n, n, 0, 0, n, 0, n, 0, 0, n);\n    return out;",
        ),
        ["static check: CUDA source calls cublasSgemm (library fallback) (line 28)"],
    ),
    "library_layer_in_a_container": (
        triton_candidate(
            "        return self.seq(y)\n",
            init="class ModelNew(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
            "        self.seq = nn.Sequential(nn.Linear(4, 4))\n\n    def forward(self, x, w=None):\n",
        ),
        ["static check: calls the PyTorch module self.seq in forward (PyTorch fallback) (line 22)"],
    ),
    "library_layer_through_a_local": (
        library_candidate("        lin = self.linear\n        return lin(y)\n"),
        ["static check: calls the PyTorch module lin in forward (PyTorch fallback) (line 24)"],
    ),
    "library_layer_reassigned_in_forward": (
        library_candidate("        self.linear = self.norm\n        return self.linear(y)\n"),
        [
            "static check: calls the PyTorch module self.linear in forward (PyTorch fallback) (line 24)"
        ],
    ),
    "einsum": (
        triton_candidate("        return torch.einsum('ij,jk->ik', x, w)\n"),
        ["static check: calls torch.einsum outside a kernel (PyTorch fallback) (line 21)"],
    ),
    "matrix_vector": (
        triton_candidate("        return torch.addmv(y, x, w)\n"),
        ["static check: calls torch.addmv outside a kernel (PyTorch fallback) (line 21)"],
    ),
    "matmul_tensor_method": (
        triton_candidate("        return x.matmul(w)\n"),
        ["static check: calls x.matmul outside a kernel (PyTorch fallback) (line 21)"],
    ),
    "aten_op_namespace": (
        triton_candidate("        return torch.ops.aten.mm(x, w)\n"),
        ["static check: calls torch.ops.aten.mm outside a kernel (PyTorch fallback) (line 21)"],
    ),
    "epilogue_in_pytorch": (
        triton_candidate("        return F.relu(F.linear(x, w))\n"),
        [
            "static check: calls F.relu (torch.nn.functional.relu) outside a kernel (PyTorch "
            "fallback) (line 21)"
        ],
    ),
    "aten_matmul_in_cuda_source": (
        CUDA_OK.replace("    return out;", "    return at::matmul(a, b);"),
        ["static check: CUDA source calls at::matmul (PyTorch fallback) (line 28)"],
    ),
    "cuda_includes_a_host_file": (
        CUDA_OK.replace("#include <torch/extension.h>", '#include "/dev/zero"'),
        [
            "static check: CUDA source includes '/dev/zero' (only toolkit and torch headers, by "
            "relative name) (line 6)"
        ],
    ),
    "cuda_computed_include": (
        CUDA_OK.replace(
            "#include <torch/extension.h>", '#define HOST "../../etc/passwd"\n#include HOST'
        ),
        ["static check: CUDA source includes 'HOST'"],
    ),
    "stream_after_slashes_in_a_c_string": (
        CUDA_OK.replace(
            "    return out;",
            '    printf("//"); cudaStream_t s; cudaStreamCreate(&s);\n    return out;',
        ),
        [
            "static check: CUDA source calls cudaStreamCreate (side streams, events and CUDA graphs "
            "are forbidden) (line 28)"
        ],
    ),
    "cuda_never_compiled": (
        CUDA_OK.replace("ext = load_inline(", "ext = dict(")
        .replace("        return self.ext.add(", "        return (")
        .replace("a.contiguous(), b.contiguous()", "a"),
        [
            "static check: never compiles its CUDA source (load_inline, cupy.RawModule or cupy.RawKernel)"
        ],
    ),
}


@pytest.mark.parametrize("name", sorted(CHEATS))
def test_cheat_is_rejected_with_its_message(name: str) -> None:
    source, expected = CHEATS[name]
    found = violations(source, model_init_params=None)
    for needle in expected:
        assert has(found, needle), f"{needle!r} not in {found}"


def test_syntax_error_is_a_violation_not_an_exception() -> None:
    report = check_source("import torch\n\nclass ModelNew(nn.Module)\n    pass\n")
    assert not report.ok
    assert report.syntax_error
    assert len(report.violations) == 1
    assert re.fullmatch(r"static check: syntax error: .+ \(line 3\)", report.violations[0])
    assert detect_backend("def (:\n") is None


def test_null_bytes_and_absurd_nesting_do_not_raise() -> None:
    assert check_source("import torch\x00\n").syntax_error
    deep = check_source("x = " + "-" * 20_000 + "1\n")
    assert not deep.ok


def test_constructor_mismatch() -> None:
    source = triton_candidate(
        "        return y\n",
        init="class ModelNew(nn.Module):\n    def __init__(self, a, b=2):\n        super().__init__()\n\n"
        "    def forward(self, x, w=None):\n",
    )
    report = check_source(source, model_init_params=["x"])
    assert report.constructor_params == ["a", "b"]
    assert report.violations == [
        "static check: ModelNew.__init__(a, b) does not match Model.__init__(x) (line 15)"
    ]
    assert check_source(source, model_init_params=["a", "b"]).ok
    assert check_source(source).ok  # no reference signature given: not compared


def test_class_init_params_reads_the_reference() -> None:
    source = "import torch.nn as nn\nclass Model(nn.Module):\n    def __init__(self, dim, eps=1e-5, *, bias=True):\n        super().__init__()\n"
    assert class_init_params(source) == ["dim", "eps", "bias"]
    assert class_init_params("x = 1\n") is None
    assert class_init_params("def (\n") is None


def test_most_important_first() -> None:
    source = (
        "import os\n"
        + HEAD
        + INIT
        + "        s = torch.cuda.Stream()\n"
        + "        return torch.softmax(x, -1)\n"
    )
    found = violations(source)
    assert found[0].startswith("static check: never launches its Triton kernel copy_kernel")
    assert found[1] == "static check: forbidden import 'os' (line 1)"
    assert found[2].startswith("static check: calls torch.softmax outside a kernel")
    assert found[3].startswith("static check: uses torch.cuda.Stream")
    assert len(found) == len(set(found))


def test_backend_detection_and_forcing() -> None:
    triton_src = triton_candidate("        return y\n")
    assert detect_backend(triton_src) == "triton"
    assert detect_backend(CUDA_OK) == "cuda"
    assert detect_backend(CUPY_OK) == "cuda"
    assert detect_backend("import torch\n") is None
    assert detect_backend("from triton import jit\n@jit\ndef k(x):\n    pass\n") == "triton"
    forced = check_source(triton_src, backend="cuda")
    assert forced.backend == "cuda"
    assert has(forced.violations, "static check: no CUDA kernel source")
    forced = check_source(CUDA_OK, backend="triton")
    assert forced.violations == ["static check: defines no @triton.jit kernel"]
    with pytest.raises(ValueError, match="backend"):
        check_source(triton_src, backend="metal")


def test_launch_through_alias_counts_and_constant_true_branch_is_live() -> None:
    body = (
        "        launch = copy_kernel[(1,)]\n        launch(x, y, 1, BLOCK=4)\n        return y\n"
    )
    assert check_source(HEAD + INIT + "        y = torch.empty_like(x)\n" + body).ok
    live = "        y = torch.empty_like(x)\n        if True:\n            copy_kernel[(1,)](x, y, 1, BLOCK=4)\n        return y\n"
    assert check_source(HEAD + INIT + live).ok


def test_allowed_with_and_no_grad_and_metadata_calls() -> None:
    body = (
        "        with torch.no_grad():\n"
        "            z = torch.zeros(3, device=x.device, dtype=torch.float32)\n"
        "        with torch.inference_mode():\n"
        "            n = torch.finfo(x.dtype).max + torch.cuda.get_device_properties(0).multi_processor_count\n"
        "        return y.view(-1).reshape(x.shape).to(torch.float16)\n"
    )
    report = check_source(triton_candidate(body))
    assert report.ok, report.violations


DEVICE_LIMITED = (
    HEAD.replace(
        "@triton.jit\n",
        '@triton.autotune(configs=[triton.Config({"BLOCK": 64})], key=["n"])\n@triton.jit\n',
    ).replace(
        "import triton.language as tl\n",
        "import triton.language as tl\nfrom triton.language.extra import libdevice\n",
    )
    + INIT
    + LAUNCH
    + "        return y\n"
)


def test_what_cannot_run_on_the_cpu_is_rejected_there_only() -> None:
    """`rules.DEVICE_UNAVAILABLE` is enforced per device, once per name, with its reason."""
    from forge.evaluator.static.rules import DEVICE_UNAVAILABLE

    assert check_source(DEVICE_LIMITED, device="cuda").ok
    report = check_source(DEVICE_LIMITED, device="cpu")
    assert not report.ok and len(report.violations) == 2
    for name, why in DEVICE_UNAVAILABLE["cpu"].items():
        assert any(f"{name} cannot run on --device cpu: {why}" in v for v in report.violations)
    through_tl = (
        HEAD + INIT + LAUNCH + "        return y\n\n\nTANH = tl.extra.cuda.libdevice.tanh\n"
    )
    (violation,) = check_source(through_tl, device="cpu").violations
    assert "triton.language.extra cannot run on --device cpu" in violation
