"""Recording a run's jobs in batches while the executor already runs the recorded ones (``tasks.dispatch.record_jobs``,
``tasks.feed.JobFeed``, ``tasks.executors.execute_jobs``, the generate-dataset flow)."""

from __future__ import annotations

import csv
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from prefect import flow, task
from prefect.testing.utilities import prefect_test_harness

from reelbatch.config import RunConfig
from reelbatch.contract import JobSpec, SampleResult, spec_path
from reelbatch.flows.generate import generate_dataset
from reelbatch.infra.db import Database, library_versions
from reelbatch.infra.devices import DeviceGroup, DevicePool
from reelbatch.manifest import read_manifest
from reelbatch.models.catalog import ModelCatalog
from reelbatch.planning.jobs import RunPlan
from reelbatch.planning.planner import plan_run
from reelbatch.schemas import BucketKey, ParallelPlan, RunDefaults
from reelbatch.tasks import dispatch, executors
from reelbatch.tasks.dispatch import longest_first, record_jobs
from reelbatch.tasks.execute import JobResult
from reelbatch.tasks.executors import execute_jobs
from reelbatch.tasks.feed import JobFeed


def write_manifest(path: Path, rows: int) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "model", "height", "width", "num_frames", "num_inference_steps", "num_videos"])
        for row in range(rows):  # more steps, longer jobs: the order they are recorded in is not the manifest's
            writer.writerow([f"a boat, shot {row}", "tiny-wan", 32, 32, 5, 2 + row % 4, 1 + row % 2])
    return path


def planned(tmp_path: Path, rows: int) -> tuple[ModelCatalog, RunPlan]:
    catalog = ModelCatalog.from_config()
    read = read_manifest(write_manifest(tmp_path / "prompts.csv", rows), RunDefaults(), catalog.names())
    return catalog, plan_run(read.rows, read.rejections, read.total_rows, catalog, 2, max_samples_per_job=1)


def new_run(database: Database) -> str:
    return database.create_run(
        manifest_source="prompts.csv",
        manifest_sha256="ab" * 32,
        output_root="out",
        gpus_per_node=2,
        params={},
        library_versions=library_versions(),
        rows_total=1,
        rows_accepted=1,
        rows_rejected=0,
    )


def recorded_job_ids(database: Database, run_id: str) -> set[str]:
    return {job["id"] for job in database.jobs(run_id)}  # its own session: committed rows only


def test_each_batch_reaches_the_feed_once_committed_longest_first(database: Database, tmp_path: Path) -> None:
    catalog, plan = planned(tmp_path, 16)
    # Tiny jobs all estimate the same floor: give them lengths out of plan order.
    plan.jobs = [replace(job, estimated_seconds=float(index % 5)) for index, job in enumerate(plan.jobs)]
    count = len(plan.jobs)
    assert count > 7
    run_id = new_run(database)
    feed = JobFeed()
    batches: list[list[tuple[int, JobSpec]]] = []
    hand_over = feed.put

    def put(batch: list[tuple[int, JobSpec]]) -> None:
        jobs = recorded_job_ids(database, run_id)
        samples = {sample["sample_id"] for sample in database.samples(run_id)}
        for _, spec in batch:
            assert spec.job_id in jobs and {sample.sample_id for sample in spec.samples} <= samples
        batches.append(batch)
        hand_over(batch)

    feed.put = put  # type: ignore[method-assign]
    output = str(tmp_path / "out")
    assert record_jobs(plan.jobs, run_id, output, database, catalog, feed, batch_size=4, first_batch=1) == count

    sizes = [len(batch) for batch in batches]
    assert sizes[:3] == [1, 2, 4] and max(sizes) == 4 and sum(sizes) == count  # doubling up to the most
    jobs = feed.take()
    assert feed.exhausted and [priority for priority, _ in jobs] == list(range(count))
    by_id = {f"{run_id[:8]}-{job.job_id}": job for job in plan.jobs}
    assert [by_id[spec.job_id] for _, spec in jobs] == [plan.jobs[i] for i in longest_first(plan.jobs)]
    walls = [by_id[spec.job_id].estimated_seconds for _, spec in jobs]
    assert walls == sorted(walls, reverse=True) and walls[0] > walls[-1]
    assert not any(spec_path(spec).exists() for _, spec in jobs)  # written when each job first runs
    assert [job["id"] for job in database.jobs(run_id)] == [spec.job_id for _, spec in jobs]


