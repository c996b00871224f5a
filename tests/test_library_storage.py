"""Entries on disk: export/import round trip through the database, hash checks refusing
tampered entries (also at runtime), publishing to the local library."""

from __future__ import annotations

import json
import os

import pytest
from test_library_helpers import LEGIT, foreign_entry, make_result, write_all

from forge.db.library import (
    add_entry,
    export_library,
    import_library,
    list_entries,
    promote,
    publish,
    record_from_row,
    set_active,
)
from forge.db.store import RunStore
from forge.evaluator.problem import resolve_problem
from forge.kernels_library.promotion import build_entry
from forge.kernels_library.storage import (
    LibraryError,
    LibraryIntegrityError,
    entry_folders,
    library_dirs,
    read_entry,
    read_library,
    write_entry,
)

SOFTMAX = resolve_problem("softmax")
SOURCE = (LEGIT / "triton_softmax.py").read_text()


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FORGE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FORGE_LIBRARY", raising=False)
    return tmp_path / "home"


def entry(arch: str = "sm_90", speedup: float = 1.5):
    result = make_result(SOFTMAX, {s.name: speedup for s in SOFTMAX.input_sets})
    result.environment.arch = arch
    return build_entry(SOFTMAX, SOURCE, result, 1.05)


def test_write_then_read_is_identical(tmp_path):
    record = entry()
    folder = write_entry(record, tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["entry.json", "kernel.py", "problem.py"]
    back = read_entry(folder)
    assert back.meta == record.meta
    assert back.kernel_source == SOURCE and back.problem_source == SOFTMAX.source
    assert (
        json.loads((folder / "entry.json").read_text())["files"]["kernel.py"]
        == record.meta.files["kernel.py"]
    )


def test_export_import_round_trip_between_databases(tmp_path, home, new_db_url):
    first = RunStore(new_db_url())
    run = first.create_run(SOFTMAX, {}, "m", "m", "triton", "cuda")
    cid = first.add_candidate(run, 0, 0, SOURCE, "triton", "initial")
    first.add_evaluation(cid, make_result(SOFTMAX))
    promote(first, cid)
    add_entry(first, foreign_entry("gelu", "triton_gelu.py", arch="sm_80"))
    shipped = tmp_path / "shipped"
    written = export_library(first, shipped)
    assert len(written) == 2 and len(entry_folders(shipped)) == 2

    second = RunStore(new_db_url())
    stored = import_library(second, shipped, publish_to=tmp_path / "local")
    assert [created for _, created in stored] == [True, True]
    before = {r.op: record_from_row(r) for r in list_entries(first)}
    after = {r.op: record_from_row(r) for r in list_entries(second)}
    for op in ("softmax", "gelu"):
        assert after[op].meta == before[op].meta
        assert after[op].kernel_source == before[op].kernel_source
        assert after[op].problem_source == before[op].problem_source
    # candidate ids of another database are not foreign keys here (kept in the metadata)
    assert all(r.candidate_id is None for r in list_entries(second))
    assert after["softmax"].meta.verification.candidate_id == cid
    # importing again changes nothing
    assert [
        created for _, created in import_library(second, shipped, publish_to=tmp_path / "local")
    ] == [False, False]
    assert len(entry_folders(tmp_path / "local")) == 2


def tamper(folder, name, old, new):
    path = folder / name
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_a_modified_kernel_is_refused_with_the_file_named(tmp_path):
    folder = write_entry(entry(), tmp_path)
    tamper(folder, "kernel.py", "num = tl.exp(x)", "num = tl.exp(x) * 1.0001")
    with pytest.raises(
        LibraryIntegrityError,
        match=r"kernel\.py does not match the sha256 recorded in entry\.json .*modified after export",
    ):
        read_entry(folder)


def test_a_modified_problem_or_metadata_is_refused(tmp_path):
    folder = write_entry(entry(), tmp_path / "a")
    tamper(folder, "problem.py", "dim=-1", "dim=0")
    with pytest.raises(LibraryIntegrityError, match=r"problem\.py does not match"):
        read_entry(folder)
    folder = write_entry(entry(), tmp_path / "b")
    meta = json.loads((folder / "entry.json").read_text())
    meta["arch"] = "sm_100"  # claim another GPU without re-verifying
    (folder / "entry.json").write_text(json.dumps(meta))
    with pytest.raises(LibraryIntegrityError, match=r"entry\.json was modified after export"):
        read_entry(folder)
    folder = write_entry(entry(), tmp_path / "c")
    (folder / "kernel.py").unlink()
    with pytest.raises(LibraryIntegrityError, match=r"kernel\.py is missing"):
        read_entry(folder)
    folder = write_entry(entry(), tmp_path / "d")
    (folder / "entry.json").write_text("{not json")
    with pytest.raises(LibraryIntegrityError, match=r"entry\.json is not a valid entry"):
        read_entry(folder)


def test_import_is_all_or_nothing(tmp_path, home, db_url):
    shipped = write_all(tmp_path / "shipped", entry("sm_90"), entry("sm_80"))
    bad = entry_folders(shipped)[0]
    tamper(bad, "kernel.py", "import torch", "import torch  # edited")
    store = RunStore(db_url)
    with pytest.raises(LibraryIntegrityError, match=bad.name):
        import_library(store, shipped)
    assert list_entries(store) == []
    with pytest.raises(LibraryError, match="is not a directory"):
        import_library(store, tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LibraryError, match="holds no library entries"):
        import_library(store, tmp_path / "empty")


def test_runtime_refuses_a_tampered_library(tmp_path):
    import forge.kernels_library as kl

    library = write_all(tmp_path / "lib", entry())
    tamper(entry_folders(library)[0], "kernel.py", "import torch", "import os, torch")
    with pytest.raises(kl.LibraryIntegrityError, match="kernel.py does not match"):
        kl.enable(path=library)
    assert not kl.enabled()
    with pytest.raises(kl.LibraryIntegrityError):
        kl.load("softmax", path=library, device="cpu")


def test_publish_keeps_the_local_library_equal_to_the_active_entries(tmp_path, home, db_url):
    store = RunStore(db_url)
    a, _ = add_entry(store, entry("sm_90"))
    b, _ = add_entry(store, entry("sm_80"))
    publish(store)
    local = home / "library"
    assert len(entry_folders(local)) == 2
    set_active(store, a.id, False)
    publish(store)
    assert [r.meta.id for r in read_library([local])] == [record_from_row(b).meta.id]
    # folders without an entry.json are never touched
    (local / "notes").mkdir()
    publish(store)
    assert (local / "notes").is_dir()


def test_library_dirs_rules(tmp_path, monkeypatch):
    monkeypatch.setenv("FORGE_HOME", str(tmp_path / "h"))
    monkeypatch.delenv("FORGE_LIBRARY", raising=False)
    assert library_dirs() == [tmp_path / "h" / "library"]
    monkeypatch.setenv("FORGE_LIBRARY", f"{tmp_path / 'x'}{os.pathsep}{tmp_path / 'y'}")
    assert library_dirs() == [tmp_path / "x", tmp_path / "y"]
    assert library_dirs(tmp_path / "z") == [tmp_path / "z"]


def test_secrets_are_not_stored(tmp_path, db_url):
    store = RunStore(db_url)
    leaky = build_entry(
        SOFTMAX, SOURCE + "\nAPI_KEY = 'sk-abcdefghijklmnop1234'\n", make_result(SOFTMAX), 1.05
    )
    with pytest.raises(LibraryError, match="looks like a secret"):
        add_entry(store, leaky)
