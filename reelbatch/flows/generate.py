"""The generate-dataset flow: the pipeline's outline and nothing else.

manifest (path, URL or pasted text) -> read + validate -> find finished samples -> plan jobs -> record the run
-> every job side by side on free devices (this machine, or Dask workers), longest first: launch ranks, collect
-> finish -> dataset index -> report (Prefect artifacts: progress while running, job table, summary)
"""

from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from reelbatch import progress
from reelbatch.defaults import GPU_MEMORY_GIB, OBJECTIVE
from reelbatch.infra.dask_cluster import check_shared_storage
from reelbatch.infra.failures import RetryPolicy
from reelbatch.infra.images import ImagePolicy, configured_roots
from reelbatch.infra.prefect_config import database_url
from reelbatch.infra.storage import images_root, normalize_root
from reelbatch.manifest import ManifestLimits, check_columns
from reelbatch.models.catalog import ModelCatalog
from reelbatch.planning.packing import Packing
from reelbatch.planning.planner import DEFAULT_MAX_SAMPLES_PER_JOB
from reelbatch.schemas import RunDefaults
from reelbatch.settings import DEFAULT_DB_URL, DEFAULT_OUTPUT
from reelbatch.tasks.dispatch import prepare_job_task
from reelbatch.tasks.execute import longest_first
from reelbatch.tasks.executors import JobSettings, executor_for
from reelbatch.tasks.export import write_dataset_index_task
from reelbatch.tasks.images import check_images_task
from reelbatch.tasks.intake import resolve_manifest_task
from reelbatch.tasks.manifest import read_manifest_task
from reelbatch.tasks.record import (
    RunReport,
    find_done_samples_task,
    finish_run_task,
    prepare_database_task,
    record_reused_task,
    refuse_run,
    start_run_task,
)
from reelbatch.tasks.report import publish_run_report_task, start_progress
from reelbatch.tasks.shard import plan_run_task

# The local executor submits a job only once it has devices, so threads beyond the devices of a big node are never used.
JOB_THREADS = 16


