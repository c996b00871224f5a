"""Rows 14 and 22, in the runner: candidate code must not replace the functions the runner
calls, nor the runner's own code (its module and class), nor the modules it imports.

Defence in depth only: the verdict is decided in the trusted process, which compares the
runner's outputs and checks its timings against its own clock. This catches the crude patch
early with a clear reason. The identities of every attribute of the watched modules, classes
and the runner's class, of the `sys.modules` entries of torch, triton and forge, and the entries
of `sys.path` are taken before candidate code is imported and compared each time it ran.
"""

from __future__ import annotations

import builtins
import sys
import threading
import time

import torch

from forge.evaluator import compare, monitor, profiling, protocol, shared, timing

WATCHED_MODULE_PREFIXES = ("forge", "torch", "triton", "time", "builtins", "threading", "sys", "os")


def _watched(runner: object) -> dict[str, object]:
    from forge.evaluator import runner as runner_module

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
        "forge.evaluator.monitor": monitor,
        "forge.evaluator.monitor.AtenMonitor": monitor.AtenMonitor,
        "forge.evaluator.monitor.KernelCodeWatch": monitor.KernelCodeWatch,
        "forge.evaluator.timing": timing,
        "forge.evaluator.profiling": profiling,
        "forge.evaluator.integrity": sys.modules[__name__],
        "forge.evaluator.integrity.IdentitySnapshot": IdentitySnapshot,
        "forge.evaluator.protocol": protocol,
        "forge.evaluator.shared": shared,
        "forge.evaluator.runner": runner_module,
        "forge.evaluator.runner.Runner": runner_module.Runner,
    }


REBOUND_BY_TORCH = frozenset({("torch", "manual_seed")})
"""Attributes torch itself rebinds: torch._dynamo wraps torch.manual_seed when it is first
imported (nothing else it touches is watched). The runner does not import it at start-up
(`monitor.AtenMonitor` opts out of the Dynamo wrapper), so a torch path first taken by candidate
code may import it mid-job. The seed takes no part in a verdict: the model's parameters reach
the runner as data and its outputs are compared by the trusted process."""


def _identities(obj: object) -> dict[str, int]:
    namespace = obj.__dict__ if hasattr(obj, "__dict__") else {}
    return {name: id(value) for name, value in list(namespace.items())}


# sys.path may grow (load_inline appends its build directory); the runner imports every module
# it uses before candidate code runs, so shadowing through a new sys.path entry cannot reach it,
# and replacing an imported module shows in the sys.modules identities.


def _modules() -> dict[str, int]:
    return {
        name: id(m)
        for name, m in list(sys.modules.items())
        if name.split(".")[0] in WATCHED_MODULE_PREFIXES
    }


class IdentitySnapshot:
    def __init__(self, runner: object = None) -> None:
        self.runner = runner
        self.before: dict[str, dict[str, int]] = {}
        self.modules: dict[str, int] = {}
        self.path: list[str] = []

    def take(self) -> None:
        self.before = {label: _identities(obj) for label, obj in _watched(self.runner).items()}
        self.modules = _modules()
        self.path = list(sys.path)

    def changed(self) -> list[str]:
        changes = []
        for label, obj in _watched(self.runner).items():
            now = _identities(obj)
            for name, ident in self.before.get(label, {}).items():
                if now.get(name) != ident and (label, name) not in REBOUND_BY_TORCH:
                    changes.append(f"{label}.{name}")
        now_modules = _modules()
        changes += [
            f"sys.modules[{name!r}]"
            for name, ident in self.modules.items()
            if now_modules.get(name) != ident
        ]
        removed = [p for p in self.path if p not in sys.path]
        if removed:
            changes.append("sys.path")
        return changes
