"""CUDA candidates on the CPU: sources found statically, kernels named, sources compiled with
nvcc (and with NVRTC itself where its library is installed), errors returned as data.

Cost on a 2-core machine: each raw (NVRTC-style) source compiles in well under a second; a
load_inline source takes 30-55 s because nvcc parses torch's headers, so only one inline
fixture (cuda_inline_softmax) is compiled here, marked below. cuda_inline_gelu compiled in
~35-55 s when measured by hand.
"""

import os
from pathlib import Path

import pytest

from forge.evaluator import toolchain
from forge.evaluator.cuda_source import (
    cuda_sources,
    includes,
    kernel_decls,
    kernel_names,
    strip_comments,
    strip_comments_and_directives,
    traced_base_name,
)
from forge.evaluator.profiling import kernel_base_name
from forge.evaluator.toolchain import CudaToolchainError, compile_cuda

FIXTURES = Path(__file__).parent / "fixtures"
LEGIT = FIXTURES / "legit"
RAW_FIXTURES = sorted(LEGIT.glob("cuda_nvrtc_*.py"))
INLINE_FIXTURES = sorted(LEGIT.glob("cuda_inline_*.py"))
BAD = FIXTURES / "bad" / "cuda_syntax_error.py"


def candidate(body: str) -> str:
    return "import torch\nimport torch.nn as nn\nimport cupy\n" + body


def nvrtc_available() -> bool:
    try:
        toolchain._find_nvrtc()
    except CudaToolchainError:
        return False
    return True


needs_nvrtc = pytest.mark.skipif(
    not nvrtc_available(),
    reason="libnvrtc not found (pip install nvidia-cuda-nvrtc or set FORGE_NVRTC_LIB)",
)


# ------------------------------------------------------------------------------- kernel names


def test_kernel_names_of_the_common_declaration_shapes():
    code = r"""
#define BLOCK 256
#define KERNEL_MACRO __global__ void not_a_kernel_macro(float* x)
// __global__ void commented_out(float* x) {}
/* __global__ void also_commented(float* x) {}
   spanning lines */
__device__ float helper(float v) { return v * 2.0f; }

extern "C" __global__ void plain_c(const float* __restrict__ x, float* y, long long n) {}

__global__ void __launch_bounds__(256) bounded(float* y) {}

__global__ void __launch_bounds__(BLOCK, 2)
    bounded_two_args (float* y) {}

template <typename T, int N>
__global__ void templated(T* y) {}

template <>
__global__ void templated<float, 4>(float* y) {}

extern "C" {
__global__ void in_block_a(float* y);
__global__ void in_block_b(float* y) {}
}

__global__ static void with_static(float* y) {}
__global__ void __attribute__((noinline)) with_attribute(float* y) {}
template <typename T>
__global__ void __launch_bounds__(256, 2) templated_bounded(T* y) {}
__global__ void declared_then_defined(float* y);
__global__ void declared_then_defined(float* y) {}
"""
    decls = {d.name: d for d in kernel_decls(code)}
    assert list(decls) == [
        "plain_c",
        "bounded",
        "bounded_two_args",
        "templated",
        "in_block_a",
        "in_block_b",
        "with_static",
        "with_attribute",
        "templated_bounded",
        "declared_then_defined",
    ]
    assert decls["plain_c"].extern_c and not decls["plain_c"].template
    assert decls["in_block_a"].extern_c and decls["in_block_b"].extern_c
    assert not decls["bounded"].extern_c
    assert decls["templated"].template and decls["templated_bounded"].template


def test_comments_are_stripped_but_string_literals_kept():
    code = 'printf("// not a comment"); /* gone */ x = 1; // gone too\n#define A 1\nchar c = \'"\';'
    stripped = strip_comments(code)
    assert len(stripped) == len(code) and stripped.count("\n") == code.count("\n")
    assert '"// not a comment"' in stripped and "x = 1;" in stripped
    assert "gone" not in stripped and "#define A 1" in stripped
    assert "#define" not in strip_comments_and_directives(code)


def test_includes_of_a_source():
    code = '#include <cuda_fp16.h>\n  #  include "local.h"\n// #include "/etc/passwd"\n#include HEADER\n'
    found = [(i.target, i.form) for i in includes(code)]
    assert found == [("cuda_fp16.h", "angle"), ("local.h", "quoted"), ("HEADER", "computed")]


