"""Static checks of a candidate's source, before anything runs.

A candidate is Python source defining `class ModelNew(nn.Module)` whose forward launches at least
one kernel of its backend (`triton`: `@triton.jit` functions launched as `kernel[grid](...)`;
`cuda`: a string holding `__global__` source compiled with `load_inline` or
`cupy.RawModule`/`cupy.RawKernel`). `check_source` reads the source with `ast` (and
`forge.evaluator.cuda_source` for the CUDA/C++ text) and never executes or imports it.

What is rejected (each violation is one line, "static check: <what> (line N)", most important
first; see EXPLOITS.md rows 10, 11, 14, 17, 22 and 27):

1. structure: no `class ModelNew`; a constructor whose parameter names differ from `Model`'s;
   no kernel; a kernel that is never launched (a launch in an `if False:` branch, the dead arm of
   a constant conditional or after a `return` does not count) or CUDA source never compiled.
2. tampering: imports outside an allowlist (threading/multiprocessing reported as such),
   `eval`/`exec`/`getattr`/`open`/... by name, dunder attributes other than `__init__`, private
   attributes on anything but `self`, module-valued attributes (`torch.serialization.os`),
   assignments to attributes of anything but `self`/`ctx` (monkeypatching timers or torch), an
   imported module used as a value (`t = torch`), special methods other than `__init__`, tensor
   subclasses, CUDA source that includes host files (absolute, `..` or computed includes).
3. fallback: `try`, `with` other than `torch.no_grad()`/`torch.inference_mode()` (and the
   device/stream selectors `torch.cuda.device(...)`, `cupy.cuda.Device(...)`,
   `cupy.cuda.ExternalStream(...)`), `ModelNew` inheriting from anything but `nn.Module`, any
   mention of `Model`, and outside `@triton.jit` bodies: torch calls other than allocation and
   metadata ones (random tensors and `nn.*` layer construction only in `__init__` /
   `reset_parameters`), `torch.nn.functional`, tensor methods that compute (`x.sum()`), `@=`,
   calling an `nn.*` module held by `self`, CuPy compute functions, and ATen / cuBLAS /
   cuDNN calls or tensor compute methods inside CUDA/C++ source strings.
   Allowed on purpose: the vendor-library GEMM and convolution calls of `rules.LIBRARY_CALLS`
   (`torch.matmul`, `F.linear`, `F.conv2d`, ...), the `@` operator, and calling a layer of
   `rules.LIBRARY_MODULES` held by the model (`self.linear(x)`), so a GEMM + epilogue problem can
   keep cuBLAS for the product and fuse the rest into its own kernel. That the candidate's own
   kernels do the rest of the work is a runtime question (`forge.evaluator.monitor`).
4. side streams, events and CUDA graphs (torch, cupy, or in CUDA source).
5. what cannot run on the evaluation's device although it is allowed elsewhere
   (`rules.DEVICE_UNAVAILABLE`: on `cpu`, `@triton.autotune` and `triton.language.extra`'s
   libdevice functions, which the Triton interpreter cannot run).

Limits, on purpose: arithmetic operators (`+ - * /`, comparisons, `abs()`, builtin `sum()`) and
indexing cannot be typed statically and are allowed; strings assembled at run time, attributes
reached through untyped objects, and anything else dynamic are not seen here; source nested
more than ~300 levels deep is rejected rather than analysed. These checks are a fast,
explainable first filter; the runtime checks (poisoned outputs, profiler trace of the
candidate's own kernels, thread counts, identity of timing functions) are the defence.

Layout: `rules.py` holds the tables (and what the Coder's prompt renders from them),
`bindings.py` what names are bound to, `visitor.py` the walk, `check.py` the entry points.
"""

from forge.evaluator.static.check import (
    StaticReport,
    check_source,
    class_init_params,
    detect_backend,
)
from forge.evaluator.static.rules import PREFIX, THREAD_MESSAGE

__all__ = [
    "PREFIX",
    "THREAD_MESSAGE",
    "StaticReport",
    "check_source",
    "class_init_params",
    "detect_backend",
]
