"""Writes of sample rows: rejected manifest rows, samples an earlier run already made, and the results of a job."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select

from reelbatch.contract import SampleResult
from reelbatch.infra.db.models import SampleRecord, utcnow
from reelbatch.infra.db.sessions import SessionSource, upsert_insert
from reelbatch.schemas import BucketKey, RowRejection, Sample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReusedSample:
    """A sample of this run whose video an earlier run already made (``from_run``) under the same output root."""

    sample: Sample
    bucket: BucketKey
    output_path: str
    from_run: str


def generation_values(bucket: BucketKey) -> dict[str, Any]:
    # Every bucket field has a column of the same name, except how it runs (plan and backend live on the job).
    return bucket.model_dump(exclude={"plan", "backend"})


# Every Sample field has a samples column of the same name, except the output key (the path replaces it).
_SAMPLE_COLUMNS = tuple(name for name in Sample.model_fields if name != "output_key")


def sample_identity_values(sample: Sample) -> dict[str, Any]:
    # Its fields are plain values: reading them is several times faster than model_dump, for a million samples.
    return {column: getattr(sample, column) for column in _SAMPLE_COLUMNS}


def add_rejections(
    database: SessionSource,
    run_id: str,
    rejections: list[RowRejection],
    row_values: Mapping[int, Mapping[str, Any]] | None = None,
) -> None:
    """One ``rejected`` sample row per rejection, with the sample columns its manifest row still gave
    (``row_values``: row -> column values, read by the manifest package; empty prompts where none)."""
    row_values = row_values or {}
    now = utcnow()
    rows = [
        {
            "run_id": run_id,
            "row": rejection.row,
            "status": "rejected",
            "error": rejection.message,
            "reject_rule": rejection.rule,
            "reject_column": rejection.column,
            "reject_fix": rejection.fix,
            "created_at": now,
            "updated_at": now,
            **{"prompt": "", "negative_prompt": "", **row_values.get(rejection.row, {})},
        }
        for rejection in rejections
    ]
    # One executemany per set of columns (rows the reader refused give fewer cells than rows refused later): an
    # INSERT of many rows names its columns once, and a column left out must keep its default, not become NULL.
    by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        by_columns.setdefault(tuple(row), []).append(row)
    with database.write_session() as session:
        for group in by_columns.values():
            session.execute(insert(SampleRecord.__table__), group)


def add_reused_samples(database: SessionSource, run_id: str, reused: list[ReusedSample]) -> None:
    """Record samples whose video an earlier run made as ``done`` without a job (``reused_from_run`` says which
    run). A sample row of this run already ``done`` is left alone; one not done becomes this reused done row
    (attempts kept). Idempotent."""
    if not reused:
        return
    now = utcnow()
    generation: dict[BucketKey, dict[str, Any]] = {}  # a few buckets for many samples
    rows = [
        {
            "run_id": run_id,
            "job_id": None,
            **sample_identity_values(item.sample),
            **(generation.get(item.bucket) or generation.setdefault(item.bucket, generation_values(item.bucket))),
            "status": "done",
            "error": None,
            "output_path": item.output_path,
            "reused_from_run": item.from_run,
            "seconds": None,
            "frames": None,
            "finished_at": now,
        }
        for item in reused
    ]
    samples = SampleRecord.__table__
    with database.write_session() as session:
        insert_samples = upsert_insert(session, samples)
        session.execute(
            insert_samples.on_conflict_do_update(
                index_elements=[samples.c.run_id, samples.c.sample_id],
                set_={
                    **{column: insert_samples.excluded[column] for column in rows[0] if column != "run_id"},
                    "updated_at": now,
                },
                where=samples.c.status != "done",
            ),
            rows,
        )


def record_sample_results(
    database: SessionSource, job_id: str, results: list[SampleResult], output_paths: Mapping[str, str]
) -> None:
    """Store the results of samples of this job. Idempotent: a result already stored changes nothing, not even
    timestamps. A ``done`` sample stays done (its mp4 exists), whatever a later result says."""
    if not results:
        return
    results_by_sample_id = {result.sample_id: result for result in results}
    now = utcnow()
    with database.write_session() as session:
        records = session.scalars(
            select(SampleRecord).where(
                SampleRecord.job_id == job_id, SampleRecord.sample_id.in_(list(results_by_sample_id))
            )
        ).all()
        for record in records:
            assert record.sample_id is not None  # selected by sample_id IN (...)
            result = results_by_sample_id[record.sample_id]
            if record.status == "done" and result.status != "done":
                log.warning(
                    "job %s: ignoring %s result for sample %s, already done",
                    job_id,
                    result.status,
                    record.sample_id,
                )
                continue
            new_values = {
                "status": result.status,
                "seconds": result.seconds,
                "frames": result.frames,
                "transformer_forwards": result.transformer_forwards,
                "cached_forwards": result.cached_forwards,
                "error": result.error,
                "output_path": output_paths.get(result.sample_id),
            }
            if all(getattr(record, column) == value for column, value in new_values.items()):
                continue
            for column, value in new_values.items():
                setattr(record, column, value)
            record.finished_at = now
        unknown = set(results_by_sample_id) - {record.sample_id for record in records}
        if unknown:
            log.warning(
                "job %s: ignoring results for %d samples not in this job: %s",
                job_id,
                len(unknown),
                sorted(unknown)[:5],
            )
