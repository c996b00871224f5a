"""The `forge` command. Thin: parse, build objects, call, print."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="forge",
    help="LLM agents that write verified, honestly timed GPU kernels for PyTorch operators.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    from forge.cli import browse, evaluate, library, optimize

    evaluate.register(app)
    optimize.register(app)
    browse.register(app)
    library.register(app)


_register()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
