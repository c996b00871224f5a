"""The library in the database: promotion, listing, export/import and re-verification.

The `library_entry` table is the record of what was promoted. Its rows map one-to-one to the
folders the runtime reads (`forge.kernels_library.storage`): `metadata_json` holds the entry's
`EntryMeta` (key, per-set speedups, verification) and the problem source, `source` the kernel.
Every change here (promote, import, verify) publishes the active entries to the local library
directory `$FORGE_HOME/library`, so `kl.enable()` sees them without a database.

    from forge.db.library import promote, promote_best
    entry = promote(store, candidate_id)              # raises PromotionRefused with the reasons
    entry, reason = promote_best(store, run_id)       # end of a run: (None, why) when nothing qualifies
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

from sqlmodel import Session, col, select

from forge.db.models import LibraryEntry
from forge.db.redact import redact
from forge.db.store import RecordNotFound, RunStore
from forge.evaluator.problem import load_problem
from forge.kernels_library.promotion import DEFAULT_THRESHOLD, PromotionRefused, build_entry
from forge.kernels_library.storage import (
    EntryMeta,
    EntryRecord,
    LibraryError,
    entry_folders,
    local_library_dir,
    read_library,
    remove_stale,
    sha256_text,
    write_entry,
)


class PromotionOutcome(NamedTuple):
    """`promote_best`'s answer: the entry (None when nothing qualified) and a one-line reason."""

    entry: LibraryEntry | None
    reason: str


# ------------------------------------------------------------------------------- rows <-> records


def content_id(row: LibraryEntry) -> str:
    return json.loads(row.metadata_json)["entry"]["id"]


def record_from_row(row: LibraryEntry) -> EntryRecord:
    data = json.loads(row.metadata_json)
    return EntryRecord(EntryMeta.model_validate(data["entry"]), row.source, data["problem_source"])


def _row(record: EntryRecord, candidate_id: int | None) -> LibraryEntry:
    record = record.sealed()
    m = record.meta
    served = sorted((s.bucket for s in m.sets if s.served), key=lambda b: sorted(b.items()))
    return LibraryEntry(
        op=m.op,
        dtype=m.dtype,
        shape_key=json.dumps(served, sort_keys=True),
        arch=m.arch,
        torch_version=m.torch_version,
        triton_version=m.triton_version,
        cuda_version=m.cuda_version,
        backend=m.backend,
        source=record.kernel_source,
        source_hash=sha256_text(record.kernel_source),
        metadata_json=json.dumps(
            {"entry": m.model_dump(mode="json"), "problem_source": record.problem_source},
            sort_keys=True,
        ),
        speedup_vs_eager=m.speedup_vs_eager,
        speedup_vs_compile=m.speedup_vs_compile,
        candidate_id=candidate_id,
        verified_at=datetime.fromisoformat(m.verification.promoted_at),
        active=True,
    )


def _session(store: RunStore) -> Session:
    return Session(store.engine, expire_on_commit=False)


def find_entry(
    store: RunStore, entry_content_id: str, source_hash: str | None = None
) -> LibraryEntry | None:
    """The row holding the entry with this content id (the 16-hex id of its folder; a unique
    prefix of at least 6 digits will do)."""
    query = select(LibraryEntry)
    if source_hash is not None:
        query = query.where(LibraryEntry.source_hash == source_hash)
    with _session(store) as s:
        rows = [r for r in s.exec(query).all() if content_id(r).startswith(entry_content_id)]
    if len(entry_content_id) < 6 and len(entry_content_id) != 16:
        return None
    return rows[0] if len(rows) == 1 else None


def add_entry(
    store: RunStore, record: EntryRecord, candidate_id: int | None = None
) -> tuple[LibraryEntry, bool]:
    """Store an entry (refusing text that looks like a secret); an entry with the same content
    id is updated (newer timings, active again) instead. Returns (row, created)."""
    for text, what in ((record.kernel_source, "kernel"), (record.problem_source, "problem")):
        if redact(text) != text:
            raise LibraryError(
                f"library entry {record.meta.id}: its {what} source contains what looks like a secret (an API key or token): refusing to store it"
            )
    row = _row(record, candidate_id)
    existing = find_entry(store, record.meta.id, sha256_text(record.kernel_source))
    with _session(store) as s:
        if existing is not None:
            current = s.get(LibraryEntry, existing.id)
            for name in (
                "metadata_json",
                "speedup_vs_eager",
                "speedup_vs_compile",
                "verified_at",
                "shape_key",
            ):
                setattr(current, name, getattr(row, name))
            current.active = True
            if current.candidate_id is None:
                current.candidate_id = candidate_id
            s.add(current)
            s.commit()
            s.refresh(current)
            return current, False
        s.add(row)
        s.commit()
        s.refresh(row)
        return row, True


def list_entries(
    store: RunStore, op: str | None = None, *, include_inactive: bool = False
) -> list[LibraryEntry]:
    query = select(LibraryEntry).order_by(col(LibraryEntry.op), col(LibraryEntry.id))
    if op is not None:
        query = query.where(LibraryEntry.op == op)
    if not include_inactive:
        query = query.where(col(LibraryEntry.active).is_(True))
    with _session(store) as s:
        return list(s.exec(query).all())


def get_entry(store: RunStore, entry_id: int) -> LibraryEntry:
    with _session(store) as s:
        row = s.get(LibraryEntry, entry_id)
    if row is None:
        raise RecordNotFound(
            f"no library entry {entry_id} in the database (`forge library list` shows them)"
        )
    return row


def set_active(store: RunStore, entry_id: int, active: bool) -> LibraryEntry:
    with _session(store) as s:
        row = s.get(LibraryEntry, entry_id)
        if row is None:
            raise RecordNotFound(f"no library entry {entry_id} in the database")
        row.active = active
        s.add(row)
        s.commit()
        s.refresh(row)
        return row


