"""The one way the CLI reports an error: `error: <what and the fix>` on stderr, one line,
markup-safe (a path like `[/x]` is printed as is), and a non-zero exit."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

USAGE = 2
"""Bad input: a wrong argument, file, operator or setting (nothing ran)."""

err = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str, code: int = USAGE) -> NoReturn:
    err.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(code)
