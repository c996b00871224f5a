"""Where the database lives, how to connect to it, and how to bring its schema up to date.

The URL, first match wins: an explicit `url` argument (`--db`), the `FORGE_DB_URL` environment
variable (any SQLAlchemy URL; PostgreSQL is the multi-user choice, e.g.
`postgresql+psycopg://user@host/forge`), else SQLite at `$FORGE_HOME/forge.db` with
`FORGE_HOME` defaulting to `~/.forge`.

SQLite runs in WAL mode with a busy timeout, so `forge runs` in a second terminal reads while a
run writes, and parallel trajectories of one run can write from several threads.

Migrations are Alembic's, run programmatically: the script location is this package's
`migrations` folder, so it works from an installed wheel with no alembic.ini.

PostgreSQL is the choice for several controllers (and the browse commands) on one database:
every connection runs in UTC (`SET TIME ZONE 'UTC'`), whatever the server's time zone.

Read-only use (`get_engine(url, read_only=True)`, for `forge runs`, `show`, `diff`, `library
list`...) opens a SQLite file with `mode=ro` (`immutable=1` when even the WAL index cannot be
created, i.e. the folder is read-only too), never migrates and never writes; a file that does not
exist yet reads as an empty database and is not created. On PostgreSQL every transaction of a
read-only engine is `READ ONLY`: the server refuses a write.

What goes wrong with the database itself (a file that is not SQLite, a locked or read-only file,
a folder that cannot be created, a missing driver, a server that does not answer) is raised as
`DatabaseError`, whose message is one line naming the file or server and the fix; the CLI
prints it as is. The translation lives here only (`explain`, hooked into every engine's
`handle_error`).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from urllib.parse import quote, unquote

from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, create_engine

from forge.db.errors import DatabaseError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
"""How long a writer waits for another writer's lock (`FORGE_DB_BUSY_TIMEOUT_S` overrides)."""
READ_ONLY_BUSY_TIMEOUT_MS = 5_000
"""How long a read-only command waits for a lock (WAL readers are rarely blocked at all)."""
BUSY_TIMEOUT_ENV = "FORGE_DB_BUSY_TIMEOUT_S"
DRIVER_EXTRAS = {"postgresql": "postgres"}
"""The `opforge[...]` extra that installs a backend's driver."""


def where(url: str | URL) -> str:
    """How a message names the database: a SQLite file's path, else the URL without password."""
    resolved = make_url(url) if isinstance(url, str) else url
    if resolved.get_backend_name() == "sqlite":
        database = resolved.database or ""
        if database.startswith("file:"):
            database = unquote(database.removeprefix("file:"))
        return database or "the in-memory database"
    return resolved.render_as_string(hide_password=True)


def _busy_timeout_ms(read_only: bool) -> int:
    value = os.environ.get(BUSY_TIMEOUT_ENV, "").strip()
    if value:
        try:
            return max(0, int(float(value) * 1000))
        except ValueError:
            raise DatabaseError(
                f"{BUSY_TIMEOUT_ENV}={value!r} is not a number of seconds: fix or unset it"
            ) from None
    return READ_ONLY_BUSY_TIMEOUT_MS if read_only else SQLITE_BUSY_TIMEOUT_MS


def explain(
    exc: BaseException, url: str | URL, *, read_only: bool = False, statement: str | None = None
) -> DatabaseError | None:
    """The `DatabaseError` for an error that is the database's environment, not Forge's logic
    (None for anything else, e.g. an integrity error a caller handles)."""
    name = where(url)
    backend = (make_url(url) if isinstance(url, str) else url).get_backend_name()
    original = getattr(exc, "orig", None) or exc
    text = " ".join(str(original).split())
    lowered = text.lower()
    if backend == "sqlite":
        if "file is not a database" in lowered or "malformed" in lowered:
            return DatabaseError(
                f"{name} is not a Forge database (not SQLite, or damaged: {text}): move it aside "
                "and Forge creates a new one, or point --db / FORGE_DB_URL at another database"
            )
        if "database is locked" in lowered or "table is locked" in lowered:
            waited = _busy_timeout_ms(read_only) / 1000
            return DatabaseError(
                f"the database {name} is locked by another process (waited {waited:g} s): wait "
                f"for it to finish or stop it (or raise {BUSY_TIMEOUT_ENV})"
            )
        exists = Path(name).exists()
        unopenable = "unable to open" in lowered or "disk i/o" in lowered
        if (
            "readonly" in lowered
            or "read-only" in lowered
            or (unopenable and exists and not read_only)
        ):
            return DatabaseError(
                f"the database {name} is read-only: make it and its folder writable "
                "(chmod u+w), or use a command that only reads (forge runs, show, diff, "
                "library list)"
            )
        if unopenable:
            folder = Path(name).parent
            if read_only:
                return DatabaseError(
                    f"cannot read the database {name} ({text}): check that it and its folder "
                    f"{folder} are readable"
                )
            return DatabaseError(
                f"cannot create or open the database {name} ({text}): make {folder} writable, "
                "or set FORGE_HOME to a writable folder (or --db / FORGE_DB_URL)"
            )
        return None
    text = _masked(text, url)
    refusal = SERVER_REFUSALS.get(getattr(original, "sqlstate", None) or "")
    if refusal is not None:
        return DatabaseError(refusal.format(name=name, text=text))
    if statement is None and type(original).__name__ in (
        "OperationalError",
        "InterfaceError",
        "ConnectionFailure",
    ):
        return DatabaseError(
            f"cannot connect to the database {name} ({text}): check that the server is running "
            "and the URL (--db / FORGE_DB_URL) is right"
        )
    return None


