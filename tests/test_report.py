"""What the run's artifacts say, built from database rows without Prefect."""

from __future__ import annotations

from types import SimpleNamespace

from reelbatch.markdown import cell, link
from reelbatch.schemas import RowRejection
from reelbatch.tasks.report import job_table, run_summary_markdown


def test_cells_keep_user_text_literal():
    hostile = "a | b\r\nc [click](javascript:alert(1)) <img src=x> `code` *bold*"
    escaped = cell(hostile)
    assert "\n" not in escaped and "\r" not in escaped and "<img" not in escaped
    assert "\\|" in escaped and "\\[click\\]" in escaped and "\\`code\\`" in escaped
    assert cell("x" * 1000).endswith("…") and len(cell("x" * 1000)) == 300


def test_links_encode_local_paths():
    assert link("/data/my videos/[run]") == "[/data/my videos/\\[run\\]](<file:///data/my%20videos/%5Brun%5D>)"
    assert link("s3://bucket/out", "videos") == "[videos](<s3://bucket/out>)"


def test_job_table_counts_each_jobs_samples():
    jobs = [
        dict(
            id="r-job-0000",
            model="tiny-wan",
            height=32,
            width=32,
            num_frames=5,
            num_inference_steps=2,
            dp=1,
            cfg=2,
            ulysses=1,
            ring=1,
            status="done",
            samples_count=3,
            padded_slots=0,
            seconds=10.0,
            world_size=2,
            attempts=2,
        )
    ]
    samples = [dict(job_id="r-job-0000", status=s) for s in ("done", "done", "failed")] + [
        dict(job_id=None, status="rejected")
    ]
    [row] = job_table(jobs, samples)
    assert (row["done"], row["failed"], row["gpu_seconds"], row["plan"]) == (2, 1, 20.0, "dp1 cfg2 ulysses1 ring1")


def test_summary_lists_rejected_rows_and_links():
    report = SimpleNamespace(
        run_id="abc",
        status="partial",
        done=2,
        failed=1,
        reused=0,
        rows=4,
        accepted=3,
        jobs=1,
        wall_seconds=12.0,
        output="/out",
    )
    rejected = [RowRejection(row=5, column="height", rule="size", message="30 | not /16", fix="use 32")]
    text = run_summary_markdown(report, rejected, {"metadata": "/out/metadata.csv", "gallery": "s3://b/g.html"})
    assert "## Rejected rows (1)" in text and "| 5 | height | size | 30 \\| not /16 | use 32 |" in text
    assert "(<file:///out/metadata.csv>)" in text and "(<s3://b/g.html>)" in text
