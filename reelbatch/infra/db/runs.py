"""Writes of a run's own row: created when a run starts, reopened to resume it, finished from its samples' counts."""

from __future__ import annotations

import uuid
from importlib import metadata
from typing import Any

from sqlalchemy import update

from reelbatch.infra.db.models import RunRecord, utcnow
from reelbatch.infra.db.queries import status_counts
from reelbatch.infra.db.sessions import SessionSource, rows_matched


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
    )
    with database.write_session() as session:
        session.add(run)
    return run.id


def reopen_run(database: SessionSource, run_id: str) -> None:
    """Make a finished (or crashed) run ``running`` again, to resume it."""
    with database.write_session() as session:
        reopened = session.execute(
            update(RunRecord).where(RunRecord.id == run_id).values(status="running", finished_at=None)
        )
        if rows_matched(reopened) == 0:
            raise KeyError(f"no run {run_id!r}")


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
