"""The one scanner of CUDA/C++ text: comments, preprocessor directives, includes, `__global__`
kernel declarations, traced (demangled) kernel names, and the CUDA sources a Python candidate
carries as string constants. Nothing here compiles or executes anything; the static checks
(`forge.evaluator.static`), the toolchain (`forge.evaluator.toolchain`) and profiling all read
CUDA text through these functions, so they name the same kernels.

A CUDA candidate carries its kernels as Python string constants, in one of two flavours:

- `inline`: sources for `torch.utils.cpp_extension.load_inline(cuda_sources=...)`, using torch's
  C++ API (`torch::Tensor`, `TORCH_CHECK`, c10 headers).
- `raw`: NVRTC sources for `cupy.RawModule(code=...)` / `cupy.RawKernel(code, name)`.

A string is a CUDA source when it contains `__global__`; its flavour comes from the call it is
passed to (load_inline / RawModule / RawKernel, directly or through a module-level name, a list,
or `+` of strings) or, for strings not passed to such a call, from its content (torch/ATen/c10
API -> inline, else raw). `cuda_sources` resolves those calls (what gets compiled);
`embedded_texts` returns every string literal chain of the candidate, f-strings included (what
the static rules read, wherever CUDA text hides).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, Field

from forge.evaluator.parsing import parse_python

GLOBAL = re.compile(r"\b__global__\b")
# Declaration specifiers that take a parenthesised argument list between `__global__` and the
# kernel's name (`__global__ void __launch_bounds__(256) k(...)`); skipped with their arguments.
ATTRIBUTES_WITH_ARGS = frozenset(
    {
        "__launch_bounds__",
        "__cluster_dims__",
        "__maxnreg__",
        "__attribute__",
        "__declspec",
        "alignas",
    }
)
# Text that only CUDA/C++ source contains: a string with one of these is read as CUDA.
C_MARKERS = (
    "__global__",
    "__device__",
    "#include",
    "PYBIND11",
    "TORCH_",
    "torch::",
    "at::",
    'extern "C"',
)
# torch/ATen/c10 API: a source using it is a load_inline source, else an NVRTC one.
INLINE_MARKERS = re.compile(
    r"torch::|\bat::|\bc10::|#\s*include\s*[<\"](torch|ATen|c10)/|TORCH_CHECK|PYBIND11_MODULE|"
    r"TORCH_EXTENSION_NAME|C10_CUDA_KERNEL_LAUNCH_CHECK"
)
_TOKENS = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'', re.S)
_DIRECTIVE = re.compile(r"^[ \t]*#(?:[^\n]*\\\n)*[^\n]*", re.M)
_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*(?:<([^>\n]*)>|"([^"\n]*)"|([^\n]*))', re.M)
_IDENT = re.compile(r"[A-Za-z_]\w*")


# --------------------------------------------------------------------------------------------
# Comments, directives, includes


def _blank(match: re.Match[str]) -> str:
    # keep newlines so that offsets and line numbers stay meaningful
    return re.sub(r"[^\n]", " ", match.group(0))


def strip_comments(code: str) -> str:
    """Comments replaced by spaces (newlines kept, so offsets and lines stay); string and
    character literals kept as they are (a `//` inside a literal is not a comment)."""

    def repl(m: re.Match[str]) -> str:
        return _blank(m) if m.group(0).startswith("/") else m.group(0)

    return _TOKENS.sub(repl, code)


def strip_comments_and_directives(code: str) -> str:
    """`strip_comments`, and preprocessor lines (with their continuations) blanked too."""
    return _DIRECTIVE.sub(_blank, strip_comments(code))


@dataclass(frozen=True)
class Include:
    """One `#include` line: `target` as written, `form` "angle" (`<x>`), "quoted" (`"x"`) or
    "computed" (a macro, resolved only by the preprocessor); `offset` into the text."""

    target: str
    form: Literal["angle", "quoted", "computed"]
    offset: int


def includes(code: str) -> list[Include]:
    """The `#include` directives of a source, comments ignored, in order."""
    found = []
    for m in _INCLUDE.finditer(strip_comments(code)):
        if m.group(1) is not None:
            found.append(Include(m.group(1).strip(), "angle", m.start()))
        elif m.group(2) is not None:
            found.append(Include(m.group(2).strip(), "quoted", m.start()))
        else:
            found.append(Include(m.group(3).strip(), "computed", m.start()))
    return found


def looks_like_cuda(text: str) -> bool:
    """Whether a string reads as CUDA/C++ source (a marker, or braces and semicolons)."""
    return any(marker in text for marker in C_MARKERS) or (
        "{" in text and ";" in text and "}" in text
    )


def classify(code: str) -> Literal["inline", "raw"]:
    """`inline` when the source uses torch's C++ API, else `raw` (NVRTC)."""
    return "inline" if INLINE_MARKERS.search(code) else "raw"


