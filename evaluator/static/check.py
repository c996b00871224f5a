"""The entry points of the static checks: `check_source`, `detect_backend`,
`class_init_params` and the `StaticReport` they return."""

from __future__ import annotations

import ast

from pydantic import BaseModel, Field

from forge.evaluator.parsing import parse_python
from forge.evaluator.static.bindings import find_class, find_init, params
from forge.evaluator.static.rules import BACKENDS, PREFIX, STRUCTURE, UNAVAILABLE, device_limits
from forge.evaluator.static.visitor import Visitor


class StaticReport(BaseModel):
    """What the static checks found; `ok` is False when any rule was broken."""

    ok: bool
    backend: str = Field("", description='"triton" | "cuda" (detected or as given); "" when none')
    violations: list[str] = Field(default_factory=list, description="most important first")
    kernel_names: list[str] = Field(
        default_factory=list, description="jit functions or __global__ names"
    )
    constructor_params: list[str] = Field(
        default_factory=list, description="ModelNew.__init__ minus self"
    )
    syntax_error: bool = Field(
        False, description="the source does not parse (maps to compile_error)"
    )


def class_init_params(source: str, class_name: str = "Model") -> list[str] | None:
    """Parameter names of `class_name.__init__` (without self) in `source`; None when the source
    does not parse or has no such class. Use it on the problem's source to get the names
    `check_source(model_init_params=...)` compares against."""
    try:
        tree = parse_python(source)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    cls = find_class(tree, class_name)
    if cls is None:
        return None
    return params(find_init(cls))


def _parse(source: str) -> tuple[ast.Module | None, str, int]:
    try:
        return parse_python(source), "", 0
    except SyntaxError as exc:
        return None, exc.msg, exc.lineno or 1
    except ValueError as exc:  # null bytes on Python < 3.12
        return None, str(exc), 1
    except (MemoryError, RecursionError):
        return None, "source too complex to parse", 1


def _detect(analysis: Visitor) -> str | None:
    if analysis.jit_defs:
        return "triton"
    if analysis.has_global():
        return "cuda"
    return None


def detect_backend(source: str) -> str | None:
    """Which backend `source` uses: "triton" when a @triton.jit function exists, "cuda" when a
    string holds `__global__` source, else None (also for source that does not parse)."""
    tree, _, _ = _parse(source)
    if tree is None:
        return None
    try:
        return _detect(Visitor(tree))
    except RecursionError:
        return None


def _check_kernels(analysis: Visitor, backend: str | None) -> list[str]:
    """The structure rules about kernels for `backend`; returns the kernels' names."""
    if backend is None:
        analysis.add(STRUCTURE, "no kernel: define a @triton.jit kernel or CUDA __global__ source")
        return []
    if backend == "triton":
        if not analysis.jit_defs:
            analysis.add(STRUCTURE, "defines no @triton.jit kernel")
        elif not analysis.launched:
            first = analysis.jit_defs[0]
            analysis.add(STRUCTURE, f"never launches its Triton kernel {first.name}", first)
        return [fn.name for fn in analysis.jit_defs]
    if not analysis.has_global():
        analysis.add(STRUCTURE, "no CUDA kernel source (a string with a __global__ function)")
    elif not analysis.compiled:
        analysis.add(
            STRUCTURE,
            "never compiles its CUDA source (load_inline, cupy.RawModule or cupy.RawKernel)",
        )
    return analysis.global_names()


def _check_device(analysis: Visitor, device: str) -> None:
    """The first use of each name `device` cannot run (`rules.DEVICE_UNAVAILABLE`)."""
    limits = device_limits(device)
    if not limits:
        return
    reported: set[str] = set()
    for node in ast.walk(analysis.tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Attribute | ast.Name):
            names = [analysis.resolve(node) or ""]
        else:
            continue
        for name, why in limits.items():
            if name not in reported and any(n == name or n.startswith(name + ".") for n in names):
                reported.add(name)
                analysis.add(UNAVAILABLE, f"{name} cannot run on --device {device}: {why}", node)


def check_source(
    source: str,
    backend: str | None = None,
    model_init_params: list[str] | None = None,
    device: str = "cuda",
) -> StaticReport:
    """Run every static rule over `source`. Never raises for bad candidate code: a syntax error
    is reported as a violation with `syntax_error=True`.

    `backend`: "triton" | "cuda" | None (detect). `model_init_params`: `Model.__init__`'s
    parameter names without self (see `class_init_params`); None skips the comparison.
    `device`: where it will run; what cannot run there is rejected (`rules.DEVICE_UNAVAILABLE`)."""
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    tree, msg, line = _parse(source)
    if tree is None:
        return StaticReport(
            ok=False,
            backend=backend or "",
            violations=[f"{PREFIX}syntax error: {msg} (line {line})"],
            syntax_error=True,
        )
    try:
        analysis = Visitor(tree)
        constructor = analysis.check_model(model_init_params)
        analysis.run()
        analysis.check_texts()
        _check_device(analysis, device)
    except RecursionError:
        return StaticReport(
            ok=False,
            backend=backend or "",
            violations=[f"{PREFIX}source nests too deeply to check (line 1)"],
        )
    chosen = backend or _detect(analysis)
    kernel_names = _check_kernels(analysis, chosen)
    violations = analysis.violations()
    return StaticReport(
        ok=not violations,
        backend=chosen or "",
        violations=violations,
        kernel_names=kernel_names,
        constructor_params=constructor,
    )