# ------------------------------------------------------------------------------- promotion


def promote(
    store: RunStore,
    candidate_id: int,
    threshold: float = DEFAULT_THRESHOLD,
    *,
    publish_to: Path | None = None,
) -> LibraryEntry:
    """Promote a candidate from its latest evaluation; raises PromotionRefused listing every
    rule it fails (RecordNotFound for an unknown id). Publishes the entry to `publish_to`
    (default `$FORGE_HOME/library`)."""
    candidate = store.candidate(candidate_id)
    result = store.evaluation_for(candidate_id)
    if result is None:
        raise PromotionRefused(["it was never evaluated"], f"candidate {candidate_id}")
    problem_row = store.problem(candidate.run_id)
    problem = load_problem(problem_row.source, problem_row.name)
    record = build_entry(
        problem,
        candidate.source,
        result,
        threshold,
        candidate_id=candidate_id,
        run_id=candidate.run_id,
    )
    row, _ = add_entry(store, record, candidate_id)
    write_entry(record_from_row(row), publish_to or local_library_dir())
    return row


def promote_best(
    store: RunStore,
    run_id: int,
    threshold: float = DEFAULT_THRESHOLD,
    *,
    publish_to: Path | None = None,
) -> PromotionOutcome:
    """Promote the run's best candidate (correct, not suspicious, fastest vs eager) if it meets
    the rules. Never raises for a candidate that does not qualify: returns (None, reason)."""
    store.get_run(run_id)
    best = store.best_candidate(run_id)
    if best is None:
        return PromotionOutcome(None, f"run {run_id} has no correct, non-suspicious candidate")
    try:
        row = promote(store, best.id, threshold, publish_to=publish_to)
    except PromotionRefused as refused:
        return PromotionOutcome(None, str(refused))
    speed = f"{row.speedup_vs_eager:.2f}x vs eager" if row.speedup_vs_eager else "unmeasured"
    return PromotionOutcome(
        row,
        f"candidate {best.id} promoted as library entry {row.id} ({row.op}, {row.dtype}, {row.arch}, {speed})",
    )


# ------------------------------------------------------------------------------- directories


def publish(store: RunStore, directory: Path | None = None) -> list[Path]:
    """Make `directory` (default `$FORGE_HOME/library`) hold exactly the active entries: write
    them, and delete entry folders that are no longer active. Returns the folders written."""
    directory = directory or local_library_dir()
    rows = list_entries(store)
    written = [write_entry(record_from_row(r), directory) for r in rows]
    remove_stale(directory, {content_id(r) for r in rows})
    return written


def export_library(store: RunStore, directory: Path, op: str | None = None) -> list[Path]:
    """Write the active entries (of `op`, or all) to `directory`, one folder each; other
    folders there are left alone."""
    rows = list_entries(store, op)
    if not rows:
        raise LibraryError(
            "nothing to export: no active library entries" + (f" for '{op}'" if op else "")
        )
    return [write_entry(record_from_row(r), directory) for r in rows]


def import_library(
    store: RunStore, directory: Path, *, publish_to: Path | None = None
) -> list[tuple[LibraryEntry, bool]]:
    """Store every entry of `directory` (all or nothing: any entry whose files do not match
    its hashes refuses the whole import with LibraryIntegrityError naming them). Entries keep
    the machine they were verified on; `verify_entries` re-verifies them here."""
    if not directory.is_dir():
        raise LibraryError(f"'{directory}' is not a directory")
    if not entry_folders(directory):
        raise LibraryError(f"'{directory}' holds no library entries (folders with an entry.json)")
    records = read_library([directory])
    stored = [add_entry(store, r, None) for r in records]
    publish(store, publish_to)
    return stored


# ------------------------------------------------------------------------------- verification


class VerifyOutcome(NamedTuple):
    source: LibraryEntry
    entry: LibraryEntry | None
    status: str
    reason: str


def verify_entries(
    store: RunStore,
    ids: list[int] | None = None,
    *,
    device: str = "cuda",
    threshold: float | None = None,
    everything: bool = False,
    publish_to: Path | None = None,
) -> list[VerifyOutcome]:
    """Re-run the evaluator here on entries verified elsewhere (or on `ids`, or with
    `everything` on every active entry) and promote those that pass into entries keyed to this
    machine. An entry that fails re-verification on its own machine key is deactivated."""
    from forge.kernels_library.evaluation import reverify
    from forge.kernels_library.runtime import _incompatible, machines

    found = machines(device)
    if not found:
        raise LibraryError(f"no {device} device here to verify on")
    machine = found[min(found)]
    rows = [get_entry(store, i) for i in ids] if ids else list_entries(store)
    here = {
        (r.op, r.source_hash) for r in rows if _incompatible(record_from_row(r), machine) is None
    }
    outcomes = []
    for row in rows:
        record = record_from_row(row)
        compatible = _incompatible(record, machine) is None
        if not ids and not everything and (compatible or (row.op, row.source_hash) in here):
            continue
        check = reverify(record, device=device, threshold=threshold, candidate_id=row.candidate_id)
        if check.entry is None:
            if compatible:
                set_active(store, row.id, False)
            outcomes.append(
                VerifyOutcome(
                    row, None, "refused" + (" (deactivated)" if compatible else ""), check.reason
                )
            )
            continue
        new_row, _ = add_entry(store, check.entry, row.candidate_id)
        here.add((row.op, row.source_hash))
        outcomes.append(
            VerifyOutcome(row, new_row, "verified", f"entry {new_row.id} for {machine.describe()}")
        )
    publish(store, publish_to)
    return outcomes