SERVER_REFUSALS = {
    "25006": "cannot write to the database {name} ({text}): this command opened it read-only",
    "42501": "the database {name} refused the statement ({text}): grant its user what Forge "
    "needs (SELECT for the commands that only read; INSERT, UPDATE, DELETE, and CREATE for the "
    "first run that creates the tables)",
}
"""Server errors (by SQLSTATE) that are the database's environment, with their message."""


def _masked(text: str, url: str | URL) -> str:
    """A driver's message with the URL's password and any secret-looking value masked."""
    from forge.db.redact import redact

    password = (make_url(url) if isinstance(url, str) else url).password
    if password:
        text = text.replace(str(password), "***")
    return redact(text)


def _translate_errors(engine: Engine, read_only: bool) -> None:
    def handle_error(context) -> None:  # noqa: ANN001 (sqlalchemy ExceptionContext)
        translated = explain(
            context.original_exception,
            engine.url,
            read_only=read_only,
            statement=context.statement,
        )
        if translated is not None:
            raise translated from context.original_exception

    event.listen(engine, "handle_error", handle_error)


def forge_home() -> Path:
    """`$FORGE_HOME`, default `~/.forge`."""
    return Path(os.environ.get("FORGE_HOME") or Path.home() / ".forge").expanduser()


def database_url(url: str | None = None) -> str:
    """The URL to use: `url`, else `$FORGE_DB_URL`, else SQLite at `$FORGE_HOME/forge.db`."""
    if url:
        return url
    env = os.environ.get("FORGE_DB_URL")
    if env:
        return env
    return f"sqlite:///{forge_home() / 'forge.db'}"


def _sqlite_pragmas(busy_timeout_ms: int, read_only: bool):  # noqa: ANN202
    def pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001 (DBAPI types vary)
        cursor = dbapi_connection.cursor()
        if not read_only:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        if not read_only:
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return pragmas


def _postgres_session(read_only: bool):  # noqa: ANN202
    """Set every new PostgreSQL connection to UTC (and, for a read-only engine, READ ONLY
    transactions), committed so that the pool's rollbacks keep it."""

    def configure(dbapi_connection, _record) -> None:  # noqa: ANN001 (DBAPI types vary)
        cursor = dbapi_connection.cursor()
        cursor.execute("SET TIME ZONE 'UTC'")
        if read_only:
            cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        cursor.close()
        dbapi_connection.commit()

    return configure


def _read_only_query(path: Path) -> dict[str, str]:
    """The URI options of a read-only open: `mode=ro`, plus `immutable=1` when a read-only open
    fails because the WAL index cannot be created (a read-only folder, where no writer can be at
    work either)."""
    query = {"mode": "ro", "uri": "true"}
    try:
        uri = f"file:{quote(str(path))}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True, timeout=0)) as connection:
            connection.execute("SELECT count(*) FROM sqlite_master").fetchall()
    except sqlite3.OperationalError as exc:
        text = str(exc).lower()
        if "readonly" in text or "unable to open" in text:
            query["immutable"] = "1"
    except sqlite3.DatabaseError:
        pass  # not a database: the engine's first connection reports it (`explain`)
    return query


def _missing_driver(resolved: URL, exc: ImportError) -> DatabaseError:
    backend = resolved.get_backend_name()
    extra = DRIVER_EXTRAS.get(backend)
    module = getattr(exc, "name", None) or ""
    if extra and module in ("psycopg", ""):
        fix = f"install it with `pip install 'opforge[{extra}]'`"
    elif extra:
        fix = f"install {module}, or use {backend}+psycopg:// with `pip install 'opforge[{extra}]'`"
    else:
        fix = f"install the driver for {resolved.drivername}"
    return DatabaseError(
        f"the database {where(resolved)} needs a {backend} driver that is not installed "
        f"({exc}): {fix}"
    )


