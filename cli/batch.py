"""`forge batch`: optimize a suite of problems unattended (a batch in the database, resumable);
`forge batches`: list batches, or one batch's items. See docs/batch.md."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from forge.cli.errors import fail
from forge.cli.optimize import PIPE_WIDTH, notice
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

console = Console(highlight=False, width=None if sys.stdout.isatty() else PIPE_WIDTH)

STOPPED_EXIT = 75
"""A batch limit (deadline, total budget) stopped the batch: `--resume` continues it."""
EXIT_CODES = {"finished": 0, "stopped": STOPPED_EXIT, "interrupted": 130}


def until_deadline(text: str, now: datetime | None = None) -> datetime:
    """`07:00` (or `07:00:30`): the next time the local clock shows it, as an aware datetime."""
    from forge.agents.suite import SuiteError

    now = now or datetime.now().astimezone()
    for layout in ("%H:%M", "%H:%M:%S"):
        try:
            clock = datetime.strptime(text.strip(), layout).time()
            break
        except ValueError:
            continue
    else:
        raise SuiteError(
            f"--until '{text}' is not a time of day: use HH:MM (local time), e.g. 07:00"
        )
    moment = now.replace(hour=clock.hour, minute=clock.minute, second=clock.second, microsecond=0)
    return moment if moment > now else moment + timedelta(days=1)


def deadline_from(until: str | None, time_limit: str | None) -> datetime | None:
    """The earlier of `--until` and now + `--time-limit` (None: neither given)."""
    from forge.agents.suite import parse_duration

    moments = []
    if until is not None:
        moments.append(until_deadline(until))
    if time_limit is not None:
        moments.append(datetime.now().astimezone() + timedelta(seconds=parse_duration(time_limit)))
    return min(moments) if moments else None


def _hours(value: float | None) -> float | None:
    return value * 3600 if value is not None else None


def batch(
    suite: Annotated[
        str | None,
        typer.Argument(
            help="a directory of problem files, a KernelBench checkout (with --level and "
            "--problems), or a TOML suite (docs/batch.md)"
        ),
    ] = None,
    level: Annotated[
        int | None, typer.Option(min=1, help="KernelBench level of a checkout (with --problems)")
    ] = None,
    problems: Annotated[
        str | None,
        typer.Option(help="KernelBench problem numbers, e.g. 1-20,40 (matched by file prefix)"),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="the batch's name [default: the suite's]")
    ] = None,
    backend: BackendOpt = None,
    model: ModelOpt = None,
    coder_model: CoderModelOpt = None,
    judge_model: JudgeModelOpt = None,
    api_base: ApiBaseOpt = None,
    rounds: RoundsOpt = None,
    width: WidthOpt = None,
    patience: PatienceOpt = None,
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    reasoning_effort: ReasoningEffortOpt = None,
    max_tokens: MaxTokensOpt = None,
    device: DeviceOpt = None,
    executor: ExecutorOpt = None,
    queue_wait: QueueWaitOpt = None,
    gpu: GpuOpt = None,
    precision: PrecisionOption = None,
    search: SearchOpt = None,
    budget_usd: Annotated[
        float | None,
        typer.Option(
            help="stop the batch once all its items' LLM calls cost this many dollars (> 0)"
        ),
    ] = None,
    budget_gpu_hours: Annotated[
        float | None,
        typer.Option(
            help=f"stop the batch once all its items' evaluations took this many hours (> 0). "
            f"{GPU_TIME}"
        ),
    ] = None,
    item_budget_usd: Annotated[
        float | None,
        typer.Option(help="each item's run stops at this many dollars (> 0; TOML: budget_usd)"),
    ] = None,
    item_budget_gpu_hours: Annotated[
        float | None,
        typer.Option(
            help="each item's run stops once its evaluations took this many hours (> 0; TOML: "
            "budget_gpu_hours)"
        ),
    ] = None,
    item_time_limit: Annotated[
        str | None,
        typer.Option(help="each item's run stops starting rounds after this long, e.g. 30m"),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            help="stop the batch at this local time (its next occurrence), e.g. 07:00: nothing "
            "new starts, items in flight stop after their current step (resumable)"
        ),
    ] = None,
    time_limit: Annotated[
        str | None,
        typer.Option(
            help="stop the batch after this long, e.g. 8h, 90m, 3600 (seconds); with --until, "
            "the earlier wins"
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, help="items whose runs are in flight at once [default: 1]"),
    ] = None,
    max_retries: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="resumes of an item whose run failed for infrastructure reasons (LLM provider "
            "unreachable, no evaluation verdict) [default: 2]",
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="list the items and their settings; run and store nothing"),
    ] = False,
    db: DbOpt = None,
    resume: Annotated[
        int | None,
        typer.Option(
            help="continue stored batch BATCH (limits, --concurrency, --max-retries and model "
            "flags may be given anew)"
        ),
    ] = None,
) -> None:
    """Optimize many problems unattended: a resumable batch of optimize runs, one per item."""
    from forge.agents.batch import BatchError, BatchSettings, Limits, Models
    from forge.agents.llm import MissingCredentials, NoModelConfigured, ScriptError
    from forge.agents.loop_config import SearchSettingError
    from forge.agents.suite import SuiteError
    from forge.db.store import RecordNotFound, RunLeased
    from forge.evaluator import EvaluatorError
    from forge.evaluator.executors import ExecutorSpecError
    from forge.evaluator.problem import ProblemError

    if (suite is None) == (resume is None):
        fail("give a suite to run, or --resume BATCH to continue a batch, not both")
    for flag, limit in (
        ("--budget-usd", budget_usd),
        ("--budget-gpu-hours", budget_gpu_hours),
        ("--item-budget-usd", item_budget_usd),
        ("--item-budget-gpu-hours", item_budget_gpu_hours),
    ):
        if limit is not None and limit <= 0:
            fail(f"{flag} must be greater than 0 (leave it out for no limit), got {limit:g}")
    check_precision(precision)
    fixed = {
        "--level": level,
        "--problems": problems,
        "--name": name,
        "--backend": backend,
        "--api-base": api_base,
        "--rounds": rounds,
        "--width": width,
        "--patience": patience,
        "--temperature": temperature,
        "--top-p": top_p,
        "--reasoning-effort": reasoning_effort,
        "--max-tokens": max_tokens,
        "--device": device,
        "--executor": executor,
        "--queue-wait": queue_wait,
        "--gpu": gpu,
        "--precision": precision,
        "--search": search or None,
        "--item-budget-usd": item_budget_usd,
        "--item-budget-gpu-hours": item_budget_gpu_hours,
        "--item-time-limit": item_time_limit,
        "--dry-run": dry_run or None,
    }
    if resume is not None and any(v is not None for v in fixed.values()):
        given = ", ".join(k for k, v in fixed.items() if v is not None)
        fail(f"--resume continues batch {resume} with its stored items and settings: drop {given}")
    errors = (
        BatchError,
        SuiteError,
        ProblemError,
        ExecutorSpecError,
        EvaluatorError,
        RecordNotFound,
        RunLeased,
        MissingCredentials,
        NoModelConfigured,
        ScriptError,
        SearchSettingError,
    )
    models = Models(model, coder_model, judge_model)
    try:
        limits = Limits(budget_usd, _hours(budget_gpu_hours), deadline_from(until, time_limit))
        if resume is None:
            from forge.agents.batch import plan_items
            from forge.agents.loop_config import parse_search
            from forge.agents.suite import parse_duration, read_suite

            loaded = read_suite(suite, level, problems)
            options = {
                "backend": backend.value if backend else None,
                "api_base": api_base,
                "rounds": rounds,
                "width": width,
                "patience": patience,
                "device": device.value if device else None,
                "executor": executor,
                "queue_wait_s": queue_wait,
                "target_gpu": gpu,
                "precision": precision,
                "budget_usd": item_budget_usd,
                "gpu_budget_s": _hours(item_budget_gpu_hours),
                "time_limit_s": parse_duration(item_time_limit, "--item-time-limit")
                if item_time_limit
                else None,
                "search": parse_search(search or []),
                "sampling": {
                    "temperature": temperature,
                    "top_p": top_p,
                    "reasoning_effort": reasoning_effort,
                    "max_tokens": max_tokens,
                },
            }
            planned = plan_items(loaded, options, models)
            settings = BatchSettings(
                concurrency=concurrency or 1,
                max_retries=2 if max_retries is None else max_retries,
            )
            if dry_run:
                console.print(plan_table(loaded.description, planned, settings, limits))
                return
            batches, lease = create_stored(
                name or loaded.name, loaded.description, settings, limits, planned, db
            )
        else:
            from forge.agents.batch import reopen
            from forge.db.batches import BatchStore
            from forge.db.store import RunStore

            batches = BatchStore(RunStore(db))
            lease = reopen(batches, resume, limits, concurrency, max_retries, models)
    except errors as exc:
        fail(str(exc))
    with lease:
        outcome = run_stored(batches, lease.what.id, models if resume is not None else Models())
    raise typer.Exit(summarize(batches, outcome))


def plan_table(description: str, planned: list, settings, limits) -> Table:  # noqa: ANN001
    ranked = sorted(range(len(planned)), key=lambda n: (-planned[n].priority, n))
    order = {n: rank for rank, n in enumerate(ranked)}
    table = Table(title=escape(f"dry run: {description}"), show_lines=False)
    for header in ("order", "item", "priority", "rounds", "width", "budget", "models"):
        table.add_column(header)
    for n, p in enumerate(planned):
        c = p.config
        budget = ", ".join(
            part
            for part in (
                f"${c.budget_usd:g}" if c.budget_usd else "",
                f"{c.gpu_budget_s / 3600:g} GPU-h" if c.gpu_budget_s else "",
                f"{c.time_limit_s:g} s" if c.time_limit_s else "",
            )
            if part
        )
        models = (
            p.coder_model
            if p.coder_model == p.judge_model
            else f"{p.coder_model} / {p.judge_model}"
        )
        table.add_row(
            str(order[n] + 1),
            escape(p.label),
            str(p.priority),
            str(c.rounds),
            str(c.width),
            budget or "-",
            escape(models),
        )
    deadline = limits.deadline.strftime("%Y-%m-%d %H:%M") if limits.deadline else "none"
    table.caption = escape(
        f"{len(planned)} items, concurrency {settings.concurrency}, max retries "
        f"{settings.max_retries}, deadline {deadline}, batch budget "
        f"{'$' + format(limits.budget_usd, 'g') if limits.budget_usd else 'none'}"
        f"{f' / {limits.budget_gpu_s / 3600:g} GPU-h' if limits.budget_gpu_s else ''}; "
        "nothing was stored"
    )
    return table


def create_stored(name, description, settings, limits, planned, db):  # noqa: ANN001, ANN202
    """Store a planned batch; (its BatchStore, the batch's lease)."""
    from forge.agents.batch import create_batch
    from forge.db.batches import BatchStore
    from forge.db.store import RunStore

    batches = BatchStore(RunStore(db))
    created = create_batch(batches, name, description, settings, limits, planned)
    return batches, batches.acquire_lease(created.id)


def _evaluation(item) -> dict:  # noqa: ANN001 (BatchItem)
    """The stored evaluation settings of an item's run (device, executor ...)."""
    return json.loads(item.config_json)["loop"]["evaluation"]


def _timed_on(items: list) -> str:
    """`cpu` when every item is evaluated on the CPU (no speedups to show), else `cuda`."""
    return "cpu" if all(_evaluation(i)["device"] == "cpu" for i in items) else "cuda"


def run_stored(batches, batch_id: int, models):  # noqa: ANN001, ANN202 (BatchStore, Models)
    """Play a stored batch with the live (terminal) or line display."""
    from forge.agents.batch import BatchRunner
    from forge.agents.coder import target_gpu
    from forge.cli.batch_view import LineDisplay, LiveDisplay
    from forge.db.batches import FINAL
    from forge.evaluator.config import EvalConfig

    stored = batches.get(batch_id)
    items = batches.items(batch_id)
    gpu = target_gpu(EvalConfig.model_validate(_evaluation(items[0]))) if items else None
    console.print(
        escape(
            f"batch {batch_id} ({stored.name}): {len(items)} items, "
            f"{sum(i.status in FINAL for i in items)} done before; "
            f"`forge batches {batch_id}` shows it"
        )
    )
    if console.is_terminal:
        display = LiveDisplay(console, stored, items)
        with display:
            return BatchRunner(batches, batch_id, models, gpu, display).run()
    display = LineDisplay(console, items)
    return BatchRunner(batches, batch_id, models, gpu, display).run()


def summarize(batches, outcome) -> int:  # noqa: ANN001 (BatchStore, BatchOutcome)
    """Print the batch's summary; the exit status it calls for."""
    from forge.cli.batch_view import summary_table

    batch = outcome.batch
    rows = batches.with_runs(batch.id)
    console.print(summary_table(batch, rows, _timed_on([i for i, _ in rows])))
    failed = sum(i.status == "failed" for i, _ in rows)
    promoted = sum(i.library_entry_id is not None for i, _ in rows)
    cost = sum(i.cost_usd for i, _ in rows)
    gpu_min = sum(i.gpu_seconds for i, _ in rows) / 60
    console.print(
        escape(
            f"{len(rows)} items: {sum(i.status == 'finished' for i, _ in rows)} finished, "
            f"{failed} failed; {promoted} promoted to the library; ${cost:.4f}, "
            f"{gpu_min:.2f} GPU-minutes"
        )
    )
    console.print(escape(f"report: forge report {batch.id}"))
    if batch.status != "finished":
        notice(
            f"batch {batch.id} {batch.status}: {batch.stop_reason}; continue with "
            f"`forge batch --resume {batch.id}`"
        )
    code = EXIT_CODES[batch.status]
    return 1 if code == 0 and failed else code


def batches(
    batch_id: Annotated[
        int | None, typer.Argument(help="a batch: show its items instead of the list")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="newest batches to list")] = 20,
    json_: Annotated[bool, typer.Option("--json", help="print JSON (stable keys)")] = False,
    db: DbOpt = None,
) -> None:
    """List batches, newest first, or the items of one batch."""
    from forge.cli.batch_view import batch_json, batches_table, item_json, summary_table
    from forge.db.batches import BatchStore
    from forge.db.store import RecordNotFound, RunStore

    store = BatchStore(RunStore(db, read_only=True))
    if batch_id is not None:
        try:
            found = store.get(batch_id)
        except RecordNotFound as exc:
            fail(str(exc))
        rows = store.with_runs(batch_id)
        if json_:
            data = batch_json(found, [i for i, _ in rows])
            data["item_list"] = [item_json(i, r) for i, r in rows]
            typer.echo(json.dumps(data, indent=2))
            return
        console.print(summary_table(found, rows, _timed_on([i for i, _ in rows])))
        return
    listed = [(b, store.as_shown(store.items(b.id))) for b in store.list(limit)]
    if json_:
        typer.echo(json.dumps([batch_json(b, items) for b, items in listed], indent=2))
        return
    if not listed:
        console.print("no batches yet: `forge batch SUITE` starts one")
        return
    console.print(batches_table(listed))


def register(app: typer.Typer) -> None:
    app.command("batch")(batch)
    app.command("batches")(batches)
