"""`forge eval` and `forge ops`.

While `forge eval` works, a terminal on stderr shows what it is doing: the static check, then
the sandboxed run's phases as the trusted process reaches them (compile/load, correctness per
input set, timing, profile), with the elapsed time, then the seconds each phase took. Nothing
is printed there when stderr is not a terminal.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from forge.cli.errors import fail
from forge.cli.options import ExecutorOpt, PrecisionOption, check_precision

console = Console()
progress_console = Console(stderr=True, highlight=False)
"""Where `forge eval` shows its phases (only when it is a terminal)."""
T = TypeVar("T")


def ops(
    json_: Annotated[bool, typer.Option("--json", help="print JSON (stable keys)")] = False,
) -> None:
    """List the operator catalogue."""
    from forge.evaluator.problem import catalogue_names, resolve_problem

    problems = [resolve_problem(name) for name in catalogue_names()]
    if json_:
        rows = [
            {
                "name": p.name,
                "dtype": p.dtype,
                "description": p.description,
                "input_sets": [
                    {"name": s.name, "constants": dict(s.constants), "cpu": s.cpu}
                    for s in p.input_sets
                ],
            }
            for p in problems
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("operator", "dtype", "input sets", "description")
    for p in problems:
        sets = ", ".join(f"{s.name}{'*' if s.cpu else ''}" for s in p.input_sets)
        table.add_row(p.name, p.dtype, sets, p.description)
    console.print(table)
    console.print("* usable with --device cpu")


def with_status(label: str, work: Callable[[], T], phase: dict | None = None) -> T:
    """Run `work`; on a terminal, show `label` (and `phase["now"]` once set, as the work
    reports its phases) with the elapsed seconds while it runs."""
    if not progress_console.is_terminal:
        return work()
    phase = phase if phase is not None else {}
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # noqa: BLE001 (handed to the main thread as is)
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="forge-eval", daemon=True)
    started = time.monotonic()
    with progress_console.status(label) as status:
        thread.start()
        while thread.is_alive():
            thread.join(0.2)
            now = f": {phase['now']}" if phase.get("now") else ""
            status.update(f"{label}{escape(now)} [dim]{time.monotonic() - started:.0f} s[/]")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _sandbox_label(device: str, sets: int, profile: bool) -> str:
    if device == "cpu":
        return f"sandboxed run: load/compile, correctness on {sets} input sets (CPU)"
    steps = f"compile/load, correctness on {sets} input sets, timing"
    return f"sandboxed run: {steps}" + (", profile" if profile else "")


def _report_phases(result) -> None:  # noqa: ANN001 (EvalResult)
    if not progress_console.is_terminal:
        return
    p = result.phase_seconds
    progress_console.print(
        f"[dim]evaluated in {p.total:.1f} s: static check {p.static:.2f}, startup "
        f"{p.startup:.2f}, compile {p.compile:.2f}, correctness {p.correctness:.2f}, timing "
        f"{p.timing:.2f}, profile {p.profiling:.2f}[/]"
    )


ONE_SHOT_QUEUE_WAIT_S = 60.0
"""`forge eval --executor queue:DIR`: how long a job may wait for a worker. A resident worker
takes it within a poll (0.05 s), or after the job it is running; no worker at all should be said
soon, not after a batch's 15 minutes."""


def _run(prob, source: str, config, label: str):  # noqa: ANN001, ANN202 (Problem, EvalConfig -> EvalResult)
    """The verdict, here (the sandbox's phases shown as they come) or through the executor
    `config.executor` names."""
    from forge.evaluator import evaluate
    from forge.evaluator.executors import make_executor

    if config.executor == "local":
        phase = {"now": label}
        return with_status(
            f"evaluating {prob.name}",
            lambda: evaluate(prob, source, config, on_phase=lambda p: phase.update(now=p)),
            phase,
        )
    executor = make_executor(config)
    try:
        return with_status(
            f"evaluating {prob.name} via {config.executor}",
            lambda: executor.evaluate(prob, source, config),
        )
    finally:
        executor.close()


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
    trials: Annotated[int, typer.Option(help="timed calls per timed input set (>= 20)")] = 50,
    no_profile: Annotated[bool, typer.Option("--no-profile", help="skip Nsight Compute")] = False,
    timeout: Annotated[
        float | None,
        typer.Option(
            min=1.0,
            metavar="SECONDS",
            help="cap every per-step deadline (import, first call with its compile, each call)",
        ),
    ] = None,
    precision: PrecisionOption = None,
    executor: ExecutorOpt = None,
    queue_wait: Annotated[
        float | None,
        typer.Option(
            "--queue-wait",
            min=1.0,
            metavar="SECONDS",
            help="--executor queue:DIR or ray: seconds to wait for a worker to take the job "
            f"before failing (default {ONE_SHOT_QUEUE_WAIT_S:g})",
        ),
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="print the EvalResult as JSON")] = False,
) -> None:
    """Verify, time and profile a candidate kernel against a problem (here, or through an
    executor: `--executor queue:DIR` hands it to a resident `forge worker --queue DIR`)."""
    from pydantic import ValidationError

    from forge.evaluator import EvalConfig, EvaluatorError, ProblemError, resolve_problem
    from forge.evaluator.executors import on_this_machine
    from forge.evaluator.host import model_init_params
    from forge.evaluator.problem import parse_overrides
    from forge.evaluator.static import check_source

    if not candidate.is_file():
        fail(f"candidate file '{candidate}' does not exist")
    check_precision(precision)
    try:
        config = EvalConfig(
            device=device,
            backend=backend,
            sandbox=sandbox,
            trials=trials,
            profile=not no_profile,
            timeout_s=timeout,
            precision=precision,
            executor=executor or "local",
            queue_wait_s=queue_wait or ONE_SHOT_QUEUE_WAIT_S,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        fail(f"--{first['loc'][0]}: {first['msg'].removeprefix('Value error, ')}")
    if queue_wait is not None and on_this_machine(config.executor):
        fail(f"--queue-wait is for an executor elsewhere (queue:DIR, ray), not {config.executor}")
    errors: tuple[type[Exception], ...] = (ProblemError, EvaluatorError)
    if config.sandbox == "docker":
        from forge.sandbox.docker import DockerUnavailable

        errors = (*errors, DockerUnavailable)
    try:
        prob = resolve_problem(problem, parse_overrides(set_ or []))
        check_precision(precision, prob)
        source = candidate.read_text()
        with_status(
            f"evaluating {prob.name}: static check",
            lambda: check_source(
                source, config.backend, model_init_params(prob.source), device=config.device
            ),
        )
        label = _sandbox_label(config.device, len(prob.sets_for(config.device)), config.profile)
        result = _run(prob, source, config, label)
    except errors as exc:
        fail(str(exc))
    _report_phases(result)
    if json_:
        print(result.model_dump_json(indent=2))
    else:
        from forge.cli.render import render_result

        render_result(console, result)
    raise typer.Exit(0 if result.status.value in ("correct", "compiled") else 1)


def register(app: typer.Typer) -> None:
    app.command("ops")(ops)
    app.command("eval")(eval_command)
