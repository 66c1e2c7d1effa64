"""The database adapter against SQLite (a temporary file) and PostgreSQL (a throwaway database per test)."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import timezone
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from reelbatch.infra import db as db_module
from reelbatch.infra.db import Base, Database, SchemaOutOfDate, head_revision, library_versions
from reelbatch.schemas import BucketKey, JobSpec, ParallelPlan, RowRejection, Sample, SampleResult


HOSTILE_PROMPTS = [
    "it's a \"quoted\" prompt; with semicolons;",
    "'); DROP TABLE samples;--",
    "\\ backslash % percent _ underscore \n newline \t tab — ünïcödé 🎬",
]




# --- helpers ---


def make_job(job_id: str, run_id: str, *, rows: list[int], prompt: str = "a cat surfing", seed: int = 7) -> JobSpec:
    samples = [
        Sample(
            sample_id=f"{job_id}-s{row}",
            row=row,
            row_id=f"id{row}",
            prompt=f"{prompt} {row}",
            negative_prompt="blurry",
            seed=seed + row,
            output_key=f"{job_id}/{row}.mp4",
        )
        for row in rows
    ]
    return JobSpec(
        job_id=job_id,
        run_id=run_id,
        bucket=BucketKey(
            model="tiny-wan", height=32, width=48, num_frames=5, num_inference_steps=4, guidance_scale=5.0
        ),
        model_path="/models/tiny-wan",
        family="wan",
        plan=ParallelPlan(dp=2, cfg=2),
        samples=samples,
        padded_slots=len(rows) % 2,
        tokens=96,
        output_dir=f"/tmp/out/{job_id}",
        results_path=f"/tmp/out/{job_id}/results.jsonl",
    )


def create_run(database: Database, **overrides: object) -> str:
    arguments: dict = dict(
        manifest_source="s3://bucket/manifest.csv",
        manifest_sha256="ab" * 32,
        output_root="/data/videos",
        gpus_per_node=8,
        params={"defaults": {"fps": 8}, "retries": 1},
        library_versions=library_versions(),
        rows_total=5,
        rows_accepted=4,
        rows_rejected=1,
    )
    arguments.update(overrides)
    return database.create_run(**arguments)


def done(sample_id: str, seconds: float = 1.5) -> SampleResult:
    return SampleResult(sample_id=sample_id, status="done", seconds=seconds, frames=5, height=32, width=48)


def failed(sample_id: str, error: str = "CUDA out of memory") -> SampleResult:
    return SampleResult(sample_id=sample_id, status="failed", error=error)


def samples_by_id(database: Database, run_id: str) -> dict[str | None, dict]:
    return {sample["sample_id"]: sample for sample in database.samples(run_id)}


# --- schema ---


def test_upgrade_creates_the_schema_at_head(database_url: str) -> None:
    with Database(database_url) as database:
        assert database.current_revision() is None
        database.upgrade()
        assert database.current_revision() == head_revision()
        database.ensure_schema()
        with database.engine.connect() as connection:
            assert {"runs", "jobs", "samples", "alembic_version"} <= set(inspect(connection).get_table_names())
            # The hand-written migrations and the models must describe the same schema.
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []


def test_ensure_schema_refuses_an_empty_database_unless_auto_upgrade(database_url: str) -> None:
    with Database(database_url) as database:
        with pytest.raises(SchemaOutOfDate, match="reelbatch db upgrade") as raised:
            database.ensure_schema()
        assert f"needs {head_revision()}" in str(raised.value)
        assert database.current_revision() is None

        database.ensure_schema(auto_upgrade=True)
        assert database.current_revision() == head_revision()


def test_ensure_schema_refuses_an_older_schema_even_with_auto_upgrade(database: Database) -> None:
    database.run_alembic(command.stamp, "base")
    assert database.current_revision() is None
    with pytest.raises(SchemaOutOfDate, match="reelbatch db upgrade"):
        database.ensure_schema(auto_upgrade=True)
    assert database.current_revision() is None


def test_ensure_schema_refuses_an_unknown_revision(database_url: str) -> None:
    with Database(database_url) as database:
        with database.write_connection() as connection:
            connection.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
            connection.execute(text("INSERT INTO alembic_version (version_num) VALUES ('9999_future')"))
        with pytest.raises(SchemaOutOfDate, match="reelbatch db upgrade") as raised:
            database.ensure_schema(auto_upgrade=True)
        assert "9999_future" in str(raised.value)
        assert "unknown" in str(raised.value)


def test_url_for_display_masks_the_password() -> None:
    database = Database("postgresql+psycopg://reel:hunter2@db.example:5432/reelbatch")
    assert "hunter2" not in database.url_for_display
    assert "hunter2" not in repr(database)
    assert database.url_for_display == "postgresql+psycopg://reel:***@db.example:5432/reelbatch"


@pytest.mark.postgres
def test_schema_out_of_date_message_masks_the_password(postgres_database_url: str) -> None:
    # The test server trusts every connection, so any password gets in.
    with_password = make_url(postgres_database_url).set(password="hunter2").render_as_string(hide_password=False)
    with Database(with_password) as database:
        with pytest.raises(SchemaOutOfDate) as raised:
            database.ensure_schema()
    message = str(raised.value)
    assert "hunter2" not in message
    assert f"reelbatch db upgrade --db {database.url_for_display}" in message
    assert ":***@" in message


def test_sqlite_settings(tmp_path: Path) -> None:
    path = tmp_path / "does" / "not" / "exist" / "reelbatch.db"
    with Database(f"sqlite:///{path}") as database:
        database.upgrade()
        with database.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    assert path.is_file()


def test_importing_db_does_not_import_torch_or_prefect() -> None:
    check = "import sys, reelbatch.infra.db; print(sorted({'torch', 'prefect'} & set(sys.modules)))"
    output = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1]
    ).stdout
    assert output.strip() == "[]"


def test_library_versions() -> None:
    versions = library_versions()
    assert set(versions) == {"torch", "diffusers", "transformers", "prefect", "reelbatch"}
    assert all(isinstance(version, str) and version for version in versions.values())


# --- lifecycle ---


def test_full_lifecycle(database: Database) -> None:
    run_id = create_run(database)
    database.add_rejections(
        run_id,
        [
            RowRejection(row=6, column="height", rule="multiple_of_16", message="height 33 is not a multiple of 16",
                         fix="use 32 or 48"),
            RowRejection(row=7, column=None, rule="bucket_too_big", message="bucket needs 9 GPUs", fix="use fewer"),
        ],
        raw_rows={6: {"id": "r6", "prompt": "a dog", "height": "33", "width": "wide", "seed": "12",
                      "sequence_batch": "true"}},
    )
    database.add_job(run_id, make_job("job-a", run_id, rows=[2, 3]), backend="xdit", log_path="/logs/job-a.log")
    database.add_job(run_id, make_job("job-b", run_id, rows=[4, 5]))

    summary = database.run_summary(run_id)
    assert summary.status == "running"
    assert summary.jobs == 2
    assert summary.counts == {"pending": 4, "running": 0, "done": 0, "failed": 0, "rejected": 2}

    database.mark_job_running("job-a")
    database.mark_job_running("job-b")
    assert database.run_summary(run_id).counts["running"] == 4

    database.record_sample_results("job-a", [done("job-a-s2"), done("job-a-s3")],
                                   {"job-a-s2": "/data/videos/a2.mp4", "job-a-s3": "/data/videos/a3.mp4"})
    database.record_sample_results("job-b", [done("job-b-s4"), failed("job-b-s5")], {"job-b-s4": "/data/b4.mp4"})
    database.finish_job("job-a", status="done", returncode=0, seconds=12.5)
    database.finish_job("job-b", status="failed", returncode=1, seconds=3.0, error="rank 1 died")

    assert database.finish_run(run_id) == "partial"
    summary = database.run_summary(run_id)
    assert summary.status == "partial"
    assert summary.finished_at is not None and summary.finished_at.tzinfo == timezone.utc
    assert summary.counts == {"pending": 0, "running": 0, "done": 3, "failed": 1, "rejected": 2}

    samples = database.samples(run_id)
    assert [(sample["row"], sample["status"]) for sample in samples] == [
        (2, "done"), (3, "done"), (4, "done"), (5, "failed"), (6, "rejected"), (7, "rejected"),
    ]
    a2 = samples[0]
    assert a2["output_path"] == "/data/videos/a2.mp4"
    assert (a2["seconds"], a2["frames"], a2["attempts"], a2["seed"]) == (1.5, 5, 1, 9)
    assert (a2["model"], a2["height"], a2["width"], a2["guidance_scale"]) == ("tiny-wan", 32, 48, 5.0)
    assert a2["prompt"] == "a cat surfing 2" and a2["negative_prompt"] == "blurry" and a2["row_id"] == "id2"
    assert all(a2[column].tzinfo == timezone.utc for column in ("created_at", "started_at", "finished_at"))
    assert samples[3]["error"] == "CUDA out of memory"  # its own error, not the job's

    rejected_with_raw_row, rejected_without = samples[4], samples[5]
    assert rejected_with_raw_row["sample_id"] is None and rejected_with_raw_row["job_id"] is None
    assert (rejected_with_raw_row["prompt"], rejected_with_raw_row["row_id"]) == ("a dog", "r6")
    assert (rejected_with_raw_row["height"], rejected_with_raw_row["width"]) == (33, None)
    assert (rejected_with_raw_row["seed"], rejected_with_raw_row["sequence_batch"]) == (12, True)
    assert rejected_with_raw_row["reject_rule"] == "multiple_of_16"
    assert rejected_with_raw_row["reject_column"] == "height"
    assert rejected_with_raw_row["reject_fix"] == "use 32 or 48"
    assert rejected_with_raw_row["error"] == "height 33 is not a multiple of 16"
    assert (rejected_without["prompt"], rejected_without["model"]) == ("", None)
    assert rejected_without["reject_column"] is None

    jobs = {job["id"]: job for job in database.jobs(run_id)}
    assert jobs["job-a"]["status"] == "done" and jobs["job-a"]["backend"] == "xdit"
    assert jobs["job-a"]["log_path"] == "/logs/job-a.log"
    assert (jobs["job-a"]["dp"], jobs["job-a"]["cfg"], jobs["job-a"]["world_size"]) == (2, 2, 4)
    assert (jobs["job-a"]["samples_count"], jobs["job-a"]["tokens"], jobs["job-a"]["attempts"]) == (2, 96, 1)
    assert (jobs["job-b"]["status"], jobs["job-b"]["returncode"]) == ("failed", 1)
    assert jobs["job-b"]["error"] == "rank 1 died"
    assert jobs["job-b"]["backend"] == "native"


def test_finish_run_status_when_everything_or_nothing_is_done(database: Database) -> None:
    all_done = create_run(database)
    database.add_job(all_done, make_job("ok", all_done, rows=[2]))
    database.mark_job_running("ok")
    database.record_sample_results("ok", [done("ok-s2")], {})
    database.finish_job("ok", status="done", returncode=0, seconds=1.0)
    assert database.finish_run(all_done) == "done"

    none_done = create_run(database)
    database.add_job(none_done, make_job("bad", none_done, rows=[2]))
    database.finish_job("bad", status="failed", returncode=-9, seconds=1.0, error="killed")
    assert database.finish_run(none_done) == "failed"

    all_rejected = create_run(database)
    database.add_rejections(all_rejected, [RowRejection(row=2, column="prompt", rule="empty", message="m", fix="f")])
    assert database.finish_run(all_rejected) == "failed"

    with pytest.raises(KeyError):
        database.finish_run("0" * 32)


def test_finish_job_fails_the_samples_left_without_a_result(database: Database) -> None:
    run_id = create_run(database)
    database.add_job(run_id, make_job("job", run_id, rows=[2, 3, 4]))
    database.mark_job_running("job")
    database.record_sample_results("job", [done("job-s2")], {"job-s2": "/v/2.mp4"})

    database.finish_job("job", status="failed", returncode=1, seconds=4.0, error="NCCL timeout")
    samples = samples_by_id(database, run_id)
    assert samples["job-s2"]["status"] == "done"
    assert [samples[s]["status"] for s in ("job-s3", "job-s4")] == ["failed", "failed"]
    assert samples["job-s3"]["error"] == "NCCL timeout"
    assert samples["job-s3"]["finished_at"] is not None

    other_run = create_run(database)
    database.add_job(other_run, make_job("silent", other_run, rows=[2]))
    database.mark_job_running("silent")
    database.finish_job("silent", status="done", returncode=0, seconds=1.0)
    assert samples_by_id(database, other_run)["silent-s2"]["error"] == db_module.NO_RESULT_ERROR


def test_retrying_a_job_reruns_only_its_unfinished_samples(database: Database) -> None:
    run_id = create_run(database)
    database.add_job(run_id, make_job("job", run_id, rows=[2, 3]))
    database.mark_job_running("job")
    database.record_sample_results("job", [done("job-s2")], {})
    database.finish_job("job", status="failed", returncode=1, seconds=1.0, error="boom")

    database.mark_job_running("job")
    samples = samples_by_id(database, run_id)
    assert (samples["job-s2"]["status"], samples["job-s2"]["attempts"]) == ("done", 1)
    assert (samples["job-s3"]["status"], samples["job-s3"]["attempts"]) == ("running", 2)
    assert samples["job-s3"]["error"] is None
    job = database.jobs(run_id)[0]
    assert (job["status"], job["attempts"], job["error"], job["finished_at"]) == ("running", 2, None, None)

    with pytest.raises(KeyError):
        database.mark_job_running("no-such-job")


def test_record_sample_results_is_idempotent_and_scoped_to_its_job(database: Database) -> None:
    run_id = create_run(database)
    database.add_job(run_id, make_job("job-a", run_id, rows=[2, 3]))
    database.add_job(run_id, make_job("job-b", run_id, rows=[4]))
    database.mark_job_running("job-a")
    database.mark_job_running("job-b")
    results = [done("job-a-s2"), failed("job-a-s3"), done("job-b-s4")]  # job-b's result sent to job-a by mistake
    paths = {"job-a-s2": "/v/a2.mp4", "job-b-s4": "/v/b4.mp4"}

    database.record_sample_results("job-a", results, paths)
    first = database.samples(run_id)
    database.record_sample_results("job-a", results, paths)
    assert database.samples(run_id) == first

    samples = {sample["sample_id"]: sample for sample in first}
    assert samples["job-b-s4"]["status"] == "running"
    # A done sample keeps its result even if a stale failure for it arrives later.
    database.record_sample_results("job-a", [failed("job-a-s2")], {})
    assert samples_by_id(database, run_id)["job-a-s2"]["status"] == "done"


def test_add_job_rejects_a_job_of_another_run(database: Database) -> None:
    run_id = create_run(database)
    with pytest.raises(ValueError, match="belongs to run"):
        database.add_job(run_id, make_job("job", "f" * 32, rows=[2]))


def test_run_summary_and_reads_accept_a_unique_id_prefix(database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    run_ids = iter(["abc1" + "0" * 28, "abc2" + "0" * 28, "ff%_" + "0" * 28])
    monkeypatch.setattr(db_module, "_new_run_id", lambda: next(run_ids))
    first, second, odd = (create_run(database) for _ in range(3))

    assert database.run_summary("abc1").id == first
    assert database.run_summary(second).id == second
    assert database.run_summary("ff%").id == odd
    assert database.samples("abc2") == [] and database.jobs("abc2") == []
    for not_one_run in ("abc", "abc3", "", "%", "_"):
        with pytest.raises(KeyError):
            database.run_summary(not_one_run)
    with pytest.raises(KeyError):
        database.samples("nope")

    assert [summary.id for summary in database.list_runs()] == [odd, second, first]
    assert [summary.id for summary in database.list_runs(limit=1)] == [odd]


def test_prompts_are_stored_verbatim(database: Database) -> None:
    run_id = create_run(database)
    job = make_job("job", run_id, rows=[2])
    job = job.model_copy(update={"samples": [
        sample.model_copy(update={"sample_id": f"s{index}", "row": index + 2, "prompt": prompt,
                                  "negative_prompt": prompt})
        for index, (sample, prompt) in enumerate(zip(job.samples * 3, HOSTILE_PROMPTS, strict=True))
    ]})
    database.add_job(run_id, job)
    database.add_rejections(
        run_id,
        [RowRejection(row=9, column="prompt", rule="r'; --", message=HOSTILE_PROMPTS[1], fix=HOSTILE_PROMPTS[0])],
        raw_rows={9: {"prompt": HOSTILE_PROMPTS[1], "id": HOSTILE_PROMPTS[0]}},
    )
    samples = database.samples(run_id)
    assert [sample["prompt"] for sample in samples] == [*HOSTILE_PROMPTS, HOSTILE_PROMPTS[1]]
    assert [sample["negative_prompt"] for sample in samples[:3]] == HOSTILE_PROMPTS
    assert (samples[3]["row_id"], samples[3]["error"], samples[3]["reject_fix"]) == (
        HOSTILE_PROMPTS[0], HOSTILE_PROMPTS[1], HOSTILE_PROMPTS[0]
    )
    assert database.run_summary(run_id).counts["pending"] == 3


def test_concurrent_collectors_lose_no_update(database_url: str, database: Database) -> None:
    jobs, samples_per_job = 4, 12
    run_id = create_run(database)
    for job_index in range(jobs):
        database.add_job(run_id, make_job(f"job{job_index}", run_id, rows=list(range(2, 2 + samples_per_job))))
    start_together = threading.Barrier(jobs)
    errors: list[BaseException] = []

    def collect(job_id: str) -> None:
        try:
            with Database(database_url) as collector:  # one engine per collector, as separate processes would have
                start_together.wait()
                collector.mark_job_running(job_id)
                for row in range(2, 2 + samples_per_job):
                    sample_id = f"{job_id}-s{row}"
                    collector.record_sample_results(job_id, [done(sample_id)], {sample_id: f"/v/{sample_id}.mp4"})
                    collector.run_summary(run_id)  # readers interleaved with the writers
                collector.finish_job(job_id, status="done", returncode=0, seconds=1.0)
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=collect, args=(f"job{job_index}",)) for job_index in range(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors

    assert database.finish_run(run_id) == "done"
    summary = database.run_summary(run_id)
    assert summary.counts["done"] == jobs * samples_per_job
    samples = database.samples(run_id)
    assert all(sample["output_path"] == f"/v/{sample['sample_id']}.mp4" for sample in samples)
    assert all(sample["attempts"] == 1 for sample in samples)
    assert [(job["status"], job["attempts"]) for job in database.jobs(run_id)] == [("done", 1)] * jobs
