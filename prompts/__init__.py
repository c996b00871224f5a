"""Prompt templates (Jinja2, StrictUndefined) and the few-shot example kernels.

Templates whose names start with `_` are partials included by the others; `render` refuses
nothing but a missing variable, which raises `jinja2.UndefinedError` instead of printing "".
Filter `candidate_frames` (prompts/tracebacks.py) trims tracebacks to the candidate's frames.
Example kernels live in `examples/` as real candidate files; the first line of each docstring
names the catalogue problem it solves and its backend: `Example: softmax, triton.`
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from pydantic import BaseModel

from forge.prompts.tracebacks import candidate_frames

PROMPTS_DIR = Path(__file__).resolve().parent
EXAMPLES_DIR = PROMPTS_DIR / "examples"
_EXAMPLE_HEADER = re.compile(r'^"""Example: (?P<problem>[\w-]+), (?P<backend>triton|cuda)\.')


@cache
def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(PROMPTS_DIR)),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["candidate_frames"] = candidate_frames
    return env


def template_names() -> list[str]:
    """The renderable templates (partials excluded), without the `.j2` suffix."""
    return sorted(p.stem for p in PROMPTS_DIR.glob("*.j2") if not p.name.startswith("_"))


def render(name: str, **ctx: object) -> str:
    """Render `name` (with or without `.j2`); a variable the template uses but `ctx` lacks raises."""
    filename = name if name.endswith(".j2") else f"{name}.j2"
    return environment().get_template(filename).render(**ctx)


class Example(BaseModel):
    """A few-shot example: a catalogue problem and a verified candidate that solves it."""

    problem: str
    backend: str
    path: str = ""
    source: str
    origin: str = ""
    """Where the example comes from, as the prompt states it (and so the prompt's record)."""
    same_operator: bool = False
    """It solves the very operator of the run (an earlier run's or the library's kernel)."""


def examples(backend: str | None = None) -> list[Example]:
    found = []
    for path in sorted(EXAMPLES_DIR.glob("*.py")):
        source = path.read_text()
        header = _EXAMPLE_HEADER.match(source)
        if header is None:
            continue
        if backend is None or header["backend"] == backend:
            found.append(
                Example(
                    problem=header["problem"],
                    backend=header["backend"],
                    path=str(path),
                    source=source,
                    origin=f"the fixed example prompts/examples/{path.name}",
                )
            )
    return found


def example_for(backend: str, problem: str) -> Example | None:
    """An example of `backend`, preferring one for a different problem than the one being solved."""
    candidates = examples(backend)
    others = [e for e in candidates if e.problem != problem]
    return (others or candidates or [None])[0]
