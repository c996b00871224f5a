"""What a batch runs: its suite of problems, read from one of three places.

- a directory of KernelBench-format problem files (`*.py`, each with `Model`, `get_inputs`,
  `get_init_inputs`), in the order of their numeric prefix, then name;
- a KernelBench checkout with a level and a selection (`level=1`, `selection="1-20,40"`): the
  files `KernelBench/level1/<id>_<Name>.py` (or `level1/...` at the top), matched by `<id>`;
- a TOML file listing catalogue operators and problem files, each with settings of its own:

      [defaults]                 # optional: settings of every item (an item's own win)
      rounds = 4

      [[item]]
      op = "softmax"             # a catalogue operator (`forge ops`) ...
      priority = 10

      [[item]]
      file = "problems/my_op.py" # ... or a problem file, relative to the TOML file
      rounds = 8
      model = "openai/gpt-5"
      budget_usd = 2.0
      budget_gpu_hours = 0.25
      time_limit = "1h"

Every problem is loaded (and so checked) when the suite is read: a bad file is reported before
anything runs or is stored. Errors are `SuiteError` or `ProblemError`, one line each.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from forge.evaluator.problem import Problem, resolve_problem

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover (Python 3.10)
    import tomli as tomllib

DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.IGNORECASE)
SECONDS_PER = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
KERNELBENCH_FILE = re.compile(r"^(\d+)_.+\.py$")


class SuiteError(ValueError):
    """A suite that cannot be read as asked; the message is one line naming the fix."""


def parse_duration(text: str | float, what: str = "--time-limit") -> float:
    """Seconds in `text`: `90`, `90s`, `30m`, `8h`, `1.5h`, `2d` (> 0)."""
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        match = DURATION.match(text)
        if match is None:
            raise SuiteError(
                f"{what} '{text}' is not a duration: use seconds or a number with s, m, h or d "
                "(90, 30m, 8h)"
            )
        seconds = float(match[1]) * SECONDS_PER[match[2].lower()]
    if seconds <= 0:
        raise SuiteError(f"{what} must be longer than 0, got '{text}'")
    return seconds


def parse_selection(text: str) -> list[int]:
    """`1-20,40` -> [1, ..., 20, 40] (sorted, each once)."""
    chosen: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        bounds = [first, last] if dash else [first]
        if not all(b.strip().isdigit() for b in bounds):
            bad = next(b for b in bounds if not b.strip().isdigit())
            raise SuiteError(
                f"--problems '{text}': '{bad.strip() or part.strip()}' is not a problem number: "
                "use numbers and ranges such as 1-20,40"
            )
        low, high = int(bounds[0]), int(bounds[-1])
        if low > high:
            raise SuiteError(f"--problems '{text}': the range {part.strip()} runs backwards")
        chosen.update(range(low, high + 1))
    return sorted(chosen)


class ItemSettings(BaseModel):
    """Settings an item of a TOML suite may set (or its `[defaults]` for every item). What
    neither sets comes from the command line, then from Forge's defaults."""

    model_config = ConfigDict(extra="forbid")

    rounds: int | None = Field(None, ge=1)
    """Rounds per trajectory, round 0 included."""
    width: int | None = Field(None, ge=1)
    """Independent trajectories of the item's run."""
    patience: int | None = Field(None, ge=0)
    """Stop a trajectory after this many rounds without a new best (0: never)."""
    backend: Literal["triton", "cuda"] | None = None
    """Kernel backend the Coder writes."""
    precision: str | None = None
    """Precision policy (strict, tf32, bf16, fp16); the problem must accept it."""
    model: str | None = None
    """LLM for Coder and Judge (litellm string or scripted:FILE)."""
    coder_model: str | None = None
    """LLM for the Coder (overrides `model`)."""
    judge_model: str | None = None
    """LLM for the Judge (overrides `model`)."""
    priority: int | None = None
    """Higher runs first (default 0); equal priorities run in suite order."""
    budget_usd: float | None = Field(None, gt=0)
    """The item's run stops starting LLM calls once it has cost this many dollars."""
    budget_gpu_hours: float | None = Field(None, gt=0)
    """The item's run stops once its evaluations have taken this long (recorded wall time)."""
    time_limit: float | None = None
    """The item's run stops starting rounds after this long per session: seconds, or a
    duration such as "30m" or "2h"."""

    @field_validator("time_limit", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            try:
                return parse_duration(value, "time_limit")
            except SuiteError as exc:
                raise ValueError(str(exc)) from None
        return value


class SuiteItem(ItemSettings):
    """One `[[item]]` of a TOML suite: exactly one of `op` and `file`."""

    op: str | None = None
    """A catalogue operator (`forge ops`)."""
    file: str | None = None
    """A KernelBench-format problem file, relative to the TOML file's folder."""
    name: str | None = None
    """How the batch names the item (default: the operator or the file's name)."""

    @model_validator(mode="after")
    def _one_problem(self) -> SuiteItem:
        if (self.op is None) == (self.file is None):
            raise ValueError("give exactly one of 'op' (a catalogue operator) and 'file'")
        return self


class SuiteFile(BaseModel):
    """A TOML suite: optional `[defaults]` and one `[[item]]` table per problem."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    defaults: ItemSettings = Field(default_factory=ItemSettings)
    """Settings of every item; an item's own settings win."""
    items: list[SuiteItem] = Field(alias="item", min_length=1)
    """The problems, in order."""


@dataclass
class SuiteEntry:
    label: str
    problem: Problem
    settings: ItemSettings


@dataclass
class Suite:
    description: str
    """What it was read from, as stored with the batch."""
    name: str
    entries: list[SuiteEntry]


def read_suite(source: str, level: int | None = None, selection: str | None = None) -> Suite:
    """The suite at `source`: a TOML file, a KernelBench checkout (with `level`), or a
    directory of problem files."""
    path = Path(source).expanduser()
    if not path.exists():
        raise SuiteError(
            f"suite '{source}' does not exist: give a directory of problem files, a KernelBench "
            "checkout with --level, or a TOML file"
        )
    if (level is None) != (selection is None):
        raise SuiteError("--level and --problems go together (a KernelBench checkout)")
    if path.is_file():
        if level is not None:
            raise SuiteError(
                f"--level and --problems select from a KernelBench checkout, not {path}"
            )
        if path.suffix != ".toml":
            raise SuiteError(
                f"suite '{source}' is a file but not a .toml suite: give a TOML file or a "
                "directory of problem files"
            )
        return _read_toml(path)
    if level is not None:
        return _read_kernelbench(path, level, selection or "")
    return _read_directory(path)


def _sort_key(path: Path) -> tuple[int, str]:
    match = KERNELBENCH_FILE.match(path.name)
    return (int(match[1]) if match else sys.maxsize, path.name)


def _read_directory(folder: Path) -> Suite:
    files = sorted((p for p in folder.glob("*.py") if not p.name.startswith("_")), key=_sort_key)
    if not files:
        raise SuiteError(
            f"{folder} holds no problem files (*.py); for a KernelBench checkout add --level N "
            "--problems 1-20"
        )
    entries = [SuiteEntry(p.stem, resolve_problem(str(p)), ItemSettings()) for p in files]
    return Suite(str(folder.resolve()), folder.resolve().name, entries)


def _read_kernelbench(root: Path, level: int, selection: str) -> Suite:
    wanted = parse_selection(selection)
    candidates = [root / "KernelBench" / f"level{level}", root / f"level{level}"]
    folder = next((c for c in candidates if c.is_dir()), None)
    if folder is None:
        raise SuiteError(
            f"{root} has no KernelBench/level{level} or level{level} folder: give the checkout's "
            "top folder and a level it has"
        )
    by_id: dict[int, Path] = {}
    for path in folder.glob("*.py"):
        match = KERNELBENCH_FILE.match(path.name)
        if match is None:
            continue
        number = int(match[1])
        if number in by_id:
            raise SuiteError(
                f"{folder} has two problems numbered {number}: {by_id[number].name}, {path.name}"
            )
        by_id[number] = path
    missing = [n for n in wanted if n not in by_id]
    if missing:
        have = f"{min(by_id)}-{max(by_id)}" if by_id else "none"
        raise SuiteError(
            f"{folder} has no problem {missing[0]} (--problems {selection}; it has {have})"
        )
    entries = [
        SuiteEntry(f"L{level}/{by_id[n].stem}", resolve_problem(str(by_id[n])), ItemSettings())
        for n in wanted
    ]
    description = f"{root.resolve()} --level {level} --problems {selection}"
    return Suite(description, f"level{level}:{selection}", entries)


def _read_toml(path: Path) -> Suite:
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"{path}: not valid TOML: {exc}") from exc
    try:
        suite = SuiteFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the file"
        raise SuiteError(f"{path}: {where}: {first['msg']}") from exc
    entries = []
    for item in suite.items:
        settings = ItemSettings.model_validate(
            {
                **suite.defaults.model_dump(exclude_none=True),
                **item.model_dump(exclude_none=True, include=set(ItemSettings.model_fields)),
            }
        )
        reference = item.op if item.op is not None else str(path.parent / item.file)
        problem = resolve_problem(reference)
        entries.append(SuiteEntry(item.name or problem.name, problem, settings))
    return Suite(str(path.resolve()), path.stem, entries)
