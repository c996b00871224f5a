"""Problems of the environment, from the command line: a garbage, locked, read-only or
unreachable database, an unwritable FORGE_HOME, a missing PostgreSQL driver, no Docker engine.
Each is one `error:` line naming the file or service and the fix, a non-zero exit, and nothing
changed; commands that only read open the database read-only."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from forge_process import run_forge

from forge.db.store import RunStore
from forge.evaluator.problem import resolve_problem

LEGIT_SOFTMAX = Path(__file__).parent / "fixtures" / "legit" / "triton_softmax.py"


def forge(*args: str, env: dict):
    return run_forge(*args, env=env, cwd="/")


def one_line_error(out: subprocess.CompletedProcess, *needles: str, code: int = 2) -> str:
    assert out.returncode == code, out.stdout + out.stderr
    lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def home() -> Path:
    """A scratch FORGE_HOME (removed even when a test left it read-only)."""
    path = Path(tempfile.mkdtemp(prefix="forge-env-test-"))
    yield path
    writable(path, *path.rglob("*"))
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def env(home: Path) -> dict:
    environ = {k: v for k, v in os.environ.items() if k not in ("FORGE_DB_URL",)}
    environ["FORGE_HOME"] = str(home)
    environ["COLUMNS"] = "200"
    return environ


def make_run(path: Path) -> int:
    store = RunStore(f"sqlite:///{path}")
    run = store.create_run(resolve_problem("softmax"), {}, "m", "m", "triton", "cpu")
    store.engine.dispose()
    return run


@pytest.mark.parametrize(
    "args", [["runs"], ["show", "1"], ["library", "list"], ["delete", "1", "--yes"]]
)
def test_a_garbage_database_file_is_named_and_left_alone(home, env, args):
    db = home / "forge.db"
    db.write_bytes(b"this is not sqlite\n" * 20)
    one_line_error(forge(*args, env=env), str(db), "not a Forge database", "move it aside")
    assert db.read_bytes() == b"this is not sqlite\n" * 20
    assert sorted(p.name for p in home.iterdir()) == ["forge.db"]


def test_a_locked_database_is_one_line_after_a_short_wait(home, env):
    db = home / "forge.db"
    make_run(db)
    code = (
        "import sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('PRAGMA locking_mode=EXCLUSIVE'); c.execute('BEGIN EXCLUSIVE')\n"
        "c.execute('CREATE TABLE IF NOT EXISTS held (x INTEGER)')\n"
        "print('locked', flush=True); sys.stdin.readline()\n"
    )
    locker = subprocess.Popen(
        [sys.executable, "-c", code, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert locker.stdout.readline().strip() == "locked"
        quick = {**env, "FORGE_DB_BUSY_TIMEOUT_S": "0.5"}
        for args in (["runs"], ["delete", "1", "--yes"]):
            one_line_error(forge(*args, env=quick), str(db), "locked by another process")
    finally:
        locker.stdin.close()
        locker.wait(timeout=30)


def test_an_unwritable_forge_home(home, env):
    blocker = home / "a-file"
    blocker.write_text("")
    bad = {**env, "FORGE_HOME": str(blocker / "home")}
    one_line_error(
        forge("delete", "1", "--yes", env=bad),
        f"cannot create the folder {blocker}/home",
        "FORGE_HOME",
    )
    out = forge("runs", env=bad)  # reading needs no folder: an empty list, nothing created
    assert out.returncode == 0 and "no runs yet" in out.stdout, out.stderr


def read_only(*paths: Path) -> None:
    """Make files and folders unwritable, for root too (root ignores modes: the immutable
    attribute, where the filesystem has it)."""
    for path in paths:
        path.chmod(0o555 if path.is_dir() else 0o444)
        if os.geteuid() == 0:
            done = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
            if done.returncode != 0:
                writable(*paths)
                pytest.skip(f"cannot make {path} read-only for root here: {done.stderr!r}")


def writable(*paths: Path) -> None:
    for path in paths:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], capture_output=True)
        path.chmod(0o755 if path.is_dir() else 0o644)


def test_a_read_only_database_is_read_and_never_written(home, env):
    db = home / "forge.db"
    run = make_run(db)
    read_only(db, home)  # no -wal / -shm can be created either
    try:
        listed = forge("runs", env=env)
        assert listed.returncode == 0 and "softmax" in listed.stdout, listed.stderr
        shown = forge("show", str(run), env=env)
        assert shown.returncode == 0, shown.stderr
        one_line_error(forge("delete", str(run), "--yes", env=env), str(db), "read-only")
    finally:
        writable(db, home)
    assert [r.id for r in RunStore(f"sqlite:///{db}", read_only=True).list_runs()] == [run]


def test_an_unwritable_folder_for_a_new_database(home, env):
    read_only(home)
    try:
        one_line_error(
            forge("delete", "1", "--yes", env=env),
            f"cannot create or open the database {home / 'forge.db'}",
            "FORGE_HOME",
        )
        assert list(home.iterdir()) == []
    finally:
        writable(home)


def test_postgresql_without_its_driver_names_the_extra(env, tmp_path):
    """As on an install without the postgres extra: psycopg shadowed by a module that is not
    there (the dev extra installs the real one)."""
    (tmp_path / "psycopg.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'psycopg'\", name='psycopg')\n"
    )
    env = {
        **env,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")])),
    }
    for args in (["runs"], ["show", "1"], ["library", "list"]):
        one_line_error(
            forge(*args, "--db", "postgresql+psycopg://forge@localhost/forge", env=env),
            "postgresql+psycopg://forge@localhost/forge",
            "pip install 'opforge[postgres]'",
        )


def test_docker_sandbox_without_an_engine(env):
    no_engine = {**env, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    one_line_error(
        forge(
            "eval",
            "softmax",
            str(LEGIT_SOFTMAX),
            "--device",
            "cpu",
            "--sandbox",
            "docker",
            env=no_engine,
        ),
        "Docker engine unavailable",
        "--sandbox local",
    )


def _mapped(pid: int, library: str) -> bool:
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.parametrize("after_s", [0.0, 1.5])
def test_ctrl_c_while_starting_is_one_line(home, env, after_s):
    """Ctrl-C while `forge` (the installed command) imports its modules (pydantic, SQLAlchemy,
    litellm: a second or more), or soon after, ends it with one line and status 130, not a
    traceback. The signal is sent once pydantic's extension is loaded: Python's own start-up,
    before any of Forge runs, is not Forge's to handle."""
    script = Path(sys.executable).parent / "forge"
    (home / "answers.json").write_text('[{"role": "coder", "text": "no code", "delay_s": 3}]')
    proc = subprocess.Popen(
        [str(script), "optimize", "softmax", "--device", "cpu", "--rounds", "1",
         "--model", f"scripted:{home / 'answers.json'}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not _mapped(proc.pid, "pydantic_core") and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(after_s)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert "Traceback" not in stderr, stderr
    assert proc.returncode == 130, stderr


def test_ctrl_c_inside_a_weakref_callback_still_ends_the_command():
    """Python cannot raise out of a weakref callback, so a Ctrl-C that lands in one (SQLAlchemy's
    import registers them) is printed as "Exception ignored" and lost, and the command runs on.
    `forge`'s entry point raises it again in the main thread: one line, status 130."""
    program = (
        "import sys, time, weakref\n"
        "import forge.cli, forge.cli.main\n"
        "class Held: pass\n"
        "def interrupted(_):\n"
        "    raise KeyboardInterrupt\n"
        "def app():\n"
        "    held = Held()\n"
        "    ref = weakref.ref(held, interrupted)\n"
        "    del held\n"
        "    time.sleep(30)\n"
        "    print('ran on')\n"
        "forge.cli.main.app = app\n"
        "forge.cli.run()\n"
    )
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == "interrupted\n"
    assert "ran on" not in proc.stdout
    assert time.monotonic() - started < 20