@pytest.mark.parametrize(
    "traced, name",
    [
        (
            "(anonymous namespace)::softmax_rows_f32(float const*, float*, long, bool)",
            "softmax_rows_f32",
        ),
        ("void ns::k<128>(float*)", "k"),
        ("void ns::k<128, std::less<int> >(float*)", "k"),
        ("void gemm<float>(float*, int (*)(int))", "gemm"),
        ("_softmax_kernel", "_softmax_kernel"),
        ("relu_f32", "relu_f32"),
    ],
)
def test_traced_kernel_names_reduce_to_the_declared_name(traced, name):
    assert traced_base_name(traced) == name == kernel_base_name(traced)


def test_kernel_names_from_a_candidate_covers_every_source():
    src = candidate(
        'A = r"""extern "C" __global__ void first(float* y) {}"""\n'
        'B = r"""__global__ void second(float* y) {}\n__global__ void third(float* y) {}"""\n'
    )
    assert kernel_names(src) == ["first", "second", "third"]


@pytest.mark.parametrize(
    "path, expected",
    [
        ("legit/cuda_inline_softmax.py", ["softmax_rows_f32"]),
        ("legit/cuda_inline_gelu.py", ["gelu_f32"]),
        ("legit/cuda_nvrtc_softmax.py", ["softmax_rows_f32"]),
        ("legit/cuda_nvrtc_rms_norm.py", ["rms_norm_rows_f32"]),
        ("legit/triton_softmax.py", []),
    ],
)
def test_kernel_names_of_fixtures(path, expected):
    assert kernel_names((FIXTURES / path).read_text()) == expected


# ------------------------------------------------------------------------- finding sources


def test_load_inline_source_through_a_name_is_inline_with_its_cflags():
    src = candidate(
        "from torch.utils.cpp_extension import load_inline\n"
        'CUDA = r"""\n__global__ void k(float* y) { y[0] = 1.0f; }\n"""\n'
        'ext = load_inline(name="x", cpp_sources="void f();", cuda_sources=CUDA, functions=["f"],\n'
        '                  extra_cuda_cflags=["-O3", "--use_fast_math"])\n'
    )
    (source,) = cuda_sources(src)
    assert source.kind == "inline"  # by context: the content alone has no torch API
    assert source.label == "CUDA"
    assert source.origin.startswith("load_inline(cuda_sources=...)")
    assert source.options == ["-O3", "--use_fast_math"]
    assert source.lineno == 5 and source.line_mapped
    assert source.kernels == ["k"]


def test_rawmodule_and_rawkernel_sources_are_raw_with_their_options():
    src = candidate(
        'OPTS = ("-std=c++17", "-DBLOCK=256")\n'
        'S1 = r"""extern "C" __global__ void a(float* y) {}"""\n'
        "m = cupy.RawModule(code=S1, options=OPTS)\n"
        'k = cupy.RawKernel(r"""extern "C" __global__ void b(float* y) { TORCH_LIKE; }""", "b")\n'
    )
    first, second = cuda_sources(src)
    assert (first.kind, first.label, first.options) == ("raw", "S1", ["-std=c++17", "-DBLOCK=256"])
    assert first.origin.startswith("RawModule(code=...)")
    assert (second.kind, second.kernels, second.options) == ("raw", ["b"], [])
    assert second.origin.startswith("RawKernel(code=...)")


def test_sources_not_passed_to_a_known_call_are_classified_by_content():
    src = candidate(
        'TORCHY = r"""#include <c10/cuda/CUDAStream.h>\n__global__ void t(float* y) {}\n'
        'torch::Tensor f(torch::Tensor x) { return x; }"""\n'
        "def build():\n"
        '    plain = """extern "C" __global__ void p(float* y) {}"""\n'
        "    return plain\n"
    )
    kinds = {s.label: (s.kind, s.origin) for s in cuda_sources(src)}
    assert kinds == {"TORCHY": ("inline", "content"), "source_1": ("raw", "content")}


def test_docstrings_mentioning_global_are_not_sources():
    src = '"""Uses a __global__ void kernel(float*) to do it."""\n' + candidate(
        'def f():\n    """Also __global__ void g() here."""\n    return 1\n'
    )
    assert cuda_sources(src) == []


def test_list_and_concatenated_sources_are_joined_as_load_inline_and_python_do():
    src = candidate(
        "from torch.utils.cpp_extension import load_inline\n"
        'HEADER = "#define SCALE 2.0f\\n"\n'
        'BODY = r"""__global__ void k(float* y) { y[0] = SCALE; }"""\n'
        'PART2 = r"""__global__ void k2(float* y) {}"""\n'
        'e = load_inline("x", "void f();", [HEADER + BODY, PART2], functions=["f"])\n'
    )
    (source,) = cuda_sources(src)
    assert (
        source.code
        == "#define SCALE 2.0f\n"
        + "__global__ void k(float* y) { y[0] = SCALE; }"
        + "\n"
        + ("__global__ void k2(float* y) {}")
    )
    assert source.kernels == ["k", "k2"]
    assert not source.line_mapped  # several literals: errors are reported against the source