# --------------------------------------------------------------------------------------------
# Kernel names


@dataclass
class KernelDecl:
    name: str
    extern_c: bool
    template: bool


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


def _matching_back(text: str, end: int, open_ch: str, close_ch: str) -> int:
    """Index of the bracket opening the group that closes at text[end - 1] == close_ch (0 if
    unbalanced)."""
    depth = 0
    for i in range(end - 1, -1, -1):
        if text[i] == close_ch:
            depth += 1
        elif text[i] == open_ch:
            depth -= 1
            if depth == 0:
                return i
    return 0


def _extern_c_blocks(text: str) -> list[tuple[int, int]]:
    blocks = []
    for m in re.finditer(r'\bextern\s*"C"\s*\{', text):
        start = m.end() - 1
        blocks.append((start, _matching(text, start, "{", "}")))
    return blocks


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def kernel_name_after(text: str, pos: int) -> str:
    """Name of the function declared after a `__global__` that ends at `pos` ('' if none): the
    first identifier after `void` that is followed by `(` or `<`, skipping attributes with
    their arguments (`__launch_bounds__(256)`, `__attribute__((noinline))`) and `[[...]]`."""
    seen_void = False
    for _ in range(64):
        pos = _skip_space(text, pos)
        if pos >= len(text):
            return ""
        if text.startswith("[[", pos):
            end = text.find("]]", pos)
            pos = len(text) if end < 0 else end + 2
            continue
        ident = _IDENT.match(text, pos)
        if ident is None:
            if text[pos] in "({;=":
                return ""
            pos += 1
            continue
        word = ident.group(0)
        nxt = _skip_space(text, ident.end())
        if word in ATTRIBUTES_WITH_ARGS and nxt < len(text) and text[nxt] == "(":
            pos = _matching(text, nxt, "(", ")")
            continue
        if word == "void":
            seen_void = True
        elif seen_void and nxt < len(text) and text[nxt] in "(<":
            return word
        pos = ident.end()
    return ""


def kernel_decls(code: str) -> list[KernelDecl]:
    """`__global__` functions of one CUDA source, in order of first appearance (comments and
    preprocessor lines ignored)."""
    text = strip_comments_and_directives(code)
    blocks = _extern_c_blocks(text)
    decls: dict[str, KernelDecl] = {}
    for m in GLOBAL.finditer(text):
        name = kernel_name_after(text, m.end())
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


def traced_base_name(traced: str) -> str:
    """The bare function name of a kernel name as a profiler reports it (demangled):
    `(anonymous namespace)::softmax_rows_f32(float const*, float*, long, bool)` ->
    `softmax_rows_f32`; `void ns::k<128, std::less<int>>(float*)` -> `k`; a Triton or
    extern "C" name is returned as is."""
    name = traced.strip()
    if name.endswith(")"):
        name = name[: _matching_back(name, len(name), "(", ")")].rstrip()
    if name.endswith(">"):
        name = name[: _matching_back(name, len(name), "<", ">")].rstrip()
    depth, start = 0, 0
    for i, ch in enumerate(name):
        if ch in "(<":
            depth += 1
        elif ch in ")>":
            depth -= 1
        elif depth == 0 and name.startswith("::", i):
            start = i + 2
    name = name[start:]
    words = name.split()
    return words[-1] if words else name


