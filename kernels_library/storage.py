"""Library entries on disk: one folder per entry, checked by content hashes when read.

    <library dir>/
      softmax__3f0c9a1b2d4e5f60/
        kernel.py      the verified kernel source (defines ModelNew)
        problem.py     the problem it was verified against (defines Model, get_inputs, ...)
        entry.json     EntryMeta: key, speedups per input set, verification details, and the
                       sha256 of kernel.py, problem.py and of entry.json's own other fields

Where the runtime reads entries (first match wins): the `path` given to `kl.enable` /
`kl.load`, else `$FORGE_LIBRARY` (one or more directories separated by `os.pathsep`), else
`$FORGE_HOME/library` (`FORGE_HOME` defaults to `~/.forge`). The database is the record of
promotions; `forge library promote|import|verify` publish every active entry to
`$FORGE_HOME/library`, and `forge library export DIR` writes them anywhere (to ship with code).

The hashes detect files changed or truncated after export (a hand edit, a bad merge, a partial
copy): such an entry is refused with a message naming the file. They are not a signature: a
library directory is code you execute, so take it from a source you trust.

This module needs pydantic but not torch, sqlmodel or the CLI.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

FORMAT = 1
KERNEL_FILE = "kernel.py"
PROBLEM_FILE = "problem.py"
META_FILE = "entry.json"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class LibraryError(RuntimeError):
    """The library cannot do what was asked; the message says why and what to do."""


class LibraryIntegrityError(LibraryError):
    """An entry's files do not match the hashes recorded in its entry.json."""


class SetResult(BaseModel):
    """One timed input set of the verification run."""

    input_set: str = Field(description="name of the problem's input set")
    constants: dict[str, int] = Field(description="the integer constants (shape) of that set")
    bucket: dict[str, int] = Field(description="its shape bucket under the problem's rules")
    candidate_ms: float = Field(description="median time of the library kernel, ms")
    eager_ms: float | None = Field(None, description="median time of eager PyTorch, ms")
    compile_ms: float | None = Field(None, description="median time of torch.compile, ms")
    speedup_vs_eager: float | None = Field(None, description="eager_ms / candidate_ms")
    speedup_vs_compile: float | None = Field(None, description="compile_ms / candidate_ms")
    served: bool = Field(
        description="speedup_vs_eager >= the promotion threshold: the runtime uses the entry for this bucket"
    )


class InputSetSpec(BaseModel):
    """An input set as verified (so `forge library verify` re-runs exactly these)."""

    name: str = Field(description="input set name")
    constants: dict[str, int] = Field(description="integer constants of the set")
    cpu: bool = Field(False, description="small enough for the CPU interpreter")


class Verification(BaseModel):
    """How the entry was verified."""

    status: str = Field(description="the evaluator's status (always `correct` for an entry)")
    device: str = Field(description="cuda, or cpu (interpreter; test libraries only)")
    gpu_name: str = Field("", description="GPU model the timings come from")
    input_sets: list[InputSetSpec] = Field(description="every input set checked for correctness")
    seeds_per_set: int = Field(description="fewest distinct seeds any input set was checked with")
    checks: int = Field(description="number of passed output comparisons")
    max_abs_error: float = Field(description="largest absolute error over all checks")
    max_rel_error: float = Field(description="largest relative error over all checks")
    kernels_seen: list[str] = Field(
        default_factory=list, description="device kernels traced while verifying"
    )
    threshold: float = Field(description="speedup vs eager required for promotion")
    candidate_id: int | None = Field(None, description="database id of the promoted candidate")
    run_id: int | None = Field(None, description="database id of its optimize run")
    promoted_at: str = Field(description="UTC time of promotion, ISO 8601")


