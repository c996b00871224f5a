"""A problem file executed with an input set's constants, the one way Forge applies them: in the
trusted process (once per input set) and in the check of derived sets on the meta device when a
problem is loaded (`meta_error`, used by `problem.load_problem`).

Each module-level assignment of a constant is followed by the set's value, so names computed
from constants at the top of the file follow the set (KernelBench L2/76's
`bias_shape = (out_features,)`); then the constants are set on the module, as the final word.
"""

from __future__ import annotations

import ast
import sys
import types

from forge.evaluator.parsing import parse_python

MODULE_NAME = "forge_problem"


def execute(source: str, constants: dict[str, int], filename: str) -> types.ModuleType:
    """The problem's module with `constants` applied, registered as `forge_problem`."""
    tree = parse_python(source, filename=filename)
    tree.body = [stmt for node in tree.body for stmt in _followed_by_constants(node, constants)]
    module = types.ModuleType(MODULE_NAME)
    module.__file__ = filename
    sys.modules[MODULE_NAME] = module
    exec(compile(ast.fix_missing_locations(tree), filename, "exec"), module.__dict__)
    for name, value in constants.items():
        setattr(module, name, value)
    return module


def _followed_by_constants(node: ast.stmt, constants: dict[str, int]) -> list[ast.stmt]:
    if not isinstance(node, ast.Assign | ast.AnnAssign):
        return [node]
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    names = [t.id for t in targets if isinstance(t, ast.Name) and t.id in constants]
    return [node, *(_assignment(name, constants[name], node) for name in names)]


def _assignment(name: str, value: int, where: ast.stmt) -> ast.stmt:
    statement = ast.Assign(targets=[ast.Name(id=name, ctx=ast.Store())], value=ast.Constant(value))
    return ast.copy_location(statement, where)


def meta_error(source: str, constants: dict[str, int], dtype: str, filename: str) -> str | None:
    """What building the reference and running its forward with `constants` raises on the meta
    device (shapes only: no memory, no GPU), as the trusted process builds and calls it; None
    when it runs."""
    import torch

    try:
        with torch.device("meta"), torch.no_grad():
            module = execute(source, constants, filename)
            model = module.Model(*module.get_init_inputs()).eval().to(getattr(torch, dtype))
            inputs = [
                x.to(getattr(torch, dtype))
                if isinstance(x, torch.Tensor) and x.is_floating_point()
                else x
                for x in module.get_inputs()
            ]
            model(*inputs)
    except Exception as exc:  # noqa: BLE001 (the problem's own code: what it raises is the answer)
        lines = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return None
