"""What only PostgreSQL has, on a real server (tests/postgres_server.py): read-only
transactions for the commands that only look, roles with fewer privileges, a password that
Forge never prints, and concurrent totals updates that wait for a row lock. What both backends
share is tested on both in tests/test_db.py and the library tests (the `db_url` fixture)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator

import pytest
from forge_process import run_forge as forge
from postgres_server import PASSWORD, PASSWORD_ROLE, PostgresServer
from sqlalchemy import text

from forge.db.engine import DatabaseError, current_revision, get_engine
from forge.db.store import RunStore, ensure_datetime
from forge.evaluator.problem import resolve_problem

pytestmark = pytest.mark.postgres


@pytest.fixture
def database(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh database's name (dropped after the test)."""
    name = postgres_server.create_database()
    yield name
    postgres_server.drop_database(name)


@pytest.fixture
def url(postgres_server: PostgresServer, database: str) -> str:
    return postgres_server.url(database)


@pytest.fixture(scope="module")
def problem():
    return resolve_problem("softmax")


def test_a_read_only_store_cannot_write(url: str, problem) -> None:
    assert RunStore(url, read_only=True).list_runs() == []  # blank: reads as empty
    assert current_revision(get_engine(url)) is None  # and stays blank
    run_id = RunStore(url).create_run(problem, {}, "a", "b", "triton", "cuda")
    reader = RunStore(url, read_only=True)
    assert [r.id for r in reader.list_runs()] == [run_id]
    with pytest.raises(DatabaseError, match=r"cannot write to the database .* opened it read-only"):
        reader.create_run(problem, {}, "a", "b", "triton", "cuda")
    with pytest.raises(DatabaseError, match="read-only"):
        reader.finish_run(run_id, "failed")
    with pytest.raises(DatabaseError, match="read-only"), reader.engine.begin() as connection:
        connection.execute(text("DELETE FROM run"))
    assert RunStore(url).get_run(run_id).status == "running"


def test_times_are_utc_whatever_the_server_time_zone(url: str, problem) -> None:
    with get_engine(url).connect() as connection:
        assert connection.exec_driver_sql("SHOW TimeZone").scalar() == "UTC"
        server_zone = connection.exec_driver_sql(
            "SELECT reset_val FROM pg_settings WHERE name = 'TimeZone'"
        )
        assert server_zone.scalar() == "Pacific/Chatham"  # the server's own setting stays
    store = RunStore(url)
    run_id = store.create_run(problem, {}, "a", "b", "triton", "cuda")
    started = store.get_run(run_id).started_at
    assert started.utcoffset().total_seconds() == 0
    assert abs(time.time() - ensure_datetime(started).timestamp()) < 60


def test_totals_written_after_waiting_for_a_concurrent_update_count_every_row(
    url: str, problem
) -> None:
    """Two controllers update one run's totals at once: the one that waited for the other's
    row lock must count what was committed meanwhile (a plain UPDATE would write totals from the
    snapshot it started with)."""
    store = RunStore(url)
    run_id = store.create_run(problem, {}, "a", "b", "triton", "cuda")
    store.record_llm_call(run_id, "coder", "m", [], "x", 10, 1, 0.0, 0.1)
    other = store.engine.connect()
    other.execute(text("SELECT id FROM run WHERE id = :id FOR NO KEY UPDATE"), {"id": run_id})
    waiting = threading.Thread(target=store.update_run_totals, args=(run_id,))
    waiting.start()
    try:
        deadline = time.monotonic() + 30
        waiters = text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'"
        )
        with store.engine.connect() as watcher:
            while not watcher.execute(waiters).scalar():
                assert time.monotonic() < deadline, "the totals update never waited for the lock"
                watcher.rollback()  # pg_stat_activity is read once per transaction
                time.sleep(0.02)
        store.record_llm_call(run_id, "coder", "m", [], "y", 5, 1, 0.0, 0.1)
    finally:
        other.commit()
        other.close()
        waiting.join(timeout=30)
    assert store.get_run(run_id).prompt_tokens == 15


@pytest.fixture
def browse_role(postgres_server: PostgresServer, database: str, url: str, problem) -> dict:
    """A database with two runs, and a URL for a role with a password that may only read it
    (what a shared browse page would use), as `forge` sees them from its environment."""
    store = RunStore(url)
    runs = [store.create_run(problem, {}, "a", "b", "triton", "cuda") for _ in range(2)]
    store.engine.dispose()
    with get_engine(url).begin() as connection:
        connection.exec_driver_sql(
            f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {PASSWORD_ROLE}"
        )
    env = {k: v for k, v in os.environ.items() if k not in ("FORGE_DB_URL", "COLUMNS")}
    env["FORGE_HOME"] = str(postgres_server.root / "unused-home")
    reader = postgres_server.url(database, user=PASSWORD_ROLE, password=PASSWORD)
    return {"runs": runs, "env": env, "url": reader}


def one_line_error(out, *needles: str) -> str:  # noqa: ANN001 (CompletedProcess)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_a_password_in_the_url_is_never_printed(browse_role: dict) -> None:
    env, url = browse_role["env"], browse_role["url"]
    listed = forge("runs", "--json", env={**env, "FORGE_DB_URL": url})
    assert listed.returncode == 0, listed.stderr
    assert [r["id"] for r in json.loads(listed.stdout)] == browse_role["runs"][::-1]
    refused = forge("delete", str(browse_role["runs"][0]), "--yes", "--db", url, env=env)
    one_line_error(refused, "refused the statement", "permission denied", f"{PASSWORD_ROLE}:***@")
    wrong = url.replace(PASSWORD, "Wr0ng-pa55word-x")
    denied = forge("runs", env={**env, "FORGE_DB_URL": wrong})
    one_line_error(denied, "cannot connect to the database", "password authentication failed")
    for out in (listed, refused, denied):
        printed = out.stdout + out.stderr
        assert PASSWORD not in printed and "Wr0ng-pa55word-x" not in printed
