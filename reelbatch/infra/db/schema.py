"""Schema revisions: the packaged Alembic migrations, the revision they lead to, and what a database is at.

``Database.upgrade`` / ``Database.ensure_schema`` (database.py) run these against a database.
"""

from __future__ import annotations

import functools
from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect
from sqlalchemy.engine import URL, make_url

MIGRATIONS_DIR = Path(__file__).parents[1] / "migrations"


class SchemaOutOfDate(RuntimeError):
    """The database is not at the schema revision this reelbatch needs."""


def alembic_config(url: str | URL | None = None) -> Config:
    """An Alembic config for the packaged migrations; no alembic.ini needed, so it works from any directory."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    if url is not None:
        rendered = make_url(url).render_as_string(hide_password=False)
        # The config is a ConfigParser: a literal '%' (URL-encoded password) must be doubled.
        config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


@functools.cache
def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, f"no migrations in {MIGRATIONS_DIR}"
    return head


def known_revisions() -> set[str]:
    return {script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def has_tables(connection: Connection) -> bool:
    return bool(inspect(connection).get_table_names())


def out_of_date(current: str | None, url_for_display: str) -> SchemaOutOfDate:
    """The error for a database at ``current`` (None: no schema), saying how to upgrade it."""
    message = (
        f"database schema at revision {current or 'none'}, reelbatch needs {head_revision()}: "
        f"run `reelbatch db upgrade --db {url_for_display}`"
    )
    if current is not None and current not in known_revisions():
        message += f" (revision {current} is unknown to this reelbatch; a newer version may have written it)"
    return SchemaOutOfDate(message)
