"""The kernel database: migrations from a blank database, every RunStore method, the URL rules,
concurrent access (WAL, threads), and secrets kept out."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import String, Text, inspect, text
from sqlmodel import SQLModel

from forge.db import engine as db_engine
from forge.db.engine import (
    current_revision,
    database_url,
    get_engine,
    head_revision,
    migrate,
    migration_sql,
)
from forge.db.models import TABLES
from forge.db.store import RecordNotFound, RunStore
from forge.evaluator.problem import resolve_problem
from forge.evaluator.result import (
    Check,
    Environment,
    EvalResult,
    KernelProfile,
    PhaseSeconds,
    Profile,
    SandboxInfo,
    SetTiming,
    Status,
    TimingStats,
)

SOURCE = "import torch\nclass ModelNew(torch.nn.Module):\n    pass\n"


def make_result(
    status: Status = Status.correct, speedup: float | None = 1.8, suspicious: bool = False
) -> EvalResult:
    timing = TimingStats.from_samples([0.10, 0.11, 0.12, 0.13], [0.12, 0.13, 0.13, 0.14])
    eager = TimingStats.from_samples([0.2, 0.21, 0.22], [0.22, 0.23, 0.23])
    return EvalResult(
        status=status,
        reasons=[] if status is Status.correct else ["input set 'odd' seed 1: 3 mismatches"],
        problem="softmax",
        backend="triton",
        environment=Environment(
            device="cuda",
            gpu_name="NVIDIA H100 80GB HBM3",
            arch="sm_90",
            torch_version="2.11.0",
            triton_version="3.6.0",
            cuda_version="13.0",
        ),
        checks=[
            Check(
                input_set="base",
                seed_index=0,
                phase="before_reference",
                passed=True,
                max_abs_error=1e-7,
                max_rel_error=2e-7,
                mismatches=0,
                numel=1024,
            ),
            Check(
                input_set="odd",
                seed_index=1,
                phase="after_reference",
                passed=status is Status.correct,
                max_abs_error=math.inf,
                max_rel_error=math.nan,
                mismatches=3,
                numel=1023,
                first_bad_index=[2, 17],
            ),
        ],
        timings=[
            SetTiming(
                input_set="base",
                candidate=timing,
                eager=eager,
                speedup_vs_eager=speedup,
                speedup_vs_compile=1.2,
                floor_ms=0.05,
                roofline_fraction=0.4,
                rechecks=3,
            )
        ],
        timing_meaningful=True,
        speedup_vs_eager=speedup,
        speedup_vs_compile=1.2 if speedup else None,
        suspicious=suspicious,
        candidate_kernels=["softmax_kernel"],
        kernels_seen=["softmax_kernel"],
        profile=Profile(
            tool="ncu",
            input_set="base",
            kernels=[
                KernelProfile(
                    name="softmax_kernel",
                    duration_us=98.0,
                    registers_per_thread=32,
                    metrics={"dram__throughput.avg.pct_of_peak_sustained_elapsed": 71.5},
                ),
            ],
        ),
        phase_seconds=PhaseSeconds(compile=1.5, total=4.0),
        compile_log="ok",
        stderr="warning: something\n" * 3,
        sandbox=SandboxInfo(backend="local", exit_code=0, network_isolated=True),
    )


@pytest.fixture
def store(db_url: str) -> RunStore:
    """A store on a fresh database: SQLite, then PostgreSQL (tests/conftest.py, `db_url`)."""
    return RunStore(db_url)


@pytest.fixture(scope="module")
def problem():
    return resolve_problem("softmax")


# ------------------------------------------------------------------ schema


def test_migrate_blank_database_matches_models(db_url: str) -> None:
    engine = get_engine(db_url)
    assert current_revision(engine) is None
    migrate(engine)
    assert current_revision(engine) == head_revision()
    inspector = inspect(engine)
    expected = {t.__tablename__ for t in TABLES}
    assert set(inspector.get_table_names()) == expected | {"alembic_version"}
    for table in TABLES:
        columns = {c["name"] for c in inspector.get_columns(table.__tablename__)}
        assert columns == set(table.__table__.columns.keys()), table.__tablename__
    with engine.connect() as connection:
        diff = compare_metadata(
            MigrationContext.configure(connection, opts={"compare_type": True}), SQLModel.metadata
        )
    assert diff == []


def test_downgrade_to_blank_and_upgrade_again(db_url: str) -> None:
    from alembic import command

    engine = migrate(db_url)
    command.downgrade(db_engine.alembic_config(engine), "base")
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    migrate(engine)
    assert current_revision(engine) == head_revision()


def test_a_newer_schema_is_refused_with_a_clear_message(db_url: str) -> None:
    engine = migrate(db_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(db_engine.SchemaTooNew, match="revision 9999, newer than this Forge"):
        RunStore(db_url)


MIGRATOR = """
import sys, time
from pathlib import Path
from forge.db.store import RunStore
go = Path(sys.argv[2])
print("waiting", flush=True)
while not go.exists():
    time.sleep(0.005)
