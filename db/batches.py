"""`BatchStore`: batches and their items in the database (the tables of revision 0003).

A batch is created whole (the batch row and every item, with its problem stored, in one
transaction), so an interrupted `forge batch` leaves either a complete batch or none. Every
later change is one committed UPDATE: an item's status, its run, its totals, its promotion.
One process at a time runs a batch (`acquire_lease`, the same lease as a run's).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from sqlalchemy import inspect, update
from sqlmodel import Session, col, select

from forge.db.models import Batch, BatchItem, BatchLease, ItemStatus, ProblemRow, Run
from forge.db.redact import redact
from forge.db.store import LEASE_TTL_S, Leasable, Lease, RecordNotFound, RunStore

FINAL = (ItemStatus.finished.value, ItemStatus.failed.value)
"""Item statuses that are for good: the batch does not play them again, their totals are final."""


@dataclass
class BatchTotals:
    """What a batch's items add up to (`forge batches` and the web pages show them)."""

    items: int
    statuses: dict[str, int]
    cost_usd: float
    gpu_seconds: float


def totals(items: list[BatchItem]) -> BatchTotals:
    return BatchTotals(
        items=len(items),
        statuses=dict(Counter(i.status for i in items)),
        cost_usd=sum(i.cost_usd for i in items),
        gpu_seconds=sum(i.gpu_seconds for i in items),
    )


class BatchStore:
    """Batches in the database of `runs` (a `RunStore`, whose engine it shares)."""

    def __init__(self, runs: RunStore) -> None:
        self.runs = runs

    def _migrated(self) -> bool:
        """Whether the database has the batch tables (a database of an older Forge, opened
        read-only and so not migrated, has none: it holds no batch)."""
        return inspect(self.runs.engine).has_table(Batch.__tablename__)

    def _session(self) -> Session:
        return Session(self.runs.engine, expire_on_commit=False)

    def create(self, batch: Batch, items: list[BatchItem]) -> Batch:
        """Store the batch and its items (their `batch_id` is set here) in one transaction."""
        with self._session() as s:
            s.add(batch)
            s.flush()
            for item in items:
                item.batch_id = batch.id
                item.error = redact(item.error)
                s.add(item)
            s.commit()
        return batch

    def get(self, batch_id: int) -> Batch:
        batch = None
        if self._migrated():
            with self._session() as s:
                batch = s.get(Batch, batch_id)
        if batch is None:
            raise RecordNotFound(
                f"no batch {batch_id} in the database (`forge batches` lists them)"
            )
        return batch

    def list(self, limit: int = 50) -> list[Batch]:
        """Newest first."""
        if not self._migrated():
            return []
        query = select(Batch).order_by(col(Batch.id).desc()).limit(limit)
        with self._session() as s:
            return list(s.exec(query).all())

    def items(self, batch_id: int) -> list[BatchItem]:
        """The batch's items in suite order."""
        query = (
            select(BatchItem)
            .where(BatchItem.batch_id == batch_id)
            .order_by(col(BatchItem.position), col(BatchItem.id))
        )
        with self._session() as s:
            return list(s.exec(query).all())

    def item(self, item_id: int) -> BatchItem:
        with self._session() as s:
            row = s.get(BatchItem, item_id)
        if row is None:
            raise RecordNotFound(f"no batch item {item_id} in the database")
        return row

    def as_shown(
        self, items: list[BatchItem], runs: dict[int, Run] | None = None
    ) -> list[BatchItem]:
        """The items with the totals of their runs so far where the batch has not settled them
        (running, or left running by a killed `forge batch`): their stored totals are written
        when an item's session ends. What `forge batches` and the web pages show. `runs`: the
        items' runs by id, when the caller has them."""
        live = [i for i in items if i.run_id is not None and i.status not in FINAL]
        runs = runs if runs is not None else self._runs(live)
        for item in live:
            item.cost_usd = runs[item.run_id].cost_usd
            item.gpu_seconds = self.runs.evaluation_seconds(item.run_id)
        return items

    def _runs(self, items: list[BatchItem]) -> dict[int, Run]:
        ids = [i.run_id for i in items if i.run_id is not None]
        if not ids:
            return {}
        with self._session() as s:
            return {r.id: r for r in s.exec(select(Run).where(col(Run.id).in_(ids))).all()}

    def with_runs(self, batch_id: int) -> list[tuple[BatchItem, Run | None]]:
        """The batch's items in suite order (totals `as_shown`), each with its run (None
        before it started)."""
        items = self.items(batch_id)
        runs = self._runs(items)
        return [(i, runs.get(i.run_id)) for i in self.as_shown(items, runs)]

    def problem(self, problem_id: int) -> ProblemRow:
        with self._session() as s:
            row = s.get(ProblemRow, problem_id)
        if row is None:
            raise RecordNotFound(f"no problem {problem_id} in the database")
        return row

    def update_item(self, item_id: int, **values: object) -> BatchItem:
        """Set columns of one item (texts redacted) and commit; the item as stored."""
        if "error" in values:
            values["error"] = redact(str(values["error"]))
        with self._session() as s:
            s.exec(update(BatchItem).where(col(BatchItem.id) == item_id).values(**values))
            s.commit()
        return self.item(item_id)

    def update(self, batch_id: int, **values: object) -> Batch:
        """Set columns of the batch and commit; the batch as stored."""
        with self._session() as s:
            s.exec(update(Batch).where(col(Batch.id) == batch_id).values(**values))
            s.commit()
        return self.get(batch_id)

    def acquire_lease(self, batch_id: int, *, ttl_s: float = LEASE_TTL_S) -> Lease:
        """This process's hold on the batch; `RunLeased` names the holder while another
        process runs it (a `kill -9`ed holder's batch is free at once)."""
        self.get(batch_id)
        what = Leasable(BatchLease, "batch_id", batch_id, f"batch {batch_id}")
        return self.runs.acquire_lease(what, ttl_s=ttl_s)
