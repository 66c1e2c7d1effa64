"""Reads: run summaries and listings, the rows of a run for status and export, and outputs a new run can reuse."""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from reelbatch.defaults import HEARTBEAT_ENV, RUN_HEARTBEAT_S, RUN_STALE_AFTER_BEATS
from reelbatch.infra.db.models import (
    JOB_STATUSES,
    SAMPLE_STATUSES,
    JobAttemptRecord,
    JobRecord,
    RunRecord,
    SampleRecord,
    utcnow,
)
from reelbatch.infra.db.sessions import SessionSource, chunks


@dataclass(frozen=True)
class RunSummary:
    id: str
    created_at: datetime
    finished_at: datetime | None
    status: str
    manifest_source: str
    output_root: str
    counts: dict[str, int]
    jobs: int
    reused: int = 0  # sample rows (all done) that reuse the output of an earlier run; included in counts["done"]


@dataclass(frozen=True)
class DoneOutput:
    """Where a finished sample's video is, and which run's row says so."""

    output_path: str
    run_id: str


def status_counts(session: Session, run_ids: list[str]) -> dict[str, dict[str, int]]:
    """Sample rows per status of each run (every status present, 0 when none)."""
    counts = {run_id: dict.fromkeys(SAMPLE_STATUSES, 0) for run_id in run_ids}
    rows = session.execute(
        select(SampleRecord.run_id, SampleRecord.status, func.count())
        .where(SampleRecord.run_id.in_(run_ids))
        .group_by(SampleRecord.run_id, SampleRecord.status)
    )
    for run_id, status, count in rows:
        counts[run_id][status] = count
    return counts


def heartbeat_interval_s() -> float:
    """How often a running run renews its heartbeat: REELBATCH_HEARTBEAT_S, else the default."""
    given = os.environ.get(HEARTBEAT_ENV)
    if not given:
        return RUN_HEARTBEAT_S
    try:
        interval = float(given)
    except ValueError:
        interval = -1.0
    if not 0 < interval < float("inf"):
        raise ValueError(f"{HEARTBEAT_ENV}={given!r}: give the heartbeat interval as a positive number of seconds")
    return interval


def shown_status(run: RunRecord) -> str:
    """The run's status as recorded, except that a ``running`` run whose heartbeat is stale is ``interrupted``:
    its orchestrator died without recording it (SIGKILL, power loss). Derived when read, never written."""
    stale_before = utcnow() - timedelta(seconds=RUN_STALE_AFTER_BEATS * heartbeat_interval_s())
    if run.status == "running" and run.heartbeat_at is not None and run.heartbeat_at < stale_before:
        return "interrupted"
    return run.status


def _resolve_run_id(session: Session, run_id_or_prefix: str) -> str:
    if not run_id_or_prefix:
        raise KeyError("empty run id")
    matches = session.scalars(
        select(RunRecord.id).where(RunRecord.id.startswith(run_id_or_prefix, autoescape=True)).limit(2)
    ).all()
    if not matches:
        raise KeyError(f"no run {run_id_or_prefix!r}")
    if len(matches) > 1:
        raise KeyError(f"run id prefix {run_id_or_prefix!r} is ambiguous")
    return matches[0]


def _summaries(session: Session, runs: list[RunRecord]) -> list[RunSummary]:
    run_ids = [run.id for run in runs]
    counts = status_counts(session, run_ids)
    job_counts = dict(
        session.execute(
            select(JobRecord.run_id, func.count()).where(JobRecord.run_id.in_(run_ids)).group_by(JobRecord.run_id)
        ).all()
    )
    reused_counts = dict(
        session.execute(
            select(SampleRecord.run_id, func.count())
            .where(SampleRecord.run_id.in_(run_ids), SampleRecord.reused_from_run.is_not(None))
            .group_by(SampleRecord.run_id)
        ).all()
    )
    return [
        RunSummary(
            id=run.id,
            created_at=run.created_at,
            finished_at=run.finished_at,
            status=shown_status(run),
            manifest_source=run.manifest_source,
            output_root=run.output_root,
            counts=counts[run.id],
            jobs=job_counts.get(run.id, 0),
            reused=reused_counts.get(run.id, 0),
        )
        for run in runs
    ]


def list_runs(database: SessionSource, limit: int = 20) -> list[RunSummary]:
    """The newest runs first."""
    with database.read_session() as session:
        runs = session.scalars(select(RunRecord).order_by(RunRecord.created_at.desc(), RunRecord.id).limit(limit)).all()
        return _summaries(session, list(runs))


