"""Writes of jobs: planned (with their samples), tagged with a launch, started, finished, and each launch's attempt."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from reelbatch.contract import JobSpec, rank_log_path
from reelbatch.defaults import RECORD_BATCH_JOBS
from reelbatch.infra.db.models import JobAttemptRecord, JobRecord, SampleRecord, utcnow
from reelbatch.infra.db.samples import generation_values, sample_identity_values
from reelbatch.infra.db.sessions import SessionSource, chunks, rows_matched, upsert_insert

NO_RESULT_ERROR = "job ended without a result for this sample"

# Longest launch tag jobs.launch_id holds (PostgreSQL enforces it; checked here so SQLite behaves the same).
LAUNCH_ID_MAX_LENGTH = 32


def add_job(database: SessionSource, run_id: str, job: JobSpec, backend: str = "native", log_path: str = "") -> None:
    """Record one job and its samples as ``add_jobs`` does, with this backend and rank log on the job row."""
    add_jobs(database, run_id, [job], backends={job.job_id: backend}, log_paths={job.job_id: log_path})


def add_jobs(
    database: SessionSource,
    run_id: str,
    specs: Sequence[JobSpec],
    *,
    backends: Mapping[str, str] | None = None,
    log_paths: Mapping[str, str] | None = None,
    batch_size: int = RECORD_BATCH_JOBS,
) -> None:
    """Record jobs and one ``pending`` sample row per sample each will generate, ``batch_size`` jobs per transaction.

    A job row's backend and rank log are its spec's unless ``backends`` / ``log_paths`` (job id -> value) say
    otherwise. Idempotent within a run, for resume (job ids are deterministic, so re-planning a run brings the same
    ids again). An existing job row takes this plan, shape and counts and becomes ``pending`` again, keeping its
    attempts. An existing sample row of the run that is not ``done`` moves to this job as ``pending``, keeping its
    attempts and losing its last result; a ``done`` one is left alone. A (run, sample) never gets a second row, also
    when two writers add the same job at once (``INSERT ... ON CONFLICT``). A job id another run already uses is
    refused (``ValueError``) with its whole batch; the batches before it stay recorded. A job or a sample given twice
    in one call ends as the last one given says, as if the jobs had been added one by one.
    """
    for job in specs:
        if job.run_id and job.run_id != run_id:
            raise ValueError(f"job {job.job_id} belongs to run {job.run_id}, not {run_id}")
    backends, log_paths = backends or {}, log_paths or {}
    step = max(1, batch_size)
    for start in range(0, len(specs), step):
        batch = specs[start : start + step]
        now = utcnow()
        job_rows: dict[str, dict[str, Any]] = {}
        sample_rows: dict[str, dict[str, Any]] = {}
        for position, job in enumerate(batch):
            backend = backends.get(job.job_id, job.backend)
            log_path = log_paths.get(job.job_id)
            # Distinct creation times keep the jobs in the order given (``queries.jobs`` lists them by it).
            created = now + timedelta(microseconds=position)
            job_rows.pop(job.job_id, None)  # a job given again moves to its last place
            job_rows[job.job_id] = _job_row(
                run_id, job, backend, str(rank_log_path(job)) if log_path is None else log_path, created
            )
            generation = generation_values(job.bucket)
            for sample in job.samples:
                sample_rows[sample.sample_id] = {
                    "run_id": run_id,
                    "job_id": job.job_id,
                    **sample_identity_values(sample),
                    **generation,
                    "status": "pending",
                    "created_at": now,
                    "updated_at": now,
                }
        with database.write_session() as session:
            _refuse_jobs_of_other_runs(session, run_id, list(job_rows))
            # The job rows must exist before the samples that reference them.
            _upsert_jobs(session, run_id, list(job_rows.values()))
            _upsert_pending_samples(session, list(sample_rows.values()))


def _job_row(run_id: str, job: JobSpec, backend: str, log_path: str, created_at: datetime) -> dict[str, Any]:
    plan = job.plan
    return {
        "id": job.job_id,
        "run_id": run_id,
        **generation_values(job.bucket),
        "dp": plan.dp,
        "cfg": plan.cfg,
        "ulysses": plan.ulysses,
        "ring": plan.ring,
        "world_size": plan.world_size,
        "backend": backend,
        "samples_count": len(job.samples),
        "padded_slots": job.padded_slots,
        "tokens": job.tokens,
        "fps": job.fps,
        "flow_shift": job.flow_shift,
        "compiled": job.compile,
        "log_path": log_path,
        "status": "pending",
        "returncode": None,
        "error": None,
        "finished_at": None,
        "seconds": None,
        "created_at": created_at,
    }


def _refuse_jobs_of_other_runs(session: Session, run_id: str, job_ids: list[str]) -> None:
    for chunk in chunks(job_ids):
        owner = session.execute(
            select(JobRecord.id, JobRecord.run_id).where(JobRecord.id.in_(chunk), JobRecord.run_id != run_id).limit(1)
        ).first()
        if owner is not None:
            raise ValueError(f"job id {owner.id} is already used by run {owner.run_id}")


def _upsert_jobs(session: Session, run_id: str, rows: list[dict[str, Any]]) -> None:
    jobs = JobRecord.__table__
    insert = upsert_insert(session, jobs)
    # A re-planned job keeps its id, run, creation time, attempts and launch tag; everything planned is replaced.
    replanned = {column: insert.excluded[column] for column in rows[0] if column not in ("id", "run_id", "created_at")}
    session.execute(
        insert.on_conflict_do_update(index_elements=[jobs.c.id], set_=replanned, where=jobs.c.run_id == run_id), rows
    )


def _upsert_pending_samples(session: Session, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    samples = SampleRecord.__table__
    insert = upsert_insert(session, samples)
    replanned = {column: insert.excluded[column] for column in rows[0] if column not in ("run_id", "created_at")}
    session.execute(
        insert.on_conflict_do_update(
            index_elements=[samples.c.run_id, samples.c.sample_id],
            set_={
                **replanned,
                "error": None,
                "output_path": None,
                "seconds": None,
                "frames": None,
                "transformer_forwards": None,
                "cached_forwards": None,
                "finished_at": None,
                "reused_from_run": None,
            },
            where=samples.c.status != "done",
        ),
        rows,
    )


def set_job_launch(database: SessionSource, job_id: str, launch_id: str) -> None:
    """Remember the tag of the torchrun launch that runs this job."""
    if not launch_id or len(launch_id) > LAUNCH_ID_MAX_LENGTH:
        raise ValueError(f"launch id {launch_id!r}: 1 to {LAUNCH_ID_MAX_LENGTH} characters")
    with database.write_session() as session:
        tagged = session.execute(update(JobRecord).where(JobRecord.id == job_id).values(launch_id=launch_id))
        if rows_matched(tagged) == 0:
            raise KeyError(f"no job {job_id!r}")


def interrupt_running_jobs(database: SessionSource, run_id: str, error: str) -> int:
    """Fail the jobs of a run still ``running`` (their orchestrator is gone) and their ``running`` samples, all
    with ``error``; ``done`` samples stay done. Returns how many jobs it failed."""
    now = utcnow()
    with database.write_session() as session:
        job_ids = session.scalars(
            select(JobRecord.id).where(JobRecord.run_id == run_id, JobRecord.status == "running")
        ).all()
        interrupted = 0
        for chunk in chunks(job_ids):
            failed = session.execute(
                update(JobRecord)
                .where(JobRecord.id.in_(chunk), JobRecord.status == "running")
                .values(status="failed", error=error, finished_at=now)
            )
            interrupted += rows_matched(failed)
            session.execute(
                update(SampleRecord)
                .where(SampleRecord.job_id.in_(chunk), SampleRecord.status == "running")
                .values(status="failed", error=error, finished_at=now)
            )
    return interrupted


def mark_job_running(database: SessionSource, job_id: str, sample_ids: Collection[str] | None = None) -> None:
    """Start an attempt of a job: the job and its samples not done yet become ``running`` (``sample_ids``: only
    those, the ones this attempt makes; the others may be another run's to make)."""
    now = utcnow()
    with database.write_session() as session:
        started = session.execute(
            update(JobRecord)
            .where(JobRecord.id == job_id)
            .values(
                status="running",
                attempts=JobRecord.attempts + 1,
                started_at=now,
                finished_at=None,
                returncode=None,
                error=None,
                seconds=None,
            )
        )
        if rows_matched(started) == 0:
            raise KeyError(f"no job {job_id!r}")
        attempted = (
            update(SampleRecord)
            .where(SampleRecord.job_id == job_id, SampleRecord.status != "done")
            .values(
                status="running",
                attempts=SampleRecord.attempts + 1,
                started_at=now,
                finished_at=None,
                error=None,
            )
        )
        if sample_ids is None:
            session.execute(attempted)
            return
        for chunk in chunks(sorted(sample_ids)):
            session.execute(attempted.where(SampleRecord.sample_id.in_(chunk)))


def finish_job(
    database: SessionSource,
    job_id: str,
    *,
    status: str,
    returncode: int | None,
    seconds: float,
    error: str | None = None,
) -> None:
    """End a job attempt; its samples still without a result fail with the job's error."""
    if status not in ("done", "failed"):
        raise ValueError(f"a job finishes as done or failed, not {status!r}")
    now = utcnow()
    with database.write_session() as session:
        finished = session.execute(
            update(JobRecord)
            .where(JobRecord.id == job_id)
            .values(status=status, returncode=returncode, seconds=seconds, error=error, finished_at=now)
        )
        if rows_matched(finished) == 0:
            raise KeyError(f"no job {job_id!r}")
        session.execute(
            update(SampleRecord)
            .where(SampleRecord.job_id == job_id, SampleRecord.status.in_(("pending", "running")))
            .values(status="failed", error=error or NO_RESULT_ERROR, finished_at=now)
        )


def record_attempt(database: SessionSource, job: JobSpec, attempt: int, **outcome: Any) -> None:
    """One launch of ``job`` and how it ended (``outcome``: launch_id, returncode, timed_out, seconds,
    failure_kind, failed_rank, message, tail, retry_delay_s, host, devices, world_size, started_at)."""
    record = JobAttemptRecord(
        job_id=job.job_id,
        attempt=attempt,
        dp=job.plan.dp,
        cfg=job.plan.cfg,
        ulysses=job.plan.ulysses,
        ring=job.plan.ring,
        sequence_batch=job.bucket.sequence_batch,
        samples_count=len(job.samples),
        **{"timed_out": False, **outcome},
    )
    with database.write_session() as session:
        session.add(record)
