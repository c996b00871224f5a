"""The kernel library: verified kernels for a PyTorch program, with one line.

    import forge.kernels_library as kl
    kl.enable()                      # eager ATen ops use library kernels on CUDA where verified
    kl.disable()                     # PyTorch's own kernels again
    with kl.use(ops=["softmax"]):    # only these, only inside the block
        ...
    Softmax = kl.load("softmax")     # the best entry's ModelNew class, for explicit use
    kl.stats()                       # library calls and fallbacks to PyTorch, by reason
    torch.compile(model, backend=kl.compile_backend())   # served ops as custom ops in the graph

`FORGE_KERNELS_DISABLE=1` turns `enable`/`use` into no-ops; `FORGE_KERNELS_ROUTE=python` (or
`enable(..., route="python")`) skips the C++ route that answers unserved calls, and replays
served ones, without Python (built on first use with g++ and ninja); `FORGE_KERNELS_REPLAY=0`
(or `enable(..., replay=False)`) keeps the C++ route but not its replay. Entries are read from
`$FORGE_LIBRARY` (directories separated by os.pathsep), else `$FORGE_HOME/library`; see
docs/library.md. The operator catalogue (reference problems) lives in `catalogue/`.

Importing this package is cheap: torch, pydantic and the runtime load on first use; the
database, litellm and the CLI never do.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "enable": "forge.kernels_library.runtime",
    "disable": "forge.kernels_library.runtime",
    "enabled": "forge.kernels_library.runtime",
    "use": "forge.kernels_library.runtime",
    "load": "forge.kernels_library.runtime",
    "best_entry": "forge.kernels_library.runtime",
    "entries": "forge.kernels_library.runtime",
    "stats": "forge.kernels_library.runtime",
    "reset_stats": "forge.kernels_library.runtime",
    "EnableReport": "forge.kernels_library.runtime",
    "compile_backend": "forge.kernels_library.compiled",
    "LibraryError": "forge.kernels_library.storage",
    "LibraryIntegrityError": "forge.kernels_library.storage",
    "library_dirs": "forge.kernels_library.storage",
    "local_library_dir": "forge.kernels_library.storage",
    "PromotionRefused": "forge.kernels_library.promotion",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'forge.kernels_library' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