def test_raw_kernel_without_extern_c_is_warned_about():
    src = candidate('m = cupy.RawModule(code=r"""__global__ void mangled(float* y) {}""")\n')
    (source,) = cuda_sources(src)
    assert any('not extern "C"' in w and "mangled" in w for w in source.warnings)
    with_names = candidate(
        'm = cupy.RawModule(code=r"""template <int N> __global__ void t(float* y) {}\n'
        '__global__ void mangled(float* y) {}""", name_expressions=["t<1>", "mangled"])\n'
    )
    assert cuda_sources(with_names)[0].warnings == []


def test_fixture_sources_are_classified():
    for path in INLINE_FIXTURES:
        assert [s.kind for s in cuda_sources(path.read_text())] == ["inline"], path.name
    for path in RAW_FIXTURES:
        (source,) = cuda_sources(path.read_text())
        assert (
            source.kind == "raw" and source.options == ["-std=c++17"] and source.warnings == []
        ), path.name


# ------------------------------------------------------------------------------ compiling


@pytest.mark.parametrize("path", RAW_FIXTURES, ids=[p.stem for p in RAW_FIXTURES])
def test_raw_fixture_compiles_with_nvcc(path):
    report = compile_cuda(path.read_text(), filename=path.name)
    assert report.ok, report.error + "\n" + "\n".join(s.log for s in report.sources)
    (source,) = report.sources
    assert (
        source.compiler == "nvcc" and "--cubin" in source.command and "-ftz=true" in source.command
    )
    assert report.kernel_names == source.kernels and report.kernel_names
    assert source.seconds < 30


@needs_nvrtc
@pytest.mark.parametrize("path", RAW_FIXTURES, ids=[p.stem for p in RAW_FIXTURES])
def test_raw_fixture_compiles_with_nvrtc(path):
    report = compile_cuda(path.read_text(), filename=path.name, raw_compiler="nvrtc")
    assert report.ok, report.error + "\n" + "\n".join(s.log for s in report.sources)
    assert report.sources[0].compiler == "nvrtc"


@needs_nvrtc
def test_nvrtc_catches_what_nvcc_lets_through():
    # nvcc force-includes cuda_runtime.h (and so math.h's INFINITY); NVRTC, which cupy runs, does not
    src = candidate(
        'm = cupy.RawModule(code=r"""extern "C" __global__ void k(float* y) { y[0] = INFINITY; }""")\n'
    )
    assert compile_cuda(src).ok
    report = compile_cuda(src, raw_compiler="nvrtc")
    assert not report.ok
    assert 'candidate.py(4): error: identifier "INFINITY" is undefined' in report.sources[0].log


def test_inline_fixture_compiles_against_torch_headers(tmp_path):
    # SLOW: 30-55 s on 2 cores (torch headers). The only inline compile of this file; the other
    # inline fixture (cuda_inline_gelu) shares every flag and header with this one.
    path = LEGIT / "cuda_inline_softmax.py"
    report = compile_cuda(path.read_text(), workdir=tmp_path, filename=path.name)
    assert report.ok, report.error + "\n" + "\n".join(s.log for s in report.sources)
    (source,) = report.sources
    assert source.kind == "inline" and source.kernels == ["softmax_rows_f32"]
    for flag in (
        "-c",
        "-DTORCH_EXTENSION_NAME=",
        "-D_GLIBCXX_USE_CXX11_ABI=",
        "-gencode=arch=compute_90,code=sm_90",
    ):
        assert flag in source.command
    assert (tmp_path / "00_CUDA_SOURCE.o").is_file()
    written = (tmp_path / "00_CUDA_SOURCE.cu").read_text()
    assert written.startswith(toolchain.INLINE_PRELUDE + '#line 14 "cuda_inline_softmax.py"\n')


def test_bad_fixture_reports_the_offending_line():
    report = compile_cuda(BAD.read_text(), filename=BAD.name)
    assert not report.ok
    (source,) = report.sources
    assert not source.ok and not source.timed_out and not source.host_missing_header
    # the missing ';' ends line 14 of the fixture; the parser stops at the next token, line 15
    assert 'cuda_syntax_error.py(15): error: expected a ";"' in source.log
    assert "y[i] = v > 0.0f ? v : 0.0f;" in source.log
    assert "_SOURCE (line 10) did not compile" in report.error
    assert report.kernel_names == ["relu_f32"]


