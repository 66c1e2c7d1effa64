"""The manifest inbox: which manifests found under an inbox prefix were claimed, processed or failed, and by which run.

A scheduled pass claims each new manifest before running it, so two passes never run the same file.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from reelbatch.infra.db.models import INBOX_STATUSES, InboxManifestRecord, utcnow
from reelbatch.infra.db.sessions import SessionSource, rows_matched


def claim_inbox_manifest(database: SessionSource, inbox: str, uri: str, fingerprint: str) -> bool:
    """Take ``uri`` (at ``fingerprint``) for processing; False when it was processed or is being processed.

    A manifest whose earlier run failed is claimed again, so a scheduled run retries it. Two passes racing for
    one manifest: exactly one gets True (the unique key and a status-guarded update decide).
    """
    table = InboxManifestRecord.__table__
    with database.write_session() as session:
        row = session.execute(
            select(table.c.id, table.c.status).where(table.c.uri == uri, table.c.fingerprint == fingerprint)
        ).first()
        if row is None:
            try:
                with session.begin_nested():
                    session.add(InboxManifestRecord(inbox=inbox, uri=uri, fingerprint=fingerprint, status="running"))
            except IntegrityError:  # another pass inserted it first
                return False
            return True
        if row.status != "failed":
            return False
        taken = session.execute(
            update(table)
            .where(table.c.id == row.id, table.c.status == "failed")
            .values(status="running", error=None, updated_at=utcnow())
        )
        return rows_matched(taken) == 1


def release_stale_inbox_claims(database: SessionSource, inbox: str, before: datetime, error: str) -> list[str]:
    """Mark claims of ``inbox`` still ``running`` since before ``before`` failed (their pass died); their URIs."""
    table = InboxManifestRecord.__table__
    released = []
    with database.write_session() as session:
        stale = session.execute(
            select(table.c.id, table.c.uri).where(
                table.c.inbox == inbox, table.c.status == "running", table.c.updated_at < before
            )
        ).all()
        for row in stale:
            changed = session.execute(
                update(table)
                .where(table.c.id == row.id, table.c.status == "running", table.c.updated_at < before)
                .values(status="failed", error=error, updated_at=utcnow())
            )
            if rows_matched(changed) == 1:
                released.append(row.uri)
    return released


def finish_inbox_manifest(
    database: SessionSource,
    uri: str,
    fingerprint: str,
    status: str,
    run_id: str | None = None,
    error: str | None = None,
) -> None:
    if status not in INBOX_STATUSES:
        raise ValueError(f"inbox status {status!r}: use one of {INBOX_STATUSES}")
    table = InboxManifestRecord.__table__
    with database.write_session() as session:
        session.execute(
            update(table)
            .where(table.c.uri == uri, table.c.fingerprint == fingerprint)
            .values(status=status, run_id=run_id, error=error, updated_at=utcnow())
        )


def inbox_manifests(database: SessionSource, inbox: str | None = None) -> list[dict[str, Any]]:
    table = InboxManifestRecord.__table__
    query = select(table).order_by(table.c.created_at, table.c.id)
    if inbox is not None:
        query = query.where(table.c.inbox == inbox)
    with database.read_session() as session:
        return [dict(row) for row in session.execute(query).mappings()]
