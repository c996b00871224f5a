"""`forge profile-model` and `forge optimize-model`: a whole model's hot operators, optimized at
its real shapes and served back; see docs/model.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from forge.cli.errors import fail
from forge.cli.optimize import PIPE_WIDTH, notice
from forge.cli.options import (
    ApiBaseOpt,
    BackendOpt,
    CoderModelOpt,
    DbOpt,
    ExecutorOpt,
    JudgeModelOpt,
    ModelOpt,
    RoundsOpt,
    WidthOpt,
)

console = Console(highlight=False, width=None if sys.stdout.isatty() else PIPE_WIDTH)

FileArg = Annotated[
    str, typer.Argument(help="a KernelBench-style model file (Model, get_inputs, get_init_inputs)")
]
ModelDeviceOpt = Annotated[
    str, typer.Option("--device", help="cuda, or cpu (CPU times: for trying it out, not figures)")
]
DtypeOpt = Annotated[
    str | None,
    typer.Option(
        help="float32, bfloat16 or float16 [default: the file's forge_dtype, else float32]"
    ),
]
ItersOpt = Annotated[int, typer.Option(min=1, help="forwards per measurement")]
CheckCompileOpt = Annotated[
    bool,
    typer.Option(
        "--check-compile",
        help="also compile the model with inductor and name the compiled kernels of each item",
    ),
]


def _load(file: str, device: str, dtype: str | None):  # noqa: ANN202 (LoadedModel)
    from forge.model_level.load import ModelFileError, load_model

    if device not in ("cuda", "cpu"):
        fail(f"--device must be cuda or cpu, got '{device}'")
    try:
        return load_model(file, device, dtype)
    except ModelFileError as exc:
        fail(str(exc))


def _ms(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "-"


def profile_tables(profile, limit: int = 15) -> list[Table]:  # noqa: ANN001 (ModelProfile)
    ops = Table(
        title=escape(
            f"{profile.model}: ATen operators by self {profile.timing}, "
            f"{profile.forward_ms:.4f} ms per forward ({profile.device}, {profile.dtype})"
        )
    )
    for header in ("#", "operator", "input shapes", "dtypes", "calls", "ms/forward", "share"):
        ops.add_column(
            header, justify="right" if header in ("#", "calls", "ms/forward", "share") else "left"
        )
    for n, r in enumerate(profile.operators[:limit], 1):
        ops.add_row(
            str(n),
            escape(r.op),
            escape(str(r.shapes)[:60]),
            escape(",".join(d for d in r.dtypes if d)[:30]),
            f"{r.calls_per_forward:g}",
            f"{r.ms_per_forward:.4f}",
            f"{r.share:.1%}",
        )
    tables = [ops]
    if not profile.traced:
        return tables
    items = Table(title=escape(f"{profile.model}: graph items (torch.fx), ranked"))
    for header in ("#", "item", "kind", "nodes", "shape", "ms/forward", "share", "torch.compile"):
        items.add_column(header)
    for n, i in enumerate(profile.items[:limit], 1):
        kind = i.kind + (f" ({i.library_op})" if i.library_op and i.library_op != i.name else "")
        if i.fusible_into:
            kind += f", fusible into {i.fusible_into}"
        items.add_row(
            str(n),
            escape(i.name),
            escape(kind),
            escape(",".join(i.nodes)[:40]),
            escape(f"{i.shape} {i.dtype}"),
            f"{i.ms_per_forward:.4f}",
            f"{i.share:.1%}",
            escape(i.compile_note[:70]),
        )
    tables.append(items)
    return tables


def profile_model(
    file: FileArg,
    device: ModelDeviceOpt = "cuda",
    dtype: DtypeOpt = None,
    iters: ItersOpt = 5,
    check_compile: CheckCompileOpt = False,
    limit: Annotated[int, typer.Option(min=1, help="rows shown per table")] = 15,
    json_: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False,
) -> None:
    """Profile a model: its ATen operators and graph items ranked by device time."""
    from forge.model_level.profile import profile_model as run_profile

    loaded = _load(file, device, dtype)
    profile = run_profile(
        loaded.model,
        loaded.inputs,
        name=loaded.name,
        device=device,
        dtype=loaded.dtype,
        iters=iters,
        check_compile=check_compile,
    )
    if json_:
        typer.echo(json.dumps(profile.as_dict(), indent=2))
        return
    for table in profile_tables(profile, limit):
        console.print(table)
    if not profile.traced:
        notice(
            f"graph items not available: torch.fx could not trace the model ({profile.trace_error})"
        )
    if device == "cpu":
        notice("CPU times: they rank the CPU's work, not what a GPU would spend")


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, default=str))


def e2e_table(result) -> Table:  # noqa: ANN001 (EndToEnd)
    table = Table(
        title=escape(
            f"end to end ({result.device}, {result.dtype}, {result.timing}; "
            f"median of {result.repeats} x {result.iters} forwards)"
        )
    )
    for header in (
        "config",
        "ms/forward",
        "vs eager",
        "max abs diff",
        "max rel diff",
        "library calls/forward",
        "note",
    ):
        table.add_column(header)
    for r in result.configs:
        calls = ", ".join(f"{op} {n}" for op, n in r.library_calls.items()) or "-"
        table.add_row(
            r.config,
            _ms(r.median_ms),
            f"{r.speedup_vs_eager:.3f}x" if r.speedup_vs_eager else "-",
            f"{r.max_abs_diff:.2e}" if r.max_abs_diff is not None else "-",
            f"{r.max_rel_diff:.2e}" if r.max_rel_diff is not None else "-",
            escape(calls),
            escape(r.error[:80]),
        )
    return table


def optimize_model(
    file: FileArg,
    top: Annotated[int, typer.Option(min=1, help="items of the ranking to optimize")] = 5,
    out: Annotated[
        str | None,
        typer.Option(help="folder for problems and reports [default: ./forge-model-NAME]"),
    ] = None,
    device: ModelDeviceOpt = "cuda",
    dtype: DtypeOpt = None,
    only_servable: Annotated[
        bool,
        typer.Option("--only-servable", help="only operators the runtime serves back from ATen"),
    ] = False,
    skip_batch: Annotated[
        bool,
        typer.Option(
            "--skip-batch", help="write the problems and measure, without optimizing (no LLM)"
        ),
    ] = False,
    compiler: Annotated[
        str, typer.Option(help="torch.compile backend of the compiled configurations")
    ] = "inductor",
    iters: ItersOpt = 20,
    repeats: Annotated[int, typer.Option(min=1, help="timing samples per configuration")] = 5,
    backend: BackendOpt = None,
    model: ModelOpt = None,
    coder_model: CoderModelOpt = None,
    judge_model: JudgeModelOpt = None,
    api_base: ApiBaseOpt = None,
    rounds: RoundsOpt = None,
    width: WidthOpt = None,
    executor: ExecutorOpt = None,
    db: DbOpt = None,
    json_: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Profile a model, optimize its top items as a batch, and measure it end to end with the
    library: eager, eager + library, torch.compile, torch.compile + library."""
    from forge.model_level.endtoend import measure
    from forge.model_level.problems import write_problems
    from forge.model_level.profile import profile_model as run_profile
    from forge.model_level.profile import trace

    loaded = _load(file, device, dtype)
    folder = Path(out or f"forge-model-{loaded.name}")
    problems_dir = folder / "problems"
    if problems_dir.exists() and any(problems_dir.glob("*.py")):
        fail(f"{problems_dir} already holds problem files: give another --out or remove them")
    quiet = json_
    say = (lambda _t: None) if quiet else (lambda t: console.print(escape(t)))
    say(f"profiling {loaded.name} on {device} ({loaded.dtype}) ...")
    profile = run_profile(
        loaded.model, loaded.inputs, name=loaded.name, device=device, dtype=loaded.dtype
    )
    if not profile.traced:
        fail(
            f"torch.fx could not trace {file}, so no problems can be cut from it: {profile.trace_error}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "profile.json", profile.as_dict())
    if not quiet:
        for table in profile_tables(profile, limit=max(top, 10)):
            console.print(table)
    written = write_problems(
        trace(loaded.model, loaded.inputs),
        profile.items,
        top,
        problems_dir,
        loaded.dtype,
        loaded.name,
        only_servable,
    )
    for w in written.written:
        say(f"wrote {w.path} ({w.item.name}: {'served from ATen' if w.servable else w.note})")
    for w in written.skipped:
        say(f"not turned into a problem: {w.item.name}: {w.note}")
    batch_summary = (
        _optimize(written, problems_dir, loaded.name, device, locals())
        if written.written and not skip_batch
        else None
    )
    say("measuring end to end ...")
    result = measure(
        loaded.model,
        loaded.inputs,
        device=device,
        dtype=loaded.dtype,
        iters=iters,
        repeats=repeats,
        compiler=compiler,
        on_step=lambda step: None if quiet else console.print(escape(f"  {step}")),
    )
    report = {
        "model": loaded.name,
        "file": str(loaded.path),
        "folder": str(folder.resolve()),
        "device": device,
        "dtype": loaded.dtype,
        "problems": [
            {
                "file": str(w.path),
                "item": w.item.name,
                "problem": w.problem_name,
                "ms_per_forward": w.item.ms_per_forward,
                "served_from_aten": w.servable,
                "note": w.note,
            }
            for w in written.written
        ],
        "not_written": [{"item": w.item.name, "reason": w.note} for w in written.skipped],
        "batch": batch_summary,
        "end_to_end": result.as_dict(),
    }
    _write_json(folder / "report.json", report)
    if json_:
        typer.echo(json.dumps(report, indent=2, default=str))
        return
    console.print(e2e_table(result))
    for c in result.contributions:
        console.print(
            escape(
                f"  {c.op}: {c.calls_per_forward} library calls per forward; alone "
                f"{c.median_ms:.4f} ms/forward, {c.saved_ms:+.4f} ms vs eager"
            )
        )
    for line in result.verdicts():
        console.print(escape(line))
    if not result.meaningful:
        notice("timed on the CPU: these timings are not GPU figures and say nothing of speedups")
    console.print(
        escape(f"report: {folder / 'report.json'}; rerun the problems: forge batch {problems_dir}")
    )


def _optimize(written, problems_dir: Path, name: str, device: str, options: dict) -> dict:  # noqa: ANN001
    """Run the written problems as a batch (forge batch's machinery); its summary."""
    from forge.agents.batch import BatchError, BatchSettings, Limits, Models, plan_items
    from forge.agents.llm import MissingCredentials, NoModelConfigured, ScriptError
    from forge.agents.suite import SuiteError, read_suite
    from forge.cli.batch import create_stored, run_stored, summarize
    from forge.evaluator.problem import ProblemError

    models = Models(options["model"], options["coder_model"], options["judge_model"])
    backend = options["backend"]
    settings = {
        "backend": backend.value if backend else None,
        "api_base": options["api_base"],
        "rounds": options["rounds"],
        "width": options["width"],
        "device": device,
        "executor": options["executor"],
    }
    try:
        suite = read_suite(str(problems_dir))
        planned = plan_items(suite, settings, models)
        batches, lease = create_stored(
            f"model:{name}",
            suite.description,
            BatchSettings(),
            Limits(),
            planned,
            options["db"],
        )
    except (
        BatchError,
        SuiteError,
        ProblemError,
        MissingCredentials,
        NoModelConfigured,
        ScriptError,
    ) as exc:
        fail(str(exc))
    with lease:
        outcome = run_stored(batches, lease.what.id, Models())
    summarize(batches, outcome)
    items = batches.items(outcome.batch.id)
    return {
        "id": outcome.batch.id,
        "status": outcome.batch.status,
        "items": [
            {
                "label": i.label,
                "status": i.status,
                "promotion": i.promotion,
                "library_entry_id": i.library_entry_id,
            }
            for i in items
        ],
    }


def register(app: typer.Typer) -> None:
    app.command("profile-model")(profile_model)
    app.command("optimize-model")(optimize_model)
