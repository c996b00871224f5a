"""Row 14: candidate code must not replace the functions the harness measures and compares with.

A snapshot of the identities of every attribute of the modules and classes the harness relies on
is taken before candidate code is imported and compared after each time candidate code ran.
"""

from __future__ import annotations

import builtins
import threading
import time

import torch

from forge.evaluator import compare


def _watched() -> dict[str, object]:
    return {
        "torch": torch,
        "torch.Tensor": torch.Tensor,
        "torch.nn.Module": torch.nn.Module,
        "torch.cuda": torch.cuda,
        "torch.cuda.Event": torch.cuda.Event,
        "torch.autograd": torch.autograd,
        "torch.profiler": torch.profiler,
        "time": time,
        "builtins": builtins,
        "threading": threading,
        "forge.evaluator.compare": compare,
    }


def _identities(obj: object) -> dict[str, int]:
    namespace = obj.__dict__ if hasattr(obj, "__dict__") else {}
    return {name: id(value) for name, value in list(namespace.items())}


class IdentitySnapshot:
    def __init__(self) -> None:
        self.before: dict[str, dict[str, int]] = {}

    def take(self) -> None:
        self.before = {label: _identities(obj) for label, obj in _watched().items()}

    def changed(self) -> list[str]:
        changes = []
        for label, obj in _watched().items():
            now = _identities(obj)
            for name, ident in self.before.get(label, {}).items():
                if now.get(name) != ident:
                    changes.append(f"{label}.{name}")
        return changes