RunStore(sys.argv[1])
print("ready", flush=True)
"""


def test_controllers_starting_at_once_on_a_blank_database_all_start(
    db_url: str, tmp_path: Path
) -> None:
    """Several controllers pointed at one new database migrate it at the same moment: one
    creates the schema, the others wait for it and find it done."""
    go = tmp_path / "go"
    starters = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATOR, db_url, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    assert [p.stdout.readline().strip() for p in starters] == ["waiting"] * 4
    go.touch()
    outputs = [p.communicate(timeout=120) for p in starters]
    assert [out.strip() for out, _ in outputs] == ["ready"] * 4, outputs
    engine = get_engine(db_url)
    assert current_revision(engine) == head_revision()
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1


def test_migration_renders_for_postgresql() -> None:
    sql = migration_sql("postgresql://forge@localhost/forge")
    for table in TABLES:
        assert f"CREATE TABLE {table.__tablename__} (" in sql
    assert "id SERIAL NOT NULL" in sql
    assert "TIMESTAMP WITH TIME ZONE" in sql


def test_migrations_ship_inside_the_package() -> None:
    assert db_engine.MIGRATIONS_DIR.is_relative_to(Path(db_engine.__file__).parent)
    assert (db_engine.MIGRATIONS_DIR / "env.py").is_file()
    assert (db_engine.MIGRATIONS_DIR / "script.py.mako").is_file()


# -------------------------------------------------------------------- URLs


def test_database_url_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORGE_DB_URL", raising=False)
    monkeypatch.setenv("FORGE_HOME", str(tmp_path / "home"))
    assert database_url() == f"sqlite:///{tmp_path / 'home' / 'forge.db'}"
    monkeypatch.setenv("FORGE_DB_URL", "postgresql://u@h/db")
    assert database_url() == "postgresql://u@h/db"
    assert database_url("sqlite:///explicit.db") == "sqlite:///explicit.db"
    monkeypatch.delenv("FORGE_HOME")
    monkeypatch.delenv("FORGE_DB_URL")
    assert database_url() == f"sqlite:///{Path.home() / '.forge' / 'forge.db'}"


def test_forge_home_creates_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, problem
) -> None:
    monkeypatch.delenv("FORGE_DB_URL", raising=False)
    monkeypatch.setenv("FORGE_HOME", str(tmp_path / "deep" / "home"))
    run_id = RunStore().create_run(problem, {}, "a", "b", "triton", "cpu")
    assert (tmp_path / "deep" / "home" / "forge.db").is_file()
    assert (
        RunStore(get_engine(f"sqlite:///{tmp_path / 'deep' / 'home' / 'forge.db'}"))
        .get_run(run_id)
        .op
        == "softmax"
    )


def test_forge_db_url_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, problem) -> None:
    target = tmp_path / "elsewhere.db"
    monkeypatch.setenv("FORGE_HOME", str(tmp_path / "unused"))
    monkeypatch.setenv("FORGE_DB_URL", f"sqlite:///{target}")
    RunStore().create_run(problem, {}, "a", "b", "triton", "cpu")
    assert target.is_file()
    assert not (tmp_path / "unused").exists()


def test_in_memory_sqlite_works(problem) -> None:
    store = RunStore("sqlite://")
    run_id = store.create_run(problem, {}, "a", "b", "triton", "cpu")
    assert store.list_runs()[0].id == run_id


# --------------------------------------------------------------- round trip


def test_run_store_round_trip(store: RunStore, problem) -> None:
    config = {"rounds": 4, "width": 2, "budget_usd": 1.5}
    run_id = store.create_run(
        problem, config, "openai/gpt-4o", "anthropic/claude", "triton", "cuda"
    )
    second = store.create_run(problem, {}, "m", "m", "cuda", "cuda")
    assert store.problem(run_id).id == store.problem(second).id  # one problem row per source
    run = store.get_run(run_id)
    assert (run.status, run.op, run.coder_model, run.judge_model, run.backend, run.device) == (
        "running",
        "softmax",
        "openai/gpt-4o",
        "anthropic/claude",
        "triton",
        "cuda",
    )
    assert store.run_config(run_id) == config
    assert store.problem(run_id).source == problem.source

    c0 = store.add_candidate(run_id, 0, 0, SOURCE, "triton", "initial")
    c1 = store.add_candidate(
        run_id,
        0,
        1,
        SOURCE + "# faster\n",
        "triton",
        "optimize",
        parent_id=c0,
        plan={"diagnosis": "memory bound", "plan": "fuse"},
    )
    c2 = store.add_candidate(run_id, 1, 0, SOURCE + "# t1\n", "triton", "initial")
    assert [c0, c1, c2] == sorted([c0, c1, c2])
    assert store.candidate(c1).parent_id == c0
    assert store.candidate(c1).source_hash != store.candidate(c0).source_hash

    slow = make_result(speedup=1.1)
    e0 = store.add_evaluation(c0, slow)
    fast = make_result(speedup=2.5)
    store.add_evaluation(c1, fast)
    assert e0 > 0
    assert store.evaluation_for(c0) == slow  # the full EvalResult survives, inf and nan included
    assert math.isinf(store.evaluation_for(c0).checks[1].max_abs_error)
    assert store.evaluation_for(c2) is None
    assert [c.id for c in store.candidates_without_evaluation(run_id)] == [c2]
    key = store.latest_evaluation(c1)
    assert (key.status, key.speedup_vs_eager, key.speedup_vs_compile, key.arch, key.gpu_name) == (
        "correct",
        2.5,
        1.2,
        "sm_90",
        "NVIDIA H100 80GB HBM3",
    )
    assert key.median_ms == pytest.approx(fast.timings[0].candidate.median_ms)
    assert (key.torch_version, key.triton_version) == ("2.11.0", "3.6.0")

    msgs = [
        {"role": "system", "content": "you write kernels"},
        {"role": "user", "content": "softmax"},
    ]
    k0 = store.record_llm_call(
        run_id, "coder", "openai/gpt-4o", msgs, "```python\n...```", 100, 50, 0.01, 2.0
    )
    k1 = store.record_llm_call(
        run_id,
        "judge",
        "anthropic/claude",
        msgs,
        '{"plan": "fuse"}',
        80,
        20,
        0.02,
        1.0,
        round=1,
        candidate_id=c0,
    )
    k2 = store.record_llm_call(
        run_id,
        "coder",
        "openai/gpt-4o",
        msgs,
        "",
        0,
        0,
        0.0,
        0.5,
        error="LLMRateLimited: ...",
        round=1,
        attempts=5,
    )
    store.link_llm_call(k0, c0)
    store.set_llm_call_error(k1, "malformed: invalid JSON")
    calls = store.llm_calls(run_id)
    assert [c.id for c in calls] == [k0, k1, k2]
    assert calls[0].candidate_id == c0 and calls[1].error.startswith("malformed")
    assert [c.id for c in store.llm_calls(run_id, role="judge")] == [k1]
    assert [c.id for c in store.llm_calls(run_id, trajectory=0, round=1)] == [k1, k2]
    assert json.loads(calls[0].messages_json) == msgs

    history = store.history(run_id)
    assert [(s.candidate.trajectory, s.candidate.round) for s in history] == [
        (0, 0),
        (0, 1),
        (1, 0),
    ]
    assert history[1].result == fast and history[1].plan["plan"] == "fuse"
    assert history[2].evaluation is None and history[2].status is None
    assert [s.id for s in store.history(run_id, trajectory=1)] == [c2]

    best = store.best_candidate(run_id)
    assert best is not None and best.id == c1 and best.result.speedup_vs_eager == 2.5

    run = store.update_run_totals(run_id)
    assert (run.prompt_tokens, run.completion_tokens) == (180, 70)
    assert run.cost_usd == pytest.approx(0.03)
    assert (run.best_candidate_id, run.best_speedup_vs_eager, run.best_speedup_vs_compile) == (
        c1,
        2.5,
        1.2,
    )
    assert run.rounds_done == 2 and run.gpu_name == "NVIDIA H100 80GB HBM3"

    finished = store.finish_run(run_id, "finished")
    assert finished.status == "finished" and finished.finished_at is not None
    assert [r.id for r in store.list_runs()] == [second, run_id]
    assert [r.id for r in store.list_runs(limit=1)] == [second]
    assert [r.id for r in store.list_runs(status="finished")] == [run_id]
    reopened = store.reopen_run(run_id)
    assert reopened.status == "running" and reopened.finished_at is None
    store.finish_run(run_id, "failed", error="boom")
    assert store.get_run(run_id).error == "boom"


def test_missing_ids_and_bad_values(store: RunStore, problem) -> None:
    with pytest.raises(RecordNotFound, match="no run 99"):
        store.get_run(99)
    with pytest.raises(RecordNotFound, match="no candidate 7"):
        store.candidate(7)
    run_id = store.create_run(problem, {}, "a", "b", "triton", "cpu")
    with pytest.raises(ValueError, match="'best'"):
        store.add_candidate(run_id, 0, 0, SOURCE, "triton", "best")
    with pytest.raises(ValueError, match="'done'"):
        store.finish_run(run_id, "done")
    with pytest.raises(ValueError, match="'tester'"):
        store.record_llm_call(run_id, "tester", "m", [], "", 0, 0, 0.0, 0.0)
    with pytest.raises(RecordNotFound):
        store.add_evaluation(12345, make_result())


def test_best_candidate_rules(store: RunStore, problem) -> None:
    run_id = store.create_run(problem, {}, "a", "b", "triton", "cuda")
    assert store.best_candidate(run_id) is None
    ids = [
        store.add_candidate(run_id, 0, r, SOURCE + f"#{r}\n", "triton", "optimize")
        for r in range(5)
    ]
    store.add_evaluation(ids[0], make_result(Status.incorrect, speedup=None))
    store.add_evaluation(ids[1], make_result(speedup=None))  # correct but unmeasured (CPU)
    assert store.best_candidate(run_id).id == ids[1]
    store.add_evaluation(ids[2], make_result(speedup=1.3))
    store.add_evaluation(ids[3], make_result(speedup=40.0, suspicious=True))
    assert store.best_candidate(run_id).id == ids[2]
    assert store.best_candidate(run_id, include_suspicious=True).id == ids[3]
    store.add_evaluation(ids[4], make_result(speedup=1.3))  # a tie goes to the earliest
    assert store.best_candidate(run_id).id == ids[2]
    store.add_evaluation(
        ids[2], make_result(Status.incorrect, speedup=None)
    )  # re-evaluated: latest counts
    assert store.best_candidate(run_id).id == ids[4]
    run = store.update_run_totals(run_id)
    assert run.best_candidate_id == ids[4] and run.best_speedup_vs_eager == 1.3


def test_rounds_view_for_resume(store: RunStore, problem) -> None:
    run_id = store.create_run(problem, {}, "a", "b", "triton", "cuda")
    msgs = [{"role": "user", "content": "x"}]
    # trajectory 0: round 0 complete; round 1: judge answered, coder answered, no candidate yet
    k = store.record_llm_call(run_id, "coder", "a", msgs, "code0", 1, 1, 0.0, 0.1)
    c0 = store.add_candidate(run_id, 0, 0, SOURCE, "triton", "initial")
    store.link_llm_call(k, c0)
    store.add_evaluation(c0, make_result())
    store.record_llm_call(
        run_id, "judge", "b", msgs, '{"plan":"p"}', 1, 1, 0.0, 0.1, round=1, candidate_id=c0
    )
    pending = store.record_llm_call(run_id, "coder", "a", msgs, "code1", 1, 1, 0.0, 0.1, round=1)
    # trajectory 1: candidate stored, evaluation lost
    c1 = store.add_candidate(run_id, 1, 0, SOURCE + "#1\n", "triton", "initial")
    store.record_llm_call(
        run_id,
        "coder",
        "a",
        msgs,
        "",
        0,
        0,
        0.0,
        0.1,
        trajectory=1,
        error="ScriptExhausted",
        attempts=0,
    )

    rounds = store.rounds(run_id)
    assert [(r.trajectory, r.round) for r in rounds] == [(0, 0), (0, 1), (1, 0)]
    assert rounds[0].evaluated and rounds[0].unlinked_coder_calls == []
    assert not rounds[1].evaluated and [c.id for c in rounds[1].unlinked_coder_calls] == [pending]
    assert len(rounds[1].calls_for("judge", ok_only=True)) == 1
    assert [s.id for s in rounds[2].steps] == [c1] and not rounds[2].evaluated
    assert [c.id for c in store.candidates_without_evaluation(run_id)] == [c1]
    assert store.consumed_calls(run_id, "coder") == 2 and store.consumed_calls(run_id, "judge") == 1
    assert store.trajectories(run_id) == [0, 1]
    assert [(r.trajectory, r.round) for r in store.rounds(run_id, trajectory=1)] == [(1, 0)]


# -------------------------------------------------------------- concurrency


def test_sqlite_is_in_wal_mode(sqlite_url: str) -> None:
    engine = migrate(sqlite_url)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert (
            connection.exec_driver_sql("PRAGMA busy_timeout").scalar()
            == db_engine.SQLITE_BUSY_TIMEOUT_MS
        )


WRITER = """
import sys
from sqlalchemy import text
from forge.db.engine import get_engine
engine = get_engine(sys.argv[1])
with engine.connect() as c:
    c.exec_driver_sql("BEGIN IMMEDIATE")
    for i in range(2000):  # enough to spill the page cache: a rollback journal would lock readers out
        c.execute(text("INSERT INTO problem (name, source, source_hash, dtype, created_at) "
                       "VALUES (:n, :s, :h, 'float32', '2026-01-01')"),
                  {"n": f"p{i}", "s": "x" * 2000, "h": str(i)})
    print("writing", flush=True)
    sys.stdin.readline()
    c.exec_driver_sql("COMMIT")