def test_candidate_without_cuda_source_is_not_ok_and_says_why():
    report = compile_cuda((LEGIT / "triton_softmax.py").read_text())
    assert not report.ok and report.sources == [] and report.kernel_names == []
    assert report.error.startswith("no CUDA source found")


def test_candidate_that_is_not_python_is_not_ok():
    report = compile_cuda("def broken(:\n    pass\n")
    assert not report.ok
    assert "candidate is not valid Python: line 1" in report.error


def test_fstring_source_cannot_be_compiled_statically():
    src = candidate(
        "BLOCK = 256\n"
        'm = cupy.RawModule(code=f"""extern "C" __global__ void k(float* y) {{ y[{BLOCK}] = 0; }}""")\n'
    )
    report = compile_cuda(src)
    assert not report.ok and report.sources == []
    assert "line 5: RawModule's code is an f-string" in report.error


def test_requested_kernel_missing_from_the_sources_is_reported():
    src = candidate(
        'm = cupy.RawModule(code=r"""extern "C" __global__ void real_name(float* y) {}""")\n'
        'k = m.get_function("typo_name")\n'
    )
    report = compile_cuda(src)
    assert report.sources[0].ok  # it compiles ...
    assert not report.ok  # ... but get_function would fail at run time
    assert "kernel 'typo_name' is requested" in report.error and "real_name" in report.error


def test_host_missing_toolkit_header_is_told_apart_from_a_candidate_error(monkeypatch):
    monkeypatch.setattr(
        toolchain,
        "TOOLKIT_LIBRARY_HEADERS",
        toolchain.TOOLKIT_LIBRARY_HEADERS | {"forge_absent_lib.h"},
    )
    src = candidate(
        'm = cupy.RawModule(code=r"""#include <forge_absent_lib.h>\nextern "C" __global__ void k(float* y) {}""")\n'
    )
    report = compile_cuda(src)
    assert not report.ok
    assert report.sources[0].host_missing_header == "forge_absent_lib.h"
    assert "this host lacks the CUDA toolkit header forge_absent_lib.h" in report.error


def test_compile_timeout_kills_the_compiler(tmp_path):
    # ~15-30 s of cicc/ptxas work, stopped after 1.5 s
    src = candidate(
        'S = r"""\n'
        "template <int N> struct Deep { __device__ static float f(float x) { return Deep<N - 1>::f(x) * 1.0001f + sinf(x + N); } };\n"
        "template <> struct Deep<0> { __device__ static float f(float x) { return x; } };\n"
        'extern "C" __global__ void slow(float* y) {\n'
        "    float v = y[threadIdx.x];\n"
        "#pragma unroll\n"
        "    for (int i = 0; i < 64; ++i) v = Deep<150>::f(v);\n"
        "    y[threadIdx.x] = v;\n"
        '}"""\n'
        "m = cupy.RawModule(code=S)\n"
    )
    report = compile_cuda(src, workdir=tmp_path, timeout_s=1.5)
    assert not report.ok
    (source,) = report.sources
    assert source.timed_out and "timed out" in source.log
    assert source.seconds < 10
    leftovers = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:  # the process ended while we looked
                continue
            if str(tmp_path).encode() in cmdline:
                leftovers.append(cmdline)
    assert leftovers == [], "nvcc or one of its children survived the timeout"


def test_missing_nvcc_raises_a_toolchain_error(monkeypatch, tmp_path):
    monkeypatch.setattr(toolchain.shutil, "which", lambda name: None)
    monkeypatch.setattr(toolchain, "DEFAULT_CUDA_HOMES", (str(tmp_path),))
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    with pytest.raises(CudaToolchainError, match="nvcc not found"):
        compile_cuda(BAD.read_text())


def test_missing_nvrtc_raises_a_toolchain_error(monkeypatch, tmp_path):
    monkeypatch.setenv("FORGE_NVRTC_LIB", str(tmp_path / "libnvrtc.so.13"))
    with pytest.raises(CudaToolchainError, match="FORGE_NVRTC_LIB"):
        compile_cuda(BAD.read_text(), raw_compiler="nvrtc")


def test_bad_arch_is_misuse():
    with pytest.raises(ValueError, match="sm_90"):
        compile_cuda(BAD.read_text(), arch="90")


def test_report_is_json_serializable():
    report = compile_cuda(BAD.read_text())
    again = type(report).model_validate_json(report.model_dump_json())
    assert again == report
    assert os.path.sep not in again.sources[0].label