# --------------------------------------------------------------------------------------------
# CUDA sources of a Python candidate


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


@dataclass
class Scan:
    """What `scan` found: the sources, and why some could not be taken statically."""

    sources: list[CudaSource] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


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


def docstring_nodes(tree: ast.Module) -> set[int]:
    """ids of the docstring constants of a module and its classes and functions."""
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


class _Scanner:
    """One pass over a parsed candidate: the sources passed to compile calls, then the other
    string constants holding `__global__`."""

    def __init__(self, tree: ast.Module, candidate: str):
        self.tree = tree
        self.candidate = candidate
        self.resolver = _Resolver(tree)
        self.scan = Scan()
        self.consumed: set[int] = set()
        self.requested: list[tuple[str, int]] = []  # get_function / RawKernel names

    def take(self, expr: ast.expr | None, what: str, lineno: int) -> _Resolved | None:
        if expr is None:
            return None
        try:
            got = self.resolver.strings(expr)
        except _Unresolvable as exc:
            if any(
                isinstance(n, ast.Constant) and isinstance(n.value, str) and "__global__" in n.value
                for n in ast.walk(expr)
            ):
                self.scan.problems.append(
                    f"line {lineno}: {what} is {exc}, not a string constant: it cannot be compiled "
                    "without running the candidate (write the CUDA source as a plain string literal)"
                )
                self.consumed.update(id(n) for n in ast.walk(expr))
            return None
        if got.constants and all(id(c) in self.consumed for c in got.constants):
            return None  # the same source passed to a second call: compiled once
        self.consumed.update(id(c) for c in got.constants)
        return got

    def add(
        self,
        kind: Literal["inline", "raw"],
        got: _Resolved,
        origin: str,
        options: list[str] | None,
        mangled_ok: bool = False,
    ) -> None:
        index = len(self.scan.sources)
        self.scan.sources.append(
            _make_source(kind, got, origin, options, self.tree, self.candidate, index, mangled_ok)
        )

    def load_inline(self, call: ast.Call) -> None:
        cpp = self.take(_arg(call, "cpp_sources", 1), "load_inline's cpp_sources", call.lineno)
        if cpp is not None and any(GLOBAL.search(p) for p in cpp.parts):
            self.scan.problems.append(
                f"line {call.lineno}: load_inline's cpp_sources contain __global__: they are "
                "compiled by the host C++ compiler, which rejects CUDA kernels (move them to "
                "cuda_sources)"
            )
        got = self.take(_arg(call, "cuda_sources", 2), "load_inline's cuda_sources", call.lineno)
        if got is not None and got.parts:
            options = self.resolver.literal_options(_arg(call, "extra_cuda_cflags", None))
            origin = f"load_inline(cuda_sources=...) at line {call.lineno}"
            self.add("inline", got, origin, options)

    def raw(self, call: ast.Call, name: str) -> None:
        got = self.take(_arg(call, "code", 0), f"{name}'s code", call.lineno)
        if got is None or not got.parts:
            return
        options = self.resolver.literal_options(
            _arg(call, "options", None if name == "RawModule" else 2)
        )
        mangled_ok = _arg(call, "name_expressions", None) is not None
        origin = f"{name}(code=...) at line {call.lineno}"
        self.add("raw", got, origin, options, mangled_ok)
        kernel = _arg(call, "name", None if name == "RawModule" else 1)
        if isinstance(kernel, ast.Constant) and isinstance(kernel.value, str):
            self.requested.append((kernel.value, call.lineno))

    def calls(self) -> None:
        calls = sorted(
            (n for n in ast.walk(self.tree) if isinstance(n, ast.Call)),
            key=lambda n: (n.lineno, n.col_offset),
        )
        for call in calls:
            name = _call_name(call.func)
            if name == "load_inline":
                self.load_inline(call)
            elif name in ("RawModule", "RawKernel"):
                self.raw(call, name)
            elif name == "get_function" and call.args:
                arg = call.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    self.requested.append((arg.value, call.lineno))

    def by_content(self) -> None:
        docstrings = docstring_nodes(self.tree)
        for node in ast.walk(self.tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and GLOBAL.search(node.value)
                and id(node) not in self.consumed
                and id(node) not in docstrings
            ):
                got = _Resolved([node.value], [node])
                self.add(classify(node.value), got, "content", [])

    def check_requested(self) -> None:
        raw_names = {k for s in self.scan.sources if s.kind == "raw" for k in s.kernels}
        for kernel, lineno in self.requested:
            if raw_names and kernel not in raw_names and "<" not in kernel:
                self.scan.problems.append(
                    f"line {lineno}: kernel '{kernel}' is requested but no raw CUDA source "
                    f"defines a __global__ function of that name (found: "
                    f"{', '.join(sorted(raw_names))})"
                )


