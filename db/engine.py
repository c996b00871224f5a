"""Where the database lives, how to connect to it, and how to bring its schema up to date.

The URL, first match wins: an explicit `url` argument (`--db`), the `FORGE_DB_URL` environment
variable (any SQLAlchemy URL; PostgreSQL is the multi-user choice, e.g.
`postgresql+psycopg://user@host/forge`), else SQLite at `$FORGE_HOME/forge.db` with
`FORGE_HOME` defaulting to `~/.forge`.

SQLite runs in WAL mode with a busy timeout, so `forge runs` in a second terminal reads while a
run writes, and parallel trajectories of one run can write from several threads.

Migrations are Alembic's, run programmatically: the script location is this package's
`migrations` folder, so it works from an installed wheel with no alembic.ini.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, create_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000


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


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001 (DBAPI types vary)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def get_engine(url: str | None = None, *, echo: bool = False) -> Engine:
    """An engine for `database_url(url)`; for a SQLite file, creates its folder and sets WAL,
    a busy timeout and foreign-key enforcement on every connection."""
    resolved = make_url(database_url(url))
    if resolved.get_backend_name() != "sqlite":
        return create_engine(resolved, echo=echo, pool_pre_ping=True)
    kwargs: dict = {
        "connect_args": {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
    }
    database = resolved.database or ""
    in_memory = database in ("", ":memory:") or database.startswith("file::memory:")
    if in_memory:
        kwargs["poolclass"] = StaticPool
    else:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(resolved, echo=echo, **kwargs)
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def alembic_config(engine: Engine):  # noqa: ANN201 (alembic imported lazily)
    """An Alembic Config pointing at the packaged migrations, bound to `engine`."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


class SchemaTooNew(RuntimeError):
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
    known = {script.revision for script in _script_directory().walk_revisions()}
    if current is not None and current not in known:
        raise SchemaTooNew(
            f"the database {engine.url.render_as_string(hide_password=True)} is at schema revision "
            f"{current}, newer than this Forge knows (head {head_revision()}): upgrade Forge, or "
            "point --db / FORGE_DB_URL at another database"
        )
    command.upgrade(alembic_config(engine), revision)
    return engine


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
