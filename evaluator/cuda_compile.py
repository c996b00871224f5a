"""CUDA candidates without a GPU: find their CUDA sources statically, name their kernels, and
compile them the way they will be compiled on the GPU host.

A CUDA candidate carries its kernels as Python string constants, in one of two flavours:

- `inline`: sources for `torch.utils.cpp_extension.load_inline(cuda_sources=...)`. They use
  torch's C++ API (`torch::Tensor`, `TORCH_CHECK`, c10 headers) and are compiled here as
  load_inline compiles its `cuda.cu`: the same three prepended includes, nvcc with torch's
  include paths, defines and `COMMON_NVCC_FLAGS`, `-c` to an object (no link, no import).
- `raw`: NVRTC sources for `cupy.RawModule(code=...)` / `cupy.RawKernel(code, name)`. Compiled
  with `nvcc --cubin` (default) or with the NVRTC library itself (`raw_compiler="nvrtc"`, the
  compiler cupy runs, so a missing header or an undefined host macro such as INFINITY is
  caught; nvcc force-includes cuda_runtime.h and accepts both). Options follow cupy 14:
  the candidate's literal `options`, `-std=c++14` when they name no standard, then `-ftz=true`.

Nothing of the candidate is executed: the sources are read with `ast`. A string is a CUDA
source when it contains `__global__`; its flavour comes from the call it is passed to
(load_inline / RawModule / RawKernel, directly or through a module-level name, a list, or `+`
of strings) or, for strings not passed to such a call, from its content (torch/ATen/c10 API ->
inline, else raw).

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

import ast
import ctypes.util
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

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

_INLINE_MARKERS = re.compile(
    r"torch::|\bat::|\bc10::|#\s*include\s*[<\"](torch|ATen|c10)/|TORCH_CHECK|PYBIND11_MODULE|"
    r"TORCH_EXTENSION_NAME|C10_CUDA_KERNEL_LAUNCH_CHECK"
)
_GLOBAL = re.compile(r"\b__global__\b")
_ATTRIBUTES_WITH_ARGS = frozenset(
    {
        "__launch_bounds__",
        "__cluster_dims__",
        "__maxnreg__",
        "__attribute__",
        "__declspec",
        "alignas",
    }
)
_MISSING_HEADER = re.compile(
    r'cannot open source file "([^"]+)"|fatal error: ([^:\s]+): No such file'
)


class CudaToolchainError(RuntimeError):
    """The host cannot compile CUDA at all (no nvcc, no NVRTC, no torch headers); the message
    names the fix. Compile errors of a candidate are never raised: they are report data."""


class CudaSource(BaseModel):
    """One CUDA source found in a candidate."""

    kind: Literal["inline", "raw"]
    code: str
    label: str = Field(description="variable name, or `source_<i>` for an unnamed literal")
    lineno: int = Field(description="candidate line where the (first) string literal starts")
    origin: str = Field(description="how it was found: the call it is passed to, or `content`")
    line_mapped: bool = Field(description="line k of `code` is candidate line lineno + k - 1")
    options: list[str] = Field(
        default_factory=list,
        description="compiler options written literally in the candidate (RawModule/RawKernel "
        "options, load_inline extra_cuda_cflags)",
    )
    kernels: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)


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


@dataclass
class KernelDecl:
    name: str
    extern_c: bool
    template: bool


@dataclass
class _Scan:
    sources: list[CudaSource] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Kernel names


def _blank(match: re.Match[str]) -> str:
    # keep newlines so that offsets and line numbers stay meaningful
    return re.sub(r"[^\n]", " ", match.group(0))


def _strip_comments_and_directives(code: str) -> str:
    """Comments and preprocessor lines replaced by spaces; string literals kept."""

    def repl(m: re.Match[str]) -> str:
        text = m.group(0)
        return _blank(m) if text.startswith("/") else text

    code = re.sub(
        r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'', repl, code, flags=re.S
    )
    return re.sub(r"^[ \t]*#(?:[^\n]*\\\n)*[^\n]*", _blank, code, flags=re.M)


def _matching(text: str, pos: int, open_ch: str, close_ch: str) -> int:
    """Index just past the bracket matching text[pos] == open_ch (len(text) if unbalanced)."""
    depth = 0
    for i in range(pos, len(text)):
        if text[i] == open_ch:
            depth += 1
        elif text[i] == close_ch:
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def _extern_c_blocks(text: str) -> list[tuple[int, int]]:
    blocks = []
    for m in re.finditer(r'\bextern\s*"C"\s*\{', text):
        start = m.end() - 1
        blocks.append((start, _matching(text, start, "{", "}")))
    return blocks


def _kernel_name_after(text: str, pos: int) -> str:
    """Name of the function declared after a `__global__` that ends at pos ('' if none)."""
    seen_void = False
    for _ in range(64):
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return ""
        if text.startswith("[[", pos):
            end = text.find("]]", pos)
            pos = len(text) if end < 0 else end + 2
            continue
        ident = re.compile(r"[A-Za-z_]\w*").match(text, pos)
        if ident is None:
            if text[pos] in "({;=":
                return ""
            pos += 1
            continue
        word = ident.group(0)
        nxt = ident.end()
        while nxt < len(text) and text[nxt].isspace():
            nxt += 1
        if word in _ATTRIBUTES_WITH_ARGS and nxt < len(text) and text[nxt] == "(":
            pos = _matching(text, nxt, "(", ")")
            continue
        if word == "void":
            seen_void = True
        elif seen_void and nxt < len(text) and text[nxt] in "(<":
            return word
        pos = ident.end()
    return ""


def kernel_decls(code: str) -> list[KernelDecl]:
    """`__global__` functions of one CUDA source, in order of first appearance."""
    text = _strip_comments_and_directives(code)
    blocks = _extern_c_blocks(text)
    decls: dict[str, KernelDecl] = {}
    for m in _GLOBAL.finditer(text):
        name = _kernel_name_after(text, m.end())
        if not name:
            continue
        head_start = max(
            text.rfind(";", 0, m.start()),
            text.rfind("}", 0, m.start()),
            text.rfind("{", 0, m.start()),
        )
        head = text[head_start + 1 : m.start()]
        extern_c = bool(re.search(r'\bextern\s*"C"', head)) or any(
            a < m.start() < b for a, b in blocks
        )
        template = bool(re.search(r"\btemplate\s*<", head))
        if name in decls:
            decls[name].extern_c |= extern_c
        else:
            decls[name] = KernelDecl(name=name, extern_c=extern_c, template=template)
    return list(decls.values())


def _names_in_sources(sources: list[CudaSource]) -> list[str]:
    names: list[str] = []
    for src in sources:
        names.extend(n for n in src.kernels if n not in names)
    return names


def kernel_names(candidate_source: str) -> list[str]:
    """Names of the `__global__` functions in a candidate's CUDA sources (empty if none)."""
    return _names_in_sources(cuda_sources(candidate_source))


