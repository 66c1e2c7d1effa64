"""Turn a planned job into a job spec on disk and run it as torchrun ranks.

The spec file is the whole input of the ranks (``reelbatch.engine.rank``; the folder and the events are in
``reelbatch.contract``); their stdout carries progress events that become progress bars and log lines here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from prefect import get_run_logger, task
from prefect.exceptions import MissingContextError

from reelbatch import progress
from reelbatch.contract import (
    ATTEMPT_ENV,
    RANK_ENTRY,
    JobSpec,
    crash_point,
    folder_fields,
    new_attempt_folder,
    parse_event,
    rank_log_path,
    spec_path,
    split_output,
    write_job_spec,
)
from reelbatch.infra.db import Database
from reelbatch.infra.devices import DeviceGroup
from reelbatch.infra.failures import Failure, classify
from reelbatch.infra.launcher import launch, new_launch_id
from reelbatch.infra.storage import images_root, work_root
from reelbatch.models.catalog import ModelCatalog
from reelbatch.planning.jobs import PlannedJob


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


def prepare_job(
    planned: PlannedJob, run_id: str, output: str, db: Database, catalog: ModelCatalog, fps: int | None = None
) -> JobSpec:
    """Write the job spec next to where its ranks will stage their files, and record the job as pending.

    ``fps`` None: the model's own frame rate. The family's recipe (flow shift, fp32 components) is resolved here.
    """
    job_id = f"{run_id[:8]}-{planned.job_id}"
    folder = new_attempt_folder(job_dir(output, run_id, job_id))
    recipe = planned.family.defaults
    spec = JobSpec(
        job_id=job_id,
        run_id=run_id,
        bucket=planned.bucket,
        model_path=str(catalog.local_path(planned.bucket.model)),
        family=planned.family.kind,
        plan=planned.plan,
        backend=planned.backend,
        samples=list(planned.samples),
        padded_slots=planned.padded_slots,
        tokens=planned.tokens,
        fps=fps or recipe.fps,
        flow_shift=recipe.flow_shift_for(planned.bucket.height, planned.bucket.width),
        fp32_components=list(recipe.fp32_components),
        images_dir=str(images_root(output)),
        timeout_s=planned.timeout_s,
        **folder_fields(folder),
    )
    write_job_spec(spec)
    db.add_job(run_id, spec, backend=spec.backend, log_path=str(rank_log_path(spec)))
    return spec


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


prepare_job_task = task(name="prepare-job")(prepare_job)
