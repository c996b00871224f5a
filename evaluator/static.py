"""Static checks of a candidate's source, before anything runs.

A candidate is Python source defining `class ModelNew(nn.Module)` whose forward launches at least
one kernel of its backend (`triton`: `@triton.jit` functions launched as `kernel[grid](...)`;
`cuda`: a string holding `__global__` source compiled with `load_inline` or
`cupy.RawModule`/`cupy.RawKernel`). `check_source` reads the source with `ast` (and `re` for the
CUDA/C++ text) and never executes or imports it.

What is rejected (each violation is one line, "static check: <what> (line N)", most important
first; see EXPLOITS.md rows 10, 11, 14, 17 and 22):

1. structure: no `class ModelNew`; a constructor whose parameter names differ from `Model`'s;
   no kernel; a kernel that is never launched (a launch in an `if False:` branch, the dead arm of
   a constant conditional or after a `return` does not count) or CUDA source never compiled.
2. tampering: imports outside an allowlist (threading/multiprocessing reported as such),
   `eval`/`exec`/`getattr`/`open`/... by name, dunder attributes other than `__init__`, private
   attributes on anything but `self`, module-valued attributes (`torch.serialization.os`),
   assignments to attributes of anything but `self`/`ctx` (monkeypatching timers or torch), an
   imported module used as a value (`t = torch`), special methods other than `__init__`, tensor
   subclasses.
3. fallback: `try`, `with` other than `torch.no_grad()`/`torch.inference_mode()` (and the
   device/stream selectors `torch.cuda.device(...)`, `cupy.cuda.Device(...)`,
   `cupy.cuda.ExternalStream(...)`), `ModelNew` inheriting from anything but `nn.Module`, any
   mention of `Model`, and outside `@triton.jit` bodies: torch calls other than allocation and
   metadata ones (random tensors and `nn.*` layer construction only in `__init__` /
   `reset_parameters`), `torch.nn.functional`, tensor methods that compute (`x.sum()`), the `@`
   operator, calling an `nn.*` module held by `self`, CuPy compute functions, and ATen / cuBLAS /
   cuDNN calls or tensor compute methods inside CUDA/C++ source strings.
4. side streams, events and CUDA graphs (torch, cupy, or in CUDA source).

Limits, on purpose: arithmetic operators (`+ - * /`, comparisons, `abs()`, builtin `sum()`) and
indexing cannot be typed statically and are allowed; strings assembled at run time, attributes
reached through untyped objects, and anything else dynamic are not seen here; source nested
more than ~300 levels deep is rejected rather than analysed. These checks
are a fast, explainable first filter; the runtime checks (poisoned outputs, profiler trace of
the candidate's own kernels, thread counts, identity of timing functions) are the defence.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from pydantic import BaseModel, Field

PREFIX = "static check: "

BACKENDS = ("triton", "cuda")

# Severity ranks: violations are sorted by (rank, line).
_SYNTAX, _STRUCTURE, _TAMPER, _FALLBACK, _STREAM = 0, 1, 2, 3, 4

ALLOWED_IMPORTS = frozenset(
    {
        "torch",
        "torch.nn",
        "torch.nn.functional",
        "torch.nn.init",
        "torch.utils.cpp_extension",
        "triton",
        "triton.language",
        "math",
        "typing",
        "functools",
        "dataclasses",
        "__future__",
        "cupy",
        "cupy.cuda",
    }
)
ALLOWED_IMPORT_PREFIXES = ("triton.language.",)
THREAD_MODULES = ("threading", "_thread", "multiprocessing", "concurrent", "torch.multiprocessing")
THREAD_MESSAGE = (
    "threading/multiprocessing is forbidden (work deferred to another thread or process)"
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

FORBIDDEN_NAMES = frozenset(
    {
        "eval",
        "exec",
        "compile",
        "open",
        "__import__",
        "getattr",
        "setattr",
        "delattr",
        "globals",
        "locals",
        "vars",
        "breakpoint",
        "input",
        "memoryview",
        "exit",
        "quit",
        "help",
    }
)
ALLOWED_DUNDER_NAMES = frozenset({"__name__", "__file__", "__doc__"})
MODULE_ATTRS = frozenset(
    {
        "os",
        "sys",
        "subprocess",
        "builtins",
        "ctypes",
        "importlib",
        "gc",
        "inspect",
        "socket",
        "pickle",
        "shutil",
    }
)
THREAD_ATTRS = frozenset({"threading", "multiprocessing"})
# nn.Module internals reachable through `self._...`.
MODULE_INTERNALS = frozenset(
    {
        "_modules",
        "_parameters",
        "_buffers",
        "_forward_hooks",
        "_forward_pre_hooks",
        "_backward_hooks",
        "_backward_pre_hooks",
        "_state_dict_hooks",
        "_load_state_dict_pre_hooks",
        "_call_impl",
        "_wrapped_call_impl",
        "_compiled_call_impl",
        "_apply",
        "_non_persistent_buffers_set",
    }
)

INIT_METHODS = frozenset({"__init__", "reset_parameters"})

TORCH_DTYPES = frozenset(
    f"torch.{n}"
    for n in (
        "float32 float float16 half bfloat16 float64 double int8 int16 int32 int64 long int short "
        "uint8 uint16 uint32 uint64 bool complex64 complex128 cfloat cdouble float8_e4m3fn "
        "float8_e5m2 float8_e4m3fnuz float8_e5m2fnuz"
    ).split()
)
# torch calls allowed anywhere outside kernels: allocation and metadata.
TORCH_ALLOWED_CALLS = frozenset(
    {
        "torch.empty",
        "torch.empty_like",
        "torch.empty_strided",
        "torch.zeros",
        "torch.zeros_like",
        "torch.ones",
        "torch.ones_like",
        "torch.full",
        "torch.full_like",
        "torch.arange",
        "torch.tensor",
        "torch.device",
        "torch.dtype",
        "torch.finfo",
        "torch.iinfo",
        "torch.Size",
        "torch.is_tensor",
        "torch.is_floating_point",
        "torch.is_complex",
        "torch.numel",
        "torch.get_default_dtype",
        "torch.promote_types",
        "torch.result_type",
        "torch.broadcast_shapes",
        "torch.no_grad",
        "torch.inference_mode",
        "torch.cuda.current_stream",
        "torch.cuda.default_stream",
        "torch.cuda.current_device",
        "torch.cuda.get_device_properties",
        "torch.cuda.get_device_capability",
        "torch.cuda.get_device_name",
        "torch.cuda.is_available",
        "torch.cuda.device_count",
        "torch.cuda.device",
        "torch.utils.cpp_extension.load_inline",
        "torch.nn.Parameter",
        "torch.nn.Buffer",
        "torch.nn.Module.__init__",
    }
)
# Only inside __init__ / reset_parameters (parameter initialisation).
TORCH_RANDOM = frozenset(
    {
        "torch.randn",
        "torch.rand",
        "torch.randint",
        "torch.randn_like",
        "torch.rand_like",
        "torch.randint_like",
        "torch.normal",
        "torch.randperm",
    }
)
# torch attributes that may be used as values (not called) anywhere.
TORCH_VALUES = TORCH_DTYPES | {
    "torch.Tensor",
    "torch.Size",
    "torch.device",
    "torch.dtype",
    "torch.nn.Module",
    "torch.nn.Parameter",
    "torch.autograd.Function",
    "torch.inf",
    "torch.nan",
    "torch.pi",
    "torch.e",
    "torch.contiguous_format",
    "torch.channels_last",
    "torch.preserve_format",
    "torch.strided",
}
TORCH_VALUE_PREFIXES = ("torch.version.", "torch.backends.")
TORCH_STREAMS = (
    "torch.cuda.Stream",
    "torch.cuda.streams",
    "torch.cuda.stream",
    "torch.cuda.set_stream",
    "torch.cuda.ExternalStream",
    "torch.cuda.StreamContext",
    "torch.cuda.Event",
    "torch.cuda.graph",
    "torch.cuda.graphs",
    "torch.cuda.CUDAGraph",
    "torch.cuda.make_graphed_callables",
    "torch.cuda.graph_pool_handle",
    "torch.Stream",
    "torch.Event",
)
TORCH_COMPUTE_PREFIXES = (
    "torch.nn.functional.",
    "torch.ops.",
    "torch.linalg.",
    "torch.fft.",
    "torch.special.",
    "torch.sparse.",
    "torch.nested.",
    "torch.Tensor.",
    "torch.jit.",
    "torch.library.",
    "torch.func.",
    "torch.compile",
    "torch.vmap",
    "torch.autocast",
    "torch.amp.",
    "torch.cuda.amp.",
)
TENSOR_SUBCLASS_BASES = frozenset({"torch.Tensor", "torch.nn.Parameter", "torch.nn.Buffer"})

# Method / function names that compute (reductions, math, matmul, activations, normalizations,
# convolutions, sorting, scans, comparisons, indexing that computes). In-place variants
# (`add_`) are matched by stripping the trailing underscore.
COMPUTE_OPS = frozenset(
    """
    sum nansum mean nanmean max min amax amin aminmax argmax argmin prod std var std_mean var_mean
    norm logsumexp softmax log_softmax softmin exp exp2 expm1 log log2 log10 log1p sqrt rsqrt pow
    float_power square abs absolute neg negative reciprocal sign sgn relu relu6 gelu silu mish
    sigmoid logsigmoid tanh hardtanh hardswish hardsigmoid softplus softsign elu selu celu glu
    leaky_relu prelu rrelu threshold sin cos tan asin acos atan atan2 arcsin arccos arctan sinh
    cosh asinh acosh atanh erf erfc erfinv floor ceil round trunc frac fmod remainder xlogy
    matmul mm bmm addmm addbmm baddbmm addmv addr einsum mv dot vdot outer ger inner tensordot
    kron chain_matmul linear bilinear add sub subtract mul multiply div divide true_divide
    floor_divide lerp addcmul addcdiv clamp clip clamp_min clamp_max where masked_fill
    masked_select masked_scatter nan_to_num layer_norm group_norm batch_norm instance_norm
    rms_norm local_response_norm normalize dropout conv1d conv2d conv3d conv_transpose1d
    conv_transpose2d conv_transpose3d convolution cumsum cumprod cummax cummin logcumsumexp sort
    argsort msort topk kthvalue median nanmedian mode quantile nanquantile scatter scatter_add
    scatter_reduce gather index_select index_add index_copy index_fill index_put index_reduce
    take take_along_dim eq ne lt le gt ge greater less greater_equal less_equal not_equal
    maximum minimum fmax fmin isclose allclose equal logical_and logical_or logical_not
    logical_xor bitwise_and bitwise_or bitwise_xor bitwise_not diff cross trace tril triu cdist
    pdist cosine_similarity pairwise_distance histc bincount unique unique_consecutive nonzero
    count_nonzero any all cov corrcoef renorm embedding embedding_bag pad interpolate upsample
    avg_pool1d avg_pool2d avg_pool3d max_pool1d max_pool2d max_pool3d adaptive_avg_pool1d
    adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d
    adaptive_max_pool3d lp_pool1d lp_pool2d pixel_shuffle pixel_unshuffle fold unfold
    mse_loss l1_loss smooth_l1_loss huber_loss cross_entropy nll_loss binary_cross_entropy
    binary_cross_entropy_with_logits kl_div cosine_embedding_loss hinge_embedding_loss
    triplet_margin_loss margin_ranking_loss soft_margin_loss poisson_nll_loss gaussian_nll_loss
    scaled_dot_product_attention multi_head_attention_forward one_hot cat concat concatenate
    stack hstack vstack dstack flip fliplr flipud roll rot90 bucketize searchsorted gemm
    """.split()
)
# A reference (not a call) to these names is too common on non-tensors to flag.
REFERENCE_EXEMPT = frozenset({"max", "min", "unfold"})
# Tensor methods that are views of the same memory (Tensor.unfold) are not compute.
METHOD_EXEMPT = frozenset({"unfold"})

CUPY_ALLOWED = frozenset(
    (
        "RawModule RawKernel asarray from_dlpack fromDlpack ndarray dtype cuda int8 int16 int32 "
        "int64 uint8 uint16 uint32 uint64 intp uintp float16 float32 float64 bool_ complex64 "
        "complex128"
    ).split()
)
CUPY_STREAM_OK = frozenset({"ExternalStream", "get_current_stream"})
COMPILE_CALLS = frozenset(
    {"torch.utils.cpp_extension.load_inline", "cupy.RawModule", "cupy.RawKernel"}
)
ALLOWED_WITH = frozenset(
    {
        "torch.no_grad",
        "torch.inference_mode",
        "torch.autograd.no_grad",
        "torch.cuda.device",
        "cupy.cuda.Device",
        "cupy.cuda.ExternalStream",
    }
)

# --- CUDA / C++ source text ---------------------------------------------------------------
_C_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_LAUNCH_BOUNDS = re.compile(r"__launch_bounds__\s*\([^()]*\)")
_GLOBAL_FN = re.compile(r"__global__\b[^;{}()]*?\b([A-Za-z_]\w*)\s*(?:<[^<>(){};]*>\s*)?\(")
_C_MARKERS = (
    "__global__",
    "__device__",
    "#include",
    "PYBIND11",
    "TORCH_",
    "torch::",
    "at::",
    'extern "C"',
)
_C_STREAM = re.compile(
    r"\b(cudaStreamCreate\w*|cuStreamCreate\w*|getStreamFromPool|cudaStreamBeginCapture\w*|"
    r"cudaGraph\w*|cuGraph\w*|cudaEventCreate\w*|cudaEventRecord\w*|cuEventCreate\w*)\b"
)
_C_THREAD = re.compile(r"(std::thread|std::jthread|std::async|\bpthread_create)\b")
_C_ESCAPE = re.compile(r"(?<![\w.>])(system|popen|fork|vfork|execv\w*|execl\w*|dlopen|getenv)\s*\(")
_C_LIBRARY = re.compile(r"\b(cublas\w*|cublasLt\w*|cudnn\w*|cusparse\w*|cufft\w*)\s*\(")
_C_ATEN = re.compile(r"\b(?:torch|at|c10)::((?:\w+::)*\w+)\s*\(")
_C_METHOD = re.compile(r"\.\s*([a-z_][a-z0-9_]*)\s*\(")
_C_ATEN_NAMESPACES = frozenset({"native", "blas", "linalg", "fft", "special", "nn", "functional"})
_PYBIND_DEF = re.compile(r"\.def\s*\(\s*\"(\w+)\"")


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


# --- helpers ------------------------------------------------------------------------------


def _short(node: ast.AST, limit: int = 60) -> str:
    text = ast.unparse(node)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def _matches(full: str, names: Iterable[str]) -> bool:
    return any(full == n or full.startswith(n + ".") for n in names)


def _op_name(name: str) -> str:
    stripped = name.rstrip("_")
    return stripped or name


def _const_truth(node: ast.expr) -> bool | None:
    """Truth value of a constant test (`False`, `0`, `not True`), None when not constant."""
    if isinstance(node, ast.Constant):
        return bool(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        inner = _const_truth(node.operand)
        return None if inner is None else not inner
    return None


def _root_name(node: ast.AST) -> ast.Name | None:
    while isinstance(node, ast.Attribute | ast.Subscript | ast.Call | ast.Starred):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node if isinstance(node, ast.Name) else None


def _strip_c_comments(text: str) -> str:
    return _C_COMMENT.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


def _global_names(text: str) -> list[str]:
    """Names of `__global__` functions in (comment-stripped) CUDA source."""
    cleaned = _LAUNCH_BOUNDS.sub(" ", text)
    names = []
    for m in _GLOBAL_FN.finditer(cleaned):
        if m.group(1) not in names and m.group(1) != "void":
            names.append(m.group(1))
    return names


def _looks_like_c(text: str) -> bool:
    return any(marker in text for marker in _C_MARKERS) or (
        "{" in text and ";" in text and "}" in text
    )


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef | None) -> list[str]:
    if fn is None:
        return []
    # Named parameters only (positional-only, positional, keyword-only), without the first
    # (self); `*args`/`**kwargs` are left out, as forge.evaluator.evaluate.model_init_params does.
    a = fn.args
    return [p.arg for p in [*a.posonlyargs, *a.args, *a.kwonlyargs]][1:]


def _find_class(tree: ast.Module, name: str) -> ast.ClassDef | None:
    found = None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            found = node
    return found


def _find_init(cls: ast.ClassDef | None) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    if cls is None:
        return None
    init = None
    for node in cls.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "__init__":
            init = node
    return init


def class_init_params(source: str, class_name: str = "Model") -> list[str] | None:
    """Parameter names of `class_name.__init__` (without self) in `source`; None when the source
    does not parse or has no such class. Use it on the problem's source to get the names
    `check_source(model_init_params=...)` compares against."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    cls = _find_class(tree, class_name)
    if cls is None:
        return None
    return _params(_find_init(cls))


