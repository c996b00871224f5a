"""Forge's HTML pages: `forge serve` (a read-only browser over the database, `forge.web.app`) and
the page of `forge report`. What they share: the base layout (`templates/base.html.j2`), the stylesheet
(`static/forge.css`) and one Jinja2 environment factory with the number filters.

A page template extends `base.html.j2` and fills its blocks: `title`, `styles` (served pages
keep the default links to /static; a self-contained page inlines `stylesheet()`), `head`,
`header` (default: the app's navigation), `content`, `footer`. Templates render with StrictUndefined: a variable the template uses but the caller did
not pass raises `jinja2.UndefinedError` instead of printing nothing. Templates whose names end
in `.html.j2` are autoescaped; others (Markdown) are not.
"""

from __future__ import annotations

import math
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
STATIC_DIR = Path(__file__).resolve().parent / "static"


def speedup(value: float | None) -> str:
    """`1.23x`, or `-` when not measured."""
    return f"{value:.2f}x" if value is not None else "-"


def percent(value: float | None, digits: int = 0) -> str:
    return f"{value:.{digits}%}" if value is not None else "-"


def usd(value: float | None) -> str:
    return f"${value:.4f}" if value is not None else "-"


def number(value: float | int | None, digits: int = 0) -> str:
    """Thousands separated: `12,345` or `3.5` (`digits` decimals)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def md_cell(value: object) -> str:
    """Text safe inside a Markdown table cell: pipes escaped, line breaks as spaces."""
    return " ".join(str(value).split()).replace("|", "\\|")


FILTERS = {"speedup": speedup, "percent": percent, "usd": usd, "number": number, "md": md_cell}


def environment(*template_dirs: Path) -> Environment:
    """A Jinja2 environment over `template_dirs` (searched first) and the shared templates."""
    env = Environment(
        loader=FileSystemLoader([str(d) for d in (*template_dirs, TEMPLATES_DIR)]),
        undefined=StrictUndefined,
        autoescape=select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(FILTERS)
    return env


def stylesheet() -> Markup:
    """The shared stylesheet's text, to inline in a `<style>` element."""
    return Markup((STATIC_DIR / "forge.css").read_text())