print("committed", flush=True)
"""


def test_second_process_reads_while_a_run_writes(sqlite_url: str, problem) -> None:
    store = RunStore(sqlite_url)
    run_id = store.create_run(problem, {}, "a", "b", "triton", "cuda")
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, sqlite_url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "writing"
        reader = RunStore(get_engine(sqlite_url), migrate_schema=False)
        started = time.monotonic()
        assert [r.id for r in reader.list_runs()] == [
            run_id
        ]  # readable, uncommitted rows invisible
        with reader.engine.connect() as c:
            assert c.execute(text("SELECT count(*) FROM problem")).scalar() == 1
        assert time.monotonic() - started < 2.0  # did not wait for the writer's busy timeout
        writer.stdin.write("\n")
        writer.stdin.flush()
        assert writer.stdout.readline().strip() == "committed"
    finally:
        writer.stdin.close()
        writer.wait(timeout=30)
    with reader.engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM problem")).scalar() == 2001


def test_parallel_trajectories_write_from_threads(store: RunStore, problem) -> None:
    run_id = store.create_run(problem, {}, "a", "b", "triton", "cuda")

    def trajectory(t: int) -> None:
        for r in range(10):
            store.record_llm_call(
                run_id, "coder", "a", [], "x", 10, 1, 0.001, 0.0, trajectory=t, round=r
            )
            c = store.add_candidate(run_id, t, r, SOURCE + f"#{t}.{r}\n", "triton", "initial")
            store.add_evaluation(c, make_result(speedup=1.0 + t + r / 100))
            store.update_run_totals(run_id)

    with ThreadPoolExecutor(4) as pool:
        for future in [pool.submit(trajectory, t) for t in range(4)]:
            future.result()  # re-raises a thread's error (e.g. "database is locked")
    run = store.update_run_totals(run_id)
    assert run.prompt_tokens == 400 and run.cost_usd == pytest.approx(0.04)
    assert run.best_speedup_vs_eager == pytest.approx(4.09)
    assert len(store.history(run_id)) == 40


# ------------------------------------------------------------------ secrets


def dump_text_columns(engine) -> str:  # noqa: ANN001
    """Every text value of every row of every table, concatenated."""
    out = []
    with engine.connect() as connection:
        for table in SQLModel.metadata.sorted_tables:
            names = [c.name for c in table.columns if isinstance(c.type, String | Text)]
            for row in connection.execute(table.select()).mappings():
                out.extend(str(row[n]) for n in names)
    return "\n".join(out)


def test_secrets_never_reach_the_database(
    store: RunStore, problem, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-test-SECRET-3b8f0e"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-9d8c7b6a5f")
    run_id = store.create_run(
        problem,
        {"api_base": f"https://user:{secret}@proxy/v1", "key": secret},
        "openai/gpt-4o",
        "openai/gpt-4o",
        "triton",
        "cuda",
    )
    c = store.add_candidate(run_id, 0, 0, SOURCE + f"# {secret}\n", "triton", "initial")
    result = make_result()
    result.stderr = f"env: OPENAI_API_KEY={secret} MY_SERVICE_TOKEN=tok-9d8c7b6a5f"
    store.add_evaluation(c, result)
    store.record_llm_call(
        run_id,
        "coder",
        "openai/gpt-4o",
        [{"role": "user", "content": f"key {secret}"}],
        f"Bearer {secret}",
        1,
        1,
        0.0,
        0.1,
        error=f"AuthenticationError: bad key {secret}",
    )
    store.finish_run(run_id, "failed", error=f"401 for key {secret}")
    dump = dump_text_columns(store.engine)
    assert "SECRET-3b8f0e" not in dump and "tok-9d8c7b6a5f" not in dump
    assert "[REDACTED:OPENAI_API_KEY]" in dump


@pytest.mark.parametrize(
    ("text", "hidden"),
    [
        ("Authorization: Bearer abcdefgh12345678", "abcdefgh12345678"),
        ("key sk-ant-api03-abcdefghijkl in a message", "abcdefghijkl"),
        ("postgresql://forge:hunter2hunter2@db/forge", "hunter2hunter2"),
        ('{"api_key": "k3y-0123456789"}', "k3y-0123456789"),
    ],
)
def test_redact_masks_key_shapes_not_from_the_environment(text: str, hidden: str) -> None:
    from forge.db.redact import redact

    masked = redact(text, environ={})
    assert hidden not in masked and "[REDACTED" in masked
    assert redact("plain kernel source: x = y + 1", environ={"TRIVIAL_KEY": "1"}) == (
        "plain kernel source: x = y + 1"
    )


def test_session_commits_and_datetimes_are_utc(store: RunStore, problem) -> None:
    from datetime import timezone

    from forge.db.engine import session
    from forge.db.models import Run
    from forge.db.store import ensure_datetime

    run_id = store.create_run(problem, {}, "a", "b", "triton", "cpu")
    with session(store.engine) as s:
        s.get(Run, run_id).rounds_done = 7
    with pytest.raises(KeyError), session(store.engine) as s:
        s.get(Run, run_id).rounds_done = 8
        raise KeyError("rolled back")
    run = store.get_run(run_id)
    assert run.rounds_done == 7
    assert ensure_datetime(run.started_at).tzinfo is timezone.utc


def test_naive_times_are_utc_and_come_back_utc(store: RunStore, problem) -> None:
    """A time without a zone (an imported entry's promotion time, say) is UTC on every backend,
    whatever the PostgreSQL server's own time zone (the test server's is +12:45)."""
    from datetime import datetime, timezone

    from forge.db.engine import session
    from forge.db.models import Run
    from forge.db.store import ensure_datetime

    run_id = store.create_run(problem, {}, "a", "b", "triton", "cpu")
    with session(store.engine) as s:
        s.get(Run, run_id).finished_at = datetime(2026, 1, 1, 12, 0)
    back = ensure_datetime(store.get_run(run_id).finished_at)
    assert back == datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
    assert back.utcoffset().total_seconds() == 0


def test_nul_characters_are_stored_as_replacement_characters(store: RunStore, problem) -> None:
    """A model's answer or a process's output may hold NUL, which PostgreSQL's text refuses:
    every backend stores U+FFFD in its place instead of failing the run."""
    run_id = store.create_run(problem, {}, "a", "b", "triton", "cpu")
    cid = store.add_candidate(run_id, 0, 0, SOURCE + "# \x00\n", "triton", "initial")
    call = store.record_llm_call(
        run_id, "coder", "m", [{"role": "user", "content": "x\x00"}], "a\x00b", 1, 1, 0.0, 0.1
    )
    store.set_llm_call_error(call, "malformed: \x00")
    store.finish_run(run_id, "failed", error="crash\x00")
    assert store.candidate(cid).source == SOURCE + "# \ufffd\n"
    (stored,) = store.llm_calls(run_id)
    assert (stored.response_text, stored.error) == ("a\ufffdb", "malformed: \ufffd")
    assert json.loads(stored.messages_json) == [{"role": "user", "content": "x\x00"}]
    assert store.get_run(run_id).error == "crash\ufffd"


# ------------------------------------------------------------------ run leases

LEASED = r"run \d+ is being run by [^ ]+:\d+:[0-9a-f]{6} \(heartbeat \d+ s ago\); wait or stop it"


def test_a_run_lease_has_one_holder_at_a_time(db_url: str, problem) -> None:
    from forge.db.store import RunLeased

    first, second = RunStore(db_url), RunStore(get_engine(db_url))  # two engines, one database
    run_id = first.create_run(problem, {}, "a", "b", "triton", "cuda")
    lease = first.acquire_run_lease(run_id, ttl_s=30)
    with pytest.raises(RunLeased, match=LEASED):
        second.acquire_run_lease(run_id)
    assert lease.holder in str(first.run_lease(run_id).holder)
    assert lease.heartbeat() and not lease.lost
    lease.release()
    assert first.run_lease(run_id) is None
    with second.acquire_run_lease(run_id, ttl_s=30):
        with pytest.raises(RunLeased):
            first.acquire_run_lease(run_id)
    first.acquire_run_lease(run_id).release()
    with pytest.raises(RecordNotFound):
        first.acquire_run_lease(run_id + 100)


def test_an_expired_lease_is_taken_over_and_its_old_holder_learns_it(db_url: str, problem) -> None:
    first, second = RunStore(db_url), RunStore(get_engine(db_url))
    run_id = first.create_run(problem, {}, "a", "b", "triton", "cuda")
    crashed = first.acquire_run_lease(run_id, ttl_s=0.2)  # its holder stops heartbeating
    time.sleep(0.3)
    taken = second.acquire_run_lease(run_id, ttl_s=30)
    assert not crashed.heartbeat() and crashed.lost
    crashed.release()  # releases nothing: the lease is not its own any more
    assert first.run_lease(run_id).holder == taken.holder
    taken.release()


def test_a_lease_of_a_process_gone_from_this_host_is_taken_at_once(db_url: str, problem) -> None:
    """A `kill -9`ed holder on this host left a fresh lease: no need to wait for it to expire.
    A live holder's is still refused."""
    from forge.db.store import RunLeased

    store = RunStore(db_url)
    run_id = store.create_run(problem, {}, "a", "b", "triton", "cuda")
    holder = (
        "import os, sys\n"
        "from forge.db.store import RunStore\n"
        "RunStore(sys.argv[1], migrate_schema=False).acquire_run_lease(int(sys.argv[2]), ttl_s=600)\n"
        "os._exit(0)  # gone without releasing, as after kill -9\n"
    )
    subprocess.run([sys.executable, "-c", holder, db_url, str(run_id)], check=True, timeout=120)
    left = store.run_lease(run_id)
    assert left is not None and left.holder.split(":")[1] != str(os.getpid())
    with store.acquire_run_lease(run_id, ttl_s=30):
        with pytest.raises(RunLeased):
            RunStore(get_engine(db_url)).acquire_run_lease(run_id)