# --- the analysis -------------------------------------------------------------------------


@dataclass
class _Ctx:
    func: str | None = None
    cls: str | None = None
    in_jit: bool = False
    in_init: bool = False
    dead: bool = False
    exempt_refs: bool = False  # annotations and class bases: references are not checked
    local_mods: set[str] = field(default_factory=set)

    def but(self, **changes: object) -> _Ctx:
        values = {**self.__dict__, **changes}
        return _Ctx(**values)  # type: ignore[arg-type]


@dataclass
class _Text:
    text: str  # comment-stripped
    line: int


class _Analysis:
    def __init__(self, tree: ast.Module) -> None:
        self.tree = tree
        self.found: list[tuple[int, int, str]] = []
        self.parents: dict[int, ast.AST] = {}
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                self.parents[id(child)] = node
        self.aliases: dict[str, str] = {}
        self.module_aliases: set[str] = set()  # names bound to modules by import statements
        self.jit_defs: list[ast.FunctionDef | ast.AsyncFunctionDef] = []
        self.kernels: set[str] = set()
        self.launchers: set[str] = set()  # names bound to `kernel[grid]`
        self.launched = False
        self.compiled = False
        self.module_attrs: set[str] = set()  # self.<x> assigned an nn.* module in __init__
        self.exported: set[str] = set()  # functions exported by load_inline / pybind
        self.external_streams: set[str] = set()
        self.ext_names: set[str] = set()  # names bound to a load_inline extension module
        self.ext_attrs: set[str] = set()  # self.<x> bound to one
        self.module_names: set[str] = set()  # names assigned at module level
        self.texts: list[_Text] = []
        self.skip_model_ref: set[int] = set()
        self._collect()

    # -- reporting
    def add(
        self, rank: int, what: str, node: ast.AST | None = None, line: int | None = None
    ) -> None:
        if line is None and node is not None:
            line = getattr(node, "lineno", None)
        suffix = f" (line {line})" if line else ""
        self.found.append((rank, line or 0, f"{PREFIX}{what}{suffix}"))

    def violations(self) -> list[str]:
        seen: set[str] = set()
        out = []
        for _, _, msg in sorted(self.found, key=lambda t: (t[0], t[1])):
            if msg not in seen:
                seen.add(msg)
                out.append(msg)
        return out

    # -- resolution
    def resolve(self, node: ast.AST) -> str | None:
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name) and node.id in self.aliases:
            return ".".join([self.aliases[node.id], *reversed(parts)])
        return None

    def shown(self, node: ast.AST, full: str) -> str:
        text = _short(node)
        return text if text == full else f"{text} ({full})"

    # -- pre-pass
    def _collect(self) -> None:
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
                    if alias.asname:
                        self.aliases[alias.asname] = alias.name
                        self.module_aliases.add(alias.asname)
                    else:
                        top = alias.name.split(".")[0]
                        self.aliases[top] = top
                        self.module_aliases.add(top)
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

        for node in ast.walk(self.tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and self.is_jit(node):
                self.jit_defs.append(node)
                self.kernels.add(node.name)
        # simple aliases: `k = kernel`, `launch = kernel[grid]`, `s = cupy.cuda.ExternalStream(..)`
        for node in ast.walk(self.tree):
            if (
                isinstance(node, ast.Assign)
                and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
            ):
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
        # nn modules held by self, exported extension functions
        for node in ast.walk(self.tree):
            if (
                isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                and node.name in INIT_METHODS
            ):
                for sub in ast.walk(node):
                    if isinstance(sub, ast.Assign | ast.AnnAssign) and sub.value is not None:
                        targets = sub.targets if isinstance(sub, ast.Assign) else [sub.target]
                        if self.contains_nn_module(sub.value):
                            for t in targets:
                                if (
                                    isinstance(t, ast.Attribute)
                                    and isinstance(t.value, ast.Name)
                                    and t.value.id == "self"
                                ):
                                    self.module_attrs.add(t.attr)
                    elif (
                        isinstance(sub, ast.Call)
                        and isinstance(sub.func, ast.Attribute)
                        and sub.func.attr in ("add_module", "register_module")
                        and sub.args
                        and isinstance(sub.args[0], ast.Constant)
                        and isinstance(sub.args[0].value, str)
                        and any(self.contains_nn_module(a) for a in sub.args[1:])
                    ):
                        self.module_attrs.add(sub.args[0].value)
            if (
                isinstance(node, ast.Call)
                and self.resolve(node.func) == "torch.utils.cpp_extension.load_inline"
            ):
                for kw in node.keywords:
                    if kw.arg == "functions":
                        for sub in ast.walk(kw.value):
                            if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                                self.exported.add(sub.value)
        self._collect_extensions()
        self._collect_texts()
        for t in self.texts:
            self.exported.update(_PYBIND_DEF.findall(t.text))

    def _collect_extensions(self) -> None:
        for stmt in self.tree.body:
            if isinstance(stmt, ast.Assign | ast.AnnAssign):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                for t in targets:
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
                if not self.ext_bound(node.value, calls=False) and not (
                    isinstance(node.value, ast.Call)
                    and self.resolve(node.value.func) == "torch.utils.cpp_extension.load_inline"
                ):
                    continue
                for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    if isinstance(t, ast.Name) and t.id not in self.ext_names:
                        self.ext_names.add(t.id)
                        changed = True
                    elif (
                        isinstance(t, ast.Attribute)
                        and isinstance(t.value, ast.Name)
                        and t.value.id == "self"
                        and t.attr not in self.ext_attrs
                    ):
                        self.ext_attrs.add(t.attr)
                        changed = True

    def ext_bound(self, node: ast.AST, calls: bool = True) -> bool:
        """Whether `node` is (probably) a compiled extension module, so that `node.fn(...)` calls
        one of its exported functions rather than a tensor method."""
        if isinstance(node, ast.Name):
            return node.id in self.ext_names or (calls and node.id in self.module_names)
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "self"
        ):
            return node.attr in self.ext_attrs
        return calls and isinstance(node, ast.Call)

    def _collect_texts(self) -> None:
        docstrings: set[int] = set()
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                body = node.body
                if (
                    body
                    and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant)
                ):
                    docstrings.add(id(body[0].value))
        for node in ast.walk(self.tree):
            parent = self.parents.get(id(node))
            if isinstance(node, ast.JoinedStr):
                if not isinstance(parent, ast.BinOp) or not self._string_chain(parent):
                    self._add_text(node)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                if id(node) in docstrings or isinstance(parent, ast.JoinedStr | ast.FormattedValue):
                    continue
                if isinstance(parent, ast.BinOp) and self._string_chain(parent):
                    continue
                self._add_text(node)
            elif isinstance(node, ast.BinOp) and self._string_chain(node):
                if not (isinstance(parent, ast.BinOp) and self._string_chain(parent)):
                    self._add_text(node)

    def _string_chain(self, node: ast.AST) -> bool:
        return self._fold(node) is not None

    def _fold(self, node: ast.AST) -> str | None:
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
            left, right = self._fold(node.left), self._fold(node.right)
            if left is not None and right is not None:
                return left + right
        return None

    def _add_text(self, node: ast.AST) -> None:
        text = self._fold(node)
        if text:
            self.texts.append(_Text(_strip_c_comments(text), getattr(node, "lineno", 1)))

    def is_jit(self, fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
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

    def is_nn_class(self, full: str) -> bool:
        parts = full.split(".")
        return (
            len(parts) == 3
            and parts[:2] == ["torch", "nn"]
            and parts[2][:1].isupper()
            and parts[2] not in ("Parameter", "Buffer", "ParameterList", "ParameterDict", "Module")
        )

    def contains_nn_module(self, node: ast.AST) -> bool:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Call):
                full = self.resolve(sub.func)
                if full and self.is_nn_class(full):
                    return True
        return False

    # -- whole-file rules
    def check_model(self, model_init_params: list[str] | None) -> list[str]:
        cls = _find_class(self.tree, "ModelNew")
        if cls is None:
            self.add(_STRUCTURE, "no class ModelNew")
            return []
        init = _find_init(cls)
        params = _params(init)
        if model_init_params is not None and params != list(model_init_params):
            self.add(
                _STRUCTURE,
                f"ModelNew.__init__({', '.join(params)}) does not match "
                f"Model.__init__({', '.join(model_init_params)})",
                init or cls,
            )
        if not cls.bases:
            self.add(_STRUCTURE, "ModelNew does not inherit from nn.Module", cls)
        for base in cls.bases:
            full = self.resolve(base)
            text = _short(base)
            if isinstance(base, ast.Name) and base.id == "Model":
                self.skip_model_ref.add(id(base))
                self.add(_FALLBACK, "ModelNew inherits from Model (PyTorch fallback)", base)
            elif full != "torch.nn.Module" and text not in (
                "nn.Module",
                "torch.nn.Module",
                "Module",
            ):
                self.add(
                    _FALLBACK, f"ModelNew inherits from {text}; only nn.Module is allowed", base
                )
        return params

    # -- the walk
    def run(self) -> None:
        self.block(self.tree.body, _Ctx())

    def block(self, stmts: list[ast.stmt], ctx: _Ctx) -> None:
        dead = ctx.dead
        for stmt in stmts:
            self.visit(stmt, ctx.but(dead=dead) if dead != ctx.dead else ctx)
            if isinstance(stmt, ast.Return | ast.Raise | ast.Continue | ast.Break):
                dead = True

    def visit(self, node: ast.AST, ctx: _Ctx, role: str | None = None) -> None:
        method = getattr(self, "visit_" + type(node).__name__, None)
        if method is not None:
            method(node, ctx, role)
        else:
            self.children(node, ctx)

    def children(self, node: ast.AST, ctx: _Ctx) -> None:
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
    def visit_Import(self, node: ast.Import, ctx: _Ctx, role: str | None) -> None:
        for alias in node.names:
            self.check_module(alias.name, node)
            if alias.asname == "Model" or alias.name == "Model":
                self.add(_FALLBACK, "references Model, the reference implementation", node)

    def visit_ImportFrom(self, node: ast.ImportFrom, ctx: _Ctx, role: str | None) -> None:
        if node.level:
            self.add(
                _TAMPER, f"forbidden relative import '{'.' * node.level}{node.module or ''}'", node
            )
            return
        module = node.module or ""
        if not self.check_module(module, node):
            return
        for alias in node.names:
            full = f"{module}.{alias.name}"
            if alias.name == "*":
                self.add(
                    _TAMPER, f"forbidden import '*' from {module} (import names explicitly)", node
                )
            elif alias.name.startswith("_"):
                self.add(_TAMPER, f"forbidden import '{full}'", node)
            elif _matches(full, THREAD_MODULES):
                self.add(_TAMPER, THREAD_MESSAGE, node)
            elif full in KNOWN_MODULES and full not in ALLOWED_IMPORTS:
                self.add(_TAMPER, f"forbidden import '{full}'", node)
            if "Model" in (alias.name, alias.asname):
                self.add(_FALLBACK, "references Model, the reference implementation", node)

    def check_module(self, module: str, node: ast.AST) -> bool:
        if _matches(module, THREAD_MODULES):
            self.add(_TAMPER, THREAD_MESSAGE, node)
            return False
        private = any(p.startswith("_") for p in module.split(".")) and module != "__future__"
        if private or not (module in ALLOWED_IMPORTS or module.startswith(ALLOWED_IMPORT_PREFIXES)):
            self.add(_TAMPER, f"forbidden import '{module}'", node)
            return False
        return True

    def visit_Try(self, node: ast.AST, ctx: _Ctx, role: str | None) -> None:
        self.add(_FALLBACK, "try statement (try/except fallbacks are forbidden)", node)
        self.children(node, ctx)

    visit_TryStar = visit_Try

    def visit_With(self, node: ast.With | ast.AsyncWith, ctx: _Ctx, role: str | None) -> None:
        for item in node.items:
            expr = item.context_expr
            allowed = False
            if isinstance(expr, ast.Call):
                allowed = self.resolve(expr.func) in ALLOWED_WITH
            elif isinstance(expr, ast.Name):
                allowed = expr.id in self.external_streams
            if not allowed:
                self.add(
                    _FALLBACK,
                    f"'with {_short(expr)}' is forbidden (only torch.no_grad() and "
                    "torch.inference_mode() are allowed)",
                    node,
                )
        self.children(node, ctx)

    visit_AsyncWith = visit_With

    def visit_If(self, node: ast.If | ast.While, ctx: _Ctx, role: str | None) -> None:
        self.visit(node.test, ctx)
        truth = _const_truth(node.test)
        self.block(node.body, ctx.but(dead=True) if truth is False else ctx)
        self.block(node.orelse, ctx.but(dead=True) if truth is True else ctx)

    visit_While = visit_If

    def visit_FunctionDef(
        self, node: ast.FunctionDef | ast.AsyncFunctionDef, ctx: _Ctx, role: str | None
    ) -> None:
        if node.name == "Model":
            self.add(_FALLBACK, "references Model, the reference implementation", node)
        if (
            ctx.cls is not None
            and _is_dunder(node.name)
            and node.name != "__init__"
            and not ctx.func
        ):
            self.add(
                _TAMPER,
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

    def visit_Lambda(self, node: ast.Lambda, ctx: _Ctx, role: str | None) -> None:
        self.arguments(node.args, ctx)
        self.visit(node.body, ctx)

    def arguments(self, args: ast.arguments, ctx: _Ctx) -> None:
        every = [*args.posonlyargs, *args.args, *args.kwonlyargs]
        every += [a for a in (args.vararg, args.kwarg) if a is not None]
        for a in every:
            if a.arg == "Model":
                self.add(_FALLBACK, "references Model, the reference implementation", a)
            if a.annotation is not None:
                self.visit(a.annotation, ctx.but(exempt_refs=True))
        for default in [*args.defaults, *[d for d in args.kw_defaults if d is not None]]:
            self.visit(default, ctx)

    def visit_ClassDef(self, node: ast.ClassDef, ctx: _Ctx, role: str | None) -> None:
        if node.name == "Model":
            self.add(_FALLBACK, "references Model, the reference implementation", node)
        for dec in node.decorator_list:
            self.visit(dec, ctx)
        for base in node.bases:
            full = self.resolve(base)
            if full in TENSOR_SUBCLASS_BASES:
                self.add(
                    _TAMPER,
                    f"class {node.name} subclasses {full} (tensor subclasses are forbidden)",
                    base,
                )
            self.visit(base, ctx.but(exempt_refs=True))
        for kw in node.keywords:
            self.add(
                _TAMPER,
                f"class {node.name} passes '{kw.arg}' to its class statement (metaclasses are forbidden)",
                kw.value,
            )
            self.visit(kw.value, ctx)
        self.block(node.body, ctx.but(cls=node.name, func=None, local_mods=set()))

    def visit_Assign(
        self, node: ast.Assign | ast.AnnAssign | ast.AugAssign, ctx: _Ctx, role: str | None
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
                _FALLBACK, "matrix multiply with '@=' outside a kernel (PyTorch fallback)", node
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

    def visit_For(self, node: ast.For | ast.AsyncFor, ctx: _Ctx, role: str | None) -> None:
        if ctx.func is not None and self.is_module_expr(node.iter, ctx):
            for sub in ast.walk(node.target):
                if isinstance(sub, ast.Name):
                    ctx.local_mods.add(sub.id)
        self.children(node, ctx)

    visit_AsyncFor = visit_For

    def is_module_expr(self, node: ast.AST, ctx: _Ctx) -> bool:
        """`self.layers`, `self.layers[0]`, `self.children()`, a tainted local."""
        while isinstance(node, ast.Subscript | ast.Call):
            node = node.func if isinstance(node, ast.Call) else node.value
        if isinstance(node, ast.Name):
            return node.id in ctx.local_mods
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "self"
        ):
            return node.attr in self.module_attrs or node.attr in (
                "children",
                "modules",
                "named_children",
                "named_modules",
            )
        return False

    # expressions
    def visit_IfExp(self, node: ast.IfExp, ctx: _Ctx, role: str | None) -> None:
        self.visit(node.test, ctx)
        truth = _const_truth(node.test)
        self.visit(node.body, ctx.but(dead=True) if truth is False else ctx)
        self.visit(node.orelse, ctx.but(dead=True) if truth is True else ctx)

    def visit_BoolOp(self, node: ast.BoolOp, ctx: _Ctx, role: str | None) -> None:
        current = ctx
        for value in node.values:
            self.visit(value, current)
            truth = _const_truth(value)
            if (isinstance(node.op, ast.And) and truth is False) or (
                isinstance(node.op, ast.Or) and truth is True
            ):
                current = ctx.but(dead=True)

    def visit_BinOp(self, node: ast.BinOp, ctx: _Ctx, role: str | None) -> None:
        if isinstance(node.op, ast.MatMult) and not ctx.in_jit:
            self.add(
                _FALLBACK,
                f"matrix multiply '{_short(node)}' outside a kernel (PyTorch fallback)",
                node,
            )
        self.children(node, ctx)

    def visit_Name(self, node: ast.Name, ctx: _Ctx, role: str | None) -> None:
        name = node.id
        if name == "Model" and id(node) not in self.skip_model_ref:
            self.add(_FALLBACK, "references Model, the reference implementation", node)
        if not isinstance(node.ctx, ast.Load):
            return
        if name in FORBIDDEN_NAMES:
            self.add(_TAMPER, f"forbidden name '{name}'", node)
        elif _is_dunder(name) and name not in ALLOWED_DUNDER_NAMES:
            self.add(_TAMPER, f"forbidden name '{name}'", node)
        if role is None and not ctx.exempt_refs:
            if name in self.module_aliases:
                self.add(
                    _TAMPER,
                    f"uses module {name} as a value (modules may only be used as `{name}.attr`)",
                    node,
                )
            elif name in self.aliases:
                self.check_resolved(self.aliases[name], node, ctx, call=False)

    def visit_Attribute(self, node: ast.Attribute, ctx: _Ctx, role: str | None) -> None:
        attr = node.attr
        receiver_self = isinstance(node.value, ast.Name) and node.value.id == "self"
        # A chain is reported once, at its innermost forbidden attribute (`torch._C` in
        # `torch._C._nn.gelu`); the reference/call checks skip chains already reported.
        inner_reported = self.forbidden_attr(node.value)
        if not inner_reported:
            if _is_dunder(attr):
                if attr != "__init__":
                    self.add(_TAMPER, f"accesses dunder attribute {_short(node)}", node)
            elif attr in MODULE_INTERNALS and receiver_self:
                self.add(_TAMPER, f"accesses nn.Module internals {_short(node)}", node)
            elif attr.startswith("_") and not receiver_self:
                self.add(_TAMPER, f"accesses private attribute {_short(node)}", node)
            elif attr in THREAD_ATTRS:
                self.add(_TAMPER, THREAD_MESSAGE, node)
            elif attr in MODULE_ATTRS:
                self.add(
                    _TAMPER,
                    f"accesses {_short(node)} (module attribute '{attr}' is forbidden)",
                    node,
                )
        reported = inner_reported or self.forbidden_attr(node)
        if isinstance(node.ctx, ast.Store | ast.Del):
            root = _root_name(node)
            if root is None or root.id not in ("self", "ctx"):
                self.add(
                    _TAMPER,
                    f"patches {_short(node)} (timing or torch functions must not be modified)",
                    node,
                )
        elif role is None and not ctx.exempt_refs and not reported:
            full = self.resolve(node)
            if full is not None:
                self.check_resolved(full, node, ctx, call=False)
            elif (
                not receiver_self
                and not ctx.in_jit
                and _op_name(attr) in COMPUTE_OPS
                and attr not in REFERENCE_EXEMPT
                and not (attr in self.exported and self.ext_bound(node.value))
            ):
                self.add(
                    _FALLBACK,
                    f"references {_short(node)} outside a kernel (PyTorch fallback)",
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
                (_is_dunder(attr) and attr != "__init__")
                or (
                    attr.startswith("_")
                    and not _is_dunder(attr)
                    and (not on_self or attr in MODULE_INTERNALS)
                )
                or attr in MODULE_ATTRS
                or attr in THREAD_ATTRS
            ):
                return True
            node = node.value
        return False

    def visit_Subscript(self, node: ast.Subscript, ctx: _Ctx, role: str | None) -> None:
        if isinstance(node.ctx, ast.Store | ast.Del):
            root = _root_name(node)
            if root is not None and root.id in self.module_aliases:
                self.add(
                    _TAMPER,
                    f"patches {_short(node)} (timing or torch functions must not be modified)",
                    node,
                )
        self.visit(node.value, ctx)
        self.visit(node.slice, ctx)

    def visit_Call(self, node: ast.Call, ctx: _Ctx, role: str | None) -> None:
        func = node.func
        full = self.resolve(func) if isinstance(func, ast.Name | ast.Attribute) else None
        if isinstance(func, ast.Name) and func.id == "type" and len(node.args) == 3:
            self.add(
                _TAMPER, "forbidden name 'type' with 3 arguments (dynamic class creation)", node
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

    def check_module_call(self, func: ast.expr, ctx: _Ctx) -> None:
        target: ast.expr = func
        if isinstance(target, ast.Attribute) and target.attr == "forward":
            target = target.value
        while isinstance(target, ast.Subscript):
            target = target.value
        is_module = False
        if isinstance(target, ast.Name):
            is_module = target.id in ctx.local_mods
        elif (
            isinstance(target, ast.Attribute)
            and isinstance(target.value, ast.Name)
            and target.value.id == "self"
        ):
            is_module = target.attr in self.module_attrs
        if is_module and not ctx.in_init:
            where = f"in {ctx.func}" if ctx.func else "outside a kernel"
            self.add(
                _FALLBACK,
                f"calls the PyTorch module {_short(func)} {where} (PyTorch fallback)",
                func,
            )

    def check_method(self, func: ast.Attribute, ctx: _Ctx) -> None:
        if isinstance(func.value, ast.Name) and func.value.id == "self":
            return
        attr = func.attr
        if attr in METHOD_EXEMPT or _is_dunder(attr):
            return
        if attr in self.exported and self.ext_bound(func.value):
            return
        if _op_name(attr) in COMPUTE_OPS:
            self.add(_FALLBACK, f"calls {_short(func)} outside a kernel (PyTorch fallback)", func)

    def check_resolved(self, full: str, node: ast.AST, ctx: _Ctx, call: bool) -> None:
        root = full.split(".")[0]
        if root == "torch":
            self.check_torch(full, node, ctx, call)
        elif root == "cupy":
            self.check_cupy(full, node, ctx, call)

    def check_torch(self, full: str, node: ast.AST, ctx: _Ctx, call: bool) -> None:
        shown = self.shown(node, full)
        if _matches(full, TORCH_STREAMS):
            self.add(
                _STREAM, f"uses {shown} (side streams, events and CUDA graphs are forbidden)", node
            )
            return
        if _matches(full, THREAD_MODULES):
            self.add(_TAMPER, THREAD_MESSAGE, node)
            return
        if ctx.in_jit or full in ("torch", "torch.nn"):
            return
        if full in TORCH_ALLOWED_CALLS:
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
                    _FALLBACK,
                    f"calls {shown} outside __init__ (random tensors only initialise parameters)",
                    node,
                )
            elif self.is_nn_class(full):
                self.add(_FALLBACK, f"constructs {shown} outside __init__ (PyTorch fallback)", node)
            elif compute:
                self.add(_FALLBACK, f"calls {shown} outside a kernel (PyTorch fallback)", node)
            else:
                self.add(
                    _FALLBACK, f"calls {shown}, which is not an allocation or metadata call", node
                )
            return
        if full in TORCH_VALUES or full.startswith(TORCH_VALUE_PREFIXES):
            return
        if compute:
            self.add(_FALLBACK, f"references {shown} outside a kernel (PyTorch fallback)", node)
        else:
            self.add(
                _FALLBACK,
                f"references {shown}, which is not an allocation or metadata function",
                node,
            )

    def torch_compute(self, full: str) -> bool:
        last = full.rsplit(".", 1)[-1]
        return (
            _op_name(last) in COMPUTE_OPS
            or full.startswith(TORCH_COMPUTE_PREFIXES)
            or full == "torch.nn.functional"
            or self.is_nn_class(full)
        )

    def check_cupy(self, full: str, node: ast.AST, ctx: _Ctx, call: bool) -> None:
        shown = self.shown(node, full)
        parts = full.split(".")
        if len(parts) < 2 or ctx.in_jit:
            return
        if parts[1] == "cuda":
            for comp in parts[2:]:
                if comp not in CUPY_STREAM_OK and re.search("stream|event|graph", comp, re.I):
                    self.add(
                        _STREAM,
                        f"uses {shown} (side streams, events and CUDA graphs are forbidden)",
                        node,
                    )
                    return
            return
        if parts[1] in CUPY_ALLOWED:
            return
        verb = "calls" if call else "references"
        self.add(_FALLBACK, f"{verb} {shown} outside a kernel (CuPy fallback)", node)

    # -- CUDA / C++ text
    def check_texts(self) -> None:
        for t in self.texts:
            if not _looks_like_c(t.text):
                continue
            for m in _C_STREAM.finditer(t.text):
                self.add(
                    _STREAM,
                    f"CUDA source calls {m.group(1)} (side streams, events and CUDA graphs are forbidden)",
                    line=self.text_line(t, m.start()),
                )
            for m in _C_THREAD.finditer(t.text):
                self.add(
                    _TAMPER,
                    f"{THREAD_MESSAGE}: CUDA source uses {m.group(1)}",
                    line=self.text_line(t, m.start()),
                )
            for m in _C_ESCAPE.finditer(t.text):
                self.add(
                    _TAMPER,
                    f"CUDA source calls {m.group(1)} (process, library and environment access is forbidden)",
                    line=self.text_line(t, m.start()),
                )
            for m in _C_LIBRARY.finditer(t.text):
                self.add(
                    _FALLBACK,
                    f"CUDA source calls {m.group(1)} (library fallback)",
                    line=self.text_line(t, m.start()),
                )
            for m in _C_ATEN.finditer(t.text):
                parts = m.group(1).split("::")
                if _op_name(parts[-1]) in COMPUTE_OPS or _C_ATEN_NAMESPACES & set(parts[:-1]):
                    self.add(
                        _FALLBACK,
                        f"CUDA source calls {m.group(0).rstrip('( ').strip()} (PyTorch fallback)",
                        line=self.text_line(t, m.start()),
                    )
            for m in _C_METHOD.finditer(t.text):
                name = m.group(1)
                if _op_name(name) in COMPUTE_OPS and name not in METHOD_EXEMPT:
                    self.add(
                        _FALLBACK,
                        f"CUDA source calls tensor method .{name}() (PyTorch fallback)",
                        line=self.text_line(t, m.start()),
                    )

    @staticmethod
    def text_line(t: _Text, pos: int) -> int:
        return t.line + t.text.count("\n", 0, pos)

    def global_names(self) -> list[str]:
        names: list[str] = []
        for t in self.texts:
            if "__global__" in t.text:
                for n in _global_names(t.text):
                    if n not in names:
                        names.append(n)
        return names

    def has_global(self) -> bool:
        return any("__global__" in t.text for t in self.texts)


def _parse(source: str) -> tuple[ast.Module | None, str, int]:
    try:
        return ast.parse(source), "", 0
    except SyntaxError as exc:
        return None, exc.msg, exc.lineno or 1
    except ValueError as exc:  # null bytes on Python < 3.12
        return None, str(exc), 1
    except (MemoryError, RecursionError):
        return None, "source too complex to parse", 1


def _detect(analysis: _Analysis) -> str | None:
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
        return _detect(_Analysis(tree))
    except RecursionError:
        return None


def check_source(
    source: str, backend: str | None = None, model_init_params: list[str] | None = None
) -> StaticReport:
    """Run every static rule over `source`. Never raises for bad candidate code: a syntax error
    is reported as a violation with `syntax_error=True`.

    `backend`: "triton" | "cuda" | None (detect). `model_init_params`: `Model.__init__`'s
    parameter names without self (see `class_init_params`); None skips the comparison."""
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
        analysis = _Analysis(tree)
        params = analysis.check_model(model_init_params)
        analysis.run()
        analysis.check_texts()
    except RecursionError:
        return StaticReport(
            ok=False,
            backend=backend or "",
            violations=[f"{PREFIX}source nests too deeply to check (line 1)"],
        )
    chosen = backend or _detect(analysis)
    kernel_names: list[str] = []
    if chosen is None:
        analysis.add(_STRUCTURE, "no kernel: define a @triton.jit kernel or CUDA __global__ source")
    elif chosen == "triton":
        kernel_names = [fn.name for fn in analysis.jit_defs]
        if not kernel_names:
            analysis.add(_STRUCTURE, "defines no @triton.jit kernel")
        elif not analysis.launched:
            first = analysis.jit_defs[0]
            analysis.add(_STRUCTURE, f"never launches its Triton kernel {first.name}", first)
    else:
        kernel_names = analysis.global_names()
        if not analysis.has_global():
            analysis.add(_STRUCTURE, "no CUDA kernel source (a string with a __global__ function)")
        elif not analysis.compiled:
            analysis.add(
                _STRUCTURE,
                "never compiles its CUDA source (load_inline, cupy.RawModule or cupy.RawKernel)",
            )
    violations = analysis.violations()
    return StaticReport(
        ok=not violations,
        backend=chosen or "",
        violations=violations,
        kernel_names=kernel_names,
        constructor_params=params,
    )
