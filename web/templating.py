"""The Jinja2 environment of the web pages, and the code and diff rendering they use.

Every value a template prints passes through `forge.db.redact.redact` (the environment's
`finalize`), so a secret never reaches a page even from a row written before it was redacted or
with a key that is only known to this process; code is redacted before Pygments highlights it.
Templates are StrictUndefined: a variable a page forgets raises instead of printing "".
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import DiffLexer, PythonLexer

from forge.db.redact import redact
from forge.db.store import ensure_datetime

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
STATIC_DIR = Path(__file__).resolve().parent / "static"
CODE_STYLE = "default"
"""The Pygments style of highlighted code (`code_css` serves its stylesheet)."""


def _finalize(value: object) -> object:
    if isinstance(value, Markup):
        return Markup(redact(str(value)))
    if isinstance(value, str):
        return redact(value)
    return value


def speedup(value: float | None) -> str:
    return f"{value:.2f}×" if value is not None and math.isfinite(value) else "–"


def milliseconds(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "–"


def percent(value: float | None) -> str:
    return f"{value:.0%}" if value is not None else "–"


def scientific(value: float | None) -> str:
    return f"{value:.2e}" if value is not None else "–"


def dollars(value: float | None) -> str:
    return f"${value:.4f}" if value is not None else "–"


def count(value: int | None) -> str:
    return f"{value:,}" if value is not None else "–"


def when(value: datetime | None) -> str:
    value = ensure_datetime(value)
    return f"{value:%Y-%m-%d %H:%M:%S} UTC" if value is not None else "–"


def day(value: datetime | None) -> str:
    value = ensure_datetime(value)
    return f"{value:%Y-%m-%d %H:%M}" if value is not None else "–"


FILTERS = {
    "x": speedup,
    "ms": milliseconds,
    "pct": percent,
    "sci": scientific,
    "usd": dollars,
    "count": count,
    "when": when,
    "day": day,
}


@cache
def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=StrictUndefined,
        autoescape=True,
        finalize=_finalize,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(FILTERS)
    return env


def render(template: str, **context: object) -> str:
    return environment().get_template(template).render(**context)


def _formatter() -> HtmlFormatter:
    return HtmlFormatter(style=CODE_STYLE, cssclass="code", linenos="table")


@cache
def code_css() -> str:
    """The stylesheet of highlighted code (Pygments' classes under `.code`)."""
    return _formatter().get_style_defs(".code")


def highlight_python(source: str) -> Markup:
    """A candidate's or library kernel's source (Python, CUDA inside strings), highlighted."""
    return Markup(highlight(redact(source), PythonLexer(), _formatter()))


def unified_diff(old: str, new: str, old_name: str, new_name: str) -> str:
    lines = difflib.unified_diff(
        redact(old).splitlines(keepends=True),
        redact(new).splitlines(keepends=True),
        fromfile=old_name,
        tofile=new_name,
    )
    return "".join(lines)


def highlight_diff(text: str) -> Markup:
    return Markup(highlight(text, DiffLexer(), HtmlFormatter(style=CODE_STYLE, cssclass="code")))


@dataclass(frozen=True)
class DiffRow:
    """One row of a side-by-side diff: `change` is equal | replace | delete | insert."""

    change: str
    old_number: int | None
    old_line: str
    new_number: int | None
    new_line: str


def side_by_side(old: str, new: str) -> list[DiffRow]:
    """The two sources aligned line by line (difflib's opcodes)."""
    a, b = redact(old).splitlines(), redact(new).splitlines()
    rows: list[DiffRow] = []
    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    for change, i1, i2, j1, j2 in matcher.get_opcodes():
        for k in range(max(i2 - i1, j2 - j1)):
            i, j = i1 + k, j1 + k
            left = i < i2
            right = j < j2
            rows.append(
                DiffRow(
                    change if left and right else ("delete" if left else "insert"),
                    i + 1 if left else None,
                    a[i] if left else "",
                    j + 1 if right else None,
                    b[j] if right else "",
                )
            )
    return rows
