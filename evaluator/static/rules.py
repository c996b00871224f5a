"""The tables of the static rules: what a candidate may import, which torch calls it may make
outside its kernels, the vendor-library GEMM/convolution calls it may keep, and what CUDA text
may not call. The rules that read them live in `visitor.py`; the Coder's prompt renders the
import list and the library rule from these same tables (`prompt_imports`, `library_rule`), so
what the prompt says and what is enforced cannot drift apart.
"""

from __future__ import annotations

import re

PREFIX = "static check: "

BACKENDS = ("triton", "cuda")

# Severity ranks: violations are sorted by (rank, line), most important first.
SYNTAX, STRUCTURE, TAMPER, FALLBACK, STREAM, UNAVAILABLE = 0, 1, 2, 3, 4, 5

# Imports every candidate needs, whatever its backend. `__future__` for annotations.
COMMON_IMPORTS = frozenset(
    {
        "torch",
        "torch.nn",
        "torch.nn.functional",
        "torch.nn.init",
        "math",
        "typing",
        "functools",
        "dataclasses",
        "__future__",
    }
)
# What each backend adds: Triton's language; load_inline or CuPy (NVRTC) for CUDA.
BACKEND_IMPORTS = {
    "triton": frozenset({"triton", "triton.language"}),
    "cuda": frozenset({"torch.utils.cpp_extension", "cupy", "cupy.cuda"}),
}
# Enforced for every candidate (a CUDA candidate may still use `triton.cdiv`, say).
ALLOWED_IMPORTS = COMMON_IMPORTS.union(*BACKEND_IMPORTS.values())
# Submodules allowed by prefix (triton.language.extra.libdevice and the like).
ALLOWED_IMPORT_PREFIXES = ("triton.language.",)

# What the evaluator cannot run on a device although the rules allow it elsewhere: a name or
# module (and everything under it) -> why. `check_source(device=...)` rejects their use before
# anything runs, and the prompts state them per device (`device_limits`).
DEVICE_UNAVAILABLE = {
    "cpu": {
        "triton.autotune": "the Triton interpreter has no GPU driver to time its configurations "
        "(it fails with '0 active drivers')",
        "triton.language.extra": "libdevice functions return None in the Triton interpreter",
    },
}

# Modules that run work on another thread or process (row 11), reported with THREAD_MESSAGE.
THREAD_MODULES = ("threading", "_thread", "multiprocessing", "concurrent", "torch.multiprocessing")
THREAD_MESSAGE = (
    "threading/multiprocessing is forbidden (work deferred to another thread or process)"
)

# Builtins that run code the rules never saw, reach frames or files (rows 14, 16, 22, 25).
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
# Module dunders harmless to read (every other dunder name is tampering).
ALLOWED_DUNDER_NAMES = frozenset({"__name__", "__file__", "__doc__"})
# Modules reachable as attributes of allowed ones (`torch.serialization.os`): never touched.
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
# The same for threading modules (row 11).
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

# Methods that initialise parameters: nn layers and random tensors are allowed only there.
INIT_METHODS = frozenset({"__init__", "reset_parameters"})

# dtypes, usable as values anywhere.
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
# Side streams, events and CUDA graphs (row 10), by prefix.
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
# Namespaces whose every member computes (or compiles, or changes dtype behind the scenes).
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
# Subclassing these makes a lazy tensor that computes inside the checker (row 12).
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

# CuPy names a launcher needs (compiling, zero-copy views, scalar types); the rest computes.
CUPY_ALLOWED = frozenset(
    (
        "RawModule RawKernel asarray from_dlpack fromDlpack ndarray dtype cuda int8 int16 int32 "
        "int64 uint8 uint16 uint32 uint64 intp uintp float16 float32 float64 bool_ complex64 "
        "complex128"
    ).split()
)
# CuPy stream names that only wrap torch's current stream.
CUPY_STREAM_OK = frozenset({"ExternalStream", "get_current_stream"})
# The calls that compile CUDA source (a CUDA candidate must make one).
COMPILE_CALLS = frozenset(
    {"torch.utils.cpp_extension.load_inline", "cupy.RawModule", "cupy.RawKernel"}
)
# `with` contexts that cannot swallow an exception or move work elsewhere (rows 10, 17).
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