def run_summary(database: SessionSource, run_id: str) -> RunSummary:
    """Summary of a run given its id or a unique prefix of it; ``KeyError`` if none or several match."""
    with database.read_session() as session:
        run = session.get_one(RunRecord, _resolve_run_id(session, run_id))
        return _summaries(session, [run])[0]


def run_record(database: SessionSource, run_id: str) -> dict[str, Any]:
    """Every column of a run's row given its id or a unique prefix of it; ``KeyError`` if none or several match."""
    table = RunRecord.__table__
    with database.read_session() as session:
        resolved = _resolve_run_id(session, run_id)
        return dict(session.execute(select(table).where(table.c.id == resolved)).mappings().one())


def done_outputs(
    database: SessionSource, output_root: str, sample_ids: Collection[str], since: datetime | None = None
) -> dict[str, DoneOutput]:
    """For each of these sample ids (identity hashes) with a ``done`` row that has an output path in any run
    written to exactly this ``output_root``: where the video is, from the newest such row. ``since``: only videos
    finished then or later (a ``--force`` run reuses what concurrent runs make, never what was there before it)."""
    wanted = sorted(set(sample_ids))
    newest_first = func.coalesce(SampleRecord.finished_at, SampleRecord.created_at).desc()
    found: dict[str, DoneOutput] = {}
    with database.read_session() as session:
        for chunk in chunks(wanted):
            rows = session.execute(
                select(SampleRecord.sample_id, SampleRecord.output_path, SampleRecord.run_id)
                .join(RunRecord, RunRecord.id == SampleRecord.run_id)
                .where(
                    RunRecord.output_root == output_root,
                    SampleRecord.sample_id.in_(chunk),
                    SampleRecord.status == "done",
                    SampleRecord.output_path.is_not(None),
                    *([SampleRecord.finished_at >= since] if since is not None else []),
                )
                .order_by(newest_first, SampleRecord.id.desc())
            )
            for sample_id, output_path, run_id in rows:
                assert sample_id is not None and output_path is not None  # both are in the WHERE clause
                found.setdefault(sample_id, DoneOutput(output_path=output_path, run_id=run_id))
    return found


def has_done_outputs(database: SessionSource, output_root: str) -> bool:
    """Whether any run written to exactly this ``output_root`` has a ``done`` sample with an output path: when none
    has, a new run need not hash its samples to look for videos to reuse (``done_outputs`` would find none)."""
    with database.read_session() as session:
        found = session.execute(
            select(SampleRecord.id)
            .join(RunRecord, RunRecord.id == SampleRecord.run_id)
            .where(
                RunRecord.output_root == output_root,
                SampleRecord.status == "done",
                SampleRecord.output_path.is_not(None),
            )
            .limit(1)
        ).first()
        return found is not None


def running_launches(database: SessionSource) -> list[tuple[str, str]]:
    """(job id, launch id) of every job, of any run, recorded as ``running`` under a launch."""
    with database.read_session() as session:
        rows = session.execute(
            select(JobRecord.id, JobRecord.launch_id)
            .where(JobRecord.status == "running", JobRecord.launch_id.is_not(None))
            .order_by(JobRecord.id)
        )
        launches = []
        for job_id, launch_id in rows:
            assert launch_id is not None  # launch_id IS NOT NULL in the WHERE clause
            launches.append((job_id, launch_id))
        return launches


def samples(database: SessionSource, run_id: str) -> list[dict[str, Any]]:
    """Every column of every sample row of a run (id or unique prefix), in manifest order."""
    table = SampleRecord.__table__
    with database.read_session() as session:
        resolved = _resolve_run_id(session, run_id)
        rows = session.execute(
            select(table).where(table.c.run_id == resolved).order_by(table.c.row, table.c.video_index, table.c.id)
        )
        return [dict(row) for row in rows.mappings()]


def sample_chunks(database: SessionSource, run_id: str, chunk_rows: int) -> Iterator[list[dict[str, Any]]]:
    """What ``samples`` returns, in lists of at most ``chunk_rows`` rows: one query whose rows are fetched as they
    are consumed, so an export's memory follows the chunk, not the run. Holds a read session until exhausted."""
    table = SampleRecord.__table__
    with database.read_session() as session:
        resolved = _resolve_run_id(session, run_id)
        rows = session.execute(
            select(table)
            .where(table.c.run_id == resolved)
            .order_by(table.c.row, table.c.video_index, table.c.id)
            .execution_options(yield_per=chunk_rows)
        )
        for partition in rows.mappings().partitions():
            yield [dict(row) for row in partition]


