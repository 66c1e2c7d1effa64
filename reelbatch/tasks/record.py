"""Open, reuse and close a run in the database, and the report a run ends with."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel

from reelbatch import progress
from reelbatch.identity import expand_row
from reelbatch.infra.db import Database, DoneOutput, ReusedSample, library_versions
from reelbatch.infra.launcher import kill_launch
from reelbatch.manifest import ManifestError, ManifestReadResult, rejected_row_values, row_cells
from reelbatch.planning.jobs import RunPlan
from reelbatch.rows import RowTable
from reelbatch.schemas import ManifestRow, RowRejection
from reelbatch.tasks.step import step

INTERRUPTED = "the orchestrator stopped before this job finished (crash or kill); resumed"


class RunReport(BaseModel):
    run_id: str | None
    status: str  # done | partial | failed | refused | interrupted
    rows: int
    accepted: int
    rejected: list[RowRejection]
    jobs: int
    done: int
    failed: int
    reused: int = 0
    output: str
    started_at: float
    wall_seconds: float = 0.0
    dataset: dict[str, str] = {}  # metadata.csv, samples.parquet and gallery locations
    warnings: list[str] = []  # about the manifest: columns reelbatch ignores

    @property
    def exit_code(self) -> int:
        """0 when every row ran and every sample is done; 1 when a row was rejected or a sample failed."""
        return 0 if self.status == "done" and not self.rejected else 1


def find_done_samples(db: Database, output: str, rows: Sequence[ManifestRow], force: bool) -> dict[str, DoneOutput]:
    """Samples of these rows that some run already finished into ``output`` (none with ``force``)."""
    if force or not db.has_done_outputs(output):
        return {}  # without hashing every sample (the first run into an output folder)
    ids = [sample.sample_id for row in rows for sample in expand_row(row)]
    return db.done_outputs(output, ids)


def prepare_database(db: Database) -> None:
    """Create the schema in an empty database; refuse one at another revision (see Database.ensure_schema)."""
    db.ensure_schema(auto_upgrade=True)


def start_run(
    db: Database,
    manifest: ManifestReadResult,
    plan: RunPlan,
    output: str,
    gpus_per_node: int,
    params: dict,
    resume_run_id: str | None = None,
) -> str:
    """Create the run (or reopen the one being resumed) and record its rejected rows."""
    images = images_digest(manifest.rows)
    if resume_run_id:
        record = db.run_record(resume_run_id)
        # The images are part of the videos' identities: changed ones would be other videos, not the rest of
        # this run's.
        if record["manifest_sha256"] != manifest.sha256 or record["params"].get("images_sha256") != images:
            what = (
                "changed"
                if record["manifest_sha256"] != manifest.sha256
                else "has images or LoRA adapters that changed"
            )
            raise ManifestError(
                f"{manifest.source} {what} since run {resume_run_id} started: run it as a new run instead"
                " (videos already made are reused)"
            )
        db.reopen_run(resume_run_id)
        # Ranks of the crashed orchestrator may still be running: stop them before their samples run again.
        this_run = {job["id"] for job in db.jobs(resume_run_id)}
        for job_id, launch_id in db.running_launches():
            if job_id in this_run:
                kill_launch(launch_id)
        db.interrupt_running_jobs(resume_run_id, INTERRUPTED)
        run_id = resume_run_id
    else:
        run_id = db.create_run(
            manifest_source=manifest.source,
            manifest_sha256=manifest.sha256,
            output_root=output,
            gpus_per_node=gpus_per_node,
            params={**params, "plan": plan.summary(), "images_sha256": images},
            library_versions=library_versions(),
            rows_total=plan.rows,
            rows_accepted=plan.accepted,
            rows_rejected=len({r.row for r in plan.rejected}),
        )
        cells = rejected_cells(manifest, plan.rejected)
        db.add_rejections(run_id, plan.rejected, {row: rejected_row_values(raw) for row, raw in cells.items()})
    progress.sink().run_planned(len(plan.jobs), plan.samples)
    return run_id


def images_digest(rows: Sequence[ManifestRow]) -> str | None:
    """One hash of every row's images and LoRA adapters (None without either): a resume checks they are still the
    same. A row without a LoRA adds what it always added, so runs recorded before LoRAs existed still resume."""
    if isinstance(rows, RowTable) and not rows.has_images():
        return None  # (intake makes a table with adapters into a list of rows)
    named = [
        f"{row.row}:{row.image_sha256}:{row.last_image_sha256}" + (f":{row.lora_sha256}" if row.lora_sha256 else "")
        for row in rows
        if row.image_sha256 or row.lora_sha256
    ]
    return hashlib.sha256("\n".join(named).encode()).hexdigest() if named else None


def rejected_cells(manifest: ManifestReadResult, rejections: Sequence[RowRejection]) -> dict[int, dict[str, str]]:
    """The cells of every rejected row: as read for rows the reader refused, as parsed for rows refused later
    (their images, their model's inputs, no valid plan)."""
    cells = dict(manifest.raw_rows)
    later = sorted({r.row for r in rejections} - cells.keys())
    rows = manifest.rows
    if isinstance(rows, RowTable):  # rows by line without building every row of a big manifest
        at = np.searchsorted(rows.lines, later)
        found = [rows[int(i)] for i, line in zip(at, later, strict=True) if i < len(rows) and rows.lines[i] == line]
    else:
        wanted = set(later)
        found = [row for row in rows if row.row in wanted]
    cells.update((row.row, row_cells(row)) for row in found)
    return cells


def record_reused(db: Database, run_id: str, plan: RunPlan, done: dict[str, DoneOutput]) -> int:
    """Samples whose video an earlier run already made: recorded done in this run, pointing at that file."""
    reused = [
        ReusedSample(
            sample=sample,
            bucket=bucket,
            output_path=done[sample.sample_id].output_path,
            from_run=done[sample.sample_id].run_id,
        )
        for sample, bucket in plan.skipped
        if done[sample.sample_id].run_id != run_id  # this run's own done rows are already recorded
    ]
    if reused:
        db.add_reused_samples(run_id, reused)
    return len(reused)


def finish_run(db: Database, run_id: str, plan: RunPlan, output: str) -> RunReport:
    return run_report(db, run_id, plan, output, db.finish_run(run_id))


def interrupt_run(db: Database, run_id: str, plan: RunPlan, output: str, signal_name: str) -> RunReport:
    """A run stopped by a signal: ``interrupted`` in the database, its unfinished jobs and samples ``pending`` again
    (``reelbatch resume`` continues it). A run that had already finished keeps its status."""
    reason = f"interrupted: the orchestrator got {signal_name} (`reelbatch resume` continues the run)"
    db.interrupt_run(run_id, reason)
    return run_report(db, run_id, plan, output)


def run_report(db: Database, run_id: str, plan: RunPlan, output: str, status: str | None = None) -> RunReport:
    """The report of a recorded run; ``status`` None: the run's status as the database shows it."""
    summary = db.run_summary(run_id)
    started = summary.created_at.timestamp()
    return RunReport(
        run_id=run_id,
        status=status or summary.status,
        rows=plan.rows,
        accepted=plan.accepted,
        rejected=plan.rejected,
        jobs=len(plan.jobs),
        done=summary.counts.get("done", 0),
        failed=summary.counts.get("failed", 0),
        reused=summary.reused,
        output=output,
        started_at=started,
        wall_seconds=round(time.time() - started, 2),
    )


def refuse_run(plan: RunPlan, output: str) -> RunReport:
    """--strict and a bad row: nothing is launched and nothing is recorded."""
    return RunReport(
        run_id=None,
        status="refused",
        rows=plan.rows,
        accepted=plan.accepted,
        rejected=plan.rejected,
        jobs=0,
        done=0,
        failed=0,
        output=output,
        started_at=time.time(),
    )


prepare_database_task = step("check-database", prepare_database)
find_done_samples_task = step("find-finished-samples", find_done_samples)
start_run_task = step("record-run", start_run)
record_reused_task = step("record-reused-samples", record_reused)
finish_run_task = step("finish-run", finish_run)
