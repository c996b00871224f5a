"""Memory across runs: the Coder's first example is the best verified kernel of the most similar
operator found in the database (each earlier run's best candidate) or the kernel library; the
fixed example of another operator (`prompts/examples`) only when none is similar enough.

Similarity, kept simple and explainable: 1 for the same operator name or the same ATen operator
(`forge_aten`); otherwise the Jaccard overlap of the two problems' operator words: the words of
the problem's name and of every call in its reference `Model` (`torch.softmax` -> softmax,
`F.layer_norm` -> layer, norm; `nn.LayerNorm(...)` -> layer, norm), without boilerplate
(`super`, tensor creation, layout views). At least `MIN_SIMILARITY` counts as similar. Among the
similar, the most similar wins, then one timed on a GPU over one only verified on the CPU, then
the higher speedup vs eager.

A kernel verified under a wider precision policy (tf32, bf16) is offered only to runs of that
policy; strict ones (every library entry) to any run.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from functools import lru_cache

from forge.db.library import list_entries
from forge.db.store import RunStore
from forge.evaluator.parsing import parse_python
from forge.evaluator.precision import STRICT
from forge.evaluator.problem import Problem, ProblemError, declared_aten
from forge.prompts import Example, example_for

MIN_SIMILARITY = 0.3
BOILERPLATE = frozenset(
    """
    super init forward module parameter buffer randn rand zeros ones empty full arange tensor to
    view reshape contiguous size shape dim float half double type expand permute transpose
    unsqueeze squeeze flatten clone detach item len range get inputs model
    """.split()
)
_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")


def words(name: str) -> set[str]:
    """`layer_norm` and `LayerNorm` -> {layer, norm}; digits and boilerplate dropped."""
    return {w.lower() for w in _WORD.findall(name)} - BOILERPLATE


@lru_cache(maxsize=512)
def operator_words(name: str, source: str) -> frozenset[str]:
    """The words of a problem's name and of the calls in its reference `Model` class (kept per
    problem: every run's start compares its problem with every earlier run's)."""
    found = words(name)
    try:
        tree = parse_python(source)
    except SyntaxError:
        return frozenset(found)
    model = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Model"), None)
    for node in ast.walk(model) if model is not None else ():
        if isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            found |= words(called)
    return frozenset(found)


def similarity(problem: Problem, name: str, aten: str, source: str) -> float:
    if name == problem.name or (aten and aten == problem.aten):
        return 1.0
    ours = operator_words(problem.name, problem.source)
    theirs = operator_words(name, source)
    return len(ours & theirs) / len(ours | theirs) if ours | theirs else 0.0


@lru_cache(maxsize=512)
def _aten(source: str, name: str) -> str:
    try:
        return declared_aten(source, name)
    except ProblemError:
        return ""


def _speed(speedup: float | None, gpu: str) -> str:
    if speedup is None:
        return "verified on the CPU, not timed"
    return f"{speedup:.2f}x vs eager on {gpu or 'the GPU'}"


@dataclass
class Stored:
    """A verified kernel found in the database or the library, with its problem."""

    op: str
    aten: str
    problem_source: str
    kernel: str
    speedup: float | None
    origin: str

    def rank(self, problem: Problem) -> tuple[float, bool, float]:
        return (
            similarity(problem, self.op, self.aten, self.problem_source),
            self.speedup is not None,
            self.speedup or 0.0,
        )


def _from_runs(
    store: RunStore, backend: str, precision: str, exclude_run: int | None
) -> list[Stored]:
    found = []
    for run, problem, candidate in store.run_bests(backend, exclude_run):
        policy = json.loads(run.config_json or "{}").get("evaluation", {}).get("precision")
        if (policy or STRICT) not in (STRICT, precision):
            continue
        speed = _speed(run.best_speedup_vs_eager, run.gpu_name)
        found.append(
            Stored(
                op=problem.name,
                aten=_aten(problem.source, problem.name),
                problem_source=problem.source,
                kernel=candidate.source,
                speedup=run.best_speedup_vs_eager,
                origin=f"the best of run {run.id}, candidate {candidate.id}: {speed}",
            )
        )
    return found


def _from_library(store: RunStore, backend: str) -> list[Stored]:
    found = []
    for entry in list_entries(store):
        if entry.backend != backend:
            continue
        data = json.loads(entry.metadata_json)
        meta = data["entry"]
        speed = _speed(entry.speedup_vs_eager, meta["verification"].get("gpu_name", ""))
        found.append(
            Stored(
                op=entry.op,
                aten=meta.get("aten", ""),
                problem_source=data["problem_source"],
                kernel=entry.source,
                speedup=entry.speedup_vs_eager,
                origin=f"library entry {entry.id}: {speed}",
            )
        )
    return found


def recall(
    store: RunStore,
    problem: Problem,
    backend: str,
    precision: str = STRICT,
    exclude_run: int | None = None,
    limit: int = 1,
) -> list[Example]:
    """Up to `limit` verified kernels of operators similar to `problem`, best first (none when
    nothing stored is similar enough); the library's copy of a run's kernel counts once."""
    stored = [*_from_library(store, backend), *_from_runs(store, backend, precision, exclude_run)]
    ranked = sorted(((s.rank(problem), s) for s in stored), key=lambda r: r[0], reverse=True)
    chosen: dict[str, Example] = {}
    for (score, _, _), s in ranked:
        if len(chosen) == limit or score < MIN_SIMILARITY:
            break
        if s.kernel in chosen:
            continue
        chosen[s.kernel] = Example(
            problem=s.op,
            backend=backend,
            source=s.kernel,
            origin=f"{s.origin}; similarity {score:.2f}",
            same_operator=score == 1.0,
        )
    return list(chosen.values())


def examples_for(
    store: RunStore,
    problem: Problem,
    backend: str,
    precision: str = STRICT,
    exclude_run: int | None = None,
    limit: int = 1,
) -> list[Example]:
    """What the Coder's first prompt shows: remembered kernels, else the fixed example of
    another operator, saying why."""
    remembered = recall(store, problem, backend, precision, exclude_run, limit) if limit else []
    if remembered:
        return remembered
    fixed = example_for(backend, problem.name)
    if fixed is None:
        return []
    why = "no verified kernel of a similar operator is in the database or the library"
    return [fixed.model_copy(update={"origin": f"{fixed.origin}; {why}"})]
