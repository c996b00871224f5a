"""`forge eval` and `forge ops`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from forge.cli.errors import fail

console = Console()


def ops() -> None:
    """List the operator catalogue."""
    from forge.evaluator.problem import catalogue_names, resolve_problem

    table = Table("operator", "dtype", "input sets", "description")
    for name in catalogue_names():
        p = resolve_problem(name)
        sets = ", ".join(f"{s.name}{'*' if s.cpu else ''}" for s in p.input_sets)
        table.add_row(name, p.dtype, sets, p.description)
    console.print(table)
    console.print("* usable with --device cpu")


def eval_command(
    problem: Annotated[
        str, typer.Argument(help="catalogue operator (see `forge ops`) or problem .py file")
    ],
    candidate: Annotated[Path, typer.Argument(help="candidate .py file defining ModelNew")],
    backend: Annotated[str | None, typer.Option(help="triton | cuda (default: detected)")] = None,
    device: Annotated[
        str, typer.Option(help="cuda verifies+times+profiles; cpu verifies Triton / compiles CUDA")
    ] = "cuda",
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override an integer constant: NAME=INT")
    ] = None,
    sandbox: Annotated[str, typer.Option(help="local | docker")] = "local",
    trials: Annotated[int, typer.Option(help="timed calls per input set (>= 50)")] = 50,
    no_profile: Annotated[bool, typer.Option("--no-profile", help="skip Nsight Compute")] = False,
    json_: Annotated[bool, typer.Option("--json", help="print the EvalResult as JSON")] = False,
) -> None:
    """Verify, time and profile a candidate kernel against a problem."""
    from pydantic import ValidationError

    from forge.evaluator import EvalConfig, EvaluatorError, ProblemError, evaluate, resolve_problem
    from forge.evaluator.problem import parse_overrides

    if not candidate.is_file():
        fail(f"candidate file '{candidate}' does not exist")
    try:
        config = EvalConfig(
            device=device, backend=backend, sandbox=sandbox, trials=trials, profile=not no_profile
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        fail(f"--{first['loc'][0]}: {first['msg']}")
    try:
        prob = resolve_problem(problem, parse_overrides(set_ or []))
        result = evaluate(prob, candidate.read_text(), config)
    except (ProblemError, EvaluatorError) as exc:
        fail(str(exc))
    if json_:
        print(result.model_dump_json(indent=2))
    else:
        from forge.cli.render import render_result

        render_result(console, result)
    raise typer.Exit(0 if result.status.value in ("correct", "compiled") else 1)


def register(app: typer.Typer) -> None:
    app.command("ops")(ops)
    app.command("eval")(eval_command)
