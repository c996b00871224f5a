"""The `forge` command. Thin: parse, build objects, call, print.

One error style everywhere: `error: <what and the fix>` on stderr, one line (`forge.cli.errors`).
Usage errors found by the parser (an unknown option, a missing argument, a value out of range)
are printed the same way, exit status 2, instead of Typer's boxed panel; problems of the
database itself (`forge.db.errors.DatabaseError`, raised wherever a command touches it) become
that one line too, with nothing changed.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from forge.cli.errors import fail

try:  # typer >= 0.2x vendors click
    from typer._click.exceptions import ClickException
except ImportError:  # older typer: click itself
    from click.exceptions import ClickException

CONTEXT = {"help_option_names": ["-h", "--help"]}


def forge_version() -> str:
    try:
        return version("opforge")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "unknown (not installed)"


def _exit_with(message: str, code: int) -> None:
    try:
        fail(message, code)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)


class ForgeGroup(TyperGroup):
    """Typer's group with Forge's error style (see the module docstring)."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        from forge.db.errors import DatabaseError

        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except ClickException as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # `forge` alone: the help text
                exc.show()
                sys.exit(exc.exit_code)
            message = " ".join(exc.format_message().split())
            ctx = getattr(exc, "ctx", None)
            hint = f" (`{ctx.command_path} -h` for help)" if ctx is not None else ""
            _exit_with(message + hint, exc.exit_code)
        except typer.Abort:
            _exit_with("aborted", 1)
        except DatabaseError as exc:
            _exit_with(str(exc), exc.code)
        sys.exit(result if isinstance(result, int) else 0)


app = typer.Typer(
    name="forge",
    help="LLM agents that write verified, honestly timed GPU kernels for PyTorch operators.",
    cls=ForgeGroup,
    context_settings=CONTEXT,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"forge {forge_version()}")
        raise typer.Exit(0)


@app.callback()
def _root(
    _version: Annotated[
        bool,
        typer.Option(
            "--version",
            is_eager=True,
            expose_value=False,
            callback=_print_version,
            help="Print Forge's version and exit.",
        ),
    ] = False,
) -> None:
    """LLM agents that write verified, honestly timed GPU kernels for PyTorch operators."""


def _register() -> None:
    from forge.cli import batch, browse, evaluate, library, model, optimize, report, serve, worker

    evaluate.register(app)
    optimize.register(app)
    batch.register(app)
    browse.register(app)
    library.register(app)
    model.register(app)
    worker.register(app)
    report.register(app)
    serve.register(app)


_register()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