def test_the_heartbeat_thread_keeps_a_lease_alive(db_url: str, problem) -> None:
    from forge.db.store import RunLeased

    first, second = RunStore(db_url), RunStore(get_engine(db_url))
    run_id = first.create_run(problem, {}, "a", "b", "triton", "cuda")
    with first.acquire_run_lease(run_id, ttl_s=0.3) as lease:
        time.sleep(0.8)  # more than two TTLs: only the heartbeats keep it
        with pytest.raises(RunLeased):
            second.acquire_run_lease(run_id)
        assert not lease.lost
    second.acquire_run_lease(run_id).release()


CONTENDER = """
import sys, time
from pathlib import Path
from forge.db.store import RunLeased, RunStore
store = RunStore(sys.argv[1], migrate_schema=False)
go = Path(sys.argv[3])
print("waiting", flush=True)
while not go.exists():
    time.sleep(0.005)
try:
    lease = store.acquire_run_lease(int(sys.argv[2]), ttl_s=30)
except RunLeased as exc:
    print("refused", exc, flush=True)
else:
    print("won", flush=True)
    time.sleep(1.0)
    lease.release()
"""


def test_processes_racing_for_a_lease_have_one_winner(db_url: str, problem, tmp_path: Path) -> None:
    store = RunStore(db_url)
    run_id = store.create_run(problem, {}, "a", "b", "triton", "cuda")
    go = tmp_path / "go"
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", CONTENDER, db_url, str(run_id), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    assert [p.stdout.readline().strip() for p in racers] == ["waiting"] * 4
    go.touch()
    outputs = [p.communicate(timeout=120) for p in racers]
    verdicts = [out.split()[0] if out else err for out, err in outputs]
    assert sorted(verdicts) == ["refused", "refused", "refused", "won"], outputs
    assert store.run_lease(run_id) is None