def jobs(database: SessionSource, run_id: str) -> list[dict[str, Any]]:
    """Every column of every job of a run (id or unique prefix), in the order they were added."""
    table = JobRecord.__table__
    with database.read_session() as session:
        resolved = _resolve_run_id(session, run_id)
        rows = session.execute(select(table).where(table.c.run_id == resolved).order_by(table.c.created_at, table.c.id))
        return [dict(row) for row in rows.mappings()]


def attempts(database: SessionSource, job_id: str) -> list[dict[str, Any]]:
    """Every launch of a job, first to last."""
    table = JobAttemptRecord.__table__
    with database.read_session() as session:
        rows = session.execute(select(table).where(table.c.job_id == job_id).order_by(table.c.attempt))
        return [dict(row) for row in rows.mappings()]


# The columns a run's jobs are summed by in `reelbatch status`: a bucket (shape) under one plan.
BUCKET_COLUMNS = (
    "model",
    "height",
    "width",
    "num_frames",
    "num_inference_steps",
    "guidance_scale",
    "lora_sha256",
    "lora_scale",
    "dp",
    "cfg",
    "ulysses",
    "ring",
    "cache",
)


@dataclass
class BucketStatus:
    """A run's jobs of one bucket and plan: ``bucket`` by BUCKET_COLUMNS, jobs and samples per status."""

    bucket: dict[str, Any]
    jobs: dict[str, int]
    samples: dict[str, int]
    seconds: float = 0.0  # wall seconds of its finished jobs, summed


@dataclass(frozen=True)
class StatusReport:
    """What `reelbatch status` prints first: every figure summed by the database, nothing per job or row."""

    jobs: dict[str, int]  # jobs per status
    buckets: list[BucketStatus]
    problems: list[dict[str, Any]]  # the first failed or rejected sample rows, in manifest order
    problem_count: int


def status_report(database: SessionSource, run_id: str, first_problems: int = 20) -> StatusReport:
    """A run's jobs per status, jobs and samples per bucket and status, and its first ``first_problems`` failed or
    rejected rows: a few aggregate queries, however many jobs and samples the run has."""
    jobs, samples = JobRecord.__table__, SampleRecord.__table__
    bucket_columns = [jobs.c[name] for name in BUCKET_COLUMNS]
    with database.read_session() as session:
        resolved = _resolve_run_id(session, run_id)
        job_counts = dict.fromkeys(JOB_STATUSES, 0)
        buckets: dict[tuple, BucketStatus] = {}
        rows = session.execute(
            select(*bucket_columns, jobs.c.status, func.count(), func.coalesce(func.sum(jobs.c.seconds), 0.0))
            .where(jobs.c.run_id == resolved)
            .group_by(*bucket_columns, jobs.c.status)
            .order_by(*bucket_columns)
        )
        for *key, status, count, seconds in rows:
            job_counts[status] = job_counts.get(status, 0) + count
            entry = buckets.setdefault(
                tuple(key),
                BucketStatus(dict(zip(BUCKET_COLUMNS, key, strict=True)), dict.fromkeys(JOB_STATUSES, 0), {}),
            )
            entry.jobs[status] += count
            entry.seconds += seconds
        rows = session.execute(
            select(*bucket_columns, samples.c.status, func.count())
            .join(jobs, jobs.c.id == samples.c.job_id)
            .where(samples.c.run_id == resolved)
            .group_by(*bucket_columns, samples.c.status)
        )
        for *key, status, count in rows:
            with_samples = buckets.get(tuple(key))
            if with_samples is not None:
                with_samples.samples[status] = with_samples.samples.get(status, 0) + count
        failing = (samples.c.run_id == resolved) & samples.c.status.in_(("failed", "rejected"))
        problem_count = session.scalar(select(func.count()).select_from(samples).where(failing)) or 0
        problems = session.execute(
            select(samples.c.row, samples.c.status, samples.c.prompt, samples.c.error, samples.c.reject_fix)
            .where(failing)
            .order_by(samples.c.row, samples.c.video_index, samples.c.id)
            .limit(first_problems)
        )
        return StatusReport(
            job_counts, list(buckets.values()), [dict(row) for row in problems.mappings()], problem_count
        )
