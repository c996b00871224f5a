"""Alembic environment of the kernel database.

Forge runs migrations programmatically (`forge.db.engine.migrate`), handing its engine over in
`config.attributes["engine"]`; there is no alembic.ini. For development, autogenerate a new
revision against a scratch database with:

    python -c "from forge.db.engine import *; from alembic import command; \
        command.revision(alembic_config(get_engine('sqlite:////tmp/x.db')), 'msg', autogenerate=True)"

after `migrate('sqlite:////tmp/x.db')`; then clean the generated file by hand (explicit types,
no sqlmodel import).
"""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

from forge.db import models  # noqa: F401  (registers the tables on SQLModel.metadata)
from forge.db.engine import get_engine

config = context.config
target_metadata = SQLModel.metadata

MIGRATION_LOCKS = {
    "postgresql": "SELECT pg_advisory_xact_lock(4242420001)",
    "sqlite": "BEGIN IMMEDIATE",
}
"""Taken before Alembic reads the schema's revision, held until the migration commits: several
controllers starting at once on a new database migrate it once, the others wait for the lock
and then find it at the newest revision."""


def run_migrations_offline() -> None:
    """Emit SQL for the URL's dialect without connecting (`forge.db.engine.migration_sql`)."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = config.attributes.get("engine") or get_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as connection:
        lock = MIGRATION_LOCKS.get(connection.dialect.name)
        if lock is not None:
            connection.exec_driver_sql(lock)
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