def test_delete_run_removes_its_rows_and_waits_for_no_holder(store: RunStore, problem) -> None:
    from forge.db.store import RunLeased

    keep = store.create_run(problem, {}, "a", "b", "triton", "cuda")
    kept = store.add_candidate(keep, 0, 0, SOURCE, "triton", "initial")
    run_id = store.create_run(problem, {}, "a", "b", "triton", "cuda")
    parent = store.add_candidate(run_id, 0, 0, SOURCE, "triton", "initial")
    child = store.add_candidate(run_id, 0, 1, SOURCE + "#", "triton", "optimize", parent_id=parent)
    store.add_evaluation(child, make_result())
    store.record_llm_call(run_id, "coder", "m", [], "x", 1, 1, 0.0, 0.1, candidate_id=child)
    other = RunStore(store.engine)
    holder = other.acquire_run_lease(run_id, ttl_s=30)
    with pytest.raises(RunLeased):
        store.delete_run(run_id)
    holder.release()
    counts = store.delete_run(run_id)
    assert counts == {"llm_calls": 1, "evaluations": 1, "candidates": 2, "runs": 1}
    with pytest.raises(RecordNotFound):
        store.get_run(run_id)
    assert [c.id for c in store.candidates(keep)] == [kept]
    assert store.run_lease(run_id) is None


