"""The generate-dataset flow: the pipeline's outline and nothing else.

manifest (path, URL or pasted text) -> read + validate -> find finished samples -> plan jobs -> record the run
-> record its jobs in batches, longest first, while the recorded ones already run
-> every job side by side on free devices (this machine, or Dask workers), longest first: launch ranks, collect
-> finish -> dataset index -> report (Prefect artifacts: progress while running, job table, summary)
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

from reelbatch import progress
from reelbatch.config import RunConfig
from reelbatch.infra.dask_cluster import check_shared_storage
from reelbatch.infra.db import Database
from reelbatch.infra.db.queries import heartbeat_interval_s
from reelbatch.infra.failures import RetryPolicy
from reelbatch.infra.images import ImagePolicy, configured_roots
from reelbatch.infra.prefect_config import database_url, deployment_config
from reelbatch.infra.storage import images_root, normalize_root
from reelbatch.manifest import ManifestLimits, check_columns
from reelbatch.models.catalog import ModelCatalog
from reelbatch.tasks.dispatch import record_jobs_task
from reelbatch.tasks.executors import JobSettings, executor_for
from reelbatch.tasks.export import write_dataset_index_task
from reelbatch.tasks.feed import JobFeed
from reelbatch.tasks.images import check_images_task, check_loras_task
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
from reelbatch.tasks.stop import stop_handling

# The local executor submits a job only once it has devices, so threads beyond the devices of a big node are never used.
JOB_THREADS = 16


# ThreadPoolTaskRunner() is typed TaskRunner[Never] when built without a future type: a stub gap, not a misuse.
@flow(name="generate-dataset", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=JOB_THREADS))  # type: ignore[arg-type]
def generate_dataset(
    manifest: str = "",
    manifest_text: str = "",
    config: RunConfig = RunConfig(),
    resume_run_id: str | None = None,
) -> RunReport:
    """Turn a manifest of prompts into videos under `config.output` and rows in the database.

    Videos an earlier run already made into `output` are reused, so running the same manifest again resumes it.
    Jobs run side by side on disjoint groups of the machine's GPUs (CPU rank slots without CUDA), longest first.

    Args:
        manifest: Path or URL (s3://...) of a CSV, JSONL or Parquet manifest. Leave empty to paste CSV below.
        manifest_text: The CSV itself, pasted (at most 512 KB; bigger files: `reelbatch submit FILE`).
        config: How the run runs: output, database, GPUs per machine, row defaults, packing, retries, limits.
        resume_run_id: Continue this run instead of starting a new one.

    Image and LoRA cells are read only from the manifest's own folder and the places the operator configured in
    the worker's environment (REELBATCH_IMAGE_ROOTS): never from a run parameter, which whoever starts a run sets.
    """
    config = config.over(deployment_config())  # what the run leaves out: its deployment's
    output = normalize_root(config.output)
    url = database_url(config.db_url, config.db_secret)
    executor = executor_for(config.dask_address, config.dask_local_workers, config.gpus_per_node)
    if config.dask_address:
        check_shared_storage(output, url, config.dask_address)
    image_roots = configured_roots()
    ImagePolicy.for_manifest(None, image_roots)  # a root that cannot be one (credentials in it...) stops here
    policy = RetryPolicy.from_dict(config.retry_policy)
    claim_lease_s = config.claim_lease()  # a bad REELBATCH_CLAIM_LEASE_S stops the run before anything is recorded
    heartbeat_interval_s()  # so does a bad REELBATCH_HEARTBEAT_S
    # One Database for the whole run, handed to every step (they never close it); its repr hides the password.
    with Database(url) as db, stop_handling(db) as stop:  # SIGTERM/SIGINT: the run ends interrupted, resumable
        prepare_database_task(db)
        catalog = ModelCatalog.from_config(config.model_paths)
        source = resolve_manifest_task(manifest, manifest_text, output)
        manifest_limits = ManifestLimits(**(config.limits or {}))
        manifest_read = read_manifest_task(source, config.defaults, catalog, manifest_limits)
        check_columns(manifest_read, config.strict)
        for warning in manifest_read.warnings:
            get_run_logger().warning("manifest: %s", warning)
        # quote(): Prefect would otherwise walk every row (and every job below) of a big manifest looking for futures.
        manifest_read = check_images_task(  # type: ignore[call-overload]
            quote(manifest_read), catalog, images_root(output), image_roots, manifest_limits
        )
        manifest_read = check_loras_task(  # type: ignore[call-overload]
            quote(manifest_read), catalog, images_root(output), image_roots, manifest_limits
        )
        done = find_done_samples_task(db, output, quote(manifest_read.rows), config.force)
        plan = plan_run_task(
            quote(manifest_read.rows),
            quote(manifest_read.rejections),
            manifest_read.total_rows,
            catalog,
            config.gpus_per_node,
            config.max_samples_per_job,
            gpu_memory_gib=config.gpu_memory_gib,
            objective=config.objective,
            skip=set(done),
            packing=config.packing.options(config.gpus_per_node, config.max_samples_per_job),
            compile=config.compile,
        )
        if config.strict and plan.rejected:
            report = refuse_run(plan, output)
            publish_run_report_task(db, report)
            return report

        resumable = {**config.resumable(), "image_roots": image_roots}  # what `reelbatch resume` needs
        # The task gets the quoted values themselves; Prefect's stubs do not say so.
        run_id = start_run_task(  # type: ignore[call-overload]
            db, quote(manifest_read), quote(plan), output, config.gpus_per_node, resumable, resume_run_id
        )
        stop.watch(run_id, plan, output)
        record_reused_task(db, run_id, quote(plan), quote(done))  # type: ignore[call-overload]
        # The jobs are recorded in batches, longest first, on one of the flow's threads; each batch reaches the
        # executor once committed, so the first jobs start while the rest are still being written.
        jobs = JobFeed()
        recording = record_jobs_task.submit(quote(plan.jobs), run_id, output, db, catalog, jobs, config.defaults.fps)
        bar = start_progress(plan.samples)
        try:
            with progress.reporting_to(bar or progress.sink()):
                settings = JobSettings(
                    db,
                    output,
                    config.job_timeout_s,
                    policy,
                    ranks_per_node=config.gpus_per_node,
                    claim_lease_s=claim_lease_s,
                    force=config.force,
                )
                executor.run(jobs, settings, on_job_done=bar.set_done if bar else None)
        finally:
            recording.wait()  # never leave it writing into a database this flow is about to close
        recording.result()
        report = finish_run_task(db, run_id, plan, output)
        report.warnings = manifest_read.warnings
        report.dataset = write_dataset_index_task(db, run_id, output)
        publish_run_report_task(db, report)
        return report
