"""Fixtures shared by the test modules (keep this small and generic)."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from postgres_server import PostgresServer, PostgresUnavailable, start_server

FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"

# Without a GPU (CI), Triton kernels in this process run through the interpreter, which must be
# switched on before triton is first imported; loading a KernelBench-style problem imports it
# (its derived input sets are checked on torch's meta device, which loads torch._inductor).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Tests Ctrl-C `forge` processes: a suite started in the background (`nohup`, `&` in a script)
# inherits SIGINT ignored, and so would every process it starts, which then never sees Ctrl-C.
signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """tests/fixtures: legit/ (candidates that must pass), cheats/ (that must not), bad/."""
    return FIXTURES_DIR


@pytest.fixture
def clean_library() -> Iterator[None]:
    """The kernel library's runtime off and its counts zeroed around a test (modules that enable
    it use it through `pytest.mark.usefixtures`)."""
    import forge.kernels_library as kl

    kl.disable()
    kl.reset_stats()
    yield
    kl.disable()


@pytest.fixture(scope="session")
def forge_cache_dir() -> Iterator[Path]:
    """A compiler cache (Triton, torch extensions, cupy) shared by the evaluations of one test
    session, so that tests never write to the user's ~/.forge. Not under pytest's tmp_path: that
    is mode 0700, and a sandbox that drops privileges (uid 65534) could not reach it."""
    path = Path(tempfile.mkdtemp(prefix="forge-test-cache-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------ databases
#
# A test that takes `db_url` (or `new_db_url`, for several databases) runs once on SQLite and
# once on a real PostgreSQL server (marked `postgres`: `pytest -m postgres` runs only those).
# Without server binaries or psycopg the PostgreSQL runs skip, saying why; with CI set (as
# .ci/run sets it) they fail instead. `sqlite_url` is for what only SQLite has (WAL, file locks).

DATABASE_BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session (tests/postgres_server.py)."""
    try:
        server = start_server()
    except PostgresUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and no PostgreSQL server can run: {exc}")
        pytest.skip(f"no PostgreSQL server: {exc}")
    yield server
    server.stop()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file that does not exist yet."""
    return f"sqlite:///{tmp_path / 'forge.db'}"


@pytest.fixture(params=DATABASE_BACKENDS)
def new_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """Call it for the URL of another fresh, empty database of the backend under test (SQLite
    files in tmp_path; databases on the session's PostgreSQL server, dropped after the test)."""
    if request.param == "sqlite":
        names = (f"forge{n or ''}.db" for n in itertools.count())
        yield lambda: f"sqlite:///{tmp_path / next(names)}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    made: list[str] = []

    def make() -> str:
        made.append(server.create_database())
        return server.url(made[-1])

    yield make
    for name in made:
        server.drop_database(name)


@pytest.fixture
def db_url(new_db_url: Callable[[], str]) -> str:
    """A fresh, empty database: a SQLite file, then a PostgreSQL database (see above)."""
    return new_db_url()