# --------------------------------------------------------------------------------------------
# Finding the sources


def _call_name(func: ast.expr) -> str:
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return ""


def _arg(call: ast.Call, keyword: str, position: int | None) -> ast.expr | None:
    for kw in call.keywords:
        if kw.arg == keyword:
            return kw.value
    if position is not None and position < len(call.args):
        arg = call.args[position]
        return None if isinstance(arg, ast.Starred) else arg
    return None


@dataclass
class _Resolved:
    parts: list[str]
    constants: list[ast.Constant]
    joinable: bool = True


class _Unresolvable(Exception):
    """An expression that is not built from string literals alone (internal control flow)."""


class _Resolver:
    def __init__(self, tree: ast.Module):
        self.env: dict[str, ast.expr] = {}
        for node in tree.body:
            if (
                isinstance(node, ast.Assign)
                and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
            ):
                self.env[node.targets[0].id] = node.value
            elif (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and node.value is not None
            ):
                self.env[node.target.id] = node.value

    def strings(self, expr: ast.expr, depth: int = 0) -> _Resolved:
        """The strings an expression denotes: one per list element, `+` concatenated."""
        if depth > 20:
            raise _Unresolvable("too deeply nested")
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            return _Resolved([expr.value], [expr])
        if isinstance(expr, ast.Name) and expr.id in self.env:
            return self.strings(self.env[expr.id], depth + 1)
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
            left, right = self.strings(expr.left, depth + 1), self.strings(expr.right, depth + 1)
            if len(left.parts) != 1 or len(right.parts) != 1:
                raise _Unresolvable("`+` of lists")
            return _Resolved(
                [left.parts[0] + right.parts[0]], left.constants + right.constants, joinable=False
            )
        if isinstance(expr, ast.List | ast.Tuple):
            out = _Resolved([], [])
            for element in expr.elts:
                got = self.strings(element, depth + 1)
                out.parts.extend(got.parts)
                out.constants.extend(got.constants)
            out.joinable = len(expr.elts) == 1
            return out
        kind = (
            "an f-string"
            if isinstance(expr, ast.JoinedStr)
            else f"a {type(expr).__name__} expression"
        )
        raise _Unresolvable(kind)

    def literal_options(self, expr: ast.expr | None) -> list[str] | None:
        """A literal tuple/list of strings (directly or through a module-level name)."""
        if expr is None:
            return []
        if isinstance(expr, ast.Name) and expr.id in self.env:
            return self.literal_options(self.env[expr.id])
        if isinstance(expr, ast.List | ast.Tuple) and all(
            isinstance(e, ast.Constant) and isinstance(e.value, str) for e in expr.elts
        ):
            return [e.value for e in expr.elts]  # type: ignore[union-attr]
        return None


