"""Compiling a CUDA candidate's sources the way they will be compiled on the GPU host, without
a GPU: nvcc for load_inline sources and NVRTC-style sources, or the NVRTC library itself. The
sources are found by `forge.evaluator.cuda_source` (nothing of the candidate is executed).

- `inline` sources (load_inline) are compiled as load_inline compiles its `cuda.cu`: the same
  three prepended includes, nvcc with torch's include paths, defines and `COMMON_NVCC_FLAGS`,
  `-c` to an object (no link, no import).
- `raw` sources (cupy.RawModule / RawKernel) are compiled with `nvcc --cubin` (default) or with
  the NVRTC library itself (`raw_compiler="nvrtc"`, the compiler cupy runs, so a missing header or
  an undefined host macro such as INFINITY is caught; nvcc force-includes cuda_runtime.h and
  accepts both). Options follow cupy 14: the candidate's literal `options`, `-std=c++14` when
  they name no standard, then `-ftz=true`.

Compile errors are data (`ok=False` with nvcc's or NVRTC's log); only a missing toolchain
raises `CudaToolchainError`.

Compile errors point at the candidate's own lines: each source gets a `#line` directive, so
nvcc reports `candidate.py(57): error: ...` (when the string literal maps line for line onto
the candidate; otherwise `<NAME>.cu(<line within the string>)`).

On a CPU-only torch wheel the generated `c10/cuda/impl/cuda_cmake_macros.h` is missing; it only
defines `C10_CUDA_BUILD_SHARED_LIBS` (Windows dllexport), so inline sources are compiled with
`-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE`, the switch c10 provides to skip that file. A source that
includes `ATen/cuda/CUDAContext.h` additionally needs the cuBLAS/cuSPARSE/cuSOLVER headers of a
full CUDA toolkit; where the toolkit lacks them, pass their directories in `include_dirs`
(e.g. from the nvidia-cublas / nvidia-cusparse / nvidia-cusolver wheels) or the compile fails
with "cusparse.h: No such file or directory", which the report marks as `host_missing_header`
(a fact about the host, not about the candidate).
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from forge.evaluator.cuda_source import CudaSource, names_in_sources, scan

LOG_LIMIT = 6000
"""Characters of compiler output kept per source (head and tail)."""

INLINE_PRELUDE = "#include <torch/types.h>\n#include <cuda.h>\n#include <cuda_runtime.h>\n"
"""What load_inline prepends to the concatenated cuda_sources (torch/utils/cpp_extension.py)."""

DEFAULT_CUDA_HOMES = ("/usr/local/cuda",)
"""Where nvcc and libnvrtc are looked for after PATH, $CUDA_HOME and $CUDA_PATH."""

CUPY_DEFAULT_STD = "-std=c++14"
"""cupy >= 14 compiles RawModule/RawKernel sources as C++14 unless the options name a standard."""

CUPY_APPENDED_OPTIONS = ("-ftz=true",)
"""cupy appends these to every NVRTC compile (cupy/cuda/compiler.py, _compile_with_cache_cuda)."""

# Headers that are part of a full CUDA toolkit but not of torch or of the compiler itself: when
# one of them is missing the host is incomplete, not the candidate wrong.
TOOLKIT_LIBRARY_HEADERS = frozenset(
    {
        "cublas_v2.h",
        "cublas.h",
        "cublasLt.h",
        "cusparse.h",
        "cusolverDn.h",
        "cusolverSp.h",
        "curand.h",
        "curand_kernel.h",
        "cufft.h",
        "cudnn.h",
        "nccl.h",
        "cudss.h",
        "nvToolsExt.h",
    }
)

# nvcc options that mean the same to nvcc and NVRTC and matter for whether code compiles; other
# options of the candidate are not passed to nvcc (listed in the source's warnings instead)
_PORTABLE_OPTION = re.compile(
    r"^(-D\S+|--define-macro=\S+|-U\S+|-{1,2}std=\S+|-{1,2}use_fast_math|-{1,2}ftz=\S+|"
    r"-{1,2}prec-div=\S+|-{1,2}prec-sqrt=\S+|-{1,2}fmad=\S+|-O[0-3]|-lineinfo|"
    r"--generate-line-info|--extra-device-vectorization|-{1,2}maxrregcount=\d+|"
    r"--expt-relaxed-constexpr|--expt-extended-lambda|-{1,2}restrict)$"
)

_MISSING_HEADER = re.compile(
    r'cannot open source file "([^"]+)"|fatal error: ([^:\s]+): No such file'
)


class CudaToolchainError(RuntimeError):
    """The host cannot compile CUDA at all (no nvcc, no NVRTC, no torch headers); the message
    names the fix. Compile errors of a candidate are never raised: they are report data."""


class SourceCompile(BaseModel):
    """How one source compiled."""

    kind: Literal["inline", "raw"]
    label: str
    lineno: int
    ok: bool
    seconds: float
    compiler: Literal["nvcc", "nvrtc"]
    command: str = Field(description="the compiler command line or NVRTC options, for reproduction")
    log: str = Field(description="compiler output, truncated to LOG_LIMIT characters")
    timed_out: bool = False
    host_missing_header: str = Field(
        "",
        description="a CUDA-toolkit library header this host lacks (the failure says nothing "
        "about the candidate)",
    )
    kernels: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)


class CudaCompileReport(BaseModel):
    """Result of `compile_cuda`: `ok` only when at least one source was found and all compiled."""

    ok: bool
    seconds: float
    arch: str
    sources: list[SourceCompile] = Field(default_factory=list)
    kernel_names: list[str] = Field(default_factory=list)
    error: str = Field("", description="why there was nothing (or not everything) to compile")


# --------------------------------------------------------------------------------------------
# Compiling


def _truncate(text: str, limit: int = LOG_LIMIT) -> str:
    if len(text) <= limit:
        return text
    head = limit * 2 // 3
    tail = limit - head
    return f"{text[:head]}\n... [{len(text) - limit} characters cut] ...\n{text[-tail:]}"


def _nvcc() -> str:
    found = shutil.which("nvcc")
    if found is None:
        for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), *DEFAULT_CUDA_HOMES):
            if home and (Path(home) / "bin" / "nvcc").is_file():
                return str(Path(home) / "bin" / "nvcc")
        raise CudaToolchainError(
            "nvcc not found on PATH, $CUDA_HOME/bin or /usr/local/cuda/bin: install the CUDA toolkit "
            "(nvcc) or add its bin directory to PATH"
        )
    return found


def _arch_flags(arch: str) -> tuple[str, str]:
    m = re.fullmatch(r"sm_(\d+[a-z]?)", arch)
    if m is None:
        raise ValueError(f"arch must look like 'sm_90' or 'sm_90a', got '{arch}'")
    return f"compute_{m.group(1)}", arch


@dataclass
class _TorchBuild:
    includes: list[str]
    defines: list[str]
    nvcc_flags: list[str]
    std: str


def _torch_build() -> _TorchBuild:
    if importlib.util.find_spec("torch") is None:
        raise CudaToolchainError(
            "torch is not installed: load_inline sources need torch's C++ headers (pip install torch)"
        )
    import torch
    from torch.utils import cpp_extension

    includes = cpp_extension.include_paths()  # torch/include and torch/csrc/api/include
    python_include = sysconfig.get_path("include", scheme="posix_prefix")
    if python_include:
        includes.append(python_include)  # Python.h, needed when a source includes torch/extension.h
    # The C++ standard torch's own extension builder passes (c++17 in older releases, c++20
    # since pytorch PR 176659, 2026-03): the one its cpp_extension.py names most often.
    stds = re.findall(r"-std=(c\+\+\d+)", Path(cpp_extension.__file__).read_text())
    if not stds:
        raise CudaToolchainError(
            f"cannot tell which -std torch {torch.__version__} builds extensions with "
            f"(no '-std=c++NN' in {cpp_extension.__file__}): use a torch release whose cpp_extension does"
        )
    std = max(set(stds), key=stds.count)
    abi = int(bool(torch._C._GLIBCXX_USE_CXX11_ABI))
    defines = [
        "-DTORCH_API_INCLUDE_EXTENSION_H",
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        # CPU wheels lack the generated c10/cuda/impl/cuda_cmake_macros.h (it only defines
        # C10_CUDA_BUILD_SHARED_LIBS for Windows dllexport); this c10 switch skips including it
        "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE",
    ]
    return _TorchBuild(
        includes=includes,
        defines=defines,
        nvcc_flags=list(cpp_extension.COMMON_NVCC_FLAGS),
        std=std,
    )


# Address space of each compiler process: cicc and cc1plus stay well under 2 GiB on large kernels,
# while `#include "/dev/zero"` grows until the host runs out of memory (row 27).
COMPILER_MEMORY_BYTES = 6 << 30


def _limit_compiler_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (COMPILER_MEMORY_BYTES, COMPILER_MEMORY_BYTES))


def _run(cmd: list[str], cwd: Path, timeout_s: float) -> tuple[int | None, str, float]:
    """Run a compiler in its own process group, its address space capped; (returncode or None on
    timeout, output, seconds)."""
    start = time.perf_counter()
    # nvcc's intermediates (and so its children's command lines) live in the work directory
    env = {**os.environ, "TMPDIR": str(cwd)}
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
        preexec_fn=_limit_compiler_memory,
    )
    try:
        out, _ = proc.communicate(timeout=max(timeout_s, 0.1))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # nvcc's children (cicc, ptxas) go too
        out, _ = proc.communicate()
        return None, out, time.perf_counter() - start
    return proc.returncode, out, time.perf_counter() - start


def _line_directive(src: CudaSource, filename: str) -> str:
    if src.line_mapped:
        return f'#line {src.lineno} "{filename}"\n'
    return f'#line 1 "{src.label}.cu"\n'


def _portable(options: list[str]) -> tuple[list[str], list[str]]:
    kept = [o for o in options if _PORTABLE_OPTION.match(o)]
    return kept, [o for o in options if not _PORTABLE_OPTION.match(o)]


def _cupy_options(options: list[str]) -> list[str]:
    has_std = any(re.match(r"-{1,2}std=", o) for o in options)
    return list(options) + ([] if has_std else [CUPY_DEFAULT_STD]) + list(CUPY_APPENDED_OPTIONS)


def _find_nvrtc() -> Path:
    env = os.environ.get("FORGE_NVRTC_LIB")
    if env:
        if not Path(env).is_file():
            raise CudaToolchainError(
                f"FORGE_NVRTC_LIB={env} does not exist: point it at libnvrtc.so"
            )
        return Path(env)
    candidates: list[Path] = []
    spec = importlib.util.find_spec("nvidia")
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            candidates.extend(sorted(Path(root).glob("*/lib/libnvrtc.so*")))
    nvcc = shutil.which("nvcc")
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), *DEFAULT_CUDA_HOMES]
    if nvcc:
        homes.append(str(Path(nvcc).resolve().parent.parent))
    for home in homes:
        if home:
            for lib in ("lib64", "lib", "targets/x86_64-linux/lib"):
                candidates.extend(sorted((Path(home) / lib).glob("libnvrtc.so*")))
    found = ctypes.util.find_library("nvrtc")
    if found:
        candidates.append(Path(found))
    for lib in candidates:
        if lib.is_file() and ".alt." not in lib.name and "builtins" not in lib.name:
            return lib
    raise CudaToolchainError(
        "NVRTC library (libnvrtc.so) not found: pip install nvidia-cuda-nvrtc, or set FORGE_NVRTC_LIB, "
        "or compile raw sources with raw_compiler='nvcc'"
    )


# Run in a child interpreter (a crash or a hang of NVRTC must not take the evaluator down).
# argv: libnvrtc path, source path, arch option, options... ; exit 0 ok, 1 compile error.
_NVRTC_SCRIPT = r"""
import ctypes, pathlib, sys
lib_path, src_path, *opts = sys.argv[1:]
for builtins in sorted(pathlib.Path(lib_path).parent.glob("libnvrtc-builtins.so*")):
    if ".alt." not in builtins.name:
        ctypes.CDLL(str(builtins), mode=ctypes.RTLD_GLOBAL)  # NVRTC dlopens it by soname
        break
