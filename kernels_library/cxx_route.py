"""The runtime's C++ route (`csrc/route.cpp`): how it is chosen and built.

`kl.enable(route="cxx")` (the default) registers, at each overridden (ATen operator, dispatch
key), a boxed C++ kernel that answers the calls the Python side has already decided to leave
to PyTorch (by a key of the call's arguments) without entering Python, and on CUDA the served
calls whose key has a replay plan (`replay`: the recorded Triton launches); `route="python"` (or
`FORGE_KERNELS_ROUTE=python`) registers the Python kernel directly, as before. The extension is
built with `torch.utils.cpp_extension.load` (a C++ compiler and ninja) the first time it is
needed, into `$FORGE_HOME/torch_extensions/forge_route-<torch version>-<python>`, and reused by
every later process with the same torch and Python.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Literal

from forge.evaluator.config import forge_home
from forge.kernels_library.storage import LibraryError

log = logging.getLogger("forge.kernels_library")

ROUTE_ENV = "FORGE_KERNELS_ROUTE"
Route = Literal["cxx", "python"]
ROUTES: tuple[Route, ...] = ("cxx", "python")
SOURCE = Path(__file__).resolve().parent / "csrc" / "route.cpp"

_LOCK = threading.Lock()
_MODULE: ModuleType | None = None


def chosen_route(requested: str | None) -> Route:
    """The route asked for (`requested`, else `$FORGE_KERNELS_ROUTE`, else `cxx`), checked."""
    value = requested if requested is not None else os.environ.get(ROUTE_ENV, "").strip() or "cxx"
    if value not in ROUTES:
        where = "route" if requested is not None else ROUTE_ENV
        raise LibraryError(f"{where}={value!r} is not one of {', '.join(ROUTES)}")
    return value


def build_dir() -> Path:
    import torch

    tag = re.sub(r"[^A-Za-z0-9.]+", "_", torch.__version__)
    return (
        forge_home()
        / "torch_extensions"
        / f"forge_route-torch{tag}-py{sys.version_info.major}{sys.version_info.minor}"
    )


def extension() -> ModuleType:
    """The built extension, loaded once per process (built once per torch and Python version)."""
    global _MODULE
    if _MODULE is not None:
        return _MODULE
    with _LOCK:
        if _MODULE is None:
            _MODULE = _build()
    return _MODULE


def _build() -> ModuleType:
    import torch
    from torch.utils import cpp_extension

    directory = build_dir()
    directory.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        module = cpp_extension.load(
            "forge_route",
            sources=[str(SOURCE)],
            build_directory=str(directory),
            extra_cflags=["-O2"],
            verbose=False,
        )
    except (RuntimeError, OSError, ImportError, subprocess.CalledProcessError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LibraryError(
            f"the kernel library's C++ route could not be built in {directory} ({first_line}): "
            f"install a C++ compiler (g++) and ninja (`pip install ninja`), or use the Python "
            f"route: kl.enable(..., route='python') or {ROUTE_ENV}=python"
        ) from exc
    log.debug("C++ route loaded from %s in %.1f s", directory, time.perf_counter() - started)
    module.init(torch.Tensor, torch.nn.Parameter)
    return module
