"""``Database``: a database URL, the engine made from it, and the sessions every read and write runs in.

The writes and reads themselves are functions in the repository modules (runs, jobs, samples, queries, claims,
inbox), each taking the ``Database`` first; they are methods here too, so a caller holding one writes
``database.create_run(...)``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from alembic import command
from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session

import reelbatch.infra.db.claims as claims
import reelbatch.infra.db.inbox as inbox
import reelbatch.infra.db.jobs as job_writes
import reelbatch.infra.db.queries as queries
import reelbatch.infra.db.runs as run_writes
import reelbatch.infra.db.samples as sample_writes
import reelbatch.infra.db.schema as schema
from reelbatch.infra.db.engine import WRITE_OPTION, create_database_engine


class Database:
    """One database, by URL. The engine (and its connection pool) is created on first use and kept until ``close``.

    A flow builds one and hands it to its steps, which use it and never close it; the flow closes it when it ends.

    A ``Database`` pickles as its URL alone, since connections cannot travel between processes, and unpickles as the
    receiving process's ``Database.shared`` instance for that URL (see ``__reduce__``).
    """

    def __init__(self, url: str | URL, *, pooled: bool = True):
        self._url = make_url(url)
        self._pooled = pooled
        self.url_for_display = self._url.render_as_string(hide_password=True)
        self._engine: Engine | None = None
        self._write_engine: Engine | None = None
        self._engine_lock = threading.Lock()

    @classmethod
    def shared(cls, url: str | URL) -> Database:
        """This process's one ``Database`` for ``url`` (the full URL, password included, is the key); never closed
        by its users, it lives as long as the process. It keeps no idle connections (each session opens and closes
        its own): a fleet of Dask workers would otherwise hold a pool each on the database server for their life."""
        key = make_url(url).render_as_string(hide_password=False)
        with _SHARED_LOCK:
            database = _SHARED.get(key)
            if database is None:
                database = _SHARED[key] = cls(key, pooled=False)
            return database

    def __reduce__(self) -> tuple[Any, ...]:
        # A Dask worker (or a Prefect task runner in another process) receives a copy with every job task it runs;
        # nobody there closes those copies, so each would keep its own engine and pooled connections open. Unpickling
        # into the worker's shared instance instead keeps one engine per database per process, however many tasks.
        return _shared_database, (self._url.render_as_string(hide_password=False),)

    def __repr__(self) -> str:
        return f"Database({self.url_for_display!r})"

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def engine(self) -> Engine:
        return self._engines()[0]

    def _engines(self) -> tuple[Engine, Engine]:
        """The engine, and the same engine (same pool) with the option that makes its transactions writes."""
        with self._engine_lock:
            if self._engine is None or self._write_engine is None:
                self._engine = create_database_engine(self._url, pooled=self._pooled)
                self._write_engine = self._engine.execution_options(**{WRITE_OPTION: True})
            return self._engine, self._write_engine

    def close(self) -> None:
        """Close the pooled connections; a later use creates a new engine."""
        with self._engine_lock:
            engine, self._engine, self._write_engine = self._engine, None, None
        if engine is not None:
            engine.dispose()

    # --- sessions ---

    @contextmanager
    def write_session(self) -> Iterator[Session]:
        """A session in a write transaction, committed on success (on SQLite it holds the write lock throughout)."""
        with Session(self._engines()[1], expire_on_commit=False) as session, session.begin():
            yield session

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A session in a read transaction."""
        with Session(self.engine) as session, session.begin():
            yield session

    @contextmanager
    def write_connection(self) -> Iterator[Connection]:
        """A connection inside a write transaction, committed on success (what migrations run in)."""
        with self._engines()[1].begin() as connection:
            yield connection

    # --- schema ---

    def run_alembic(self, alembic_command: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run an ``alembic.command`` function (upgrade, stamp, downgrade, ...) against this database."""
        config = schema.alembic_config(self._url)
        with self.write_connection() as connection:
            config.attributes["connection"] = connection
            return alembic_command(config, *args, **kwargs)

    def upgrade(self) -> None:
        self.run_alembic(command.upgrade, "head")

    def current_revision(self) -> str | None:
        with self.engine.connect() as connection:
            return schema.current_revision(connection)

    def ensure_schema(self, auto_upgrade: bool = False) -> None:
        """Check the schema is at head. ``auto_upgrade`` only ever creates the schema in a database with no tables;
        an existing schema at another revision always raises, so data is never migrated without being asked."""
        with self.engine.connect() as connection:
            current = schema.current_revision(connection)
            has_tables = schema.has_tables(connection)
        if current == schema.head_revision():
            return
        if auto_upgrade and not has_tables:
            self.upgrade()
            return
        raise schema.out_of_date(current, self.url_for_display)

    # --- writes (runs.py, samples.py, jobs.py) ---

    create_run = run_writes.create_run
    reopen_run = run_writes.reopen_run
    finish_run = run_writes.finish_run
    beat_run = run_writes.beat_run
    run_heartbeat = run_writes.run_heartbeat
    interrupt_run = run_writes.interrupt_run
    add_rejections = sample_writes.add_rejections
    add_reused_samples = sample_writes.add_reused_samples
    record_sample_results = sample_writes.record_sample_results
    add_job = job_writes.add_job
    add_jobs = job_writes.add_jobs
    set_job_launch = job_writes.set_job_launch
    interrupt_running_jobs = job_writes.interrupt_running_jobs
    mark_job_running = job_writes.mark_job_running
    finish_job = job_writes.finish_job
    record_attempt = job_writes.record_attempt

    # --- reads (queries.py) ---

    list_runs = queries.list_runs
    run_summary = queries.run_summary
    run_record = queries.run_record
    done_outputs = queries.done_outputs
    has_done_outputs = queries.has_done_outputs
    running_launches = queries.running_launches
    samples = queries.samples
    sample_chunks = queries.sample_chunks
    jobs = queries.jobs
    attempts = queries.attempts

    # --- videos being made, one maker each (claims.py) ---

    claim_samples = claims.claim_samples
    renew_claims = claims.renew_claims
    release_claims = claims.release_claims
    sample_claims = claims.sample_claims

    # --- manifest inbox (inbox.py) ---

    claim_inbox_manifest = inbox.claim_inbox_manifest
    release_stale_inbox_claims = inbox.release_stale_inbox_claims
    finish_inbox_manifest = inbox.finish_inbox_manifest
    inbox_manifests = inbox.inbox_manifests


# Database.shared's instances, by full URL: one engine per database in each process that receives pickled ones.
_SHARED: dict[str, Database] = {}
_SHARED_LOCK = threading.Lock()


def _shared_database(url: str) -> Database:
    # A module-level function, so that cloudpickle (Dask, Prefect) pickles it by name rather than by value.
    return Database.shared(url)


def upgrade_database(url: str) -> None:
    with Database(url) as database:
        database.upgrade()