lib = ctypes.CDLL(lib_path)
src = pathlib.Path(src_path).read_bytes()
prog = ctypes.c_void_p()
rc = lib.nvrtcCreateProgram(ctypes.byref(prog), src, pathlib.Path(src_path).name.encode(), 0, None, None)
if rc != 0:
    print(f"nvrtcCreateProgram failed with code {rc}")
    sys.exit(2)
arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
size = ctypes.c_size_t()
lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
log = ctypes.create_string_buffer(size.value)
lib.nvrtcGetProgramLog(prog, log)
print(log.value.decode(errors="replace"), end="")
if rc != 0:
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    print(f"\nnvrtcCompileProgram: {lib.nvrtcGetErrorString(rc).decode()}")
sys.exit(0 if rc == 0 else 1)
"""


def _compile_one(
    src: CudaSource,
    index: int,
    arch: str,
    workdir: Path,
    timeout_s: float,
    filename: str,
    raw_compiler: Literal["nvcc", "nvrtc"],
    include_dirs: list[str],
) -> SourceCompile:
    compute, sm = _arch_flags(arch)
    warnings = list(src.warnings)
    path = workdir / f"{index:02d}_{src.label}.cu"
    directive = _line_directive(src, filename)
    if src.kind == "inline":
        build = _torch_build()
        path.write_text(INLINE_PRELUDE + directive + src.code + "\n")
        kept, dropped = _portable(src.options)
        has_std = any(re.match(r"-{1,2}std=", o) for o in kept)
        cmd = [
            _nvcc(),
            "-c",
            "-x",
            "cu",
            f"-DTORCH_EXTENSION_NAME=forge_compile_check_{index}",
            *build.defines,
            *[f"-I{d}" for d in include_dirs],
            *[a for d in build.includes for a in ("-isystem", d)],
            *build.nvcc_flags,
            f"-gencode=arch={compute},code={sm}",
            "--compiler-options",
            "-fPIC",
            *([] if has_std else [f"-std={build.std}"]),
            *kept,
            str(path),
            "-o",
            str(path.with_suffix(".o")),
        ]
        compiler: Literal["nvcc", "nvrtc"] = "nvcc"
    elif raw_compiler == "nvcc":
        path.write_text(directive + src.code + "\n")
        kept, dropped = _portable(_cupy_options(src.options))
        cmd = [
            _nvcc(),
            "--cubin",
            f"-arch={sm}",
            *[f"-I{d}" for d in include_dirs],
            *kept,
            str(path),
            "-o",
            str(path.with_suffix(".cubin")),
        ]
        compiler = "nvcc"
    else:
        path.write_text(directive + src.code + "\n")
        dropped = []
        options = _cupy_options(src.options)
        cmd = [
            sys.executable,
            "-I",
            "-c",
            _NVRTC_SCRIPT,
            str(_find_nvrtc()),
            str(path),
            f"-arch={sm}",
            *[f"-I{d}" for d in include_dirs],
            *options,
        ]
        compiler = "nvrtc"
    if dropped:
        warnings.append(
            f"options not passed to nvcc (NVRTC/cupy-specific or unknown): {' '.join(dropped)}"
        )
    code, out, seconds = _run(cmd, workdir, timeout_s)
    ok = code == 0
    missing = ""
    if not ok:
        for m in _MISSING_HEADER.finditer(out):
            header = Path(m.group(1) or m.group(2)).name
            if header in TOOLKIT_LIBRARY_HEADERS:
                missing = header
                break
    shown = cmd if compiler == "nvcc" else ["nvrtc", str(path), *cmd[6:]]
    log = (
        out
        if code is not None
        else f"{out}\n{compiler} timed out after {seconds:.0f} s (limit {timeout_s:.0f} s)"
    )
    return SourceCompile(
        kind=src.kind,
        label=src.label,
        lineno=src.lineno,
        ok=ok,
        seconds=round(seconds, 3),
        compiler=compiler,
        command=" ".join(shown),
        log=_truncate(log.strip()),
        timed_out=code is None,
        host_missing_header=missing,
        kernels=list(src.kernels),
        warnings=warnings,
    )


def compile_cuda(
    candidate_source: str,
    arch: str = "sm_90",
    workdir: Path | None = None,
    timeout_s: float = 300,
    *,
    raw_compiler: Literal["nvcc", "nvrtc"] = "nvcc",
    include_dirs: list[str] | None = None,
    filename: str = "candidate.py",
) -> CudaCompileReport:
    """Compile every CUDA source of a candidate for `arch` without a GPU (nothing is run).

    `timeout_s` bounds the whole call; a source still compiling when it runs out is killed and
    reported with `timed_out=True`. `workdir` keeps the generated .cu files and objects (a
    temporary directory otherwise). `filename` is the name compile errors give the candidate.
    Raises CudaToolchainError only when the toolchain itself is missing.
    """
    _arch_flags(arch)  # validate before doing anything
    start = time.perf_counter()
    found = scan(candidate_source)
    report = CudaCompileReport(
        ok=False, seconds=0.0, arch=arch, kernel_names=names_in_sources(found.sources)
    )
    errors = list(found.problems)
    if not found.sources:
        errors.append(
            "no CUDA source found: a CUDA candidate passes a string constant containing a __global__ "
            "function to load_inline(cuda_sources=...) or cupy.RawModule(code=...)"
        )
    with tempfile.TemporaryDirectory(prefix="forge-cuda-") as tmp:
        root = Path(tmp) if workdir is None else workdir
        root.mkdir(parents=True, exist_ok=True)
        for index, src in enumerate(found.sources):
            left = timeout_s - (time.perf_counter() - start)
            report.sources.append(
                _compile_one(
                    src, index, arch, root, left, filename, raw_compiler, list(include_dirs or [])
                )
            )
    failed = [s for s in report.sources if not s.ok]
    for s in failed:
        if s.host_missing_header:
            errors.append(
                f"{s.label}: this host lacks the CUDA toolkit header {s.host_missing_header}; pass its "
                "directory in include_dirs or compile on the GPU host (says nothing about the candidate)"
            )
        else:
            errors.append(
                f"{s.label} (line {s.lineno}) did not compile"
                + (" (timed out)" if s.timed_out else "")
            )
    report.ok = bool(report.sources) and not errors
    report.error = "; ".join(errors)
    report.seconds = round(time.perf_counter() - start, 3)
    return report