class EntryMeta(BaseModel):
    """entry.json: everything about one library entry except its two source files."""

    format: int = Field(FORMAT, description="entry.json format version")
    id: str = Field(
        description="content id: sha256 of key, kernel source and buckets, 16 hex digits"
    )
    op: str = Field(description="operator (the problem's name)")
    aten: str = Field(
        "", description="ATen operator the problem maps to (forge_aten), empty if none"
    )
    dtype: str = Field(description="dtype of inputs and parameters")
    backend: str = Field(description="triton | cuda")
    arch: str = Field(description="GPU architecture it was verified on, sm_XX (cpu: interpreter)")
    torch_version: str = Field(description="torch major.minor it was verified with")
    triton_version: str = Field(description="triton major.minor ('' if absent)")
    cuda_version: str = Field(description="CUDA major.minor ('' on cpu)")
    versions_full: dict[str, str] = Field(default_factory=dict, description="full version strings")
    shape_buckets: dict[str, str] = Field(
        default_factory=dict, description="the problem's bucket rule per constant"
    )
    sets: list[SetResult] = Field(
        description="per timed input set: shape, bucket, times and speedups"
    )
    speedup_vs_eager: float | None = Field(None, description="geometric mean over the timed sets")
    speedup_vs_compile: float | None = Field(None, description="geometric mean over the timed sets")
    verification: Verification = Field(description="how it was verified")
    files: dict[str, str] = Field(
        default_factory=dict, description="sha256 of kernel.py and problem.py"
    )
    meta_sha256: str = Field("", description="sha256 of this JSON's other fields (canonical form)")

    @property
    def served_buckets(self) -> list[dict[str, int]]:
        return [s.bucket for s in self.sets if s.served]

    def folder_name(self) -> str:
        return f"{_SAFE.sub('_', self.op)}__{self.id}"


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def canonical_meta_hash(meta: EntryMeta) -> str:
    payload = meta.model_dump(mode="json", exclude={"meta_sha256"})
    return sha256_text(json.dumps(payload, sort_keys=True, separators=(",", ":")))


def entry_id(meta_key: dict, kernel_source: str) -> str:
    """The content id: same kernel, key and buckets give the same id on every machine."""
    text = (
        json.dumps(meta_key, sort_keys=True, separators=(",", ":"))
        + "\n"
        + sha256_text(kernel_source)
    )
    return sha256_text(text)[:16]


@dataclass
class EntryRecord:
    """An entry with its sources; `path` is its folder when it was read from disk."""

    meta: EntryMeta
    kernel_source: str
    problem_source: str
    path: Path | None = None

    def sealed(self) -> EntryRecord:
        """A copy whose `files` and `meta_sha256` match the sources."""
        meta = self.meta.model_copy(
            update={
                "files": {
                    KERNEL_FILE: sha256_text(self.kernel_source),
                    PROBLEM_FILE: sha256_text(self.problem_source),
                }
            }
        )
        meta = meta.model_copy(update={"meta_sha256": canonical_meta_hash(meta)})
        return EntryRecord(meta, self.kernel_source, self.problem_source, self.path)


# ------------------------------------------------------------------------------- directories


def forge_home() -> Path:
    """`$FORGE_HOME`, default `~/.forge` (the same rule as the database's)."""
    return Path(os.environ.get("FORGE_HOME") or Path.home() / ".forge").expanduser()


def local_library_dir() -> Path:
    """`$FORGE_HOME/library`: where promotions are published."""
    return forge_home() / "library"


def library_dirs(path: str | os.PathLike | list | tuple | None = None) -> list[Path]:
    """The directories the runtime reads: `path`, else `$FORGE_LIBRARY`, else the local library."""
    if path is not None:
        items = list(path) if isinstance(path, list | tuple) else [path]
        return [Path(p).expanduser() for p in items]
    env = os.environ.get("FORGE_LIBRARY", "").strip()
    if env:
        return [Path(p).expanduser() for p in env.split(os.pathsep) if p.strip()]
    return [local_library_dir()]


# ------------------------------------------------------------------------------- write / read