def get_engine(url: str | None = None, *, echo: bool = False, read_only: bool = False) -> Engine:
    """An engine for `database_url(url)`; for a SQLite file, creates its folder and sets WAL,
    a busy timeout and foreign-key enforcement on every connection. `read_only=True` opens a
    SQLite file read-only and creates nothing (a missing file reads as an empty database).
    Errors of the database's environment are raised as `DatabaseError`."""
    text = database_url(url)
    try:
        resolved = make_url(text)
    except ArgumentError as exc:
        raise DatabaseError(
            f"'{text}' is not a database URL ({exc}): use e.g. sqlite:////path/forge.db or "
            "postgresql+psycopg://user@host/forge"
        ) from exc
    if resolved.get_backend_name() != "sqlite":
        try:
            engine = create_engine(resolved, echo=echo, pool_pre_ping=True)
        except ImportError as exc:
            raise _missing_driver(resolved, exc) from exc
        if resolved.get_backend_name() == "postgresql":
            event.listen(engine, "connect", _postgres_session(read_only))
        _translate_errors(engine, read_only)
        return engine
    busy_ms = _busy_timeout_ms(read_only)
    kwargs: dict = {"connect_args": {"check_same_thread": False, "timeout": busy_ms / 1000}}
    database = resolved.database or ""
    in_memory = database in ("", ":memory:") or database.startswith("file::memory:")
    if in_memory:
        kwargs["poolclass"] = StaticPool
    elif read_only:
        path = Path(database).expanduser()
        if not path.exists():
            return _empty_database(echo)
        path = path.resolve()
        resolved = resolved.set(database=f"file:{quote(str(path))}", query=_read_only_query(path))
    else:
        folder = Path(database).expanduser().parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseError(
                f"cannot create the folder {folder} for the database {database} "
                f"({exc.strerror or exc}): set FORGE_HOME to a writable folder, or pass --db"
            ) from exc
    engine = create_engine(resolved, echo=echo, **kwargs)
    event.listen(engine, "connect", _sqlite_pragmas(busy_ms, read_only and not in_memory))
    _translate_errors(engine, read_only)
    return engine


def _empty_database(echo: bool) -> Engine:
    """An in-memory database at the newest schema: what a read-only command sees when no
    database file exists yet."""
    return migrate(get_engine("sqlite://", echo=echo))


def open_read_only(url: str | None = None) -> Engine:
    """An engine that only reads: no migration, no write; a blank database reads as empty, one
    migrated by a newer Forge is refused (`SchemaTooNew`)."""
    engine = get_engine(url, read_only=True)
    current = current_revision(engine)
    if current is None:
        engine.dispose()
        return _empty_database(False)
    _refuse_unknown(engine, current)
    return engine


def alembic_config(engine: Engine):  # noqa: ANN201 (alembic imported lazily)
    """An Alembic Config pointing at the packaged migrations, bound to `engine`."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


class SchemaTooNew(DatabaseError):
    """The database was migrated by a newer Forge than this one."""


def _script_directory():  # noqa: ANN202 (alembic imported lazily)
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(config)


def migrate(engine_or_url: Engine | str | None = None, revision: str = "head") -> Engine:
    """Run Alembic `upgrade <revision>` on the database; returns the engine used."""
    from alembic import command

    engine = engine_or_url if isinstance(engine_or_url, Engine) else get_engine(engine_or_url)
    current = current_revision(engine)
    _refuse_unknown(engine, current)
    if current == head_revision() and revision == "head":
        return engine  # nothing to do: no write, no lock
    command.upgrade(alembic_config(engine), revision)
    return engine


def _refuse_unknown(engine: Engine, current: str | None) -> None:
    known = {script.revision for script in _script_directory().walk_revisions()}
    if current is not None and current not in known:
        raise SchemaTooNew(
            f"the database {where(engine.url)} is at schema revision {current}, newer than this "
            f"Forge knows (head {head_revision()}): upgrade Forge, or point --db / FORGE_DB_URL "
            "at another database"
        )


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at (None for a blank database)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str:
    """The newest revision shipped with this version of Forge."""
    head = _script_directory().get_current_head()
    if head is None:
        raise RuntimeError(f"no Alembic revision found under {MIGRATIONS_DIR}")
    return head


def migration_sql(dialect_url: str, revision: str = "head") -> str:
    """The SQL of `upgrade <revision>` for a dialect (`postgresql://`), without connecting:
    for a DBA who applies schema changes by hand (Alembic's offline mode)."""
    import io

    from alembic import command
    from alembic.config import Config

    buffer = io.StringIO()
    config = Config(output_buffer=buffer)
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", dialect_url)
    command.upgrade(config, revision, sql=True)
    return buffer.getvalue()


@contextmanager
def session(engine: Engine) -> Iterator[Session]:
    """A session that commits when the block ends normally; on an exception, closing it rolls
    the transaction back."""
    with Session(engine, expire_on_commit=False) as s:
        yield s
        s.commit()