def _docstring_nodes(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
        ):
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _label_of(constant: ast.Constant, tree: ast.Module, index: int) -> str:
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and node.value is constant
            and isinstance(node.targets[0], ast.Name)
        ):
            return node.targets[0].id
        if (
            isinstance(node, ast.AnnAssign)
            and node.value is constant
            and isinstance(node.target, ast.Name)
        ):
            return node.target.id
    return f"source_{index}"


def _line_mapped(constant: ast.Constant, candidate: str) -> bool:
    segment = ast.get_source_segment(candidate, constant)
    if segment is None or not isinstance(constant.value, str):
        return False
    # a plain literal whose newlines are real newlines (no implicit concatenation, no \n escapes)
    return segment.count("\n") == constant.value.count("\n") and segment[:1] in "rRbBuU\"'"


def _classify(code: str) -> Literal["inline", "raw"]:
    return "inline" if _INLINE_MARKERS.search(code) else "raw"


def _make_source(
    kind: Literal["inline", "raw"],
    resolved: _Resolved,
    origin: str,
    options: list[str] | None,
    tree: ast.Module,
    candidate: str,
    index: int,
    mangled_ok: bool = False,
) -> CudaSource:
    first = resolved.constants[0]
    code = "\n".join(resolved.parts)
    single = len(resolved.constants) == 1 and resolved.joinable
    source = CudaSource(
        kind=kind,
        code=code,
        label=_label_of(first, tree, index),
        lineno=first.lineno,
        origin=origin,
        line_mapped=single and _line_mapped(first, candidate),
        options=options or [],
    )
    decls = kernel_decls(code)
    source.kernels = [d.name for d in decls]
    if not decls:
        source.warnings.append("no __global__ function could be named in this source")
    if options is None:
        source.warnings.append(
            "compiler options are not a literal tuple/list: compiled without them"
        )
    if kind == "raw" and not mangled_ok:
        for d in decls:
            if not d.extern_c and not d.template:
                source.warnings.append(
                    f"kernel '{d.name}' is not extern \"C\": NVRTC mangles its name, so "
                    f"get_function('{d.name}') will not find it (declare it extern \"C\")"
                )
    return source


