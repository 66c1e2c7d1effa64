"""The generate-dataset flow: the pipeline's outline and nothing else.

    read + validate the manifest -> find finished samples -> plan jobs -> record the run
    -> every job side by side on free devices, longest first: launch ranks, collect -> finish -> dataset index
"""

from __future__ import annotations

from typing import Literal

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from reelbatch.infra.devices import local_pool
from reelbatch.infra.storage import normalize_root
from reelbatch.models.registry import ModelCatalog
from reelbatch.planning.packing import Packing
from reelbatch.schemas import RunDefaults
from reelbatch.settings import DEFAULT_DB_URL, DEFAULT_OUTPUT
from reelbatch.infra.failures import RetryPolicy
from reelbatch.tasks.dispatch import prepare_job_task
from reelbatch.tasks.execute import execute_job_task, execute_jobs, longest_first
from reelbatch.tasks.export import write_dataset_index_task
from reelbatch.tasks.manifest import ManifestLimits, read_manifest_task
from reelbatch.tasks.record import (
    RunReport,
    find_done_samples_task,
    finish_run_task,
    record_reused_task,
    refuse_run,
    start_run_task,
)
from reelbatch.tasks.shard import DEFAULT_MAX_SAMPLES_PER_JOB, plan_run_task


# execute_jobs submits a job only once it has devices, so threads beyond the devices of a big node are never used.
JOB_THREADS = 16


@flow(name="generate-dataset", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=JOB_THREADS))
def generate_dataset(
    manifest: str,
    output: str = DEFAULT_OUTPUT,
    db_url: str = DEFAULT_DB_URL,
    gpus_per_node: int = 2,
    defaults: RunDefaults = RunDefaults(),
    strict: bool = False,
    force: bool = False,
    model_paths: list[str] | None = None,
    max_samples_per_job: int = DEFAULT_MAX_SAMPLES_PER_JOB,
    job_timeout_s: float | None = None,
    gpu_memory_gib: float = 80.0,
    objective: Literal["throughput", "latency"] = "throughput",
    resume_run_id: str | None = None,
    retry_policy: dict | None = None,
    limits: dict | None = None,
    packing: Packing = Packing(),
) -> RunReport:
    """Turn a manifest of prompts into videos under ``output`` and rows in the database at ``db_url``.

    Videos an earlier run already made into ``output`` are reused, not generated again (``force`` regenerates
    them); ``resume_run_id`` continues that run instead of starting a new one. ``retry_policy`` overrides the
    retries per failure class, e.g. ``{"rank_crash": {"max_attempts": 5, "backoff_s": 10}}``; ``limits`` the
    manifest limits (``ManifestLimits`` fields, e.g. ``{"max_rows": 100000, "max_prompt_chars": 1000}``).
    Jobs run side by side on disjoint groups of this machine's GPUs (CPU rank slots without CUDA), longest first.
    """
    output = normalize_root(output)
    resumable = {  # what `reelbatch resume` needs to run this again
        "defaults": defaults.model_dump(mode="json"), "strict": strict, "model_paths": model_paths or [],
        "max_samples_per_job": max_samples_per_job, "job_timeout_s": job_timeout_s,
        "gpu_memory_gib": gpu_memory_gib, "objective": objective, "retry_policy": retry_policy, "limits": limits,
        "packing": packing.model_dump(mode="json"),
    }
    policy = RetryPolicy.from_dict(retry_policy)
    catalog = ModelCatalog.from_config(model_paths or [])
    manifest_read = read_manifest_task(manifest, defaults, catalog.names(), ManifestLimits(**(limits or {})))
    done = find_done_samples_task(db_url, output, manifest_read.rows, force)
    plan = plan_run_task(
        manifest_read.rows, manifest_read.rejections, manifest_read.total_rows, catalog, gpus_per_node,
        max_samples_per_job, gpu_memory_gib=gpu_memory_gib, objective=objective, skip=set(done),
        packing=packing.options(gpus_per_node, max_samples_per_job),
    )
    if strict and plan.rejected:
        return refuse_run(plan, output)

    run_id = start_run_task(db_url, manifest_read, plan, output, gpus_per_node, resumable, resume_run_id)
    record_reused_task(db_url, run_id, plan, done)
    specs = [prepare_job_task(planned, run_id, output, db_url, catalog, defaults.fps) for planned in plan.jobs]
    execute_jobs(
        longest_first(plan.jobs, specs), local_pool(gpus_per_node),
        lambda spec, priority, devices: execute_job_task.submit(
            spec, db_url, output, job_timeout_s, policy, gpus_per_node, priority, devices
        ),
    )
    report = finish_run_task(db_url, run_id, plan, output)
    report.dataset = write_dataset_index_task(db_url, run_id, output)
    return report
