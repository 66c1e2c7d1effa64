"""What a run shows in the Prefect UI: a progress bar while it runs, then a table of its jobs and a summary.

The content is built by pure functions from the database rows (tested without Prefect); thin wrappers publish it
as Prefect artifacts. Outside a flow run there is nowhere to publish, so the wrappers do nothing there.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.context import FlowRunContext

from reelbatch import progress
from reelbatch.infra.db import Database
from reelbatch.markdown import cell, link
from reelbatch.schemas import RowRejection
from reelbatch.tasks.step import step

PROGRESS_UPDATE_S = 1.0  # at most one API call per second, however fast samples finish


def job_table(jobs: list[dict[str, Any]], samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per job: shape, plan, samples done/failed, padding, GPU-seconds used, attempts."""
    counts: dict[str, dict[str, int]] = {}
    for sample in samples:
        if sample["job_id"]:
            per_job = counts.setdefault(sample["job_id"], {})
            per_job[sample["status"]] = per_job.get(sample["status"], 0) + 1
    table = []
    for job in jobs:
        done = counts.get(job["id"], {})
        plan = f"dp{job['dp']} cfg{job['cfg']} ulysses{job['ulysses']} ring{job['ring']}"
        seconds = job["seconds"] or 0.0
        table.append(
            {
                "job": job["id"],
                "model": job["model"],
                "shape": f"{job['height']}x{job['width']}x{job['num_frames']}, {job['num_inference_steps']} steps",
                "plan": plan,
                "status": job["status"],
                "samples": job["samples_count"],
                "done": done.get("done", 0),
                "failed": done.get("failed", 0),
                "padded": job["padded_slots"],
                "gpu_seconds": round(seconds * job["world_size"], 1),
                "attempts": job["attempts"],
            }
        )
    return table


def run_summary_markdown(report: Any, rejected: list[RowRejection], dataset: dict[str, str]) -> str:
    lines = [
        f"# reelbatch run `{report.run_id}`: {report.status}",
        "",
        f"{report.done} videos done, {report.failed} failed, {report.reused} reused from earlier runs; "
        f"{report.rows} rows ({report.accepted} accepted, {len(rejected)} rejected), {report.jobs} jobs, "
        f"{report.wall_seconds:.0f} s.",
        "",
        f"- videos: {link(report.output)}",
    ]
    labels = {"metadata": "dataset index (metadata.csv)", "samples": "samples.parquet", "gallery": "gallery"}
    for name, location in dataset.items():
        lines.append(f"- {labels.get(name, name)}: {link(location)}")
    if rejected:
        lines += [
            "",
            f"## Rejected rows ({len(rejected)})",
            "",
            "| line | column | rule | problem | fix |",
            "|---|---|---|---|---|",
        ]
        for r in sorted(rejected, key=lambda r: r.row):
            lines.append(f"| {r.row} | {cell(r.column)} | {cell(r.rule)} | {cell(r.message)} | {cell(r.fix)} |")
    return "\n".join(lines) + "\n"


class ArtifactProgress:
    """A progress sink that moves the run's progress artifact as samples finish, and passes events on."""

    def __init__(self, artifact_id: Any, total: int, inner: progress.ProgressSink) -> None:
        self.artifact_id = artifact_id
        self.total = max(total, 1)
        self.finished = 0
        self.inner = inner
        self._lock = threading.Lock()
        self._last_update = 0.0

    def run_planned(self, jobs, samples):
        self.inner.run_planned(jobs, samples)

    def job_started(self, job_id, samples, description):
        self.inner.job_started(job_id, samples, description)

    def sample_finished(self, job_id, sample_id, status):
        self.inner.sample_finished(job_id, sample_id, status)
        with self._lock:
            self.finished += 1
            now = time.monotonic()
            if now - self._last_update < PROGRESS_UPDATE_S and self.finished < self.total:
                return
            self._last_update = now
            # Sent under the lock: jobs finish on several threads, and an earlier, lower value sent last would
            # leave the bar short of where the run is.
            update_progress_artifact(self.artifact_id, 100.0 * self.finished / self.total)

    def job_finished(self, job_id, status):
        self.inner.job_finished(job_id, status)

    def set_done(self, finished: int) -> None:
        """Jobs that ran elsewhere (Dask workers) report when they end: move the bar to what the database says."""
        with self._lock:
            self.finished = max(self.finished, finished)
            update_progress_artifact(self.artifact_id, 100.0 * self.finished / self.total)


def start_progress(total_samples: int) -> ArtifactProgress | None:
    """The run's progress artifact at 0 %, wrapped around the current progress sink; None outside a flow run."""
    if FlowRunContext.get() is None:
        return None
    artifact_id = create_progress_artifact(0.0, description=f"videos finished of {total_samples}")
    return ArtifactProgress(artifact_id, total_samples, progress.sink())


def publish_run_report(db: Database, report: Any) -> None:
    """The per-job table and the run summary (rejected rows, links to the outputs) as artifacts of this run."""
    if report.run_id is None:
        create_markdown_artifact(run_summary_markdown(report, report.rejected, {}), description="run refused")
        return
    jobs = db.jobs(report.run_id)
    samples = db.samples(report.run_id)
    create_table_artifact(job_table(jobs, samples), description=f"jobs of run {report.run_id}")
    create_markdown_artifact(
        run_summary_markdown(report, report.rejected, report.dataset),
        description=f"run {report.run_id}: summary, rejected rows, outputs",
    )


publish_run_report_task = step("publish-run-report", publish_run_report)