def scan(candidate: str) -> Scan:
    """The CUDA sources of a candidate (sorted by line) and the problems that keep some from
    being compiled statically; nothing of the candidate is executed."""
    try:
        tree = parse_python(candidate)
    except SyntaxError as exc:
        return Scan(problems=[f"candidate is not valid Python: line {exc.lineno}: {exc.msg}"])
    scanner = _Scanner(tree, candidate)
    scanner.calls()
    scanner.by_content()
    scanner.check_requested()
    scanner.scan.sources.sort(key=lambda s: s.lineno)
    return scanner.scan


def cuda_sources(candidate_source: str) -> list[CudaSource]:
    """The CUDA sources of a candidate, in order of appearance, without executing it."""
    return scan(candidate_source).sources


def names_in_sources(sources: list[CudaSource]) -> list[str]:
    """Kernel names over several sources, first appearance first, without repeats."""
    names: list[str] = []
    for src in sources:
        names.extend(n for n in src.kernels if n not in names)
    return names


def kernel_names(candidate_source: str) -> list[str]:
    """Names of the `__global__` functions in a candidate's CUDA sources (empty if none)."""
    return names_in_sources(cuda_sources(candidate_source))


# --------------------------------------------------------------------------------------------
# Every string of a candidate (what the static rules read)


@dataclass
class EmbeddedText:
    """A string literal chain of a Python candidate, folded (`+` of literals joined, f-string
    fields replaced by `0`), comments stripped; `line` is where it starts."""

    text: str
    line: int

    def line_of(self, offset: int) -> int:
        return self.line + self.text.count("\n", 0, offset)


def _fold(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for v in node.values:
            if isinstance(v, ast.Constant) and isinstance(v.value, str):
                parts.append(v.value)
            else:
                parts.append("0")
        return "".join(parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _fold(node.left), _fold(node.right)
        if left is not None and right is not None:
            return left + right
    return None


def _is_chain(node: ast.AST | None) -> bool:
    return isinstance(node, ast.BinOp) and _fold(node) is not None


def embedded_texts(tree: ast.Module, parents: dict[int, ast.AST]) -> list[EmbeddedText]:
    """Every maximal string expression of `tree` except docstrings (`parents`: id(child) ->
    parent node), folded and comment-stripped, in walk order."""
    docstrings = docstring_nodes(tree)
    found = []
    for node in ast.walk(tree):
        parent = parents.get(id(node))
        if isinstance(node, ast.JoinedStr):
            keep = not _is_chain(parent)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            keep = (
                id(node) not in docstrings
                and not isinstance(parent, ast.JoinedStr | ast.FormattedValue)
                and not _is_chain(parent)
            )
        else:
            keep = _is_chain(node) and not _is_chain(parent)
        text = _fold(node) if keep else None
        if text:
            found.append(EmbeddedText(strip_comments(text), getattr(node, "lineno", 1)))
    return found
