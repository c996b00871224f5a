"""`forge library list|show|promote|export|import|verify|bench`: the kernel library."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from forge.cli.errors import fail

console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)

library_app = typer.Typer(
    name="library",
    help="The library of verified kernels: promote, list, ship (export/import), re-verify, time.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DbOption = Annotated[
    str | None,
    typer.Option(help="SQLAlchemy URL (default $FORGE_DB_URL, else $FORGE_HOME/forge.db)"),
]
CANDIDATE = re.compile(r"^(?:(?:candidate|cand|c):?)?(\d+)$", re.IGNORECASE)


def _store(db: str | None, *, read_only: bool = False):  # noqa: ANN202 (RunStore, lazily)
    """The database; `read_only` for commands that only look (opened `mode=ro`, not migrated,
    a missing database reads as empty)."""
    from forge.db.store import RunStore

    return RunStore(db, read_only=read_only)


def _x(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "-"


def _buckets(shape_key: str) -> str:
    buckets = json.loads(shape_key)
    return "; ".join(",".join(str(v) for _, v in sorted(b.items())) for b in buckets) or "-"


def _resolve_entry(store, ref: str):  # noqa: ANN001, ANN202
    from forge.db.library import find_entry, get_entry
    from forge.db.store import RecordNotFound

    if ref.isdigit():
        try:
            return get_entry(store, int(ref))
        except RecordNotFound as exc:
            fail(str(exc))
    row = find_entry(store, ref.lower())
    if row is None:
        fail(
            f"no library entry '{ref}': give the number from `forge library list` or a unique prefix (>= 6 hex digits) of an entry id"
        )
    return row


def list_command(
    op: Annotated[str | None, typer.Option(help="only this operator")] = None,
    all_: Annotated[bool, typer.Option("--all", help="include deactivated entries")] = False,
    json_: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    db: DbOption = None,
) -> None:
    """List library entries: key, served shape buckets, speedups."""
    from forge.db.library import content_id, list_entries

    rows = list_entries(_store(db, read_only=True), op, include_inactive=all_)
    if json_:
        print(json.dumps([_row_summary(r, content_id(r)) for r in rows], indent=2))
        return
    if not rows:
        console.print(
            "the library is empty"
            + (f" for '{op}'" if op else "")
            + ": `forge library promote CANDIDATE` adds one"
        )
        return
    wins = _winners(rows)
    table = Table(
        "#",
        "id",
        "op",
        "dtype",
        "arch",
        "torch",
        "triton",
        "cuda",
        "backend",
        "served buckets",
        "fastest in",
        "vs eager",
        "vs compile",
        "cand",
        box=box.SIMPLE_HEAD,
    )
    for r in rows:
        served = len(json.loads(r.shape_key))
        table.add_row(
            str(r.id) + ("" if r.active else " (off)"),
            content_id(r),
            r.op,
            r.dtype,
            r.arch,
            r.torch_version,
            r.triton_version or "-",
            r.cuda_version or "-",
            r.backend,
            _buckets(r.shape_key),
            f"{wins.get(r.id, 0)}/{served}",
            _x(r.speedup_vs_eager),
            _x(r.speedup_vs_compile),
            str(r.candidate_id) if r.candidate_id else "-",
        )
    console.print(table)


def _winners(rows) -> dict[int, int]:  # noqa: ANN001
    """Per entry, in how many of its served buckets it is the fastest for its key."""
    from forge.db.library import record_from_row

    best: dict[tuple, tuple[float, int]] = {}
    for r in rows:
        if not r.active:
            continue
        for s in record_from_row(r).meta.sets:
            if not s.served:
                continue
            key = (
                r.op,
                r.dtype,
                r.arch,
                r.torch_version,
                r.triton_version,
                r.cuda_version,
                tuple(sorted(s.bucket.items())),
            )
            speed = s.speedup_vs_eager or 0.0
            if key not in best or speed > best[key][0]:
                best[key] = (speed, r.id)
    wins: dict[int, int] = {}
    for _, rid in best.values():
        wins[rid] = wins.get(rid, 0) + 1
    return wins


def _row_summary(r, cid: str) -> dict:  # noqa: ANN001
    return {
        "number": r.id,
        "id": cid,
        "op": r.op,
        "dtype": r.dtype,
        "arch": r.arch,
        "torch": r.torch_version,
        "triton": r.triton_version,
        "cuda": r.cuda_version,
        "backend": r.backend,
        "served_buckets": json.loads(r.shape_key),
        "speedup_vs_eager": r.speedup_vs_eager,
        "speedup_vs_compile": r.speedup_vs_compile,
        "candidate_id": r.candidate_id,
        "active": r.active,
    }


def show(
    entry: Annotated[
        str, typer.Argument(help="entry number (from `forge library list`) or id prefix")
    ],
    json_: Annotated[
        bool, typer.Option("--json", help="print the entry's metadata as JSON")
    ] = False,
    source: Annotated[bool, typer.Option("--source", help="also print the kernel source")] = False,
    db: DbOption = None,
) -> None:
    """One entry: key, per-input-set speedups, verification details."""
    from forge.db.library import record_from_row

    store = _store(db, read_only=True)
    row = _resolve_entry(store, entry)
    record = record_from_row(row)
    m = record.meta
    if json_:
        print(
            json.dumps(
                {"number": row.id, "active": row.active, **m.model_dump(mode="json")}, indent=2
            )
        )
        return
    v = m.verification
    console.print(
        f"[bold]entry {row.id}[/] {m.id}  {m.op} ({m.backend}, {m.dtype})"
        + ("" if row.active else "  [yellow]deactivated[/]")
    )
    console.print(
        f"  key: {m.arch}, torch {m.torch_version}, triton {m.triton_version or '-'}, CUDA {m.cuda_version or '-'}; ATen {m.aten or '-'}"
    )
    console.print(
        f"  verified: {v.status} on {v.gpu_name or v.device}, {len(v.input_sets)} input sets x >= {v.seeds_per_set} seeds, {v.checks} checks, max abs error {v.max_abs_error:.2e}, threshold {v.threshold:g}x, {v.promoted_at}"
    )
    console.print(
        f"  from candidate {v.candidate_id if v.candidate_id is not None else '-'} of run {v.run_id if v.run_id is not None else '-'}"
    )
    table = Table(
        "input set",
        "shape",
        "bucket",
        "kernel ms",
        "eager ms",
        "compile ms",
        "vs eager",
        "vs compile",
        "served",
        box=box.SIMPLE_HEAD,
    )
    for s in m.sets:
        table.add_row(
            s.input_set,
            ",".join(f"{k}={val}" for k, val in s.constants.items()),
            ",".join(f"{k}={val}" for k, val in s.bucket.items()),
            f"{s.candidate_ms:.4f}",
            f"{s.eager_ms:.4f}" if s.eager_ms is not None else "-",
            f"{s.compile_ms:.4f}" if s.compile_ms is not None else "-",
            _x(s.speedup_vs_eager),
            _x(s.speedup_vs_compile),
            "yes" if s.served else "no",
        )
    console.print(table)
    console.print(
        f"geomean: {_x(m.speedup_vs_eager)} vs eager, {_x(m.speedup_vs_compile)} vs torch.compile"
    )
    if source:
        print(record.kernel_source)


def promote(
    candidate: Annotated[str, typer.Argument(help="candidate id (12, c12 or cand:12)")],
    threshold: Annotated[
        float,
        typer.Option(min=0.0, help="minimum speedup vs eager (geometric mean over input sets)"),
    ] = 1.05,
    db: DbOption = None,
) -> None:
    """Promote an evaluated candidate into the library (if it meets the rules)."""
    from forge.db.library import promote as promote_candidate
    from forge.db.store import RecordNotFound
    from forge.kernels_library.promotion import PromotionRefused
    from forge.kernels_library.storage import LibraryError, local_library_dir

    match = CANDIDATE.match(candidate.strip())
    if match is None:
        fail(f"'{candidate}' is not a candidate id: use 12, c12 or cand:12")
    store = _store(db)
    try:
        row = promote_candidate(store, int(match[1]), threshold)
    except RecordNotFound as exc:
        fail(str(exc))
    except PromotionRefused as refused:
        fail(str(refused), code=1)
    except LibraryError as exc:
        fail(str(exc))
    console.print(
        f"promoted candidate {match[1]} as library entry {row.id} ({row.op}, {row.dtype}, {row.arch}, {_x(row.speedup_vs_eager)} vs eager); published to {local_library_dir()}"
    )


def export(
    directory: Annotated[
        Path | None,
        typer.Argument(help="where to write (default: the local library $FORGE_HOME/library)"),
    ] = None,
    op: Annotated[str | None, typer.Option(help="only this operator")] = None,
    db: DbOption = None,
) -> None:
    """Write active entries to a directory, one folder each (kernel.py, problem.py, entry.json)."""
    from forge.db.library import export_library, publish
    from forge.kernels_library.storage import LibraryError

    store = _store(db, read_only=True)
    try:
        written = export_library(store, directory, op) if directory is not None else publish(store)
    except LibraryError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write to '{directory}': {exc.strerror or exc}")
    where = directory if directory is not None else "the local library"
    console.print(f"exported {len(written)} entr{'y' if len(written) == 1 else 'ies'} to {where}")


def import_command(
    directory: Annotated[
        Path, typer.Argument(help="a library directory (from `forge library export`)")
    ],
    db: DbOption = None,
) -> None:
    """Import a library directory into the database (hash-checked, all or nothing)."""
    from forge.db.library import import_library
    from forge.kernels_library.storage import LibraryError

    store = _store(db)
    try:
        stored = import_library(store, directory)
    except LibraryError as exc:
        fail(str(exc))
    new = sum(created for _, created in stored)
    console.print(
        f"imported {len(stored)} entr{'y' if len(stored) == 1 else 'ies'} ({new} new, {len(stored) - new} already present); "
        "entries verified on another GPU or torch/triton version are used only after `forge library verify`"
    )


def verify(
    entries: Annotated[
        list[str] | None,
        typer.Argument(
            help="entry numbers or id prefixes (default: every entry not verified on this machine)"
        ),
    ] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="re-verify every active entry, also those verified here")
    ] = False,
    device: Annotated[
        str, typer.Option(help="cuda (cpu: interpreter, correctness only, so nothing is promoted)")
    ] = "cuda",
    threshold: Annotated[
        float | None,
        typer.Option(min=0.0, help="speedup vs eager required (default: each entry's own)"),
    ] = None,
    db: DbOption = None,
) -> None:
    """Re-verify entries from other GPUs or versions here (passing ones are added for this machine)."""
    from forge.db.library import list_entries, verify_entries
    from forge.evaluator.host import EvaluatorError
    from forge.kernels_library.storage import LibraryError

    if device not in ("cuda", "cpu"):
        fail(f"--device must be cuda or cpu, got '{device}'")
    store = _store(db)
    if not entries and not list_entries(store):
        console.print(
            "nothing to verify: the library has no active entries (`forge library promote` or "
            "`forge library import` adds some)"
        )
        return
    ids = [_resolve_entry(store, e).id for e in entries] if entries else None
    try:
        outcomes = verify_entries(store, ids, device=device, threshold=threshold, everything=all_)
    except (LibraryError, EvaluatorError) as exc:
        fail(str(exc))
    if not outcomes:
        console.print(
            "nothing to verify: every active entry is verified on this machine (use --all to re-verify them)"
        )
        return
    table = Table("entry", "op", "verified on", "outcome", "detail", box=box.SIMPLE_HEAD)
    for o in outcomes:
        s = o.source
        table.add_row(str(s.id), s.op, f"{s.arch}, torch {s.torch_version}", o.status, o.reason)
    console.print(table)
    if any(o.entry is None for o in outcomes):
        raise typer.Exit(1)


def bench(
    op: Annotated[str | None, typer.Option(help="only this operator")] = None,
    path: Annotated[
        Path | None,
        typer.Option(help="time the entries of this library directory instead of the database's"),
    ] = None,
    trials: Annotated[
        int, typer.Option(min=50, help="timed calls per input set and implementation")
    ] = 50,
    json_: Annotated[bool, typer.Option("--json", help="print JSON rows")] = False,
    db: DbOption = None,
) -> None:
    """Time the library kernels usable on this GPU against eager and torch.compile."""
    from forge.evaluator.host import EvaluatorError
    from forge.kernels_library.evaluation import bench as bench_record
    from forge.kernels_library.runtime import _incompatible, machines
    from forge.kernels_library.storage import LibraryError, read_library

    found = machines("cuda")
    if not found:
        fail("`forge library bench` needs a CUDA GPU and none is visible here")
    machine = found[min(found)]
    try:
        if path is not None:
            records = read_library([path])
        else:
            from forge.db.library import list_entries, record_from_row

            records = [record_from_row(r) for r in list_entries(_store(db, read_only=True), op)]
    except LibraryError as exc:
        fail(str(exc))
    records = [r for r in records if (op is None or r.meta.op == op)]
    usable = [r for r in records if _incompatible(r, machine) is None]
    if not usable:
        fail(
            f"no library entries verified on this machine ({machine.describe()})"
            + (f" out of {len(records)}: run `forge library verify`" if records else ""),
            code=1,
        )
    rows = []
    try:
        for record in usable:
            rows.extend(bench_record(record, trials=trials))
    except EvaluatorError as exc:
        fail(str(exc))
    if json_:
        print(json.dumps([asdict(r) for r in rows], indent=2))
        return
    table = Table(
        "op",
        "entry",
        "dtype",
        "input set",
        "shape",
        "kernel ms",
        "eager ms",
        "compile ms",
        "vs eager",
        "vs compile",
        "at promotion",
        "status",
        box=box.SIMPLE_HEAD,
    )
    for r in rows:
        table.add_row(
            r.op,
            r.entry_id,
            r.dtype,
            r.input_set,
            ",".join(str(v) for v in r.shape.values()),
            f"{r.kernel_ms:.4f}" if r.kernel_ms is not None else "-",
            f"{r.eager_ms:.4f}" if r.eager_ms is not None else "-",
            f"{r.compile_ms:.4f}" if r.compile_ms is not None else "-",
            _x(r.speedup_vs_eager),
            _x(r.speedup_vs_compile),
            _x(r.recorded_speedup_vs_eager),
            r.status + (f" ({r.note})" if r.note else ""),
        )
    console.print(table)
    console.print(
        f"on {rows[0].gpu_name if rows else machine.arch}; medians of interleaved calls (forge.evaluator)"
    )


library_app.command("list")(list_command)
library_app.command("show")(show)
library_app.command("promote")(promote)
library_app.command("export")(export)
library_app.command("import")(import_command)
library_app.command("verify")(verify)
library_app.command("bench")(bench)


def register(app: typer.Typer) -> None:
    """Add `forge library ...` to the main app."""
    app.add_typer(library_app, name="library")