def write_entry(record: EntryRecord, directory: Path) -> Path:
    """Write the entry's folder under `directory` (atomically: a temp folder renamed into
    place); returns the folder."""
    record = record.sealed()
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / record.meta.folder_name()
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=directory))
    (staging / KERNEL_FILE).write_text(record.kernel_source)
    (staging / PROBLEM_FILE).write_text(record.problem_source)
    (staging / META_FILE).write_text(
        json.dumps(record.meta.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
    )
    os.chmod(staging, 0o755)
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    return target


def read_entry(folder: Path) -> EntryRecord:
    """Read one entry folder, refusing it when a file is missing or does not match its hash."""
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise LibraryIntegrityError(
            f"library entry {folder}: no {META_FILE}; not an entry folder (delete it or export again)"
        )
    try:
        meta = EntryMeta.model_validate_json(meta_path.read_text())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise LibraryIntegrityError(
            f"library entry {folder}: {META_FILE} is not a valid entry ({where}: {first['msg']})"
        ) from exc
    if meta.format != FORMAT:
        raise LibraryError(
            f"library entry {folder}: format {meta.format} is not supported by this Forge (it reads format {FORMAT}): upgrade Forge"
        )
    expected = canonical_meta_hash(meta)
    if meta.meta_sha256 != expected:
        raise LibraryIntegrityError(
            f"library entry {folder}: {META_FILE} was modified after export (its fields hash to {expected[:12]}..., "
            f"it records {meta.meta_sha256[:12] or 'nothing'}...): refusing it; export it again from the database or delete the folder"
        )
    sources = {}
    for name in (KERNEL_FILE, PROBLEM_FILE):
        path = folder / name
        if not path.is_file():
            raise LibraryIntegrityError(
                f"library entry {folder}: {name} is missing: refusing it; export it again or delete the folder"
            )
        text = path.read_text()
        recorded = meta.files.get(name, "")
        actual = sha256_text(text)
        if actual != recorded:
            raise LibraryIntegrityError(
                f"library entry {folder}: {name} does not match the sha256 recorded in {META_FILE} "
                f"(recorded {recorded[:12] or 'nothing'}..., file {actual[:12]}...): it was modified after export; "
                "refusing it; export it again from the database or delete the folder"
            )
        sources[name] = text
    return EntryRecord(meta, sources[KERNEL_FILE], sources[PROBLEM_FILE], folder)


def entry_folders(directory: Path) -> list[Path]:
    """Sub-folders of a library directory that hold an entry.json (sorted)."""
    if not directory.is_dir():
        return []
    return sorted(
        p
        for p in directory.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / META_FILE).is_file()
    )


def read_library(directories: list[Path]) -> list[EntryRecord]:
    """Every entry of the directories (missing directories hold none). Raises
    LibraryIntegrityError naming every refused entry when any is tampered with."""
    records: list[EntryRecord] = []
    refused: list[str] = []
    seen: set[str] = set()
    for directory in directories:
        for folder in entry_folders(directory):
            try:
                record = read_entry(folder)
            except LibraryIntegrityError as exc:
                refused.append(str(exc))
                continue
            if record.meta.id in seen:
                continue
            seen.add(record.meta.id)
            records.append(record)
    if refused:
        raise LibraryIntegrityError(
            "; ".join(refused)
            if len(refused) == 1
            else f"{len(refused)} entries refused: " + " | ".join(refused)
        )
    return records


def remove_stale(directory: Path, keep_ids: set[str]) -> list[Path]:
    """Delete entry folders (only folders holding an entry.json) whose id is not in `keep_ids`."""
    removed = []
    for folder in entry_folders(directory):
        try:
            meta_id = json.loads((folder / META_FILE).read_text()).get("id")
        except json.JSONDecodeError:
            meta_id = None
        if meta_id not in keep_ids:
            shutil.rmtree(folder)
            removed.append(folder)
    return removed
