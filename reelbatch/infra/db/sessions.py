"""What the repository modules share: the sessions a ``Database`` opens for them, and a few SQL helpers.

The repositories (runs, jobs, samples, queries, inbox) are functions taking the ``Database`` first; they know it only
as a ``SessionSource``, so ``database.py`` can import them to offer them as methods without an import cycle.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

from sqlalchemy import CursorResult, Result, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

# Ids per IN (...) list: SQLite builds before 3.32 allow only 999 bound parameters per statement.
QUERY_CHUNK = 500


class SessionSource(Protocol):
    """Opens sessions, each one transaction committed on success (``database.Database`` is the one there is)."""

    def write_session(self) -> AbstractContextManager[Session]: ...

    def read_session(self) -> AbstractContextManager[Session]: ...


_T = TypeVar("_T")


def chunks(items: Sequence[_T]) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), QUERY_CHUNK):
        yield items[start : start + QUERY_CHUNK]


def rows_matched(result: Result[Any]) -> int:
    """How many rows an UPDATE matched. Session.execute returns a CursorResult for one, typed as its base class."""
    assert isinstance(result, CursorResult)
    return result.rowcount


def upsert_insert(session: Session, table: Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT that can take ``ON CONFLICT`` (both supported backends have it, with the same construct)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"reelbatch supports SQLite and PostgreSQL, not {dialect}")