# Vendor-library calls (cuBLAS GEMMs, cuDNN convolutions) a candidate may keep in forward: on a
# GEMM or convolution followed by an epilogue (KernelBench level 2) an engineer keeps the library
# for the heavy product and fuses the rest into their own kernel. The candidate's own kernels
# must still do the rest of the work: the runtime monitor records these calls
# (`forge.evaluator.monitor.LIBRARY_ATEN`) and an output computed by them alone is rejected.
# Matrix-vector and other BLAS calls (mv, addmv, dot, einsum) stay forbidden.
LIBRARY_CALLS = frozenset(
    {
        "torch.matmul",
        "torch.mm",
        "torch.bmm",
        "torch.addmm",
        "torch.baddbmm",
        "torch.nn.functional.linear",
        "torch.nn.functional.conv1d",
        "torch.nn.functional.conv2d",
        "torch.nn.functional.conv3d",
        "torch.nn.functional.conv_transpose1d",
        "torch.nn.functional.conv_transpose2d",
        "torch.nn.functional.conv_transpose3d",
    }
)
# nn modules whose forward is one of those calls: `self.linear(x)` is allowed when `self.linear`
# is only ever assigned one of these, directly, in __init__ / reset_parameters.
LIBRARY_MODULES = frozenset(
    {
        "torch.nn.Linear",
        "torch.nn.Conv1d",
        "torch.nn.Conv2d",
        "torch.nn.Conv3d",
        "torch.nn.ConvTranspose1d",
        "torch.nn.ConvTranspose2d",
        "torch.nn.ConvTranspose3d",
    }
)
# The `@` operator is torch.matmul on tensors (its in-place `@=` is not supported by torch).
LIBRARY_OPERATOR = "@"

# --- CUDA / C++ source text (read through forge.evaluator.cuda_source) ---------------------
# Side streams, events and graphs created in CUDA source (EXPLOITS row 10).
C_STREAM = re.compile(
    r"\b(cudaStreamCreate\w*|cuStreamCreate\w*|getStreamFromPool|cudaStreamBeginCapture\w*|"
    r"cudaGraph\w*|cuGraph\w*|cudaEventCreate\w*|cudaEventRecord\w*|cuEventCreate\w*)\b"
)
# Host threads started from CUDA/C++ source (row 11).
C_THREAD = re.compile(r"(std::thread|std::jthread|std::async|\bpthread_create)\b")
# Process, dynamic-library and environment access from C++ (rows 22, 27).
C_ESCAPE = re.compile(r"(?<![\w.>])(system|popen|fork|vfork|execv\w*|execl\w*|dlopen|getenv)\s*\(")
# Vendor libraries called from CUDA source: the library allowance is for forward's Python calls
# above, which the runtime monitor sees; a cuBLAS call in C++ is invisible to it (row 17).
C_LIBRARY = re.compile(r"\b(cublas\w*|cublasLt\w*|cudnn\w*|cusparse\w*|cufft\w*)\s*\(")
# ATen / torch C++ calls: compute ones are PyTorch fallbacks (row 17).
C_ATEN = re.compile(r"\b(?:torch|at|c10)::((?:\w+::)*\w+)\s*\(")
C_METHOD = re.compile(r"\.\s*([a-z_][a-z0-9_]*)\s*\(")
C_ATEN_NAMESPACES = frozenset({"native", "blas", "linalg", "fft", "special", "nn", "functional"})
# Functions a load_inline extension exports through pybind11.
PYBIND_DEF = re.compile(r"\.def\s*\(\s*\"(\w+)\"")


def host_include(target: str, form: str) -> bool:
    """An `#include` that reaches outside the toolkit's and torch's include paths: an absolute
    path, a `..` component, or a computed (macro) include (row 27: `/dev/zero`, host files)."""
    return form == "computed" or target.startswith("/") or ".." in target.split("/")


# --- what the Coder's prompt says, from the tables above -----------------------------------


def prompt_imports(backend: str) -> list[str]:
    """The imports a candidate of `backend` needs, in the order the prompt lists them: the
    common ones, then the backend's (a subset of ALLOWED_IMPORTS; their union over the
    backends, with ALLOWED_IMPORT_PREFIXES, is what is enforced)."""
    if backend not in BACKEND_IMPORTS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    prefixes = [p + "*" for p in ALLOWED_IMPORT_PREFIXES if p.split(".")[0] == backend]
    common = sorted(COMMON_IMPORTS, key=lambda m: (m.startswith("_"), m))  # __future__ last
    return common + sorted(BACKEND_IMPORTS[backend]) + prefixes


def library_rule() -> dict[str, list[str] | str]:
    """The vendor-library allowance as the prompt renders it: calls, modules and operator."""
    return {
        "calls": sorted(LIBRARY_CALLS),
        "modules": sorted(LIBRARY_MODULES),
        "operator": LIBRARY_OPERATOR,
    }


def device_limits(device: str) -> dict[str, str]:
    """What candidates may not use on `device` although the rules allow it elsewhere, and why
    (the table `check_source(device=...)` enforces; empty for the GPU)."""
    return dict(DEVICE_UNAVAILABLE.get(device, {}))