def test_a_job_starts_only_once_recorded_and_before_the_rest_are(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog, plan = planned(tmp_path, 6)
    run_id = new_run(database)
    feed = JobFeed()
    first_started = threading.Event()
    add_jobs = database.add_jobs
    batches = 0

    def add_jobs_after_a_start(run: str, specs: list[JobSpec], **options: object) -> None:
        nonlocal batches
        batches += 1
        if batches == 2:  # a job of the first batch must start while the others are not recorded yet
            assert first_started.wait(120), "no job started once the first batch was recorded"
        add_jobs(run, specs, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(database, "add_jobs", add_jobs_after_a_start)
    starts: list[tuple[str, set[str]]] = []

    @task
    def run_job(job_id: str) -> str:
        return job_id

    def start(spec: JobSpec, priority: int, devices: DeviceGroup):
        starts.append((spec.job_id, recorded_job_ids(database, run_id)))
        first_started.set()
        return run_job.submit(spec.job_id)

    @flow
    def run_all() -> list[str]:
        output = str(tmp_path / "out")
        recorder = threading.Thread(
            target=record_jobs, args=(plan.jobs, run_id, output, database, catalog, feed), kwargs={"batch_size": 2}
        )
        recorder.start()
        try:
            return execute_jobs(feed, DevicePool(2, cuda=False, host="test"), start)
        finally:
            recorder.join()

    results = run_all()
    assert sorted(results) == sorted(recorded_job_ids(database, run_id)) and len(results) == len(plan.jobs)
    assert all(job_id in recorded for job_id, recorded in starts)
    assert len(starts[0][1]) < len(plan.jobs)  # the first job started before every job was recorded


def make_spec(job_id: str) -> JobSpec:
    return JobSpec(
        job_id=job_id,
        bucket=BucketKey(model="tiny-wan", height=32, width=32, num_frames=5, num_inference_steps=2, guidance_scale=5),
        model_path="/nowhere",
        family="wan",
        plan=ParallelPlan(dp=1),
        samples=[],
        output_dir="/nowhere",
        results_path="/nowhere",
    )


def test_a_recorder_error_stops_the_executor_once_started_jobs_end() -> None:
    feed = JobFeed()
    feed.put([(0, make_spec("a"))])
    feed.close(ValueError("job id b is already used by run other"))
    pool = DevicePool(2, cuda=False, host="test")
    started: list[str] = []

    @task
    def run_job(job_id: str) -> str:
        started.append(job_id)
        return job_id

    @flow
    def run_all() -> None:
        execute_jobs(feed, pool, lambda spec, priority, devices: run_job.submit(spec.job_id))

    with pytest.raises(RuntimeError, match="recording the run's jobs failed: job id b is already used"):
        run_all()
    assert started == ["a"] and pool.in_use == 0


@pytest.mark.server
def test_the_flow_runs_and_records_every_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Many small batches: every job is recorded before it runs, every one runs, the run ends done."""
    monkeypatch.setattr(dispatch, "RECORD_FIRST_BATCH_JOBS", 1)
    monkeypatch.setattr(dispatch, "RECORD_BATCH_JOBS", 2)
    url = f"sqlite:///{tmp_path / 'state.db'}"

    @task(name="run-job")
    def fake_run_job(spec: JobSpec, db: Database, output: str, devices: DeviceGroup | None = None, **_: object):
        assert spec.job_id in recorded_job_ids(db, spec.run_id), f"{spec.job_id} started before it was recorded"
        db.mark_job_running(spec.job_id)
        results = [SampleResult(sample_id=s.sample_id, status="done", seconds=0.1, frames=5) for s in spec.samples]
        db.record_sample_results(spec.job_id, results, {s.sample_id: f"{output}/{s.output_key}" for s in spec.samples})
        db.finish_job(spec.job_id, status="done", returncode=0, seconds=0.1)
        return JobResult(spec.job_id, "done", 1, len(spec.samples), 0)

    monkeypatch.setattr(executors, "execute_job_task", fake_run_job)
    manifest = write_manifest(tmp_path / "prompts.csv", 6)
    config = RunConfig(output=str(tmp_path / "out"), db_url=url, gpus_per_node=2, max_samples_per_job=1)
    with prefect_test_harness(server_startup_timeout=180):
        report = generate_dataset(manifest=str(manifest), config=config)
    with Database(url) as database:
        jobs = database.jobs(report.run_id or "")
        samples = database.samples(report.run_id or "")
    assert report.jobs == len(jobs) > 4 and {job["status"] for job in jobs} == {"done"}
    assert (report.status, report.done, report.failed) == ("done", len(samples), 0) and len(samples) == 9
