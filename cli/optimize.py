"""`forge optimize`: run (or resume) the Coder/Judge loop on one operator, with live progress."""

from __future__ import annotations

import sys
import threading
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from forge.cli.errors import err, fail
from forge.cli.options import (
    GPU_TIME,
    ApiBaseOpt,
    BackendOpt,
    CoderModelOpt,
    DbOpt,
    DeviceOpt,
    ExecutorOpt,
    GpuOpt,
    JudgeModelOpt,
    MaxTokensOpt,
    ModelOpt,
    PatienceOpt,
    PrecisionOption,
    QueueWaitOpt,
    ReasoningEffortOpt,
    RoundsOpt,
    SearchOpt,
    TemperatureOpt,
    TopPOpt,
    WidthOpt,
    check_precision,
)
from forge.db.redact import redact
from forge.evaluator.precision import STRICT

PIPE_WIDTH = 160
"""Output that is not a terminal (a pipe, a log file) is laid out this wide instead of 80."""
console = Console(highlight=False, width=None if sys.stdout.isatty() else PIPE_WIDTH)

STATUS_COLOURS = {"correct": "green", "compiled": "cyan", "incorrect": "red", "rejected": "magenta"}
EXIT_CODES = {"finished": 0, "failed": 1, "interrupted": 130}
UNRANKED = (
    "none: a cpu run verifies candidates but cannot rank them (nothing is timed), so its best is "
    "the first candidate that passed; time the passing ones on a GPU (forge eval OP FILE)"
)


