"""Turn planned jobs into job specs, record them, and run a job as torchrun ranks.

The spec file is the whole input of the ranks (``reelbatch.engine.rank``; the folder and the events are in
``reelbatch.contract``); their stdout carries progress events that become progress bars and log lines here.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from prefect import get_run_logger
from prefect.exceptions import MissingContextError

from reelbatch import progress
from reelbatch.contract import (
    ATTEMPT_ENV,
    RANK_ENTRY,
    JobSpec,
    crash_point,
    folder_fields,
    parse_event,
    rank_log_path,
    spec_path,
    split_output,
    write_job_spec,
)
from reelbatch.defaults import RECORD_BATCH_JOBS, RECORD_FIRST_BATCH_JOBS
from reelbatch.infra import shutdown
from reelbatch.infra.db import Database
from reelbatch.infra.devices import DeviceGroup
from reelbatch.infra.failures import Failure, classify
from reelbatch.infra.launcher import launch, new_launch_id
from reelbatch.infra.storage import images_root, work_root
from reelbatch.models.catalog import ModelCatalog
from reelbatch.planning.jobs import PlannedJob
from reelbatch.tasks.feed import JobFeed
from reelbatch.tasks.step import step


@dataclass
class JobOutcome:
    returncode: int
    seconds: float
    timed_out: bool
    log_path: str
    launch_id: str
    failure: Failure | None = None  # None when the ranks exited cleanly
    started_at: datetime | None = None


def job_dir(output: str, run_id: str, job_id: str) -> Path:
    return work_root(output) / run_id / job_id


def job_spec(planned: PlannedJob, run_id: str, output: str, catalog: ModelCatalog, fps: int | None = None) -> JobSpec:
    """The job as its ranks will see it, in a fresh attempt folder that is created with ``job.json`` when the job
    first runs (``tasks.execute.ensure_job_files``): a run of thousands of jobs writes no files before its first.

    ``fps`` None: the model's own frame rate. The family's recipe (flow shift, fp32 components) is resolved here.
    """
    job_id = f"{run_id[:8]}-{planned.job_id}"
    # The name contract.new_attempt_folder gives, without making the folder yet.
    folder = job_dir(output, run_id, job_id) / uuid.uuid4().hex[:8]
    recipe = planned.family.defaults
    samples = list(planned.samples)
    if planned.bucket.lora_sha256 is None and any(s.lora is not None for s in samples):
        # Intake (manifest/loras.py) gives every row with a LoRA its hash: without it the LoRA would be left out.
        raise ValueError(f"job {job_id}: rows name a LoRA that was not checked and staged (run check_loras first)")
    return JobSpec(
        job_id=job_id,
        run_id=run_id,
        bucket=planned.bucket,
        model_path=str(catalog.local_path(planned.bucket.model)),
        family=planned.family.kind,
        plan=planned.plan,
        backend=planned.backend,
        samples=samples,
        padded_slots=planned.padded_slots,
        tokens=planned.tokens,
        fps=fps or recipe.fps,
        flow_shift=recipe.flow_shift_for(planned.bucket.height, planned.bucket.width),
        fp32_components=list(recipe.fp32_components),
        images_dir=str(images_root(output)),
        timeout_s=planned.timeout_s,
        compile=planned.compile,
        **folder_fields(folder),
    )


def prepare_job(
    planned: PlannedJob, run_id: str, output: str, db: Database, catalog: ModelCatalog, fps: int | None = None
) -> JobSpec:
    """One job, outside a flow (scripts, benchmarks): its spec written to disk and the job recorded as pending."""
    spec = job_spec(planned, run_id, output, catalog, fps)
    write_job_spec(spec)
    db.add_job(run_id, spec, backend=spec.backend, log_path=str(rank_log_path(spec)))
    return spec


def longest_first(planned: Sequence[PlannedJob]) -> list[int]:
    """Positions of the jobs, the longest estimated wall time first (ties: plan order)."""

    def wall(job: PlannedJob) -> float:
        return job.estimated_seconds or job.estimated_gpu_seconds / job.plan.world_size

    return sorted(range(len(planned)), key=lambda i: (-wall(planned[i]), i))


def record_jobs(
    planned: Sequence[PlannedJob],
    run_id: str,
    output: str,
    db: Database,
    catalog: ModelCatalog,
    feed: JobFeed,
    fps: int | None = None,
    batch_size: int | None = None,
    first_batch: int | None = None,
) -> int:
    """Record the planned jobs as pending, longest first, one transaction per batch, and hand each batch to ``feed``
    (priority 0: the longest) once it is committed: the executor starts the first jobs while later ones are still
    being written, and never one that is not recorded. Batches grow from ``first_batch`` jobs, doubling, up to
    ``batch_size`` (None: ``defaults.RECORD_FIRST_BATCH_JOBS`` and ``RECORD_BATCH_JOBS``). Closes the feed (with
    the error, if one stops it); returns how many jobs it recorded."""
    batch_size = max(1, batch_size or RECORD_BATCH_JOBS)
    first_batch = max(1, min(first_batch or RECORD_FIRST_BATCH_JOBS, batch_size))
    try:
        order = longest_first(planned)
        start, size = 0, first_batch
        while start < len(order):
            if shutdown.stopping.is_set():  # the run ends interrupted; `reelbatch resume` plans and records the rest
                break
            positions = order[start : start + size]
            specs = [job_spec(planned[i], run_id, output, catalog, fps) for i in positions]
            db.add_jobs(run_id, specs, batch_size=len(specs))
            feed.put(list(enumerate(specs, start)))
            start, size = start + len(positions), min(size * 2, batch_size)
    except BaseException as error:
        feed.close(error)
        raise
    feed.close()
    return start


def run_job(
    spec: JobSpec, db: Database, timeout_s: float | None = None, attempt: int = 1, devices: DeviceGroup | None = None
) -> JobOutcome:
    """Launch the job's ranks and wait for them; never raises for a failed job (the outcome classifies it).

    ``devices``: the GPUs (or CPU rank slots) lent to this job; its ranks see only those.
    """
    try:
        logger = get_run_logger()
    except MissingContextError:  # called outside a flow (tests, scripts)
        import logging

        logger = logging.getLogger("reelbatch.dispatch")
    sink = progress.sink()
    launch_id = new_launch_id()
    db.mark_job_running(spec.job_id, [sample.sample_id for sample in spec.samples])
    db.set_job_launch(spec.job_id, launch_id)  # a later orchestrator can find these ranks if this one dies
    crash_point("before_launch")
    b = spec.bucket
    sink.job_started(spec.job_id, len(spec.samples), f"{b.model} {b.height}x{b.width}x{b.num_frames} [{spec.plan}]")

    def on_line(raw: str) -> None:
        # Runs on the launcher's reader thread; the logger was captured in the task's context above.
        for line in split_output(raw):
            event = parse_event(line.text)
            if event is not None:
                if event.get("event") == "sample":
                    sink.sample_finished(spec.job_id, event["sample_id"], event["status"])
                    crash_point("mid_job")
            elif line.rank is None:  # torchrun's own lines
                logger.info("%s torchrun | %s", spec.job_id, line.text)
            else:
                logger.info("%s rank %s | %s", spec.job_id, line.rank, line.text)

    started_at = datetime.now(UTC)
    result = launch(
        RANK_ENTRY,
        [str(spec_path(spec))],
        nproc_per_node=spec.plan.world_size,
        log_path=rank_log_path(spec),
        timeout_s=timeout_s,
        on_line=on_line,
        launch_id=launch_id,
        env={ATTEMPT_ENV: str(attempt), **(devices.environment() if devices else {})},
    )
    failure = classify(result) if result.returncode != 0 or result.timed_out else None
    sink.job_finished(spec.job_id, failure.kind if failure else "done")
    return JobOutcome(
        result.returncode,
        round(result.seconds, 3),
        result.timed_out,
        str(result.log_path),
        launch_id,
        failure,
        started_at,
    )


record_jobs_task = step("record-jobs", record_jobs)