def _scan(candidate: str) -> _Scan:
    scan = _Scan()
    try:
        tree = ast.parse(candidate)
    except SyntaxError as exc:
        scan.problems.append(f"candidate is not valid Python: line {exc.lineno}: {exc.msg}")
        return scan
    resolver = _Resolver(tree)
    consumed: set[int] = set()
    get_function_names: list[tuple[str, int]] = []

    def take(expr: ast.expr | None, what: str, lineno: int) -> _Resolved | None:
        if expr is None:
            return None
        try:
            got = resolver.strings(expr)
        except _Unresolvable as exc:
            if any(
                isinstance(n, ast.Constant) and isinstance(n.value, str) and "__global__" in n.value
                for n in ast.walk(expr)
            ):
                scan.problems.append(
                    f"line {lineno}: {what} is {exc}, not a string constant: it cannot be compiled "
                    "without running the candidate (write the CUDA source as a plain string literal)"
                )
                consumed.update(id(n) for n in ast.walk(expr))
            return None
        if got.constants and all(id(c) in consumed for c in got.constants):
            return None  # the same source passed to a second call: compiled once
        consumed.update(id(c) for c in got.constants)
        return got

    calls = sorted(
        (n for n in ast.walk(tree) if isinstance(n, ast.Call)),
        key=lambda n: (n.lineno, n.col_offset),
    )
    for call in calls:
        name = _call_name(call.func)
        if name == "load_inline":
            cpp = take(_arg(call, "cpp_sources", 1), "load_inline's cpp_sources", call.lineno)
            if cpp is not None and any(_GLOBAL.search(p) for p in cpp.parts):
                scan.problems.append(
                    f"line {call.lineno}: load_inline's cpp_sources contain __global__: they are "
                    "compiled by the host C++ compiler, which rejects CUDA kernels (move them to cuda_sources)"
                )
            got = take(_arg(call, "cuda_sources", 2), "load_inline's cuda_sources", call.lineno)
            if got is not None and got.parts:
                options = resolver.literal_options(_arg(call, "extra_cuda_cflags", None))
                scan.sources.append(
                    _make_source(
                        "inline",
                        got,
                        f"load_inline(cuda_sources=...) at line {call.lineno}",
                        options,
                        tree,
                        candidate,
                        len(scan.sources),
                    )
                )
        elif name in ("RawModule", "RawKernel"):
            got = take(_arg(call, "code", 0), f"{name}'s code", call.lineno)
            if got is not None and got.parts:
                options = resolver.literal_options(
                    _arg(call, "options", None if name == "RawModule" else 2)
                )
                mangled_ok = _arg(call, "name_expressions", None) is not None
                scan.sources.append(
                    _make_source(
                        "raw",
                        got,
                        f"{name}(code=...) at line {call.lineno}",
                        options,
                        tree,
                        candidate,
                        len(scan.sources),
                        mangled_ok,
                    )
                )
                kernel = _arg(call, "name", None if name == "RawModule" else 1)
                if isinstance(kernel, ast.Constant) and isinstance(kernel.value, str):
                    get_function_names.append((kernel.value, call.lineno))
        elif name == "get_function" and call.args:
            arg = call.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                get_function_names.append((arg.value, call.lineno))

    docstrings = _docstring_nodes(tree)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and _GLOBAL.search(node.value)
            and id(node) not in consumed
            and id(node) not in docstrings
        ):
            scan.sources.append(
                _make_source(
                    _classify(node.value),
                    _Resolved([node.value], [node]),
                    "content",
                    [],
                    tree,
                    candidate,
                    len(scan.sources),
                )
            )

    raw_names = {k for s in scan.sources if s.kind == "raw" for k in s.kernels}
    for kernel, lineno in get_function_names:
        if raw_names and kernel not in raw_names and "<" not in kernel:
            scan.problems.append(
                f"line {lineno}: kernel '{kernel}' is requested but no raw CUDA source defines a "
                f"__global__ function of that name (found: {', '.join(sorted(raw_names))})"
            )
    scan.sources.sort(key=lambda s: s.lineno)
    return scan


def cuda_sources(candidate_source: str) -> list[CudaSource]:
    """The CUDA sources of a candidate, in order of appearance, without executing it."""
    return _scan(candidate_source).sources


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


def _run(cmd: list[str], cwd: Path, timeout_s: float) -> tuple[int | None, str, float]:
    """Run a compiler in its own process group; (returncode or None on timeout, output, seconds)."""
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
    scan = _scan(candidate_source)
    report = CudaCompileReport(
        ok=False, seconds=0.0, arch=arch, kernel_names=_names_in_sources(scan.sources)
    )
    errors = list(scan.problems)
    if not scan.sources:
        errors.append(
            "no CUDA source found: a CUDA candidate passes a string constant containing a __global__ "
            "function to load_inline(cuda_sources=...) or cupy.RawModule(code=...)"
        )
    with tempfile.TemporaryDirectory(prefix="forge-cuda-") as tmp:
        root = Path(tmp) if workdir is None else workdir
        root.mkdir(parents=True, exist_ok=True)
        for index, src in enumerate(scan.sources):
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
