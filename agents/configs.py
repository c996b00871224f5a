"""Configurations a candidate declares for the evaluator to try (`CONFIGS`), read without running
the candidate.

A candidate module may define a module-level `CONFIGS` list of flat dicts of literal ints,
strings and bools (`[{"BLOCK": 1024, "num_warps": 4}, ...]`) and read the module-level name
`CONFIG` (the chosen dict). `variants` turns it into one self-contained source per config: the
candidate with `CONFIG = {...}` inserted right after the `CONFIGS` assignment. A module-level
`CONFIG = ...` the candidate already has (the pin of an earlier round) is replaced, so a kept
variant can be revised and declared again.
"""

from __future__ import annotations

import ast
import json

from pydantic import BaseModel

LIST_NAME = "CONFIGS"
CHOSEN_NAME = "CONFIG"
VALUE_TYPES = (bool, int, str)


class ConfigError(ValueError):
    """A `CONFIGS` the evaluator cannot try (the Coder is told why)."""


class Variant(BaseModel):
    """One config of a candidate, pinned in a source of its own."""

    index: int
    """1-based position in `CONFIGS`."""
    config: dict[str, bool | int | str]
    source: str


class ConfigTrial(BaseModel):
    """One config of an answer as the Judge sees it: its verdict and time."""

    index: int
    config: dict[str, bool | int | str]
    candidate_id: int
    status: str
    device_ms: float | None = None
    """Device time per call at the target sets (geometric mean), when trusted timings exist."""
    note: str = ""
    kept: bool = False

    @property
    def shown(self) -> str:
        return json.dumps(self.config)


def _assignments(tree: ast.Module, name: str) -> list[ast.stmt]:
    found = []
    for stmt in tree.body:
        targets = (
            stmt.targets
            if isinstance(stmt, ast.Assign)
            else [stmt.target]
            if isinstance(stmt, ast.AnnAssign | ast.AugAssign)
            else []
        )
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            found.append(stmt)
    return found


def _reads(tree: ast.Module, name: str) -> bool:
    return any(
        isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, ast.Load)
        for node in ast.walk(tree)
    )


def _check_config(position: int, config: object) -> dict[str, bool | int | str]:
    if not isinstance(config, dict) or not config:
        raise ConfigError(f"{LIST_NAME}[{position}] is not a non-empty dict")
    for key, value in config.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise ConfigError(f"{LIST_NAME}[{position}] has a key {key!r} that is not a name")
        if not isinstance(value, VALUE_TYPES):
            raise ConfigError(
                f"{LIST_NAME}[{position}][{key!r}] is {value!r}: values must be literal ints, "
                "strings or bools"
            )
    return config


def parse_configs(source: str, max_configs: int) -> list[dict[str, bool | int | str]] | None:
    """The configs `source` declares, in order; None when it declares none (or does not parse:
    the evaluator reports that). Raises ConfigError for a `CONFIGS` that is not a literal list
    of at most `max_configs` distinct flat dicts, or a `CONFIG` read without one."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    declared = _assignments(tree, LIST_NAME)
    if not declared:
        if _reads(tree, CHOSEN_NAME) and not _assignments(tree, CHOSEN_NAME):
            raise ConfigError(
                f"`{CHOSEN_NAME}` is read but no module-level `{LIST_NAME}` list declares the "
                "configs to choose it from"
            )
        return None
    if len(declared) > 1 or not isinstance(declared[0], ast.Assign | ast.AnnAssign):
        raise ConfigError(f"`{LIST_NAME}` must be assigned once, at module level")
    if len(declared[0].targets if isinstance(declared[0], ast.Assign) else [0]) > 1:
        raise ConfigError(f"`{LIST_NAME} = [...]` must be an assignment of its own")
    try:
        configs = ast.literal_eval(declared[0].value)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"`{LIST_NAME}` must be a literal list of dicts (no names, calls or expressions): {exc}"
        ) from None
    if not isinstance(configs, list) or not configs:
        raise ConfigError(f"`{LIST_NAME}` must be a non-empty list of dicts")
    if len(configs) > max_configs:
        raise ConfigError(
            f"`{LIST_NAME}` lists {len(configs)} configs; the evaluator tries at most {max_configs}"
        )
    checked = [_check_config(i, c) for i, c in enumerate(configs)]
    for i, config in enumerate(checked):
        if config in checked[:i]:
            raise ConfigError(f"{LIST_NAME}[{i}] repeats {LIST_NAME}[{checked.index(config)}]")
    return checked


def variants(source: str, max_configs: int) -> list[Variant] | None:
    """One source per declared config, or None when `source` declares none (ConfigError as
    `parse_configs`)."""
    configs = parse_configs(source, max_configs)
    if configs is None:
        return None
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    pins = _assignments(tree, CHOSEN_NAME)
    occupied = {
        line
        for stmt in tree.body
        if stmt not in pins
        for line in range(stmt.lineno, stmt.end_lineno + 1)
    }
    dropped = set()
    for pin in pins:
        span = set(range(pin.lineno, pin.end_lineno + 1))
        if span & occupied:
            raise ConfigError(f"put the module-level `{CHOSEN_NAME} = ...` on lines of its own")
        dropped |= span
    after = _assignments(tree, LIST_NAME)[0].end_lineno
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    found = []
    for index, config in enumerate(configs, 1):
        pin = (
            f"{CHOSEN_NAME} = {config!r}  # config {index} of {len(configs)}, "
            f"pinned by the evaluator\n"
        )
        kept = [
            line + (pin if number == after else "")
            for number, line in enumerate(lines, 1)
            if number not in dropped
        ]
        found.append(Variant(index=index, config=config, source="".join(kept)))
    return found