# ------------------------------------------------- read-only use, environment errors


def test_read_only_store_reads_without_migrating_or_writing(tmp_path: Path, problem) -> None:
    from forge.db.engine import DatabaseError

    missing = tmp_path / "none" / "forge.db"
    assert RunStore(f"sqlite:///{missing}", read_only=True).list_runs() == []
    assert not missing.parent.exists()  # nothing created
    path = tmp_path / "old.db"
    url = f"sqlite:///{path}"
    migrate(url, "0001")  # a database an older Forge wrote
    RunStore(get_engine(url), migrate_schema=False).create_run(problem, {}, "a", "b", "t", "c")
    reader = RunStore(url, read_only=True)
    assert [r.op for r in reader.list_runs()] == ["softmax"]
    assert current_revision(get_engine(url)) == "0001"  # not migrated
    with pytest.raises(DatabaseError, match=f"the database {path} is read-only"):
        reader.create_run(problem, {}, "a", "b", "triton", "cuda")
    (tmp_path / "blank.db").touch()
    assert RunStore(f"sqlite:///{tmp_path / 'blank.db'}", read_only=True).list_runs() == []


def test_environment_errors_are_one_line_database_errors(tmp_path: Path, monkeypatch) -> None:
    from forge.db.engine import DatabaseError

    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all " * 10)
    for read_only in (False, True):
        with pytest.raises(DatabaseError, match=f"{garbage} is not a Forge database.*move it"):
            RunStore(f"sqlite:///{garbage}", read_only=read_only)
    assert garbage.read_bytes() == b"not a database at all " * 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.db"]
    blocker = tmp_path / "file"
    blocker.touch()
    with pytest.raises(DatabaseError, match=f"cannot create the folder {blocker}/home.*FORGE_HOME"):
        RunStore(f"sqlite:///{blocker}/home/forge.db")
    with monkeypatch.context() as patched:
        patched.setitem(sys.modules, "psycopg", None)  # as where the postgres extra is missing
        with pytest.raises(
            DatabaseError, match=r"needs a postgresql driver.*pip install 'opforge\[postgres\]'"
        ):
            RunStore("postgresql+psycopg://forge@localhost/forge")
    with pytest.raises(DatabaseError, match=r"install pg8000, or use postgresql\+psycopg://"):
        RunStore("postgresql+pg8000://forge@localhost/forge")
    with pytest.raises(DatabaseError, match="not a database URL"):
        RunStore("no-such-scheme:::")
    with pytest.raises(DatabaseError, match=f"{db_engine.BUSY_TIMEOUT_ENV}='soon'"):
        monkeypatch.setenv(db_engine.BUSY_TIMEOUT_ENV, "soon")
        RunStore(f"sqlite:///{tmp_path / 'x.db'}")