def _x(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "n/a"


def _usd(value: float, known: bool) -> str:
    """A cost, or `$?` when litellm has no price for a model in use (0.0 would be a lie)."""
    return f"${value:.4f}" if known else "$?"


class Progress:
    """One line per step of the loop, printed as it happens."""

    def __init__(self, console: Console):
        self.console = console
        self.lock = threading.Lock()

    def __call__(self, event) -> None:  # noqa: ANN001 (forge.agents.loop.Event)
        head = escape(f"[t{event.trajectory} r{event.round}]") + (
            " (replayed)" if event.replayed else ""
        )
        best = (
            f"cand {event.best_candidate_id} ({_x(event.best_speedup)})"
            if event.best_candidate_id
            else "none yet"
        )
        cost = _usd(event.cost_usd, event.cost_known)
        totals = escape(f"best {best} | {event.tokens / 1000:.1f}k tokens | {cost}")
        detail = escape(redact(event.detail))
        if event.kind == "plan":
            line = f"{head} judge: {detail[:110]}"
        elif event.kind == "unusable":
            line = f"{head} [yellow]unusable answer[/]: {detail}"
        elif event.kind == "candidate":
            config = f" ({detail})" if detail else ""
            line = f"{head} candidate {event.candidate_id}{config} written, evaluating ..."
        elif event.kind == "evaluated":
            colour = STATUS_COLOURS.get(event.status, "yellow")
            speed = f" {_x(event.speedup)} vs eager" if event.speedup is not None else ""
            choice = f"; {detail}" if detail else ""
            line = f"{head} candidate {event.candidate_id}: [{colour}]{event.status}[/]{speed}{choice}   {totals}"
        else:
            line = f"{head} trajectory {event.trajectory} stopped: {detail}   {totals}"
        with self.lock:
            self.console.print(line)


def summary(outcome, device: str, promotion: str = "", precision: str = STRICT) -> Table:  # noqa: ANN001 (loop.Outcome)
    """The run's closing table; `promotion` says what entered the kernel library, or why not;
    the speedups name the precision policy they were measured under."""
    table = Table(title=f"run {outcome.run_id}: {outcome.status}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    not_timed = " (timings are not meaningful on cpu)" if device == "cpu" else ""
    best = outcome.best_candidate_id
    table.add_row(
        "best candidate",
        f"{best}   (forge show cand:{best})" if best else "none passed verification",
    )
    if device == "cpu":
        table.add_row("ranking", UNRANKED)
    under = f" (precision {precision})"
    table.add_row("speedup vs eager", _x(outcome.best_speedup_vs_eager) + not_timed + under)
    table.add_row(
        "speedup vs torch.compile", _x(outcome.best_speedup_vs_compile) + not_timed + under
    )
    table.add_row("candidates", str(outcome.candidates))
    table.add_row(
        "tokens", f"{outcome.prompt_tokens} prompt + {outcome.completion_tokens} completion"
    )
    cost = _usd(outcome.cost_usd, outcome.cost_known)
    unknown = "" if outcome.cost_known else " (litellm has no price for a model in use)"
    table.add_row("cost", escape(cost + unknown))
    for index, stop in sorted(outcome.stops.items()):
        table.add_row(f"trajectory {index}", escape(redact(stop)))
    if outcome.error:
        table.add_row("error", escape(redact(outcome.error)))
    table.add_row("library", escape(promotion or "nothing promoted: the run did not finish"))
    return table


def optimize(
    op: Annotated[
        str | None, typer.Argument(help="catalogue operator (see `forge ops`) or problem .py file")
    ] = None,
    backend: BackendOpt = None,
    model: ModelOpt = None,
    coder_model: CoderModelOpt = None,
    judge_model: JudgeModelOpt = None,
    api_base: ApiBaseOpt = None,
    rounds: RoundsOpt = None,
    width: WidthOpt = None,
    budget_usd: Annotated[
        float | None,
        typer.Option(help="stop once the LLM cost reaches this many dollars (> 0; omit: no limit)"),
    ] = None,
    budget_gpu_hours: Annotated[
        float | None,
        typer.Option(
            help=f"stop once the run's evaluations have taken this many hours (> 0; omit: no "
            f"limit). {GPU_TIME}"
        ),
    ] = None,
    time_limit: Annotated[
        float | None,
        typer.Option(help="stop starting rounds after this many seconds (> 0; omit: no limit)"),
    ] = None,
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    reasoning_effort: ReasoningEffortOpt = None,
    max_tokens: MaxTokensOpt = None,
    patience: PatienceOpt = None,
    device: DeviceOpt = None,
    executor: ExecutorOpt = None,
    queue_wait: QueueWaitOpt = None,
    gpu: GpuOpt = None,
    precision: PrecisionOption = None,
    search: SearchOpt = None,
    db: DbOpt = None,
    resume: Annotated[
        int | None,
        typer.Option(
            help="continue stored run RUN with its problem and settings (model flags may name replacements)"
        ),
    ] = None,
) -> None:
    """Search for a faster, verified kernel for an operator with a Coder and a Judge LLM."""
    from forge.agents import loop
    from forge.agents.coder import target_gpu
    from forge.agents.errors import ResumeError
    from forge.agents.llm import (
        MissingCredentials,
        NoModelConfigured,
        ScriptError,
        check_credentials,
        cost_known,
        get_model,
        resolve_models,
    )
    from forge.agents.loop_config import SearchSettingError, parse_search
    from forge.db.library import promote_best
    from forge.db.store import RecordNotFound, RunStore
    from forge.evaluator import EvaluatorError
    from forge.evaluator.executors import ExecutorSpecError
    from forge.evaluator.problem import ProblemError, resolve_problem

    settings = {
        "--backend": backend,
        "--api-base": api_base,
        "--rounds": rounds,
        "--width": width,
        "--budget-usd": budget_usd,
        "--budget-gpu-hours": budget_gpu_hours,
        "--time-limit": time_limit,
        "--patience": patience,
        "--device": device,
        "--temperature": temperature,
        "--top-p": top_p,
        "--reasoning-effort": reasoning_effort,
        "--max-tokens": max_tokens,
        "--executor": executor,
        "--queue-wait": queue_wait,
        "--gpu": gpu,
        "--precision": precision,
        "--search": search or None,
    }
    if (op is None) == (resume is None):
        fail(
            "give an operator (or problem file) to optimize, or --resume RUN to continue a run, not both"
        )
    if resume is not None and any(v is not None for v in settings.values()):
        given = ", ".join(k for k, v in settings.items() if v is not None)
        fail(f"--resume continues run {resume} with its stored settings: drop {given}")
    check_precision(precision)
    limits = (
        ("--budget-usd", budget_usd),
        ("--budget-gpu-hours", budget_gpu_hours),
        ("--time-limit", time_limit),
    )
    for flag, limit in limits:
        if limit is not None and limit <= 0:
            fail(f"{flag} must be greater than 0 (leave it out for no limit), got {limit:g}")
    sampling = {
        "temperature": temperature,
        "top_p": top_p,
        "reasoning_effort": reasoning_effort,
        "max_tokens": max_tokens,
    }
    lease = None
    try:
        if resume is None:
            coder_name, judge_name = resolve_models(model, coder_model, judge_model)
            problem = resolve_problem(op)
            check_precision(precision, problem)
            config = loop.LoopConfig.from_options(
                backend=backend.value if backend else None,
                api_base=api_base,
                rounds=rounds,
                width=width,
                patience=patience,
                budget_usd=budget_usd,
                gpu_budget_s=budget_gpu_hours * 3600 if budget_gpu_hours is not None else None,
                time_limit_s=time_limit,
                device=device.value if device else None,
                executor=executor,
                queue_wait_s=queue_wait,
                target_gpu=gpu,
                sampling=sampling,
                search=parse_search(search or []),
            )
            config.evaluation.precision = precision
            problem.sets_for(config.evaluation.device)
            check_credentials(coder_name, config.coder.api_base)
            check_credentials(judge_name, config.judge.api_base)
            store = RunStore(db)
        else:
            store = RunStore(db)
            run = store.get_run(resume)
            lease = store.acquire_run_lease(resume)  # refused while another process runs it
            coder_name = coder_model or model or run.coder_model
            judge_name = judge_model or model or run.judge_model
            config = loop.LoopConfig.model_validate(store.run_config(resume))
            check_credentials(coder_name, config.coder.api_base)
            check_credentials(judge_name, config.judge.api_base)
        coder_llm, judge_llm = get_model(coder_name, "coder"), get_model(judge_name, "judge")
        hooks = {
            "gpu": target_gpu(config.evaluation),
            "on_event": Progress(console),
            "on_interrupt": notice,
        }
        if resume is None:
            runner = loop.start(problem, config, coder_llm, judge_llm, store, **hooks)
        else:
            runner = loop.resume(resume, coder_llm, judge_llm, store, **hooks)
    except (
        MissingCredentials,
        NoModelConfigured,
        ProblemError,
        ScriptError,
        RecordNotFound,
        ResumeError,
        EvaluatorError,
        ExecutorSpecError,
        SearchSettingError,
    ) as exc:
        if lease is not None:
            lease.release()
        fail(str(exc))
    cfg = runner.config
    console.print(
        escape(
            f"run {runner.run_id}: {runner.problem.name} ({cfg.backend}, {cfg.evaluation.device}, "
            f"precision {cfg.evaluation.precision or STRICT}), "
            f"coder {coder_llm.model_id}, judge {judge_llm.model_id}, "
            f"{cfg.rounds} rounds x {cfg.width}"
            + ("" if cfg.evaluation.executor == "local" else f", via {cfg.evaluation.executor}")
        )
    )
    for note in runner.problem.notes:
        notice(note)
    if cfg.budget_usd is not None and not runner.cost_known:
        unpriced = [m.model_id for m in (coder_llm, judge_llm) if not cost_known(m)]
        notice(
            f"litellm has no price for {', '.join(dict.fromkeys(unpriced))}: the cost shows as "
            f"$? and --budget-usd {cfg.budget_usd:g} cannot stop the run (--rounds and "
            "--time-limit still do)"
        )
    with lease or store.acquire_run_lease(runner.run_id):
        outcome = runner.run()
    promotion = promote_best(store, outcome.run_id).reason if outcome.status == "finished" else ""
    console.print(
        summary(outcome, cfg.evaluation.device, promotion, cfg.evaluation.precision or STRICT)
    )
    if outcome.status != "finished":
        notice(
            f"run {outcome.run_id} {outcome.status}: continue with "
            f"`forge optimize --resume {outcome.run_id}`"
        )
    raise typer.Exit(EXIT_CODES[outcome.status])


def notice(message: str) -> None:
    """One line on stderr, printed as is (markup-safe)."""
    err.print(escape(message))


def register(app: typer.Typer) -> None:
    app.command("optimize")(optimize)