# ThreadPoolTaskRunner() is typed TaskRunner[Never] when built without a future type: a stub gap, not a misuse.
@flow(name="generate-dataset", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=JOB_THREADS))  # type: ignore[arg-type]
def generate_dataset(
    manifest: str = "",
    manifest_text: str = "",
    output: str = DEFAULT_OUTPUT,
    db_url: str = DEFAULT_DB_URL,
    db_secret: str | None = None,
    gpus_per_node: int = 2,
    defaults: RunDefaults = RunDefaults(),
    packing: Packing = Packing(),
    strict: bool = False,
    force: bool = False,
    model_paths: list[str] | None = None,
    max_samples_per_job: int = DEFAULT_MAX_SAMPLES_PER_JOB,
    job_timeout_s: float | None = None,
    gpu_memory_gib: float = GPU_MEMORY_GIB,
    objective: Literal["throughput", "latency"] = OBJECTIVE,
    resume_run_id: str | None = None,
    retry_policy: dict | None = None,
    limits: dict | None = None,
    dask_address: str | None = None,
    dask_local_workers: int = 0,
) -> RunReport:
    """Turn a manifest of prompts into videos under `output` and rows in the database.

    Videos an earlier run already made into `output` are reused, so running the same manifest again resumes it.
    Jobs run side by side on disjoint groups of the machine's GPUs (CPU rank slots without CUDA), longest first.

    Args:
        manifest: Path or URL (s3://...) of a CSV, JSONL or Parquet manifest. Leave empty to paste CSV below.
        manifest_text: The CSV itself, pasted (at most 512 KB; bigger files: `reelbatch submit FILE`).
        output: Folder or URL (s3://bucket/prefix) the videos, metadata.csv and gallery are written to.
        db_url: Database URL for local use (SQLite file or PostgreSQL). Deployments use db_secret instead.
        db_secret: Name of a Prefect Secret block holding the database URL; wins over db_url.
        gpus_per_node: GPUs (CPU rank slots without CUDA) of each machine; no job is planned wider.
        defaults: Values for the manifest's optional columns, and a parallel plan or backend to pin.
        packing: How samples are cut into jobs: target job length, padding policy (pad or fill), job width.
        strict: Refuse the whole run if any row is bad (otherwise bad rows are reported and skipped).
        force: Regenerate videos an earlier run already made into `output`.
        model_paths: NAME=DIR entries: local diffusers folders usable as model names in the manifest.
        max_samples_per_job: Largest job, in samples.
        job_timeout_s: Wall-clock limit per job attempt in seconds (default: the cost estimate x 3, at least 15 min).
        gpu_memory_gib: Memory per GPU the planner may use.
        objective: throughput (most videos per GPU-hour) or latency (each video as fast as possible).
        resume_run_id: Continue this run instead of starting a new one.
        retry_policy: Retries per failure class, e.g. {"rank_crash": {"max_attempts": 5, "backoff_s": 10}}.
        limits: Manifest limits (ManifestLimits fields), e.g. {"max_rows": 100000, "max_prompt_chars": 1000}.
        dask_address: Run the jobs on this Dask cluster (tcp://host:8786); workers need GPU resources.
        dask_local_workers: Run the jobs on a local Dask cluster of this many workers (0: no Dask).

    Image cells are read only from the manifest's own folder and the places the operator configured in the
    worker's environment (REELBATCH_IMAGE_ROOTS): never from a run parameter, which whoever starts a run sets.
    """
    output = normalize_root(output)
    db_url = database_url(db_url, db_secret)
    executor = executor_for(dask_address, dask_local_workers, gpus_per_node)
    if dask_address:
        check_shared_storage(output, db_url, dask_address)
    image_roots = configured_roots()
    ImagePolicy.for_manifest(None, image_roots)  # a root that cannot be one (credentials in it...) stops here
    resumable = {  # what `reelbatch resume` needs to run this again
        "defaults": defaults.model_dump(mode="json"),
        "strict": strict,
        "model_paths": model_paths or [],
        "max_samples_per_job": max_samples_per_job,
        "job_timeout_s": job_timeout_s,
        "gpu_memory_gib": gpu_memory_gib,
        "objective": objective,
        "retry_policy": retry_policy,
        "limits": limits,
        "packing": packing.model_dump(mode="json"),
        "image_roots": image_roots,
    }
    policy = RetryPolicy.from_dict(retry_policy)
    prepare_database_task(db_url)
    catalog = ModelCatalog.from_config(model_paths or [])
    source = resolve_manifest_task(manifest, manifest_text, output)
    manifest_limits = ManifestLimits(**(limits or {}))
    manifest_read = read_manifest_task(source, defaults, catalog, manifest_limits)
    check_columns(manifest_read, strict)
    for warning in manifest_read.warnings:
        get_run_logger().warning("manifest: %s", warning)
    manifest_read = check_images_task(manifest_read, catalog, images_root(output), image_roots, manifest_limits)
    done = find_done_samples_task(db_url, output, manifest_read.rows, force)
    plan = plan_run_task(
        manifest_read.rows,
        manifest_read.rejections,
        manifest_read.total_rows,
        catalog,
        gpus_per_node,
        max_samples_per_job,
        gpu_memory_gib=gpu_memory_gib,
        objective=objective,
        skip=set(done),
        packing=packing.options(gpus_per_node, max_samples_per_job),
    )
    if strict and plan.rejected:
        report = refuse_run(plan, output)
        publish_run_report_task(db_url, report)
        return report

    run_id = start_run_task(db_url, manifest_read, plan, output, gpus_per_node, resumable, resume_run_id)
    record_reused_task(db_url, run_id, plan, done)
    specs = [prepare_job_task(planned, run_id, output, db_url, catalog, defaults.fps) for planned in plan.jobs]
    jobs = longest_first(plan.jobs, specs)
    bar = start_progress(plan.samples)
    with progress.reporting_to(bar or progress.sink()):
        settings = JobSettings(db_url, output, job_timeout_s, policy, ranks_per_node=gpus_per_node)
        executor.run(jobs, settings, on_job_done=bar.set_done if bar else None)
    report = finish_run_task(db_url, run_id, plan, output)
    report.warnings = manifest_read.warnings
    report.dataset = write_dataset_index_task(db_url, run_id, output)
    publish_run_report_task(db_url, report)
    return report
