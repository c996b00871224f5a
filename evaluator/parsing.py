"""`ast.parse` for code that runs on several threads at once (a batch's items, a run's
trajectories): CPython can fail a parse that overlaps another thread's with `SystemError: AST
constructor recursion depth mismatch` (python/cpython#106905; seen on 3.11.7 with
`forge batch --concurrency 4`), so Forge's parses take turns."""

from __future__ import annotations

import ast
import threading

_PARSING = threading.Lock()


def parse_python(source: str, filename: str = "<unknown>") -> ast.Module:
    """`ast.parse(source, filename)`, one thread at a time."""
    with _PARSING:
        return ast.parse(source, filename=filename)