LOCKER = """
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("PRAGMA locking_mode=EXCLUSIVE")
c.execute("BEGIN EXCLUSIVE")
c.execute("CREATE TABLE IF NOT EXISTS lock_holder (x INTEGER)")
print("locked", flush=True)
sys.stdin.readline()
"""


def test_a_locked_database_is_reported_after_the_busy_timeout(
    sqlite_url: str, tmp_path: Path, problem, monkeypatch
) -> None:
    from forge.db.engine import DatabaseError

    writer = RunStore(sqlite_url)
    writer.create_run(problem, {}, "a", "b", "triton", "cuda")
    writer.engine.dispose()  # the locker takes an exclusive lock: no other connection open
    monkeypatch.setenv(db_engine.BUSY_TIMEOUT_ENV, "0.3")
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(tmp_path / "forge.db")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert locker.stdout.readline().strip() == "locked"
        for read_only in (True, False):
            started = time.monotonic()
            with pytest.raises(DatabaseError, match=r"forge.db is locked by another process"):
                RunStore(sqlite_url, read_only=read_only).list_runs()
            assert time.monotonic() - started < 10
    finally:
        locker.stdin.close()
        locker.wait(timeout=30)
    assert len(RunStore(sqlite_url, read_only=True).list_runs()) == 1
