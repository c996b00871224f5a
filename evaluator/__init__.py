"""The evaluator: verifies, times and profiles a candidate kernel so that no cheat passes.

Importable without litellm, sqlmodel or the CLI. Use `evaluate(problem, source, config)`.
Names resolve lazily, so the sandbox worker imports only the modules it runs.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "EvalConfig": "forge.evaluator.config",
    "EvalResult": "forge.evaluator.result",
    "Status": "forge.evaluator.result",
    "evaluate": "forge.evaluator.host",
    "EvaluatorError": "forge.evaluator.host",
    "Problem": "forge.evaluator.problem",
    "ProblemError": "forge.evaluator.problem",
    "resolve_problem": "forge.evaluator.problem",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'forge.evaluator' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
