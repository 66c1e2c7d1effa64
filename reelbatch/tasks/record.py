"""Open and close a run in the database, and the report a run ends with."""

from __future__ import annotations

import time

from prefect import task
from pydantic import BaseModel

from reelbatch import progress
from reelbatch.infra.db import Database, library_versions
from reelbatch.schemas import RowRejection, RunDefaults
from reelbatch.tasks.manifest import ManifestReadResult
from reelbatch.tasks.shard import RunPlan


class RunReport(BaseModel):
    run_id: str | None
    status: str  # done | partial | failed | refused
    rows: int
    accepted: int
    rejected: list[RowRejection]
    jobs: int
    done: int
    failed: int
    output: str
    started_at: float
    wall_seconds: float = 0.0
    dataset: dict[str, str] = {}  # metadata.csv, samples.parquet and gallery locations

    @property
    def exit_code(self) -> int:
        """0 when every row ran and every sample is done; 1 when a row was rejected or a sample failed."""
        return 0 if self.status == "done" and not self.rejected else 1


def start_run(
    db_url: str,
    manifest: ManifestReadResult,
    plan: RunPlan,
    output: str,
    gpus_per_node: int,
    defaults: RunDefaults,
) -> str:
    with Database(db_url) as db:
        run_id = db.create_run(
            manifest_source=manifest.source,
            manifest_sha256=manifest.sha256,
            output_root=output,
            gpus_per_node=gpus_per_node,
            params={"defaults": defaults.model_dump(), "plan": plan.summary()},
            library_versions=library_versions(),
            rows_total=plan.rows,
            rows_accepted=plan.accepted,
            rows_rejected=len({r.row for r in plan.rejected}),
        )
        db.add_rejections(run_id, plan.rejected, manifest.raw_rows)
    progress.sink().run_planned(len(plan.jobs), plan.samples)
    return run_id


def finish_run(db_url: str, run_id: str, plan: RunPlan, output: str) -> RunReport:
    with Database(db_url) as db:
        status = db.finish_run(run_id)
        summary = db.run_summary(run_id)
    started = summary.created_at.timestamp()
    return RunReport(
        run_id=run_id,
        status=status,
        rows=plan.rows,
        accepted=plan.accepted,
        rejected=plan.rejected,
        jobs=len(plan.jobs),
        done=summary.counts.get("done", 0),
        failed=summary.counts.get("failed", 0),
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


start_run_task = task(name="record-run")(start_run)
finish_run_task = task(name="finish-run")(finish_run)
