"""What the names of a candidate are bound to, found in one pre-pass before the rules run:
import aliases (`F` -> torch.nn.functional), jit kernels and their launchers, nn modules held by
`self` (and which of them are vendor-library layers), load_inline extension modules and the
functions they export, and every string that may hold CUDA text.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable

from forge.evaluator.cuda_source import EmbeddedText, embedded_texts
from forge.evaluator.static.rules import (
    ALLOWED_IMPORT_PREFIXES,
    ALLOWED_IMPORTS,
    INIT_METHODS,
    LIBRARY_MODULES,
    PYBIND_DEF,
)

# Known module names: a `from M import X` binding one of these binds a module, not a function.
KNOWN_MODULES = ALLOWED_IMPORTS | {
    "torch.cuda",
    "torch.utils",
    "torch.backends",
    "torch.autograd",
    "torch.ops",
    "torch.linalg",
    "torch.fft",
    "torch.special",
    "torch.library",
    "torch.jit",
    "torch.multiprocessing",
    "torch.distributed",
    "triton.testing",
    "triton.runtime",
    "cupy.cuda.runtime",
}
# Conventional names, resolved when a candidate uses them without importing or binding them.
DEFAULT_ALIASES = {
    "torch": "torch",
    "nn": "torch.nn",
    "F": "torch.nn.functional",
    "triton": "triton",
    "tl": "triton.language",
    "cupy": "cupy",
    "cp": "cupy",
    "math": "math",
}
# nn names that hold parameters or other modules rather than being a layer.
NN_NON_LAYERS = frozenset({"Parameter", "Buffer", "ParameterList", "ParameterDict", "Module"})
# Methods of nn.Module that hand out its submodules.
MODULE_ITERATORS = frozenset({"children", "modules", "named_children", "named_modules"})

FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef


# --- small helpers ---------------------------------------------------------------------------


def short(node: ast.AST, limit: int = 60) -> str:
    """`node` as source text on one line, cut to `limit` characters."""
    text = " ".join(ast.unparse(node).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def matches(full: str, names: Iterable[str]) -> bool:
    """`full` is one of `names` or inside one of them (`torch.cuda.Stream.x`)."""
    return any(full == n or full.startswith(n + ".") for n in names)


def op_name(name: str) -> str:
    """The out-of-place name of an in-place op (`add_` -> `add`)."""
    stripped = name.rstrip("_")
    return stripped or name


def const_truth(node: ast.expr) -> bool | None:
    """Truth value of a constant test (`False`, `0`, `not True`), None when not constant."""
    if isinstance(node, ast.Constant):
        return bool(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        inner = const_truth(node.operand)
        return None if inner is None else not inner
    return None


def root_name(node: ast.AST) -> ast.Name | None:
    """The name an attribute / subscript / call chain starts from (`self` in `self.a[0].b()`)."""
    while isinstance(node, ast.Attribute | ast.Subscript | ast.Call | ast.Starred):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node if isinstance(node, ast.Name) else None


def self_attr(node: ast.AST) -> str | None:
    """`x` for `self.x`, else None."""
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    ):
        return node.attr
    return None


def params(fn: FunctionNode | None) -> list[str]:
    """Named parameters (positional-only, positional, keyword-only) without the first (self);
    `*args`/`**kwargs` are left out."""
    if fn is None:
        return []
    a = fn.args
    return [p.arg for p in [*a.posonlyargs, *a.args, *a.kwonlyargs]][1:]


def find_class(tree: ast.Module, name: str) -> ast.ClassDef | None:
    found = None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            found = node
    return found


def find_init(cls: ast.ClassDef | None) -> FunctionNode | None:
    if cls is None:
        return None
    init = None
    for node in cls.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "__init__":
            init = node
    return init


def assign_targets(node: ast.Assign | ast.AnnAssign) -> list[ast.expr]:
    return node.targets if isinstance(node, ast.Assign) else [node.target]


# --- the pre-pass ----------------------------------------------------------------------------


class Bindings:
    """Names of one parsed candidate and what they are bound to."""

    def __init__(self, tree: ast.Module) -> None:
        self.tree = tree
        self.parents: dict[int, ast.AST] = {}
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                self.parents[id(child)] = node
        self.aliases: dict[str, str] = {}
        self.module_aliases: set[str] = set()  # names bound to modules by import statements
        self.jit_defs: list[FunctionNode] = []
        self.kernels: set[str] = set()
        self.launchers: set[str] = set()  # names bound to `kernel[grid]`
        self.module_attrs: set[str] = set()  # self.<x> assigned an nn.* module in __init__
        self.library_attrs: set[str] = set()  # ... and only ever a LIBRARY_MODULES layer
        self.exported: set[str] = set()  # functions exported by load_inline / pybind
        self.external_streams: set[str] = set()
        self.ext_names: set[str] = set()  # names bound to a load_inline extension module
        self.ext_attrs: set[str] = set()  # self.<x> bound to one
        self.module_names: set[str] = set()  # names assigned at module level
        self.texts: list[EmbeddedText] = []
        self._collect()

    # -- resolution
    def resolve(self, node: ast.AST) -> str | None:
        """The dotted name an attribute chain denotes through the aliases (`F.linear` ->
        `torch.nn.functional.linear`), None when it does not start at an alias."""
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name) and node.id in self.aliases:
            return ".".join([self.aliases[node.id], *reversed(parts)])
        return None

    def shown(self, node: ast.AST, full: str) -> str:
        text = short(node)
        return text if text == full else f"{text} ({full})"

    def is_jit(self, fn: FunctionNode) -> bool:
        for dec in fn.decorator_list:
            target = dec.func if isinstance(dec, ast.Call) else dec
            if self.resolve(target) == "triton.jit":
                return True
        return False

    def kernel_ref(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Name):
            return node.id in self.kernels
        if isinstance(node, ast.Attribute):
            return node.attr in self.kernels
        return False

    @staticmethod
    def is_nn_class(full: str) -> bool:
        parts = full.split(".")
        return (
            len(parts) == 3
            and parts[:2] == ["torch", "nn"]
            and parts[2][:1].isupper()
            and parts[2] not in NN_NON_LAYERS
        )

    def contains_nn_module(self, node: ast.AST) -> bool:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Call):
                full = self.resolve(sub.func)
                if full and self.is_nn_class(full):
                    return True
        return False

    def is_library_layer(self, node: ast.AST) -> bool:
        """`nn.Linear(...)` / `nn.Conv2d(...)`... itself, not nested in a container."""
        return isinstance(node, ast.Call) and self.resolve(node.func) in LIBRARY_MODULES

    def ext_bound(self, node: ast.AST, calls: bool = True) -> bool:
        """Whether `node` is (probably) a compiled extension module, so that `node.fn(...)` calls
        one of its exported functions rather than a tensor method."""
        if isinstance(node, ast.Name):
            return node.id in self.ext_names or (calls and node.id in self.module_names)
        attr = self_attr(node)
        if attr is not None:
            return attr in self.ext_attrs
        return calls and isinstance(node, ast.Call)

    def is_load_inline(self, node: ast.AST) -> bool:
        return (
            isinstance(node, ast.Call)
            and self.resolve(node.func) == "torch.utils.cpp_extension.load_inline"
        )

    # -- collection
    def _collect(self) -> None:
        self._collect_imports()
        for node in ast.walk(self.tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and self.is_jit(node):
                self.jit_defs.append(node)
                self.kernels.add(node.name)
        self._collect_simple_aliases()
        self._collect_modules()
        self._collect_exports()
        self._collect_extensions()
        self.texts = embedded_texts(self.tree, self.parents)
        for t in self.texts:
            self.exported.update(PYBIND_DEF.findall(t.text))

    def _collect_imports(self) -> None:
        bound: set[str] = set()
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
                bound.add(node.id)
            elif isinstance(node, ast.arg):
                bound.add(node.arg)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                bound.add(node.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    local = alias.asname or alias.name.split(".")[0]
                    self.aliases[local] = alias.name if alias.asname else local
                    self.module_aliases.add(local)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    if alias.name == "*":
                        continue
                    local = alias.asname or alias.name
                    full = f"{node.module}.{alias.name}"
                    self.aliases[local] = full
                    if full in KNOWN_MODULES or full.startswith(ALLOWED_IMPORT_PREFIXES):
                        self.module_aliases.add(local)
        for name, full in DEFAULT_ALIASES.items():
            if name not in bound and name not in self.aliases:
                self.aliases[name] = full

    def _collect_simple_aliases(self) -> None:
        """`k = kernel`, `launch = kernel[grid]`, `s = cupy.cuda.ExternalStream(..)`."""
        for node in ast.walk(self.tree):
            if not (
                isinstance(node, ast.Assign)
                and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
            ):
                continue
            target, value = node.targets[0].id, node.value
            if isinstance(value, ast.Name) and value.id in self.kernels:
                self.kernels.add(target)
            elif isinstance(value, ast.Subscript) and self.kernel_ref(value.value):
                self.launchers.add(target)
            elif (
                isinstance(value, ast.Call)
                and self.resolve(value.func) == "cupy.cuda.ExternalStream"
            ):
                self.external_streams.add(target)

    def _collect_modules(self) -> None:
        """nn modules held by self: assigned in __init__ / reset_parameters, or registered with
        add_module / register_module. A library attribute is one only ever assigned a
        LIBRARY_MODULES layer directly, and never assigned outside those methods."""
        library: set[str] = set()
        other: set[str] = set()
        for fn in ast.walk(self.tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            in_init = fn.name in INIT_METHODS
            for sub in ast.walk(fn):
                if isinstance(sub, ast.Assign | ast.AnnAssign) and sub.value is not None:
                    for attr in filter(None, map(self_attr, assign_targets(sub))):
                        if not in_init:
                            other.add(attr)
                        elif self.is_library_layer(sub.value):
                            library.add(attr)
                            self.module_attrs.add(attr)
                        elif self.contains_nn_module(sub.value):
                            other.add(attr)
                            self.module_attrs.add(attr)
                        else:
                            other.add(attr)
                elif in_init and self._registers_module(sub):
                    self.module_attrs.add(sub.args[0].value)  # type: ignore[attr-defined]
        self.library_attrs = library - other

    def _registers_module(self, node: ast.AST) -> bool:
        return (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("add_module", "register_module")
            and bool(node.args)
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and any(self.contains_nn_module(a) for a in node.args[1:])
        )

    def _collect_exports(self) -> None:
        for node in ast.walk(self.tree):
            if not self.is_load_inline(node):
                continue
            for kw in node.keywords:  # type: ignore[attr-defined]
                if kw.arg == "functions":
                    for sub in ast.walk(kw.value):
                        if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                            self.exported.add(sub.value)

    def _collect_extensions(self) -> None:
        for stmt in self.tree.body:
            if isinstance(stmt, ast.Assign | ast.AnnAssign):
                for t in assign_targets(stmt):
                    self.module_names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
        assigns = [
            n
            for n in ast.walk(self.tree)
            if isinstance(n, ast.Assign | ast.AnnAssign) and n.value is not None
        ]
        changed = True
        while changed:
            changed = False
            for node in assigns:
                value = node.value
                if not self.ext_bound(value, calls=False) and not self.is_load_inline(value):
                    continue
                for t in assign_targets(node):
                    attr = self_attr(t)
                    if isinstance(t, ast.Name) and t.id not in self.ext_names:
                        self.ext_names.add(t.id)
                        changed = True
                    elif attr is not None and attr not in self.ext_attrs:
                        self.ext_attrs.add(attr)
                        changed = True
