"""Claims on videos being made: one video, one maker, across runs, processes and machines.

A job claims each sample it is about to make under its output root (``sample_claims``: one row per video, keyed by
output root and sample id) with a lease it renews while its ranks run. Another run that wants the same video finds
the claim and waits for the holder's result instead of making it again; once a lease has expired (its holder was
killed) the claim can be taken over. Claiming is one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` statement, so
two claimers of one video cannot both get it, on SQLite (whose write transactions are serialized) and on PostgreSQL
(where the conflicting row is locked and the condition checked again on its newest version).

Times come from the database server on PostgreSQL, so the machines of a Dask cluster need not agree on the clock.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from reelbatch.infra.db.models import SampleClaimRecord, utcnow
from reelbatch.infra.db.sessions import QUERY_CHUNK, SessionSource, chunks, rows_matched, upsert_insert

# Rows per claiming INSERT: each row binds 8 parameters, and old SQLite builds allow 999 per statement.
CLAIM_CHUNK = QUERY_CHUNK // 8


@dataclass(frozen=True)
class Claim:
    """Who is making a video under an output root, and until when their lease holds."""

    sample_id: str
    run_id: str
    job_id: str | None
    host: str
    heartbeat_at: datetime
    expires_at: datetime


def _now(session: Session) -> datetime:
    # The server's clock on PostgreSQL (clock_timestamp: now() would be the transaction's start).
    if session.get_bind().dialect.name == "postgresql":
        server_now = session.scalar(select(func.clock_timestamp()))
        assert server_now is not None
        return server_now
    return utcnow()  # SQLite: every writer shares the machine's clock


def claim_samples(
    database: SessionSource,
    output_root: str,
    sample_ids: Sequence[str],
    *,
    run_id: str,
    job_id: str | None,
    host: str,
    lease_s: float,
) -> set[str]:
    """Claim these samples for ``job_id`` of ``run_id``; the ids this job holds now.

    A sample nobody holds is claimed; one another run holds is left to it unless its lease has expired; one this
    run already holds (a resumed run, or a job Dask ran again) is taken whichever job of the run held it.
    """
    if lease_s <= 0:
        raise ValueError(f"a claim's lease must be positive, not {lease_s!r} s")
    # Sorted: two runs claiming overlapping samples lock the rows in one order (PostgreSQL found a deadlock when one
    # run's job listed them in the other's reverse order).
    wanted = sorted(set(sample_ids))
    if not wanted:
        return set()
    table = SampleClaimRecord.__table__
    held: set[str] = set()
    with database.write_session() as session:
        now = _now(session)
        lease = {"heartbeat_at": now, "expires_at": now + timedelta(seconds=lease_s)}
        holder = {"run_id": run_id, "job_id": job_id, "host": host, "claimed_at": now, **lease}
        for start in range(0, len(wanted), CLAIM_CHUNK):
            chunk = wanted[start : start + CLAIM_CHUNK]
            insert = upsert_insert(session, table).values(
                [{"output_root": output_root, "sample_id": sample_id, **holder} for sample_id in chunk]
            )
            statement = insert.on_conflict_do_update(
                index_elements=[table.c.output_root, table.c.sample_id],
                set_={column: insert.excluded[column] for column in holder},
                where=or_(table.c.expires_at < now, table.c.run_id == run_id),
            ).returning(table.c.sample_id)
            held.update(session.scalars(statement))
    return held


def renew_claims(database: SessionSource, run_id: str, job_id: str | None, lease_s: float) -> int:
    """Extend the lease of every claim ``job_id`` of ``run_id`` still holds; how many it holds.

    A claim taken over after its lease ran out is no longer this job's, and is not renewed.
    """
    table = SampleClaimRecord.__table__
    with database.write_session() as session:
        now = _now(session)
        renewed = session.execute(
            update(table)
            .where(table.c.run_id == run_id, table.c.job_id == job_id)
            .values(heartbeat_at=now, expires_at=now + timedelta(seconds=lease_s))
        )
        return rows_matched(renewed)


def release_claims(database: SessionSource, output_root: str, sample_ids: Collection[str], run_id: str) -> int:
    """Drop the claims ``run_id`` holds on these samples (made, or given up); how many it held."""
    table = SampleClaimRecord.__table__
    released = 0
    with database.write_session() as session:
        for chunk in chunks(sorted(set(sample_ids))):
            result = session.execute(
                delete(table).where(
                    table.c.output_root == output_root, table.c.sample_id.in_(chunk), table.c.run_id == run_id
                )
            )
            released += rows_matched(result)
    return released


def sample_claims(database: SessionSource, output_root: str, sample_ids: Collection[str]) -> dict[str, Claim]:
    """Who holds each of these samples under ``output_root`` (expired claims included; see ``Claim.expires_at``)."""
    table = SampleClaimRecord.__table__
    found: dict[str, Claim] = {}
    with database.read_session() as session:
        for chunk in chunks(sorted(set(sample_ids))):
            rows = session.execute(
                select(
                    table.c.sample_id,
                    table.c.run_id,
                    table.c.job_id,
                    table.c.host,
                    table.c.heartbeat_at,
                    table.c.expires_at,
                ).where(table.c.output_root == output_root, table.c.sample_id.in_(chunk))
            )
            for row in rows:
                found[row.sample_id] = Claim(**row._mapping)
    return found
