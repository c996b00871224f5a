"""How a batch is shown: live progress (a table of items and an overall bar on a terminal, plain
lines elsewhere), the closing summary, and `forge batches`' tables and JSON."""

from __future__ import annotations

import threading
from datetime import datetime

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from forge.agents.batch import FINAL, BatchDisplay
from forge.db.batches import totals
from forge.db.models import Batch, BatchItem, Run
from forge.db.redact import redact
from forge.db.store import ensure_datetime

STATUS_COLOURS = {
    "pending": "dim",
    "running": "cyan",
    "finished": "green",
    "failed": "red",
    "stopped": "yellow",
    "interrupted": "yellow",
}


def _x(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "-"


def _when(value: datetime | None) -> str | None:
    value = ensure_datetime(value)
    return value.isoformat() if value is not None else None


def _status(status: str) -> str:
    return f"[{STATUS_COLOURS.get(status, 'white')}]{status}[/]"


def _library(item: BatchItem) -> str:
    if item.library_entry_id is not None:
        return f"entry {item.library_entry_id}"
    return item.promotion or "-"


class ItemState:
    """What the live display knows of an item: its row and the latest step of its run."""

    def __init__(self, item: BatchItem) -> None:
        self.item = item
        self.round: int | None = None
        self.best: float | None = None
        self.has_best = False
        self.cost: float | None = None
        """The run's cost as its loop last reported it (while it runs)."""


class LineDisplay(BatchDisplay):
    """One plain line per step worth reading (for logs and pipes)."""

    def __init__(self, console: Console, items: list[BatchItem]) -> None:
        self.console = console
        self.lock = threading.Lock()
        self.total = len(items)
        self.statuses = {i.id: (i.status, i.run_id) for i in items}

    def _head(self, item: BatchItem) -> str:
        return escape(f"[item {item.id} {item.label}]")

    def item_changed(self, item: BatchItem) -> None:
        with self.lock:
            starting = item.status == "running" and item.run_id is None
            if starting or self.statuses.get(item.id) == (item.status, item.run_id):
                return
            self.statuses[item.id] = (item.status, item.run_id)
            done = sum(status in FINAL for status, _ in self.statuses.values())
        text = item.status + (f" (run {item.run_id})" if item.run_id else "")
        if item.status == "failed":
            text += f": {item.error}; {item.promotion}"
        elif item.status in ("finished", "stopped"):
            text += f": {item.promotion}"
        if item.status in (*FINAL, "stopped"):
            text += f"   [{done}/{self.total} items done]"
        with self.lock:
            self.console.print(f"{self._head(item)} {escape(redact(text))}")

    def event(self, item: BatchItem, event) -> None:  # noqa: ANN001 (loop.Event)
        if event.kind == "evaluated":
            speed = f" {_x(event.speedup)} vs eager" if event.speedup is not None else ""
            best = (
                f"best cand {event.best_candidate_id} ({_x(event.best_speedup)})"
                if event.best_candidate_id
                else "no best yet"
            )
            line = (
                f"r{event.round} candidate {event.candidate_id}: {event.status}{speed}; {best}"
                + (" (replayed)" if event.replayed else "")
            )
        elif event.kind == "stopped":
            line = f"trajectory {event.trajectory} stopped: {redact(event.detail)}"
        else:
            return
        with self.lock:
            self.console.print(f"{self._head(item)} {escape(line)}")

    def message(self, text: str) -> None:
        with self.lock:
            self.console.print(escape(redact(text)))


class LiveDisplay(BatchDisplay):
    """A table with one line per item (status, round, best speedup so far) and a bar of the
    items done, redrawn in place (a terminal)."""

    def __init__(self, console: Console, batch: Batch, items: list[BatchItem]) -> None:
        self.console = console
        self.batch = batch
        self.lock = threading.Lock()
        self.states = {i.id: ItemState(i) for i in items}
        self.progress = Progress(
            TextColumn(f"batch {batch.id}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("items"),
            TimeElapsedColumn(),
            console=console,
        )
        self.bar = self.progress.add_task("items", total=len(items), completed=self._done())
        self.live = Live(console=console, get_renderable=self.render, refresh_per_second=4)

    def _done(self) -> int:
        return sum(s.item.status in FINAL for s in self.states.values())

    def __enter__(self) -> LiveDisplay:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(*exc)

    def render(self) -> Group:
        table = Table("#", "item", "status", "round", "best vs eager", "cost", box=box.SIMPLE)
        with self.lock:
            for state in self.states.values():
                item = state.item
                table.add_row(
                    str(item.id),
                    escape(item.label),
                    _status(item.status),
                    str(state.round) if state.round is not None else "-",
                    _x(state.best) if state.has_best else "-",
                    f"${state.cost if state.cost is not None and item.status == 'running' else item.cost_usd:.4f}",
                )
        return Group(table, self.progress)

    def item_changed(self, item: BatchItem) -> None:
        with self.lock:
            self.states[item.id].item = item
            done = self._done()
        self.progress.update(self.bar, completed=done)

    def event(self, item: BatchItem, event) -> None:  # noqa: ANN001 (loop.Event)
        with self.lock:
            state = self.states[item.id]
            state.round, state.cost = event.round, event.cost_usd
            if event.best_candidate_id:
                state.has_best, state.best = True, event.best_speedup

    def message(self, text: str) -> None:
        self.live.console.print(escape(redact(text)))


def summary_table(batch: Batch, rows: list[tuple[BatchItem, Run | None]], device: str) -> Table:
    """One line per item: status, rounds, best speedups, cost, GPU time, what was promoted."""
    table = Table(
        title=escape(f"batch {batch.id} ({batch.name}): {batch.status}"),
        box=box.SIMPLE_HEAD,
    )
    for header in ("#", "item", "status", "rounds", "vs eager", "vs compile", "cost", "GPU min"):
        table.add_column(header, no_wrap=True)
    table.add_column("library", overflow="fold", ratio=1, min_width=16)
    for item, run in rows:
        table.add_row(
            str(item.id),
            escape(item.label),
            _status(item.status),
            str(run.rounds_done) if run else "-",
            _x(run.best_speedup_vs_eager) if run else "-",
            _x(run.best_speedup_vs_compile) if run else "-",
            f"${item.cost_usd:.4f}",
            f"{item.gpu_seconds / 60:.2f}",
            escape(redact(_library(item) if item.status != "failed" else item.error)),
        )
    if device == "cpu":
        table.caption = "speedups: not measured on cpu"
    return table


def batch_json(batch: Batch, items: list[BatchItem]) -> dict:
    """A batch as `--json` prints it (stable keys)."""
    summed = totals(items)
    return {
        "id": batch.id,
        "name": batch.name,
        "suite": batch.suite,
        "status": batch.status,
        "stop_reason": batch.stop_reason,
        "items": summed.items,
        "item_statuses": summed.statuses,
        "cost_usd": summed.cost_usd,
        "gpu_seconds": summed.gpu_seconds,
        "budget_usd": batch.budget_usd,
        "budget_gpu_s": batch.budget_gpu_s,
        "deadline_at": _when(batch.deadline_at),
        "created_at": _when(batch.created_at),
        "finished_at": _when(batch.finished_at),
    }


def item_json(item: BatchItem, run: Run | None) -> dict:
    return {
        "id": item.id,
        "label": item.label,
        "status": item.status,
        "priority": item.priority,
        "run_id": item.run_id,
        "attempts": item.attempts,
        "retries": item.retries,
        "rounds_done": run.rounds_done if run else 0,
        "best_candidate_id": run.best_candidate_id if run else None,
        "best_speedup_vs_eager": run.best_speedup_vs_eager if run else None,
        "best_speedup_vs_compile": run.best_speedup_vs_compile if run else None,
        "cost_usd": item.cost_usd,
        "gpu_seconds": item.gpu_seconds,
        "budget_usd": item.budget_usd,
        "budget_gpu_s": item.budget_gpu_s,
        "library_entry_id": item.library_entry_id,
        "promotion": item.promotion,
        "error": item.error,
    }


def batches_table(rows: list[tuple[Batch, list[BatchItem]]]) -> Table:
    table = Table(
        "batch",
        "name",
        "status",
        "items",
        "finished",
        "failed",
        "cost",
        "GPU min",
        "created",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("note", overflow="fold", ratio=1)
    for batch, items in rows:
        summed = totals(items)
        table.add_row(
            str(batch.id),
            escape(batch.name),
            _status(batch.status),
            str(summed.items),
            str(summed.statuses.get("finished", 0)),
            str(summed.statuses.get("failed", 0)),
            f"${summed.cost_usd:.4f}",
            f"{summed.gpu_seconds / 60:.2f}",
            f"{batch.created_at:%m-%d %H:%M}",
            escape(batch.stop_reason),
        )
    return table
