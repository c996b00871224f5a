"""The static rules, as one walk over a candidate's syntax tree (see `forge.evaluator.static`
for what is rejected and why). The tables are in `rules.py`; what names are bound to is found
by the pre-pass in `bindings.py`; CUDA text is read through `forge.evaluator.cuda_source`.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

from forge.evaluator.cuda_source import EmbeddedText, includes, kernel_decls, looks_like_cuda
from forge.evaluator.static.bindings import (
    KNOWN_MODULES,
    MODULE_ITERATORS,
    Bindings,
    const_truth,
    find_class,
    find_init,
    is_dunder,
    matches,
    op_name,
    params,
    root_name,
    self_attr,
    short,
)
from forge.evaluator.static.rules import (
    ALLOWED_DUNDER_NAMES,
    ALLOWED_IMPORT_PREFIXES,
    ALLOWED_IMPORTS,
    ALLOWED_WITH,
    C_ATEN,
    C_ATEN_NAMESPACES,
    C_ESCAPE,
    C_LIBRARY,
    C_METHOD,
    C_STREAM,
    C_THREAD,
    COMPILE_CALLS,
    COMPUTE_OPS,
    CUPY_ALLOWED,
    CUPY_STREAM_OK,
    FALLBACK,
    FORBIDDEN_NAMES,
    INIT_METHODS,
    LIBRARY_CALLS,
    METHOD_EXEMPT,
    MODULE_ATTRS,
    MODULE_INTERNALS,
    PREFIX,
    REFERENCE_EXEMPT,
    STREAM,
    STRUCTURE,
    TAMPER,
    TENSOR_SUBCLASS_BASES,
    THREAD_ATTRS,
    THREAD_MESSAGE,
    THREAD_MODULES,
    TORCH_ALLOWED_CALLS,
    TORCH_COMPUTE_PREFIXES,
    TORCH_RANDOM,
    TORCH_STREAMS,
    TORCH_VALUE_PREFIXES,
    TORCH_VALUES,
    host_include,
)


@dataclass
class Ctx:
    """Where the walk is: enclosing function and class, inside a jit kernel or an init method,
    in dead code, in an annotation; locals bound to nn modules."""

    func: str | None = None
    cls: str | None = None
    in_jit: bool = False
    in_init: bool = False
    dead: bool = False
    exempt_refs: bool = False  # annotations and class bases: references are not checked
    local_mods: set[str] = field(default_factory=set)

    def but(self, **changes: object) -> Ctx:
        values = {**self.__dict__, **changes}
        return Ctx(**values)  # type: ignore[arg-type]


class Visitor(Bindings):
    """Walks the tree once (`run`), then the CUDA text (`check_texts`), collecting violations."""

    def __init__(self, tree: ast.Module) -> None:
        super().__init__(tree)
        self.found: list[tuple[int, int, str]] = []
        self.launched = False
        self.compiled = False
        self.skip_model_ref: set[int] = set()

    # -- reporting
    def add(
        self, rank: int, what: str, node: ast.AST | None = None, line: int | None = None
    ) -> None:
        if line is None and node is not None:
            line = getattr(node, "lineno", None)
        suffix = f" (line {line})" if line else ""
        self.found.append((rank, line or 0, f"{PREFIX}{what}{suffix}"))

    def violations(self) -> list[str]:
        """One line per violation, most important first, without repeats."""
        seen: set[str] = set()
        out = []
        for _, _, msg in sorted(self.found, key=lambda t: (t[0], t[1])):
            if msg not in seen:
                seen.add(msg)
                out.append(msg)
        return out

    # -- whole-file rules
    def check_model(self, model_init_params: list[str] | None) -> list[str]:
        cls = find_class(self.tree, "ModelNew")
        if cls is None:
            self.add(STRUCTURE, "no class ModelNew")
            return []
        init = find_init(cls)
        names = params(init)
        if model_init_params is not None and names != list(model_init_params):
            self.add(
                STRUCTURE,
                f"ModelNew.__init__({', '.join(names)}) does not match "
                f"Model.__init__({', '.join(model_init_params)})",
                init or cls,
            )
        if not cls.bases:
            self.add(STRUCTURE, "ModelNew does not inherit from nn.Module", cls)
        for base in cls.bases:
            full = self.resolve(base)
            text = short(base)
            if isinstance(base, ast.Name) and base.id == "Model":
                self.skip_model_ref.add(id(base))
                self.add(FALLBACK, "ModelNew inherits from Model (PyTorch fallback)", base)
            elif full != "torch.nn.Module" and text not in (
                "nn.Module",
                "torch.nn.Module",
                "Module",
            ):
                self.add(
                    FALLBACK, f"ModelNew inherits from {text}; only nn.Module is allowed", base
                )
        return names

    # -- the walk
    def run(self) -> None:
        self.block(self.tree.body, Ctx())

    def block(self, stmts: list[ast.stmt], ctx: Ctx) -> None:
        dead = ctx.dead
        for stmt in stmts:
            self.visit(stmt, ctx.but(dead=dead) if dead != ctx.dead else ctx)
            if isinstance(stmt, ast.Return | ast.Raise | ast.Continue | ast.Break):
                dead = True

    def visit(self, node: ast.AST, ctx: Ctx, role: str | None = None) -> None:
        method = getattr(self, "visit_" + type(node).__name__, None)
        if method is not None:
            method(node, ctx, role)
        else:
            self.children(node, ctx)

    def children(self, node: ast.AST, ctx: Ctx) -> None:
        for _, value in ast.iter_fields(node):
            if isinstance(value, list):
                if value and isinstance(value[0], ast.stmt):
                    self.block(value, ctx)
                else:
                    for item in value:
                        if isinstance(item, ast.AST):
                            self.visit(item, ctx)
            elif isinstance(value, ast.AST):
                self.visit(value, ctx)

    # statements
    def visit_Import(self, node: ast.Import, ctx: Ctx, role: str | None) -> None:
        for alias in node.names:
            self.check_module(alias.name, node)
            if alias.asname == "Model" or alias.name == "Model":
                self.add(FALLBACK, "references Model, the reference implementation", node)

    def visit_ImportFrom(self, node: ast.ImportFrom, ctx: Ctx, role: str | None) -> None:
        if node.level:
            self.add(
                TAMPER, f"forbidden relative import '{'.' * node.level}{node.module or ''}'", node
            )
            return
        module = node.module or ""
        if not self.check_module(module, node):
            return
        for alias in node.names:
            full = f"{module}.{alias.name}"
            if alias.name == "*":
                self.add(
                    TAMPER, f"forbidden import '*' from {module} (import names explicitly)", node
                )
            elif alias.name.startswith("_"):
                self.add(TAMPER, f"forbidden import '{full}'", node)
            elif matches(full, THREAD_MODULES):
                self.add(TAMPER, THREAD_MESSAGE, node)
            elif full in KNOWN_MODULES and full not in ALLOWED_IMPORTS:
                self.add(TAMPER, f"forbidden import '{full}'", node)
            if "Model" in (alias.name, alias.asname):
                self.add(FALLBACK, "references Model, the reference implementation", node)

    def check_module(self, module: str, node: ast.AST) -> bool:
        if matches(module, THREAD_MODULES):
            self.add(TAMPER, THREAD_MESSAGE, node)
            return False
        private = any(p.startswith("_") for p in module.split(".")) and module != "__future__"
        if private or not (module in ALLOWED_IMPORTS or module.startswith(ALLOWED_IMPORT_PREFIXES)):
            self.add(TAMPER, f"forbidden import '{module}'", node)
            return False
        return True

    def visit_Try(self, node: ast.AST, ctx: Ctx, role: str | None) -> None:
        self.add(FALLBACK, "try statement (try/except fallbacks are forbidden)", node)
        self.children(node, ctx)

    visit_TryStar = visit_Try

    def visit_With(self, node: ast.With | ast.AsyncWith, ctx: Ctx, role: str | None) -> None:
        for item in node.items:
            expr = item.context_expr
            allowed = False
            if isinstance(expr, ast.Call):
                allowed = self.resolve(expr.func) in ALLOWED_WITH
            elif isinstance(expr, ast.Name):
                allowed = expr.id in self.external_streams
            if not allowed:
                self.add(
                    FALLBACK,
                    f"'with {short(expr)}' is forbidden (only torch.no_grad() and "
                    "torch.inference_mode() are allowed)",
                    node,
                )
        self.children(node, ctx)

    visit_AsyncWith = visit_With

    def visit_If(self, node: ast.If | ast.While, ctx: Ctx, role: str | None) -> None:
        self.visit(node.test, ctx)
        truth = const_truth(node.test)
        self.block(node.body, ctx.but(dead=True) if truth is False else ctx)
        self.block(node.orelse, ctx.but(dead=True) if truth is True else ctx)

    visit_While = visit_If

    def visit_FunctionDef(
        self, node: ast.FunctionDef | ast.AsyncFunctionDef, ctx: Ctx, role: str | None
    ) -> None:
        if node.name == "Model":
            self.add(FALLBACK, "references Model, the reference implementation", node)
        if (
            ctx.cls is not None
            and is_dunder(node.name)
            and node.name != "__init__"
            and not ctx.func
        ):
            self.add(
                TAMPER,
                f"defines {node.name} (special methods other than __init__ are forbidden)",
                node,
            )
        for dec in node.decorator_list:
            self.visit(dec, ctx)
        self.arguments(node.args, ctx)
        if node.returns is not None:
            self.visit(node.returns, ctx.but(exempt_refs=True))
        jit = ctx.in_jit or node in self.jit_defs
        init = ctx.in_init or (
            ctx.cls is not None and ctx.func is None and node.name in INIT_METHODS
        )
        inner = ctx.but(
            func=node.name, in_jit=jit, in_init=init, exempt_refs=False, local_mods=set()
        )
        self.block(node.body, inner)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node: ast.Lambda, ctx: Ctx, role: str | None) -> None:
        self.arguments(node.args, ctx)
        self.visit(node.body, ctx)

    def arguments(self, args: ast.arguments, ctx: Ctx) -> None:
        every = [*args.posonlyargs, *args.args, *args.kwonlyargs]
        every += [a for a in (args.vararg, args.kwarg) if a is not None]
        for a in every:
            if a.arg == "Model":
                self.add(FALLBACK, "references Model, the reference implementation", a)
            if a.annotation is not None:
                self.visit(a.annotation, ctx.but(exempt_refs=True))
        for default in [*args.defaults, *[d for d in args.kw_defaults if d is not None]]:
            self.visit(default, ctx)

    def visit_ClassDef(self, node: ast.ClassDef, ctx: Ctx, role: str | None) -> None:
        if node.name == "Model":
            self.add(FALLBACK, "references Model, the reference implementation", node)
        for dec in node.decorator_list:
            self.visit(dec, ctx)
        for base in node.bases:
            full = self.resolve(base)
            if full in TENSOR_SUBCLASS_BASES:
                self.add(
                    TAMPER,
                    f"class {node.name} subclasses {full} (tensor subclasses are forbidden)",
                    base,
                )
            self.visit(base, ctx.but(exempt_refs=True))
        for kw in node.keywords:
            self.add(
                TAMPER,
                f"class {node.name} passes '{kw.arg}' to its class statement (metaclasses are forbidden)",
                kw.value,
            )
            self.visit(kw.value, ctx)
        self.block(node.body, ctx.but(cls=node.name, func=None, local_mods=set()))

    def visit_Assign(
        self, node: ast.Assign | ast.AnnAssign | ast.AugAssign, ctx: Ctx, role: str | None
    ) -> None:
        value = node.value
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        if value is not None and ctx.func is not None and self.is_module_expr(value, ctx):
            for t in targets:
                for sub in ast.walk(t):
                    if isinstance(sub, ast.Name):
                        ctx.local_mods.add(sub.id)
        if isinstance(node, ast.AugAssign) and isinstance(node.op, ast.MatMult) and not ctx.in_jit:
            self.add(
                FALLBACK, "matrix multiply with '@=' outside a kernel (PyTorch fallback)", node
            )
        if isinstance(node, ast.AnnAssign):
            self.visit(node.target, ctx)
            self.visit(node.annotation, ctx.but(exempt_refs=True))
            if node.value is not None:
                self.visit(node.value, ctx)
            return
        self.children(node, ctx)

    visit_AnnAssign = visit_Assign
    visit_AugAssign = visit_Assign

    def visit_For(self, node: ast.For | ast.AsyncFor, ctx: Ctx, role: str | None) -> None:
        if ctx.func is not None and self.is_module_expr(node.iter, ctx):
            for sub in ast.walk(node.target):
                if isinstance(sub, ast.Name):
                    ctx.local_mods.add(sub.id)
        self.children(node, ctx)

    visit_AsyncFor = visit_For

    def is_module_expr(self, node: ast.AST, ctx: Ctx) -> bool:
        """`self.layers`, `self.layers[0]`, `self.children()`, a tainted local."""
        while isinstance(node, ast.Subscript | ast.Call):
            node = node.func if isinstance(node, ast.Call) else node.value
        if isinstance(node, ast.Name):
            return node.id in ctx.local_mods
        attr = self_attr(node)
        return attr is not None and (attr in self.module_attrs or attr in MODULE_ITERATORS)

    # expressions
    def visit_IfExp(self, node: ast.IfExp, ctx: Ctx, role: str | None) -> None:
        self.visit(node.test, ctx)
        truth = const_truth(node.test)
        self.visit(node.body, ctx.but(dead=True) if truth is False else ctx)
        self.visit(node.orelse, ctx.but(dead=True) if truth is True else ctx)

    def visit_BoolOp(self, node: ast.BoolOp, ctx: Ctx, role: str | None) -> None:
        current = ctx
        for value in node.values:
            self.visit(value, current)
            truth = const_truth(value)
            if (isinstance(node.op, ast.And) and truth is False) or (
                isinstance(node.op, ast.Or) and truth is True
            ):
                current = ctx.but(dead=True)

    def visit_Name(self, node: ast.Name, ctx: Ctx, role: str | None) -> None:
        name = node.id
        if name == "Model" and id(node) not in self.skip_model_ref:
            self.add(FALLBACK, "references Model, the reference implementation", node)
        if not isinstance(node.ctx, ast.Load):
            return
        if name in FORBIDDEN_NAMES:
            self.add(TAMPER, f"forbidden name '{name}'", node)
        elif is_dunder(name) and name not in ALLOWED_DUNDER_NAMES:
            self.add(TAMPER, f"forbidden name '{name}'", node)
        if role is None and not ctx.exempt_refs:
            if name in self.module_aliases:
                self.add(
                    TAMPER,
                    f"uses module {name} as a value (modules may only be used as `{name}.attr`)",
                    node,
                )
            elif name in self.aliases:
                self.check_resolved(self.aliases[name], node, ctx, call=False)

    def visit_Attribute(self, node: ast.Attribute, ctx: Ctx, role: str | None) -> None:
        attr = node.attr
        receiver_self = isinstance(node.value, ast.Name) and node.value.id == "self"
        # A chain is reported once, at its innermost forbidden attribute (`torch._C` in
        # `torch._C._nn.gelu`); the reference/call checks skip chains already reported.
        inner_reported = self.forbidden_attr(node.value)
        if not inner_reported:
            if is_dunder(attr):
                if attr != "__init__":
                    self.add(TAMPER, f"accesses dunder attribute {short(node)}", node)
            elif attr in MODULE_INTERNALS and receiver_self:
                self.add(TAMPER, f"accesses nn.Module internals {short(node)}", node)
            elif attr.startswith("_") and not receiver_self:
                self.add(TAMPER, f"accesses private attribute {short(node)}", node)
            elif attr in THREAD_ATTRS:
                self.add(TAMPER, THREAD_MESSAGE, node)
            elif attr in MODULE_ATTRS:
                self.add(
                    TAMPER,
                    f"accesses {short(node)} (module attribute '{attr}' is forbidden)",
                    node,
                )
        reported = inner_reported or self.forbidden_attr(node)
        if isinstance(node.ctx, ast.Store | ast.Del):
            root = root_name(node)
            if root is None or root.id not in ("self", "ctx"):
                self.add(
                    TAMPER,
                    f"patches {short(node)} (timing or torch functions must not be modified)",
                    node,
                )
        elif role is None and not ctx.exempt_refs and not reported:
            full = self.resolve(node)
            if full is not None:
                self.check_resolved(full, node, ctx, call=False)
            elif (
                not receiver_self
                and not ctx.in_jit
                and op_name(attr) in COMPUTE_OPS
                and attr not in REFERENCE_EXEMPT
                and not (attr in self.exported and self.ext_bound(node.value))
            ):
                self.add(
                    FALLBACK,
                    f"references {short(node)} outside a kernel (PyTorch fallback)",
                    node,
                )
        self.visit(node.value, ctx, role="chain")

    @staticmethod
    def forbidden_attr(node: ast.AST) -> bool:
        """Whether the attribute chain `node` has a dunder, private (not on self), internals or
        module-valued attribute anywhere (those are reported by the tampering rules)."""
        while isinstance(node, ast.Attribute):
            attr = node.attr
            on_self = isinstance(node.value, ast.Name) and node.value.id == "self"
            if (
                (is_dunder(attr) and attr != "__init__")
                or (
                    attr.startswith("_")
                    and not is_dunder(attr)
                    and (not on_self or attr in MODULE_INTERNALS)
                )
                or attr in MODULE_ATTRS
                or attr in THREAD_ATTRS
            ):
                return True
            node = node.value
        return False

    def visit_Subscript(self, node: ast.Subscript, ctx: Ctx, role: str | None) -> None:
        if isinstance(node.ctx, ast.Store | ast.Del):
            root = root_name(node)
            if root is not None and root.id in self.module_aliases:
                self.add(
                    TAMPER,
                    f"patches {short(node)} (timing or torch functions must not be modified)",
                    node,
                )
        self.visit(node.value, ctx)
        self.visit(node.slice, ctx)

    def visit_Call(self, node: ast.Call, ctx: Ctx, role: str | None) -> None:
        func = node.func
        full = self.resolve(func) if isinstance(func, ast.Name | ast.Attribute) else None
        if isinstance(func, ast.Name) and func.id == "type" and len(node.args) == 3:
            self.add(
                TAMPER, "forbidden name 'type' with 3 arguments (dynamic class creation)", node
            )
        if full is not None:
            if full in COMPILE_CALLS and not ctx.dead:
                self.compiled = True
            if not self.forbidden_attr(func):
                self.check_resolved(full, func, ctx, call=True)
        elif isinstance(func, ast.Subscript) and self.kernel_ref(func.value):
            if not ctx.dead:
                self.launched = True
        elif isinstance(func, ast.Name) and func.id in self.launchers:
            if not ctx.dead:
                self.launched = True
        if not ctx.in_jit and full is None:
            self.check_module_call(func, ctx)
            if isinstance(func, ast.Attribute):
                self.check_method(func, ctx)
        self.visit(func, ctx, role="call")
        for arg in node.args:
            self.visit(arg, ctx)
        for kw in node.keywords:
            self.visit(kw.value, ctx)

    def check_module_call(self, func: ast.expr, ctx: Ctx) -> None:
        """Calling an nn module held by the model computes with PyTorch, unless it is a
        vendor-library layer (nn.Linear, nn.ConvNd) called directly as `self.x(...)`."""
        target: ast.expr = func
        if isinstance(target, ast.Attribute) and target.attr == "forward":
            target = target.value
        if self_attr(target) in self.library_attrs:
            return
        while isinstance(target, ast.Subscript):
            target = target.value
        if isinstance(target, ast.Name):
            is_module = target.id in ctx.local_mods
        else:
            is_module = self_attr(target) in self.module_attrs
        if is_module and not ctx.in_init:
            where = f"in {ctx.func}" if ctx.func else "outside a kernel"
            self.add(
                FALLBACK,
                f"calls the PyTorch module {short(func)} {where} (PyTorch fallback)",
                func,
            )

    def check_method(self, func: ast.Attribute, ctx: Ctx) -> None:
        if isinstance(func.value, ast.Name) and func.value.id == "self":
            return
        attr = func.attr
        if attr in METHOD_EXEMPT or is_dunder(attr):
            return
        if attr in self.exported and self.ext_bound(func.value):
            return
        if op_name(attr) in COMPUTE_OPS:
            self.add(FALLBACK, f"calls {short(func)} outside a kernel (PyTorch fallback)", func)

    def check_resolved(self, full: str, node: ast.AST, ctx: Ctx, call: bool) -> None:
        root = full.split(".")[0]
        if root == "torch":
            self.check_torch(full, node, ctx, call)
        elif root == "cupy":
            self.check_cupy(full, node, ctx, call)

    def check_torch(self, full: str, node: ast.AST, ctx: Ctx, call: bool) -> None:
        shown = self.shown(node, full)
        if matches(full, TORCH_STREAMS):
            self.add(
                STREAM, f"uses {shown} (side streams, events and CUDA graphs are forbidden)", node
            )
            return
        if matches(full, THREAD_MODULES):
            self.add(TAMPER, THREAD_MESSAGE, node)
            return
        if ctx.in_jit or full in ("torch", "torch.nn"):
            return
        if full in TORCH_ALLOWED_CALLS or full in LIBRARY_CALLS:
            return
        init_ok = (
            full in TORCH_RANDOM or full.startswith("torch.nn.init.") or self.is_nn_class(full)
        )
        if ctx.in_init and init_ok:
            return
        compute = self.torch_compute(full)
        if call:
            if full in TORCH_RANDOM:
                self.add(
                    FALLBACK,
                    f"calls {shown} outside __init__ (random tensors only initialise parameters)",
                    node,
                )
            elif self.is_nn_class(full):
                self.add(FALLBACK, f"constructs {shown} outside __init__ (PyTorch fallback)", node)
            elif compute:
                self.add(FALLBACK, f"calls {shown} outside a kernel (PyTorch fallback)", node)
            else:
                self.add(
                    FALLBACK, f"calls {shown}, which is not an allocation or metadata call", node
                )
            return
        if full in TORCH_VALUES or full.startswith(TORCH_VALUE_PREFIXES):
            return
        if compute:
            self.add(FALLBACK, f"references {shown} outside a kernel (PyTorch fallback)", node)
        else:
            self.add(
                FALLBACK,
                f"references {shown}, which is not an allocation or metadata function",
                node,
            )

    def torch_compute(self, full: str) -> bool:
        last = full.rsplit(".", 1)[-1]
        return (
            op_name(last) in COMPUTE_OPS
            or full.startswith(TORCH_COMPUTE_PREFIXES)
            or full == "torch.nn.functional"
            or self.is_nn_class(full)
        )

    def check_cupy(self, full: str, node: ast.AST, ctx: Ctx, call: bool) -> None:
        shown = self.shown(node, full)
        parts = full.split(".")
        if len(parts) < 2 or ctx.in_jit:
            return
        if parts[1] == "cuda":
            for comp in parts[2:]:
                if comp not in CUPY_STREAM_OK and re.search("stream|event|graph", comp, re.I):
                    self.add(
                        STREAM,
                        f"uses {shown} (side streams, events and CUDA graphs are forbidden)",
                        node,
                    )
                    return
            return
        if parts[1] in CUPY_ALLOWED:
            return
        verb = "calls" if call else "references"
        self.add(FALLBACK, f"{verb} {shown} outside a kernel (CuPy fallback)", node)

    # -- CUDA / C++ text
    def check_texts(self) -> None:
        for t in self.texts:
            if looks_like_cuda(t.text):
                self.check_text(t)

    def check_text(self, t: EmbeddedText) -> None:
        def report(rank: int, what: str, pos: int) -> None:
            self.add(rank, what, line=t.line_of(pos))

        for m in C_STREAM.finditer(t.text):
            report(
                STREAM,
                f"CUDA source calls {m.group(1)} (side streams, events and CUDA graphs are "
                "forbidden)",
                m.start(),
            )
        for m in C_THREAD.finditer(t.text):
            report(TAMPER, f"{THREAD_MESSAGE}: CUDA source uses {m.group(1)}", m.start())
        for m in C_ESCAPE.finditer(t.text):
            report(
                TAMPER,
                f"CUDA source calls {m.group(1)} (process, library and environment access is "
                "forbidden)",
                m.start(),
            )
        for inc in includes(t.text):
            if host_include(inc.target, inc.form):
                report(
                    TAMPER,
                    f"CUDA source includes '{inc.target}' (only toolkit and torch headers, by "
                    "relative name)",
                    inc.offset,
                )
        for m in C_LIBRARY.finditer(t.text):
            report(FALLBACK, f"CUDA source calls {m.group(1)} (library fallback)", m.start())
        for m in C_ATEN.finditer(t.text):
            parts = m.group(1).split("::")
            if op_name(parts[-1]) in COMPUTE_OPS or C_ATEN_NAMESPACES & set(parts[:-1]):
                shown = m.group(0).rstrip("( ").strip()
                report(FALLBACK, f"CUDA source calls {shown} (PyTorch fallback)", m.start())
        for m in C_METHOD.finditer(t.text):
            name = m.group(1)
            if op_name(name) in COMPUTE_OPS and name not in METHOD_EXEMPT:
                report(
                    FALLBACK,
                    f"CUDA source calls tensor method .{name}() (PyTorch fallback)",
                    m.start(),
                )

    def global_names(self) -> list[str]:
        """`__global__` kernels over every string of the candidate (cuda_source's scanner)."""
        names: list[str] = []
        for t in self.texts:
            if "__global__" not in t.text:
                continue
            for decl in kernel_decls(t.text):
                if decl.name not in names:
                    names.append(decl.name)
        return names

    def has_global(self) -> bool:
        return any("__global__" in t.text for t in self.texts)
