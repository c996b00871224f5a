"""Problems: KernelBench-format files plus Forge's optional extensions.

A problem file defines `class Model(nn.Module)`, `get_inputs()` and `get_init_inputs()`, and
usually module-level integer constants that fix the shape (`batch_size = 16`). Forge reads
its metadata from the source without executing it (so the CLI needs no GPU); the sandbox
worker executes it once per input set, with the set's constants (`evaluator/problem_module.py`).

Optional extensions, all module-level literals or functions:

    forge_dtype = "float16"                      # inputs and parameters are cast to it
    forge_atol = 1e-3; forge_rtol = 1e-3         # default: fp32 1e-4, fp16/bf16 1e-2
    forge_input_sets = [                         # each overrides integer constants
        {"name": "tiny", "cpu": True, "batch_size": 3, "dim": 127},
        {"name": "large", "batch_size": 4096, "dim": 8192},
    ]
    forge_distributions = ["normal", "heavy_tailed", "outliers"]   # per-seed input styles
    def forge_flops(batch_size, dim): ...        # for the roofline, given the constants
    def forge_bytes(batch_size, dim): ...
    forge_target_sets = ["large"]                # sets the speedups are taken at (default: largest)
    forge_aten = "aten::_softmax"                # runtime library mapping (optional)
    forge_shape_buckets = {"batch_size": "pow2", "dim": "exact"}
    forge_precisions = ["strict", "tf32", "bf16"]  # policies it accepts (default: strict, and
                                                 # tf32 for float32; see evaluator/precision.py)

A file without `forge_input_sets` gets extra sets derived by perturbing its size constants
(values >= 16) to odd, non-power-of-two sizes, plus a small set usable on the CPU. Such a file
is executed here too, once per set on the meta device (shapes only, milliseconds): a derived
set its Model cannot build or run while the base set can (GroupNorm's channels no longer
divisible by its groups) is dropped, with a note (`Problem.notes`).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, Field

from forge.evaluator import problem_module
from forge.evaluator.parsing import parse_python

CATALOGUE_DIR = Path(__file__).resolve().parent.parent / "kernels_library" / "catalogue"

DEFAULT_TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 1e-2, "float64": 1e-7}
DEFAULT_DISTRIBUTIONS = ["normal", "heavy_tailed", "outliers"]
KNOWN_DISTRIBUTIONS = {"normal", "heavy_tailed", "outliers", "positive", "as_given"}
SIZE_CONSTANT_MIN = 16
CPU_ELEMENT_BUDGET = 1 << 16


class ProblemError(ValueError):
    """A problem file or override that cannot be used; the message names the fix."""


class InputSet(BaseModel):
    name: str
    constants: dict[str, int]
    cpu: bool = Field(False, description="small enough to run on the CPU (interpreter)")


class Problem(BaseModel):
    """What the evaluator needs to know about an operator, read from its source."""

    name: str
    source: str
    path: str = ""
    dtype: str = "float32"
    atol: float
    rtol: float
    input_sets: list[InputSet]
    distributions: list[str] = Field(default_factory=lambda: list(DEFAULT_DISTRIBUTIONS))
    constants: dict[str, int] = Field(default_factory=dict)
    derived_sets: bool = Field(False, description="input sets were derived by perturbation")
    target_sets: list[str] = Field(default_factory=list, description="empty: the largest set")
    aten: str = ""
    shape_buckets: dict[str, str] = Field(default_factory=dict)
    description: str = ""
    precisions: list[str] = Field(
        default_factory=lambda: ["strict"],
        description="precision policies the problem accepts (`strict` first)",
    )
    notes: list[str] = Field(
        default_factory=list, description="what loading changed, e.g. a derived set dropped"
    )

    def sets_for(self, device: str) -> list[InputSet]:
        if device == "cuda":
            return self.input_sets
        small = [s for s in self.input_sets if s.cpu]
        if not small:
            why = "".join(f" ({note})" for note in self.notes)
            raise ProblemError(
                f"problem '{self.name}' has no input set marked cpu=True{why}: add a small one "
                "to forge_input_sets or run with --device cuda"
            )
        return small


@dataclass
class _Scan:
    classes: set[str] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)
    literals: dict[str, object] = field(default_factory=dict)
    docstring: str = ""


def _scan(source: str, label: str) -> _Scan:
    try:
        tree = parse_python(source, filename=label)
    except SyntaxError as exc:
        raise ProblemError(
            f"{label}:{exc.lineno}: syntax error in problem file: {exc.msg}"
        ) from exc
    scan = _Scan(docstring=ast.get_docstring(tree) or "")
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            scan.classes.add(node.name)
        elif isinstance(node, ast.FunctionDef):
            scan.functions.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if node.value is None:
                continue
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                _require_literal_settings(targets, label, node.lineno)
                continue
            for target in targets:
                if isinstance(target, ast.Name):
                    scan.literals[target.id] = value
    return scan


def _require_literal_settings(targets: list[ast.expr], label: str, line: int) -> None:
    """Forge reads its `forge_*` settings without running the file: one that is not a literal
    would be ignored without a word."""
    for target in targets:
        if isinstance(target, ast.Name) and target.id.startswith("forge_"):
            raise ProblemError(
                f"{label}:{line}: {target.id} must be a literal (numbers, strings, lists, dicts; "
                "no expressions such as 16 * 1024): Forge reads it without running the file"
            )


def _int_constants(literals: dict[str, object]) -> dict[str, int]:
    return {
        k: v
        for k, v in literals.items()
        if isinstance(v, int) and not isinstance(v, bool) and not k.startswith("forge_")
    }


def parse_overrides(pairs: list[str]) -> dict[str, int]:
    """`["batch_size=8"]` -> `{"batch_size": 8}`. Values are sizes: positive integers (zero or
    a negative size is refused here, before anything runs)."""
    out: dict[str, int] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ProblemError(f"--set expects NAME=INT, got '{pair}'")
        try:
            number = int(value)
        except ValueError as exc:
            raise ProblemError(
                f"--set {key.strip()} needs an integer value, got '{value}'"
            ) from exc
        if number < 1:
            raise ProblemError(
                f"--set {key.strip()} needs a positive integer (a size), got {number}"
            )
        out[key.strip()] = number
    return out


def _odd_non_pow2(value: int) -> int:
    candidate = value + 1 if value % 2 == 0 else value + 2
    while candidate & (candidate - 1) == 0:
        candidate += 2
    return candidate


def _small(value: int) -> int:
    shrunk = max(SIZE_CONSTANT_MIN + 1, value // 64)
    return shrunk if shrunk % 2 else shrunk + 1


def _derive_sets(base: dict[str, int]) -> list[InputSet]:
    sizes = {k: v for k, v in base.items() if v >= SIZE_CONSTANT_MIN}
    odd = {**base, **{k: _odd_non_pow2(v) for k, v in sizes.items()}}
    small = {**base, **{k: _small(v) for k, v in sizes.items()}}
    budget_ok = _product(small, sizes) <= CPU_ELEMENT_BUDGET
    while not budget_ok:
        largest = max(sizes, key=lambda k: small[k])
        if small[largest] <= SIZE_CONSTANT_MIN + 1:
            break
        small[largest] = _small(small[largest] * 16)
        budget_ok = _product(small, sizes) <= CPU_ELEMENT_BUDGET
    return [
        InputSet(name="base", constants=base),
        InputSet(name="odd", constants=odd),
        InputSet(name="small", constants=small, cpu=True),
    ]


def _runnable_sets(
    sets: list[InputSet], source: str, dtype: str, label: str
) -> tuple[list[InputSet], list[str]]:
    """The derived sets without those the problem's Model cannot run (checked on the meta
    device), and a note per dropped set. All of them when the base set (the first) fails the
    check too: then the meta device cannot judge this problem."""
    base, *derived = sets
    if problem_module.meta_error(source, base.constants, dtype, label) is not None:
        return sets, []
    kept, notes = [base], []
    for input_set in derived:
        error = problem_module.meta_error(source, input_set.constants, dtype, label)
        if error is None:
            kept.append(input_set)
        else:
            notes.append(f"input set '{input_set.name}' dropped: Model rejects it ({error})")
    return kept, notes


def _product(constants: dict[str, int], keys: dict[str, int]) -> int:
    total = 1
    for k in keys:
        total *= constants[k]
    return total


def declared_aten(source: str, label: str) -> str:
    """The problem file's `forge_aten` ('' when it names none), read without executing the file
    (`load_problem` also derives and checks its input sets)."""
    return str(_scan(source, label).literals.get("forge_aten", ""))


def load_problem(
    source: str, name: str, path: str = "", overrides: dict[str, int] | None = None
) -> Problem:
    label = path or name
    scan = _scan(source, label)
    missing = [n for n in ("get_inputs", "get_init_inputs") if n not in scan.functions]
    if "Model" not in scan.classes:
        raise ProblemError(
            f"{label} defines no `class Model(nn.Module)`: a problem file needs Model, get_inputs() "
            "and get_init_inputs()"
        )
    if missing:
        raise ProblemError(
            f"{label} defines no {' or '.join(missing)}(): add it (KernelBench format)"
        )
    lit = scan.literals
    constants = _int_constants(lit)
    overrides = overrides or {}
    unknown = sorted(set(overrides) - set(constants))
    if unknown:
        known = ", ".join(sorted(constants)) or "none"
        raise ProblemError(
            f"--set {unknown[0]}: no integer constant of that name in {label} (it has: {known})"
        )
    dtype = str(lit.get("forge_dtype", "float32"))
    if dtype not in DEFAULT_TOLERANCE:
        raise ProblemError(
            f"{label}: forge_dtype '{dtype}' is not one of {sorted(DEFAULT_TOLERANCE)}"
        )
    declared = lit.get("forge_input_sets")
    notes: list[str] = []
    if declared is not None:
        input_sets = _declared_sets(declared, constants, overrides, label)
    else:
        input_sets, notes = _runnable_sets(
            _derive_sets({**constants, **overrides}), source, dtype, label
        )
    targets = [str(t) for t in lit.get("forge_target_sets", [])]
    unknown_targets = sorted(set(targets) - {s.name for s in input_sets})
    if unknown_targets:
        raise ProblemError(
            f"{label}: forge_target_sets names {unknown_targets[0]!r}, which is not an input set"
        )
    distributions = list(lit.get("forge_distributions", DEFAULT_DISTRIBUTIONS))
    bad = sorted(set(distributions) - KNOWN_DISTRIBUTIONS)
    if bad:
        raise ProblemError(
            f"{label}: unknown forge_distributions {bad}; use {sorted(KNOWN_DISTRIBUTIONS)}"
        )
    from forge.evaluator.precision import accepted

    precisions = accepted(lit.get("forge_precisions"), dtype, label)
    tol = DEFAULT_TOLERANCE[dtype]
    return Problem(
        name=str(lit.get("forge_name", name)),
        source=source,
        path=path,
        dtype=dtype,
        atol=float(lit.get("forge_atol", tol)),
        rtol=float(lit.get("forge_rtol", tol)),
        input_sets=input_sets,
        distributions=distributions,
        constants={**constants, **overrides},
        derived_sets=declared is None,
        target_sets=targets,
        aten=str(lit.get("forge_aten", "")),
        shape_buckets=dict(lit.get("forge_shape_buckets", {})),
        description=scan.docstring.strip().splitlines()[0] if scan.docstring.strip() else "",
        precisions=precisions,
        notes=notes,
    )


def _declared_sets(
    declared: object, constants: dict[str, int], overrides: dict[str, int], label: str
) -> list[InputSet]:
    if not isinstance(declared, list) or not declared:
        raise ProblemError(f"{label}: forge_input_sets must be a non-empty list of dicts")
    sets = []
    for i, entry in enumerate(declared):
        if not isinstance(entry, dict) or "name" not in entry:
            raise ProblemError(f"{label}: forge_input_sets[{i}] must be a dict with a 'name'")
        values = {k: v for k, v in entry.items() if k not in ("name", "cpu")}
        unknown = sorted(set(values) - set(constants))
        if unknown:
            raise ProblemError(
                f"{label}: forge_input_sets[{i}] sets '{unknown[0]}', which is not a module-level integer constant"
            )
        sets.append(
            InputSet(
                name=str(entry["name"]),
                constants={**constants, **values, **overrides},
                cpu=bool(entry.get("cpu", False)),
            )
        )
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise ProblemError(f"{label}: forge_input_sets names must be unique, got {names}")
    return sets


def catalogue_names() -> list[str]:
    return sorted(p.stem for p in CATALOGUE_DIR.glob("*.py") if not p.stem.startswith("_"))


def resolve_problem(ref: str, overrides: dict[str, int] | None = None) -> Problem:
    """A catalogue name (`softmax`) or a path to a problem file."""
    path = Path(ref)
    if path.suffix == ".py" or path.exists():
        if not path.is_file():
            raise ProblemError(
                f"problem file '{ref}' does not exist: give a path or a name from `forge ops`"
            )
        return load_problem(path.read_text(), path.stem, str(path.resolve()), overrides)
    entry = CATALOGUE_DIR / f"{ref}.py"
    if not entry.is_file():
        raise ProblemError(
            f"unknown operator '{ref}': `forge ops` lists the catalogue, or give a problem .py file"
        )
    return load_problem(entry.read_text(), ref, str(entry), overrides)
