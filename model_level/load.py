"""A KernelBench-style model file: `Model`, `get_inputs()`, `get_init_inputs()`, optional
`forge_dtype`. Executed here (unlike problem files, which the sandbox runs): the file is the
user's own model, run in the user's process as `python model.py` would."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelFileError(ValueError):
    """A model file that cannot be used; the message names the fix."""


@dataclass
class LoadedModel:
    name: str
    path: Path
    module: ModuleType
    model: torch.nn.Module
    inputs: list
    device: str
    dtype: str


def _import(path: Path) -> ModuleType:
    name = f"forge_model_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelFileError(f"{path} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 (the user's file: any error is reported as one line)
        del sys.modules[name]
        raise ModelFileError(f"{path} failed to import: {type(exc).__name__}: {exc}") from exc
    missing = [n for n in ("Model", "get_inputs", "get_init_inputs") if not hasattr(module, n)]
    if missing:
        raise ModelFileError(
            f"{path} defines no {', '.join(missing)}: a model file needs Model, get_inputs() and "
            "get_init_inputs() (KernelBench format)"
        )
    return module


def load_model(file: str, device: str = "cuda", dtype: str | None = None) -> LoadedModel:
    """Build the file's Model (eval mode, seed 0) and its inputs on `device`, floating
    parameters and inputs cast to `dtype` (default: the file's `forge_dtype`, else float32)."""
    path = Path(file)
    if not path.is_file():
        raise ModelFileError(f"model file '{file}' does not exist")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelFileError("no CUDA GPU here: run on a GPU machine or pass --device cpu")
    module = _import(path)
    chosen = dtype or str(getattr(module, "forge_dtype", "float32"))
    if chosen not in DTYPES:
        raise ModelFileError(f"dtype '{chosen}' is not one of {sorted(DTYPES)}")
    torch.manual_seed(0)
    model = module.Model(*module.get_init_inputs())
    torch.manual_seed(1)
    inputs = list(module.get_inputs())
    target = DTYPES[chosen]
    model = model.to(device=device, dtype=target).eval()
    inputs = [
        (x.to(device=device, dtype=target) if x.is_floating_point() else x.to(device))
        if isinstance(x, torch.Tensor)
        else x
        for x in inputs
    ]
    return LoadedModel(path.stem, path.resolve(), module, model, inputs, device, chosen)
