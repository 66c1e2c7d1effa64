"""Writes of a run's own row: created when a run starts, reopened to resume it, kept alive by its heartbeat,
finished from its samples' counts, or interrupted (stopped by a signal)."""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Iterator
from importlib import metadata
from typing import Any

from sqlalchemy import update

from reelbatch.infra.db.models import JobRecord, RunRecord, SampleRecord, utcnow
from reelbatch.infra.db.queries import heartbeat_interval_s, status_counts
from reelbatch.infra.db.sessions import SessionSource, rows_matched

log = logging.getLogger(__name__)


def library_versions() -> dict[str, str]:
    versions = {}
    for name in ("torch", "diffusers", "transformers", "prefect", "reelbatch"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def _new_run_id() -> str:
    return uuid.uuid4().hex


def create_run(
    database: SessionSource,
    *,
    manifest_source: str,
    manifest_sha256: str,
    output_root: str,
    gpus_per_node: int,
    params: dict[str, Any],
    library_versions: dict[str, Any],
    rows_total: int,
    rows_accepted: int,
    rows_rejected: int,
) -> str:
    """Record a run that is starting now (status ``running``) and return its id."""
    run = RunRecord(
        id=_new_run_id(),
        status="running",
        manifest_source=manifest_source,
        manifest_sha256=manifest_sha256,
        output_root=output_root,
        gpus_per_node=gpus_per_node,
        params=params,
        library_versions=library_versions,
        rows_total=rows_total,
        rows_accepted=rows_accepted,
        rows_rejected=rows_rejected,
        heartbeat_at=utcnow(),
    )
    with database.write_session() as session:
        session.add(run)
    return run.id


def reopen_run(database: SessionSource, run_id: str) -> None:
    """Make a finished (or crashed) run ``running`` again, to resume it."""
    with database.write_session() as session:
        reopened = session.execute(
            update(RunRecord)
            .where(RunRecord.id == run_id)
            .values(status="running", finished_at=None, heartbeat_at=utcnow())
        )
        if rows_matched(reopened) == 0:
            raise KeyError(f"no run {run_id!r}")


def beat_run(database: SessionSource, run_id: str) -> None:
    """The run's orchestrator is alive: renew its heartbeat (only while the run is ``running``)."""
    with database.write_session() as session:
        session.execute(
            update(RunRecord).where(RunRecord.id == run_id, RunRecord.status == "running").values(heartbeat_at=utcnow())
        )


@contextlib.contextmanager
def run_heartbeat(database: SessionSource, run_id: str, interval_s: float | None = None) -> Iterator[None]:
    """Renew the run's heartbeat every ``interval_s`` (default: ``queries.heartbeat_interval_s()``) on a daemon
    thread while the block runs. A failed renewal is logged and tried again at the next beat."""
    interval = interval_s or heartbeat_interval_s()
    done = threading.Event()

    def beat() -> None:
        while not done.wait(interval):
            try:
                beat_run(database, run_id)
            except Exception:  # the database may be back at the next beat; the run itself goes on meanwhile
                log.warning("run %s: renewing its heartbeat failed", run_id, exc_info=True)

    beat_run(database, run_id)
    thread = threading.Thread(target=beat, name=f"run-heartbeat-{run_id[:8]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=5)


def interrupt_run(database: SessionSource, run_id: str, reason: str) -> bool:
    """Record a run stopped by a signal as ``interrupted`` (``reelbatch resume`` continues it): its jobs and samples
    not finished go back to ``pending`` (jobs that were running keep ``reason`` as their error), ``finished_at`` is
    now. Done and failed rows stay as they are. Only a ``running`` run is interrupted: False for any other."""
    now = utcnow()
    with database.write_session() as session:
        interrupted = session.execute(
            update(RunRecord)
            .where(RunRecord.id == run_id, RunRecord.status == "running")
            .values(status="interrupted", finished_at=now, heartbeat_at=now)
        )
        if rows_matched(interrupted) == 0:
            return False
        session.execute(
            update(JobRecord)
            .where(JobRecord.run_id == run_id, JobRecord.status == "running")
            .values(status="pending", error=reason, finished_at=now)
        )
        session.execute(
            update(SampleRecord)
            .where(SampleRecord.run_id == run_id, SampleRecord.status == "running")
            .values(status="pending", finished_at=None)
        )
    return True


def finish_run(database: SessionSource, run_id: str) -> str:
    """Derive the run's final status from its accepted samples: all done → ``done``, none done → ``failed``,
    otherwise ``partial``. A run whose rows were all rejected has ``failed``."""
    with database.write_session() as session:
        counts = status_counts(session, [run_id])[run_id]
        accepted = sum(count for status, count in counts.items() if status != "rejected")
        if accepted == 0:
            status = "failed" if counts["rejected"] else "done"
        elif counts["done"] == accepted:
            status = "done"
        elif counts["done"] == 0:
            status = "failed"
        else:
            status = "partial"
        finished = session.execute(
            update(RunRecord).where(RunRecord.id == run_id).values(status=status, finished_at=utcnow())
        )
        if rows_matched(finished) == 0:
            raise KeyError(f"no run {run_id!r}")
    return status
