"""A real PostgreSQL server for the tests: started once per test session from this machine's
server binaries (Debian's `postgresql` package; `.ci/postgres.sh` installs it on CI), listening
only on a Unix socket in its own temporary folder, one fresh database per test.

The binaries are found on PATH (`pg_ctl`), else in the newest `/usr/lib/postgresql/*/bin`
(where Debian puts them); `FORGE_TEST_PG_BINDIR` names the folder to use instead. PostgreSQL refuses to run
as root: as root the server runs as the `postgres` user (else `nobody`).

The server runs in a time zone far from UTC (`Pacific/Chatham`, +12:45), so that a naive
datetime or a time read back in the server's zone shows up as a wrong time, and `fsync` off (a
scratch server: fast, nothing to keep). Two roles: `forge` (superuser, no password: `trust` on
the socket) and `forge_pw` (password `scram-sha-256`, for the tests that keep a password out of
what Forge prints).
"""

from __future__ import annotations

import ctypes
import glob
import itertools
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

BINDIR_ENV = "FORGE_TEST_PG_BINDIR"
SERVER_TIMEZONE = "Pacific/Chatham"
PASSWORD_ROLE = "forge_pw"
PASSWORD = "s3cret-Pg-pass-7f1e"
START_TIMEOUT_S = 60.0


class PostgresUnavailable(RuntimeError):
    """No server could be started here (the message says why and how to get one)."""


def find_bindir() -> Path:
    """The folder of `initdb`, `pg_ctl` and `postgres`."""
    named = os.environ.get(BINDIR_ENV)
    if named:
        candidates = [Path(named)]
        where = f"{BINDIR_ENV}={named}"
    else:
        on_path = shutil.which("pg_ctl")
        debian = sorted(
            glob.glob("/usr/lib/postgresql/*/bin"),
            key=lambda p: [int(x) for x in re.findall(r"\d+", p)],
        )
        candidates = [Path(on_path).resolve().parent] if on_path else []
        candidates += [Path(p) for p in reversed(debian)]
        where = "PATH or /usr/lib/postgresql/*/bin"
    for folder in candidates:
        if all((folder / tool).is_file() for tool in ("initdb", "postgres")):
            return folder
    raise PostgresUnavailable(
        f"no PostgreSQL server binaries (initdb, postgres) in {where}: install Debian's "
        f"`postgresql` package (bash .ci/postgres.sh), or set {BINDIR_ENV}"
    )


def _server_user() -> pwd.struct_passwd | None:
    """Whom the server runs as: None (this user) unless this is root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PostgresUnavailable("running as root with neither a `postgres` nor a `nobody` user")


def _stop_with_parent() -> None:
    """In the server's process before exec: have the kernel send SIGQUIT (immediate shutdown)
    when the test process dies without stopping it (killed, Ctrl-C twice)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGQUIT)


class PostgresServer:
    """One running server; `create_database()` / `drop_database()` per test."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.user = _server_user()
        self.root = Path(tempfile.mkdtemp(prefix="forge-test-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.process: subprocess.Popen | None = None
        self._names = itertools.count()

    # ------------------------------------------------------------ lifecycle

    def _as_server_user(self) -> dict:
        if self.user is None:
            return {}
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}

    def start(self) -> PostgresServer:
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        env = {**os.environ, "LC_ALL": "C", "TZ": "UTC"}
        initdb = subprocess.run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "forge",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=self.root,
            timeout=120,
            **self._as_server_user(),
        )
        if initdb.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {initdb.stderr.strip()[-500:]}")
        (self.data / "pg_hba.conf").write_text(
            f"local all {PASSWORD_ROLE} scram-sha-256\nlocal all all trust\n"
        )
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [
                    str(self.bindir / "postgres"),
                    "-D",
                    str(self.data),
                    "-k",
                    str(self.root),
                    "-c",
                    "listen_addresses=",
                    "-c",
                    "fsync=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "max_connections=200",
                    "-c",
                    f"timezone={SERVER_TIMEZONE}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.root,
                start_new_session=True,
                preexec_fn=_stop_with_parent,
                **self._as_server_user(),
            )
        self._wait_until_ready()
        self.admin(
            f"CREATE ROLE {PASSWORD_ROLE} LOGIN CREATEDB PASSWORD '{PASSWORD}'",
        )
        return self

    def _wait_until_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise PostgresUnavailable(
                    f"the server exited ({self.process.returncode}): {self._log_tail()}"
                )
            try:
                psycopg.connect(self.conninfo("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    self.stop()
                    raise PostgresUnavailable(
                        f"the server did not answer within {START_TIMEOUT_S:g} s ({exc}): "
                        f"{self._log_tail()}"
                    ) from exc
                time.sleep(0.05)

    def _log_tail(self) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-5:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown: ends the sessions
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------ databases

    def conninfo(self, database: str) -> str:
        return f"host={self.root} dbname={database} user=forge"

    def admin(self, *statements: str) -> None:
        """Run statements as the superuser, outside a transaction."""
        import psycopg

        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as connection:
            for statement in statements:
                connection.execute(statement)

    def create_database(self) -> str:
        name = f"forge_test_{os.getpid()}_{next(self._names)}"
        self.admin(f"CREATE DATABASE {name} STRATEGY FILE_COPY")
        return name

    def drop_database(self, name: str) -> None:
        self.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def url(self, database: str, *, user: str = "forge", password: str | None = None) -> str:
        login = user if password is None else f"{user}:{quote(password, safe='')}"
        return f"postgresql+psycopg://{login}@/{database}?host={quote(str(self.root))}"


def start_server() -> PostgresServer:
    """A started server, or PostgresUnavailable saying why not."""
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise PostgresUnavailable(
            f"psycopg is not installed ({exc}): pip install -e '.[dev,postgres]' -c constraints.txt"
        ) from exc
    server = PostgresServer(find_bindir())
    try:
        return server.start()
    except BaseException:
        server.stop()
        raise
