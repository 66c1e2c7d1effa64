"""Alembic environment for the reelbatch schema.

Run through ``reelbatch.infra.db`` (``Database.upgrade`` / ``reelbatch db upgrade``), which builds the config in code
and hands over an open connection in ``config.attributes["connection"]``. With only ``sqlalchemy.url`` set, a
connection is opened here with the same SQLite settings.
"""

from alembic import context
from sqlalchemy import Connection
from sqlalchemy.engine import make_url

from reelbatch.infra.db.database import Database
from reelbatch.infra.db.models import Base

config = context.config
target_metadata = Base.metadata


def _configure_options(dialect_name: str) -> dict:
    # SQLite cannot ALTER most things in place; batch mode rebuilds the table instead.
    return {"target_metadata": target_metadata, "render_as_batch": dialect_name == "sqlite", "compare_type": True}


def _database_url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("alembic: give the database as an open connection or as sqlalchemy.url")
    return url


def run_migrations_online(connection: Connection) -> None:
    context.configure(connection=connection, **_configure_options(connection.dialect.name))
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    url = _database_url()
    context.configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **_configure_options(make_url(url).get_backend_name()),
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
elif config.attributes.get("connection") is not None:
    run_migrations_online(config.attributes["connection"])
else:
    with Database(_database_url()) as database, database.write_connection() as connection:
        run_migrations_online(connection)
