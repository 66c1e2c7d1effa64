"""The database adapter against SQLite (a temporary file) and PostgreSQL (a throwaway database per test)."""

from __future__ import annotations

import pickle
import subprocess
import sys
import threading
from datetime import UTC
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from reelbatch.contract import JobSpec, SampleResult, rank_log_path
from reelbatch.infra import db as db_module
from reelbatch.infra.db import Base, Database, SchemaOutOfDate, head_revision, library_versions
from reelbatch.infra.db import runs as db_runs
from reelbatch.infra.db import sessions as db_sessions
from reelbatch.manifest import rejected_row_values
from reelbatch.schemas import BucketKey, ParallelPlan, RowRejection, Sample

HOSTILE_PROMPTS = [
    'it\'s a "quoted" prompt; with semicolons;',
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


def test_database_pickles_as_its_url(database_url: str, database: Database) -> None:
    """A Database goes to a Dask worker or Prefect task runner as its URL; the copy opens its own engine there."""
    run_id = create_run(database)
    copied = pickle.loads(pickle.dumps(database))
    try:
        assert copied.engine is not database.engine
        assert copied.engine.url.render_as_string(hide_password=False) == (
            make_url(database_url).render_as_string(hide_password=False)
        )
        assert copied.run_summary(run_id).status == "running"
    finally:
        copied.close()
    password_url = "postgresql+psycopg://reel:hunter2%40x@db.example:5432/reelbatch"
    assert pickle.loads(pickle.dumps(Database(password_url))).engine.url.password == "hunter2@x"


def test_unpickled_databases_share_one_instance_per_url(database_url: str, database: Database) -> None:
    """Every job task a Dask worker runs brings a pickled Database: they all become that process's one instance."""
    first, second = (pickle.loads(pickle.dumps(database)) for _ in range(2))
    assert first is second is Database.shared(database_url)
    assert first is not database  # the flow's own, which it closes, is never the shared one
    with first.read_session() as session:
        assert session.execute(text("select 1")).scalar() == 1
    assert isinstance(first.engine.pool, NullPool)  # a worker keeps no idle connections open for its life
    other = Database.shared("postgresql+psycopg://reel:other@db.example:5432/reelbatch")
    assert other is not Database.shared("postgresql+psycopg://reel:hunter2@db.example:5432/reelbatch")


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
            RowRejection(
                row=6,
                column="height",
                rule="multiple_of_16",
                message="height 33 is not a multiple of 16",
                fix="use 32 or 48",
            ),
            RowRejection(row=7, column=None, rule="bucket_too_big", message="bucket needs 9 GPUs", fix="use fewer"),
        ],
        row_values={
            6: rejected_row_values(
                {"id": "r6", "prompt": "a dog", "height": "33", "width": "wide", "seed": "12", "sequence_batch": "true"}
            )
        },
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

    database.record_sample_results(
        "job-a",
        [done("job-a-s2"), done("job-a-s3")],
        {"job-a-s2": "/data/videos/a2.mp4", "job-a-s3": "/data/videos/a3.mp4"},
    )
    database.record_sample_results("job-b", [done("job-b-s4"), failed("job-b-s5")], {"job-b-s4": "/data/b4.mp4"})
    database.finish_job("job-a", status="done", returncode=0, seconds=12.5)
    database.finish_job("job-b", status="failed", returncode=1, seconds=3.0, error="rank 1 died")

    assert database.finish_run(run_id) == "partial"
    summary = database.run_summary(run_id)
    assert summary.status == "partial"
    assert summary.finished_at is not None and summary.finished_at.tzinfo == UTC
    assert summary.counts == {"pending": 0, "running": 0, "done": 3, "failed": 1, "rejected": 2}

    samples = database.samples(run_id)
    assert [(sample["row"], sample["status"]) for sample in samples] == [
        (2, "done"),
        (3, "done"),
        (4, "done"),
        (5, "failed"),
        (6, "rejected"),
        (7, "rejected"),
    ]
    a2 = samples[0]
    assert a2["output_path"] == "/data/videos/a2.mp4"
    assert (a2["seconds"], a2["frames"], a2["attempts"], a2["seed"]) == (1.5, 5, 1, 9)
    assert (a2["model"], a2["height"], a2["width"], a2["guidance_scale"]) == ("tiny-wan", 32, 48, 5.0)
    assert a2["prompt"] == "a cat surfing 2" and a2["negative_prompt"] == "blurry" and a2["row_id"] == "id2"
    assert all(a2[column].tzinfo == UTC for column in ("created_at", "started_at", "finished_at"))
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
    monkeypatch.setattr(db_runs, "_new_run_id", lambda: next(run_ids))
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
    job = job.model_copy(
        update={
            "samples": [
                sample.model_copy(
                    update={"sample_id": f"s{index}", "row": index + 2, "prompt": prompt, "negative_prompt": prompt}
                )
                for index, (sample, prompt) in enumerate(zip(job.samples * 3, HOSTILE_PROMPTS, strict=True))
            ]
        }
    )
    database.add_job(run_id, job)
    database.add_rejections(
        run_id,
        [RowRejection(row=9, column="prompt", rule="r'; --", message=HOSTILE_PROMPTS[1], fix=HOSTILE_PROMPTS[0])],
        row_values={9: rejected_row_values({"prompt": HOSTILE_PROMPTS[1], "id": HOSTILE_PROMPTS[0]})},
    )
    samples = database.samples(run_id)
    assert [sample["prompt"] for sample in samples] == [*HOSTILE_PROMPTS, HOSTILE_PROMPTS[1]]
    assert [sample["negative_prompt"] for sample in samples[:3]] == HOSTILE_PROMPTS
    assert (samples[3]["row_id"], samples[3]["error"], samples[3]["reject_fix"]) == (
        HOSTILE_PROMPTS[0],
        HOSTILE_PROMPTS[1],
        HOSTILE_PROMPTS[0],
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


# --- revision 0002: resume columns ---


def _rows(database: Database, table: str) -> list[dict]:
    with database.engine.connect() as connection:
        return [dict(row) for row in connection.execute(text(f"SELECT * FROM {table} ORDER BY id")).mappings()]


def _fill_revision_0001(database: Database) -> None:
    """A run with a job, a done, a failed and a rejected sample, written with plain SQL at revision 0001."""
    with database.write_connection() as connection:
        connection.execute(
            text(
                "INSERT INTO runs (id, created_at, status, manifest_source, manifest_sha256, output_root,"
                " gpus_per_node, params, library_versions, rows_total, rows_accepted, rows_rejected)"
                " VALUES ('r' || :pad, :now, 'partial', 'm.csv', :sha, '/out', 8, '{\"retries\": 1}', '{}', 3, 2, 1)"
            ),
            {"pad": "0" * 31, "now": "2025-11-30 12:00:00+00:00", "sha": "ab" * 32},
        )
        connection.execute(
            text(
                "INSERT INTO jobs (id, run_id, model, height, width, num_frames, num_inference_steps, guidance_scale,"
                " sequence_batch, dp, cfg, ulysses, ring, world_size, backend, samples_count, padded_slots, tokens,"
                " status, returncode, error, log_path, created_at, attempts)"
                " VALUES ('job-old', 'r' || :pad, 'tiny-wan', 32, 48, 5, 4, 5.0, false, 2, 1, 1, 1, 2, 'native', 2,"
                " 0, 96, 'failed', 1, 'boom', '/logs/old.log', :now, 1)"
            ),
            {"pad": "0" * 31, "now": "2025-11-30 12:00:00+00:00"},
        )
        for sample_id, job_id, status, output_path in [
            ("s-done", "job-old", "done", "/out/ab/s-done.mp4"),
            ("s-failed", "job-old", "failed", None),
            (None, None, "rejected", None),
        ]:
            connection.execute(
                text(
                    "INSERT INTO samples (run_id, job_id, sample_id, row, video_index, prompt, negative_prompt,"
                    " status, output_path, attempts, created_at, updated_at)"
                    " VALUES ('r' || :pad, :job_id, :sample_id, 2, 0, 'a cat', '', :status, :output_path, 1,"
                    " :now, :now)"
                ),
                {
                    "pad": "0" * 31,
                    "job_id": job_id,
                    "sample_id": sample_id,
                    "status": status,
                    "output_path": output_path,
                    "now": "2025-11-30 12:00:00+00:00",
                },
            )


def test_upgrade_from_0001_keeps_every_row(database_url: str) -> None:
    command.upgrade(db_module.alembic_config(database_url), "0001")
    with Database(database_url) as database:
        assert database.current_revision() == "0001"
        _fill_revision_0001(database)
        before = {table: _rows(database, table) for table in ("runs", "jobs", "samples")}
        assert [len(rows) for rows in before.values()] == [1, 1, 3]

        database.upgrade()
        assert database.current_revision() == head_revision() == "0008_lora"
        database.ensure_schema()
        after = {table: _rows(database, table) for table in ("runs", "jobs", "samples")}
        assert [row.pop("heartbeat_at") for row in after["runs"]] == [None]  # revision 0006
        assert [row.pop("launch_id") for row in after["jobs"]] == [None]
        assert [row.pop("reused_from_run") for row in after["samples"]] == [None] * 3
        # Revision 0005: an old job was text-to-video; nothing else is known about old rows.
        assert [
            {name: row.pop(name) for name in ("guidance_scale_2", "conditioning", "fps", "flow_shift")}
            for row in after["jobs"]
        ] == [{"guidance_scale_2": None, "conditioning": "text", "fps": None, "flow_shift": None}]
        # Revision 0007_step_cache: an old job ran uncached and uncompiled; 0008_lora: it had no LoRA.
        assert [{name: row.pop(name) for name in ("cache", "compiled")} for row in after["jobs"]] == [
            {"cache": None, "compiled": False}
        ]
        assert [[row.pop(name) for name in ("lora_sha256", "lora_scale")] for row in after["jobs"]] == [[None] * 2]
        new_sample_columns = (
            "guidance_scale_2",
            "conditioning",
            "image",
            "image_sha256",
            "last_image",
            "last_image_sha256",
            "cache",
            "transformer_forwards",
            "cached_forwards",
            "lora",
            "lora_sha256",
            "lora_scale",
        )
        assert [[row.pop(name) for name in new_sample_columns] for row in after["samples"]] == [
            [None] * len(new_sample_columns)
        ] * 3
        assert after == before

        # The upgraded rows are usable through the models.
        run_id = "r" + "0" * 31
        summary = database.run_summary(run_id)
        assert (summary.counts["done"], summary.counts["failed"], summary.reused) == (1, 1, 0)
        assert database.done_outputs("/out", ["s-done", "s-failed"]) == {
            "s-done": db_module.DoneOutput(output_path="/out/ab/s-done.mp4", run_id=run_id)
        }

        # And the downgrade drops the two columns in place: no row lost (a rebuilt jobs table would cascade).
        database.run_alembic(command.downgrade, "0001")
        assert database.current_revision() == "0001"
        assert {table: _rows(database, table) for table in ("runs", "jobs", "samples")} == before


def test_ensure_schema_refuses_revision_0001(database_url: str) -> None:
    with Database(database_url) as database:
        database.run_alembic(command.upgrade, "0001")
        for auto_upgrade in (False, True):
            with pytest.raises(SchemaOutOfDate, match="reelbatch db upgrade") as raised:
                database.ensure_schema(auto_upgrade=auto_upgrade)
            assert f"at revision 0001, reelbatch needs {head_revision()}" in str(raised.value)
            assert "unknown" not in str(raised.value)
        assert database.current_revision() == "0001"


# --- resume and idempotency ---


def _sample_rows(database: Database, run_id: str) -> list[dict]:
    return [sample for sample in database.samples(run_id) if sample["status"] != "rejected"]


def test_add_job_again_replans_the_job_and_its_unfinished_samples(database: Database) -> None:
    run_id = create_run(database)
    database.add_job(run_id, make_job("job", run_id, rows=[2, 3, 4]), log_path="/logs/1.log")
    database.mark_job_running("job")
    database.set_job_launch("job", "launch-1")
    database.record_sample_results("job", [done("job-s2"), failed("job-s3")], {"job-s2": "/v/2.mp4"})
    database.finish_job("job", status="failed", returncode=1, seconds=2.0, error="rank 1 died")
    before = samples_by_id(database, run_id)

    # Re-planned: a new plan and log, the same samples plus one more.
    replanned = make_job("job", run_id, rows=[2, 3, 4, 5]).model_copy(
        update={"plan": ParallelPlan(dp=4), "padded_slots": 0, "tokens": 128}
    )
    database.add_job(run_id, replanned, backend="xdit", log_path="/logs/2.log")
    database.add_job(run_id, replanned, backend="xdit", log_path="/logs/2.log")  # and once more: no change

    job = database.jobs(run_id)
    assert len(job) == 1
    job = job[0]
    assert (job["status"], job["attempts"], job["returncode"], job["error"]) == ("pending", 1, None, None)
    assert (job["finished_at"], job["seconds"]) == (None, None)
    assert (job["dp"], job["cfg"], job["world_size"], job["samples_count"], job["tokens"]) == (4, 1, 4, 4, 128)
    assert (job["backend"], job["log_path"], job["padded_slots"]) == ("xdit", "/logs/2.log", 0)
    assert job["created_at"] == database.jobs(run_id)[0]["created_at"]

    samples = _sample_rows(database, run_id)
    assert [sample["sample_id"] for sample in samples] == ["job-s2", "job-s3", "job-s4", "job-s5"]
    after = {sample["sample_id"]: sample for sample in samples}
    assert after["job-s2"] == before["job-s2"]  # done: untouched, updated_at included
    for sample_id in ("job-s3", "job-s4"):
        sample = after[sample_id]
        assert (sample["status"], sample["attempts"], sample["job_id"]) == ("pending", 1, "job")
        assert (sample["error"], sample["finished_at"], sample["output_path"]) == (None, None, None)
        assert sample["id"] == before[sample_id]["id"] and sample["created_at"] == before[sample_id]["created_at"]
        assert sample["updated_at"] > before[sample_id]["updated_at"]
        assert sample["updated_at"].tzinfo == UTC
    assert (after["job-s5"]["status"], after["job-s5"]["attempts"]) == ("pending", 0)
    assert database.run_summary(run_id).counts == {"pending": 3, "running": 0, "done": 1, "failed": 0, "rejected": 0}

    database.mark_job_running("job")
    assert [sample["attempts"] for sample in _sample_rows(database, run_id)] == [1, 2, 2, 1]


def test_add_job_moves_unfinished_samples_to_the_job_that_now_has_them(database: Database) -> None:
    run_id = create_run(database)
    first = make_job("old", run_id, rows=[2, 3])
    database.add_job(run_id, first)
    database.mark_job_running("old")
    database.record_sample_results("old", [done("old-s2")], {"old-s2": "/v/2.mp4"})
    database.interrupt_running_jobs(run_id, "orchestrator died")

    # Re-planning cut the bucket differently: the unfinished sample is now in another job.
    moved = first.model_copy(update={"job_id": "new", "samples": first.samples[1:]})
    database.add_job(run_id, moved)
    samples = samples_by_id(database, run_id)
    assert len(samples) == 2
    assert (samples["old-s3"]["job_id"], samples["old-s3"]["status"]) == ("new", "pending")
    assert (samples["old-s2"]["job_id"], samples["old-s2"]["status"]) == ("old", "done")

    database.mark_job_running("new")
    database.record_sample_results("new", [done("old-s3")], {"old-s3": "/v/3.mp4"})
    database.finish_job("new", status="done", returncode=0, seconds=1.0)
    assert database.finish_run(run_id) == "done"


def test_add_job_refuses_a_job_id_of_another_run(database: Database) -> None:
    first, second = create_run(database), create_run(database)
    database.add_job(first, make_job("job", first, rows=[2]))
    with pytest.raises(ValueError, match="already used by run"):
        database.add_job(second, make_job("job", second, rows=[2]))
    assert database.jobs(second) == [] and database.samples(second) == []
    assert database.jobs(first)[0]["run_id"] == first


def test_add_jobs_records_many_jobs_in_batches_in_the_order_given(database: Database) -> None:
    run_id = create_run(database)
    jobs = [make_job(f"job{index}", run_id, rows=[2 + 3 * index, 3 + 3 * index, 4 + 3 * index]) for index in range(7)]
    jobs[3] = jobs[3].model_copy(update={"backend": "xdit"})
    database.add_jobs(run_id, jobs[::-1], log_paths={"job0": "/logs/0.log"}, batch_size=3)

    recorded = database.jobs(run_id)
    assert [job["id"] for job in recorded] == [job.job_id for job in jobs[::-1]]  # 3 transactions, order kept
    by_id = {job["id"]: job for job in recorded}
    assert by_id["job0"]["log_path"] == "/logs/0.log"
    assert by_id["job1"]["log_path"] == str(rank_log_path(jobs[1]))  # the spec's own
    assert (by_id["job3"]["backend"], by_id["job4"]["backend"]) == ("xdit", "native")
    assert all((job["status"], job["samples_count"], job["attempts"]) == ("pending", 3, 0) for job in recorded)
    samples = _sample_rows(database, run_id)
    assert len(samples) == 21 and {sample["status"] for sample in samples} == {"pending"}
    assert {sample["sample_id"]: sample["job_id"] for sample in samples} == {
        sample.sample_id: job.job_id for job in jobs for sample in job.samples
    }
    assert samples_by_id(database, run_id)["job5-s17"]["prompt"] == "a cat surfing 17"


def test_add_jobs_again_keeps_done_samples_and_moves_the_others(database: Database) -> None:
    run_id = create_run(database)
    first = [make_job("a", run_id, rows=[2, 3]), make_job("b", run_id, rows=[4, 5])]
    database.add_jobs(run_id, first, batch_size=1)
    database.mark_job_running("a")
    database.record_sample_results("a", [done("a-s2"), failed("a-s3")], {"a-s2": "/v/2.mp4"})
    database.finish_job("a", status="failed", returncode=1, seconds=1.0, error="boom")
    before = samples_by_id(database, run_id)

    # Re-planned in one call: job "a" keeps its done sample and gets a wider plan, job "b" lost "b-s5" to a new job.
    replanned = [
        first[0].model_copy(update={"plan": ParallelPlan(dp=4)}),
        first[1].model_copy(update={"samples": first[1].samples[:1]}),
        first[1].model_copy(update={"job_id": "c", "samples": first[1].samples[1:]}),
    ]
    database.add_jobs(run_id, replanned)
    database.add_jobs(run_id, replanned)  # idempotent

    jobs = {job["id"]: job for job in database.jobs(run_id)}
    assert sorted(jobs) == ["a", "b", "c"]
    assert (jobs["a"]["status"], jobs["a"]["attempts"], jobs["a"]["dp"], jobs["a"]["error"]) == ("pending", 1, 4, None)
    samples = samples_by_id(database, run_id)
    assert samples["a-s2"] == before["a-s2"]  # done: untouched
    assert (samples["a-s3"]["status"], samples["a-s3"]["attempts"], samples["a-s3"]["error"]) == ("pending", 1, None)
    assert (samples["b-s5"]["job_id"], samples["b-s5"]["id"]) == ("c", before["b-s5"]["id"])
    assert len(samples) == 4


def test_add_jobs_given_a_job_twice_keeps_the_last(database: Database) -> None:
    run_id = create_run(database)
    job = make_job("job", run_id, rows=[2, 3])
    database.add_jobs(run_id, [job.model_copy(update={"plan": ParallelPlan(dp=2, ulysses=2)}), job])
    [recorded] = database.jobs(run_id)
    assert (recorded["dp"], recorded["ulysses"]) == (2, 1)  # the last given, as if added one by one
    assert len(_sample_rows(database, run_id)) == 2


def test_add_jobs_refuses_the_batch_with_a_job_of_another_run_and_keeps_the_batches_before(
    database: Database,
) -> None:
    first, second = create_run(database), create_run(database)
    database.add_job(first, make_job("taken", first, rows=[2]))
    jobs = [make_job("x", second, rows=[2]), make_job("y", second, rows=[3]), make_job("taken", second, rows=[4])]
    with pytest.raises(ValueError, match="job id taken is already used by run"):
        database.add_jobs(second, [*jobs, make_job("z", second, rows=[5])], batch_size=2)
    assert [job["id"] for job in database.jobs(second)] == ["x", "y"]  # the first batch; none of the second
    assert sorted(sample["sample_id"] for sample in database.samples(second)) == ["x-s2", "y-s3"]
    with pytest.raises(ValueError, match="belongs to run"):
        database.add_jobs(second, [make_job("w", first, rows=[6])])


def test_done_outputs_finds_the_newest_done_sample_under_the_same_output_root(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    def finished_run(output_root: str, job_id: str, results: list[SampleResult]) -> str:
        run_id = create_run(database, output_root=output_root)
        job = make_job(job_id, run_id, rows=[2, 3, 4])
        job = job.model_copy(
            update={"samples": [sample.model_copy(update={"sample_id": f"s{sample.row}"}) for sample in job.samples]}
        )
        database.add_job(run_id, job)
        database.mark_job_running(job_id)
        database.record_sample_results(
            job_id, results, {result.sample_id: f"{output_root}/{run_id}/{result.sample_id}.mp4" for result in results}
        )
        database.finish_job(job_id, status="failed", returncode=1, seconds=1.0)
        return run_id

    old = finished_run("/out", "job-old", [done("s2"), done("s3")])
    new = finished_run("/out", "job-new", [done("s2"), failed("s3")])
    finished_run("/elsewhere", "job-else", [done("s2"), done("s3"), done("s4")])
    unrelated = [f"x{index}" for index in range(1200)]
    monkeypatch.setattr(db_sessions, "QUERY_CHUNK", 7)  # many chunks, the found ids in different ones

    found = database.done_outputs("/out", ["s2", "s3", "s4", *unrelated])
    assert found == {
        "s2": db_module.DoneOutput(output_path=f"/out/{new}/s2.mp4", run_id=new),
        "s3": db_module.DoneOutput(output_path=f"/out/{old}/s3.mp4", run_id=old),
    }
    assert database.done_outputs("/out/", ["s2"]) == {}  # the output root is compared verbatim
    assert database.done_outputs("/out", []) == {}


def test_has_done_outputs_says_whether_any_video_under_the_output_root_can_be_reused(database: Database) -> None:
    run_id = create_run(database, output_root="/data/videos")
    database.add_job(run_id, make_job("job", run_id, rows=[2, 3]))
    database.mark_job_running("job")
    database.record_sample_results("job", [done("job-s2")], {})  # done, but no file to reuse
    assert not database.has_done_outputs("/data/videos")
    database.record_sample_results("job", [done("job-s3")], {"job-s3": "/data/videos/3.mp4"})
    assert database.has_done_outputs("/data/videos") and not database.has_done_outputs("/data/other")


def test_done_outputs_skips_done_rows_without_an_output_path(database: Database) -> None:
    run_id = create_run(database)
    database.add_job(run_id, make_job("job", run_id, rows=[2]))
    database.mark_job_running("job")
    database.record_sample_results("job", [done("job-s2")], {})
    assert database.done_outputs("/data/videos", ["job-s2"]) == {}


def _reused(job: JobSpec, sample: Sample, from_run: str) -> db_module.ReusedSample:
    return db_module.ReusedSample(
        sample=sample, bucket=job.bucket, output_path=f"/v/{sample.sample_id}.mp4", from_run=from_run
    )


def test_add_reused_samples(database: Database) -> None:
    earlier = create_run(database)
    run_id = create_run(database)
    job = make_job("job", run_id, rows=[2, 3, 4, 5])
    s2, s3, s4, s5 = job.samples
    # s2 done in this run, s3 failed in this run, s4 and s5 not in this run yet.
    database.add_job(run_id, job.model_copy(update={"samples": [s2, s3]}))
    database.mark_job_running("job")
    database.record_sample_results("job", [done(s2.sample_id), failed(s3.sample_id)], {s2.sample_id: "/mine/2.mp4"})
    database.finish_job("job", status="failed", returncode=1, seconds=1.0)
    before = samples_by_id(database, run_id)

    reused = [_reused(job, sample, earlier) for sample in (s2, s3, s4)]
    database.add_reused_samples(run_id, reused)
    database.add_reused_samples(run_id, reused)  # idempotent
    database.add_reused_samples(run_id, [])

    samples = samples_by_id(database, run_id)
    assert len(samples) == 3
    assert samples[s2.sample_id] == before[s2.sample_id]  # already done here: kept, not marked reused
    for sample, attempts in ((s3, 1), (s4, 0)):
        row = samples[sample.sample_id]
        assert (row["status"], row["job_id"], row["reused_from_run"]) == ("done", None, earlier)
        assert (row["output_path"], row["seconds"], row["error"], row["attempts"]) == (
            f"/v/{sample.sample_id}.mp4",
            None,
            None,
            attempts,
        )
        assert row["finished_at"].tzinfo == UTC
        assert (row["model"], row["height"], row["num_frames"], row["guidance_scale"]) == ("tiny-wan", 32, 5, 5.0)
        assert (row["prompt"], row["seed"], row["row"], row["row_id"]) == (
            sample.prompt,
            sample.seed,
            sample.row,
            sample.row_id,
        )

    summary = database.run_summary(run_id)
    assert (summary.counts["done"], summary.counts["failed"], summary.reused) == (3, 0, 2)
    assert database.finish_run(run_id) == "done"
    assert [s.reused for s in database.list_runs()] == [2, 0]

    # A reused row is never sent back to generation by a later re-plan of the same sample.
    database.add_job(run_id, job.model_copy(update={"job_id": "again", "samples": [s4, s5]}))
    samples = samples_by_id(database, run_id)
    assert (samples[s4.sample_id]["status"], samples[s4.sample_id]["job_id"]) == ("done", None)
    assert (samples[s5.sample_id]["status"], samples[s5.sample_id]["job_id"]) == ("pending", "again")


def test_only_reused_samples_make_a_done_run(database: Database) -> None:
    earlier = create_run(database)
    run_id = create_run(database)
    job = make_job("job", run_id, rows=[2, 3])
    database.add_reused_samples(run_id, [_reused(job, sample, earlier) for sample in job.samples])
    assert database.finish_run(run_id) == "done"
    assert database.run_summary(run_id).jobs == 0


def test_reopen_run_and_run_record(database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    run_ids = iter(["abc1" + "0" * 28, "abc2" + "0" * 28])
    monkeypatch.setattr(db_runs, "_new_run_id", lambda: next(run_ids))
    run_id = create_run(database, params={"defaults": {"fps": 8}, "plan": None})
    create_run(database)
    database.add_job(run_id, make_job("job", run_id, rows=[2]))
    database.finish_job("job", status="failed", returncode=1, seconds=1.0, error="boom")
    assert database.finish_run(run_id) == "failed"

    record = database.run_record("abc1")
    assert record == database.run_record(run_id)
    assert set(record) == {column.name for column in db_module.RunRecord.__table__.columns}
    assert (record["id"], record["status"], record["output_root"]) == (run_id, "failed", "/data/videos")
    assert record["params"] == {"defaults": {"fps": 8}, "plan": None}
    assert record["finished_at"].tzinfo == UTC and record["created_at"].tzinfo == UTC
    for not_one_run in ("abc", "abc3", ""):
        with pytest.raises(KeyError):
            database.run_record(not_one_run)

    database.reopen_run(run_id)
    record = database.run_record(run_id)
    assert (record["status"], record["finished_at"]) == ("running", None)
    assert database.run_summary(run_id).status == "running"
    with pytest.raises(KeyError):
        database.reopen_run("abc1")  # exact ids only, as every write


def test_launches_and_interrupting_the_jobs_of_a_crashed_run(database: Database) -> None:
    crashed, other = create_run(database), create_run(database)
    database.add_job(crashed, make_job("a", crashed, rows=[2, 3]))
    database.add_job(crashed, make_job("b", crashed, rows=[4]))
    database.add_job(crashed, make_job("c", crashed, rows=[5]))
    database.add_job(other, make_job("o", other, rows=[2]))
    for job_id in ("a", "b", "c", "o"):
        database.mark_job_running(job_id)
    database.set_job_launch("a", "L" * 32)
    database.set_job_launch("b", "launch-b")
    database.set_job_launch("o", "launch-o")
    database.record_sample_results("a", [done("a-s2")], {"a-s2": "/v/a2.mp4"})
    database.record_sample_results("b", [done("b-s4")], {"b-s4": "/v/b4.mp4"})
    database.finish_job("b", status="done", returncode=0, seconds=1.0)
    with pytest.raises(ValueError):
        database.set_job_launch("a", "L" * 33)
    with pytest.raises(ValueError):
        database.set_job_launch("a", "")
    with pytest.raises(KeyError):
        database.set_job_launch("nope", "launch")

    # "c" runs without a launch tag (e.g. the orchestrator died before tagging it): not listed, still interrupted.
    assert database.running_launches() == [("a", "L" * 32), ("o", "launch-o")]

    assert database.interrupt_running_jobs(crashed, "orchestrator gone") == 2
    assert database.interrupt_running_jobs(crashed, "again") == 0
    assert database.running_launches() == [("o", "launch-o")]
    jobs = {job["id"]: job for job in database.jobs(crashed)}
    assert {job_id: (job["status"], job["error"]) for job_id, job in jobs.items()} == {
        "a": ("failed", "orchestrator gone"),
        "b": ("done", None),
        "c": ("failed", "orchestrator gone"),
    }
    assert jobs["a"]["finished_at"] is not None and jobs["a"]["launch_id"] == "L" * 32
    samples = samples_by_id(database, crashed)
    assert {sample_id: (s["status"], s["error"]) for sample_id, s in samples.items()} == {
        "a-s2": ("done", None),
        "a-s3": ("failed", "orchestrator gone"),
        "b-s4": ("done", None),
        "c-s5": ("failed", "orchestrator gone"),
    }
    assert samples_by_id(database, other)["o-s2"]["status"] == "running"
    assert database.jobs(other)[0]["status"] == "running"


def test_a_crash_then_a_resume_loses_and_duplicates_no_sample(database: Database) -> None:
    """The whole resume path: crash mid-run, find the orphan launch, interrupt, reopen, reuse, re-plan, finish."""
    earlier = create_run(database)  # same output root: made one of this run's videos already
    database.add_job(
        earlier,
        make_job("e", earlier, rows=[9]).model_copy(update={"samples": [make_job("j1", "", rows=[5]).samples[0]]}),
    )
    database.mark_job_running("e")
    database.record_sample_results("e", [done("j1-s5")], {"j1-s5": "/data/videos/j1-s5.mp4"})
    database.finish_job("e", status="done", returncode=0, seconds=1.0)
    database.finish_run(earlier)

    run_id = create_run(database)
    plan = [make_job("j0", run_id, rows=[2, 3]), make_job("j1", run_id, rows=[4, 5])]
    for job in plan:
        database.add_job(run_id, job)
    database.mark_job_running("j0")
    database.set_job_launch("j0", "launch-1")
    database.record_sample_results("j0", [done("j0-s2")], {"j0-s2": "/data/videos/j0-s2.mp4"})
    # ... the orchestrator dies here.

    assert database.running_launches() == [("j0", "launch-1")]
    assert database.interrupt_running_jobs(run_id, "interrupted: orchestrator gone") == 1
    database.reopen_run(run_id)
    all_ids = [sample.sample_id for job in plan for sample in job.samples]
    found = database.done_outputs(database.run_record(run_id)["output_root"], all_ids)
    assert set(found) == {"j0-s2", "j1-s5"}
    assert found["j1-s5"].run_id == earlier and found["j0-s2"].run_id == run_id
    reused = [
        db_module.ReusedSample(
            sample=sample,
            bucket=job.bucket,
            output_path=found[sample.sample_id].output_path,
            from_run=found[sample.sample_id].run_id,
        )
        for job in plan
        for sample in job.samples
        if sample.sample_id in found and found[sample.sample_id].run_id != run_id
    ]
    database.add_reused_samples(run_id, reused)
    for job in plan:  # re-plan of what is left
        left = [sample for sample in job.samples if sample.sample_id not in found]
        database.add_job(run_id, job.model_copy(update={"samples": left}))
        database.mark_job_running(job.job_id)
        paths = {sample.sample_id: f"/data/videos/{sample.sample_id}.mp4" for sample in left}
        database.record_sample_results(job.job_id, [done(sample_id) for sample_id in paths], paths)
        database.finish_job(job.job_id, status="done", returncode=0, seconds=1.0)

    assert database.finish_run(run_id) == "done"
    samples = database.samples(run_id)
    assert sorted(sample["sample_id"] for sample in samples) == sorted(all_ids)
    by_id = {sample["sample_id"]: sample for sample in samples}
    assert {sample_id: (s["attempts"], s["reused_from_run"]) for sample_id, s in by_id.items()} == {
        "j0-s2": (1, None),
        "j0-s3": (2, None),
        "j1-s4": (1, None),
        "j1-s5": (0, earlier),
    }
    assert all(sample["output_path"] == f"/data/videos/{sample['sample_id']}.mp4" for sample in samples)
    assert database.run_summary(run_id).reused == 1


def test_concurrent_replans_lose_no_update_and_duplicate_no_row(database_url: str, database: Database) -> None:
    """Four collectors re-add their job of one run at once (half the samples already there, some done) and record
    their results; every row ends done, once."""
    jobs, samples_per_job = 4, 12
    run_id = create_run(database)
    specs = [make_job(f"job{index}", run_id, rows=list(range(2, 2 + samples_per_job))) for index in range(jobs)]
    for spec in specs:
        database.add_job(run_id, spec.model_copy(update={"samples": spec.samples[: samples_per_job // 2]}))
        database.mark_job_running(spec.job_id)
        first = spec.samples[0].sample_id
        database.record_sample_results(spec.job_id, [done(first)], {first: f"/v/{first}.mp4"})
    database.interrupt_running_jobs(run_id, "crash")
    before = samples_by_id(database, run_id)
    start_together = threading.Barrier(jobs)
    errors: list[BaseException] = []

    def replan_and_collect(spec: JobSpec) -> None:
        try:
            with Database(database_url) as collector:  # one engine per collector, as separate processes would have
                start_together.wait()
                for _ in range(2):  # a retried prepare step adds the job twice
                    collector.add_job(run_id, spec)
                collector.mark_job_running(spec.job_id)
                for sample in spec.samples[1:]:
                    sample_id = sample.sample_id
                    collector.record_sample_results(spec.job_id, [done(sample_id)], {sample_id: f"/v/{sample_id}.mp4"})
                    collector.run_summary(run_id)  # readers interleaved with the writers
                collector.finish_job(spec.job_id, status="done", returncode=0, seconds=1.0)
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=replan_and_collect, args=(spec,)) for spec in specs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors

    assert database.finish_run(run_id) == "done"
    samples = database.samples(run_id)
    assert len(samples) == len({sample["sample_id"] for sample in samples}) == jobs * samples_per_job
    assert database.run_summary(run_id).counts["done"] == jobs * samples_per_job
    assert all(sample["output_path"] == f"/v/{sample['sample_id']}.mp4" for sample in samples)
    for sample in samples:
        index = int(sample["sample_id"].split("-s")[1]) - 2
        if index == 0:  # done before the crash: never touched again
            assert sample == before[sample["sample_id"]]
        else:
            assert sample["attempts"] == (2 if index < samples_per_job // 2 else 1), sample
    assert [(job["status"], job["attempts"], job["samples_count"]) for job in database.jobs(run_id)] == [
        ("done", 2, samples_per_job)
    ] * jobs


def test_each_attempt_of_a_job_is_kept_with_its_plan(database: Database) -> None:
    run_id = create_run(database)
    job = make_job("job-retry", run_id, rows=[2, 3])
    database.add_job(run_id, job)
    database.record_attempt(
        job,
        1,
        launch_id="a" * 32,
        returncode=1,
        seconds=2.5,
        failure_kind="oom",
        failed_rank=1,
        message="CUDA out of memory",
        tail="...",
        retry_delay_s=0.0,
    )
    lower = job.model_copy(
        update={"plan": ParallelPlan(dp=4), "bucket": job.bucket.model_copy(update={"sequence_batch": True})}
    )
    database.record_attempt(lower, 2, launch_id="b" * 32, returncode=0, seconds=3.0)
    first, second = database.attempts(job.job_id)
    assert (first["attempt"], first["failure_kind"], first["failed_rank"], first["cfg"]) == (1, "oom", 1, 2)
    assert (second["attempt"], second["failure_kind"], second["sequence_batch"], second["cfg"]) == (2, None, True, 1)


def test_revision_0006_allows_interrupted_runs_and_still_checks_statuses(database_url: str) -> None:
    from sqlalchemy.exc import IntegrityError

    command.upgrade(db_module.alembic_config(database_url), "0001")
    with Database(database_url) as database:
        _fill_revision_0001(database)
        database.upgrade()
        run_id = "r" + "0" * 31
        with database.write_session() as session:
            session.execute(text("UPDATE runs SET status = 'interrupted' WHERE id = :id"), {"id": run_id})
        assert database.run_record(run_id)["status"] == "interrupted"
        with pytest.raises(IntegrityError), database.write_session() as session:
            session.execute(text("UPDATE runs SET status = 'lost' WHERE id = :id"), {"id": run_id})
        # Going back to 0005 turns interrupted runs into failed ones (0005 knows no other way to say it).
        database.run_alembic(command.downgrade, "0005")
        status = text("SELECT status FROM runs WHERE id = :id")
        with database.read_session() as session:
            assert session.execute(status, {"id": run_id}).scalar_one() == "failed"
        with pytest.raises(IntegrityError), database.write_session() as session:
            session.execute(text("UPDATE runs SET status = 'interrupted' WHERE id = :id"), {"id": run_id})
        assert [len(_rows(database, table)) for table in ("runs", "jobs", "samples")] == [1, 1, 3]


def test_a_cached_compiled_job_and_its_counts_are_recorded(database: Database) -> None:
    run_id = create_run(database)
    spec = make_job("cached", run_id, rows=[2, 3])
    spec = spec.model_copy(update={"bucket": spec.bucket.model_copy(update={"cache": "fbc:0.1"}), "compile": True})
    database.add_job(run_id, spec)
    database.mark_job_running("cached")
    counted = done("cached-s2").model_copy(update={"transformer_forwards": 8, "cached_forwards": 3})
    database.record_sample_results(
        "cached", [counted, done("cached-s3")], {"cached-s2": "/v/2.mp4", "cached-s3": "/v/3.mp4"}
    )
    samples = samples_by_id(database, run_id)
    assert {sample_id: samples[sample_id]["cache"] for sample_id in ("cached-s2", "cached-s3")} == dict.fromkeys(
        ("cached-s2", "cached-s3"), "fbc:0.1"
    )
    assert (samples["cached-s2"]["transformer_forwards"], samples["cached-s2"]["cached_forwards"]) == (8, 3)
    assert (samples["cached-s3"]["transformer_forwards"], samples["cached-s3"]["cached_forwards"]) == (None, None)
    with database.read_session() as session:
        job = session.get(db_module.JobRecord, "cached")
        assert job is not None and (job.cache, job.compiled) == ("fbc:0.1", True)
