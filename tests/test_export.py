"""Dataset index, exports and gallery from database rows (no GPU work: rows and files are made here)."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reelbatch.engine.video import write_mp4
from reelbatch.tasks.export import (
    METADATA_COLUMNS,
    neutralise_formula,
    write_dataset_index,
    write_metadata_csv,
    write_samples,
)
from tests.test_db import create_run, make_job

FORMULA = '=HYPERLINK("http://evil","x")'


@pytest.fixture(scope="module")
def grey_mp4(tmp_path_factory) -> Path:
    """One real mp4 (5 grey frames), encoded once: the done samples' files are copies of it."""
    path = tmp_path_factory.mktemp("video") / "grey.mp4"
    write_mp4(path, np.full((5, 32, 48, 3), 0.5, dtype=np.float32), fps=8)
    return path


@pytest.fixture
def finished_run(database, tmp_path, grey_mp4):
    """A run with two done samples (real mp4 files), one failed sample and one rejected row."""
    from reelbatch.contract import SampleResult
    from reelbatch.schemas import RowRejection

    run_id = create_run(database)
    job = make_job("job-a", run_id, rows=[2, 3, 4], prompt=FORMULA)
    database.add_job(run_id, job)
    database.mark_job_running(job.job_id)
    out = tmp_path / "out"
    paths = {}
    for sample in job.samples[:2]:
        path = out / sample.output_key
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(grey_mp4, path)
        paths[sample.sample_id] = str(path)
    results = [SampleResult(sample_id=s.sample_id, status="done", seconds=1.0, frames=5) for s in job.samples[:2]]
    results.append(SampleResult(sample_id=job.samples[2].sample_id, status="failed", error="decode: boom"))
    database.record_sample_results(job.job_id, results, paths)
    database.finish_job(job.job_id, status="failed", returncode=0, seconds=3.0)
    database.add_rejections(run_id, [RowRejection(row=9, column="height", rule="r", message="m", fix="use 32")])
    database.finish_run(run_id)
    return run_id, out


def test_dataset_index_follows_the_videofolder_layout(database, finished_run):
    run_id, out = finished_run
    locations = write_dataset_index(database, run_id, str(out))
    with open(locations["metadata"], newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == METADATA_COLUMNS and rows[0]["file_name"] != ""
    assert len(rows) == 2  # done videos only
    for row in rows:
        assert (out / row["file_name"]).is_file()  # file_name is relative to the folder holding metadata.csv
        assert row["prompt"].startswith(FORMULA)  # the dataset keeps prompts verbatim
    table = pq.read_table(locations["samples"])
    assert table.num_rows == 4 and {"status", "error", "reject_fix", "output_path"} <= set(table.column_names)


def test_gallery_of_a_small_run_is_one_offline_page_with_previews(database, finished_run):
    run_id, out = finished_run
    page = open(write_dataset_index(database, run_id, str(out))["gallery"], encoding="utf-8").read()
    assert page.count("data:image/png;base64,") == 2  # previews inlined: nothing to fetch
    assert "http://" not in page.replace("http://evil", "")  # no external resources
    assert "decode: boom" in page and "use 32" in page
    assert "<script" not in page and "=HYPERLINK(&quot;" in page  # prompt text is escaped
    assert "<nav>" not in page and len(list((out / "gallery").iterdir())) == 1


def gallery_links(page: str) -> list[str]:
    """The pages a page links to, in order (its navigation shows above and below the cards)."""
    return list(dict.fromkeys(re.findall(r'<a href="([^"]+)"', page)))


def test_gallery_pages_are_linked_from_the_index_page(database, finished_run):
    run_id, out = finished_run
    index = Path(write_dataset_index(database, run_id, str(out), page_size=3)["gallery"])
    pages = sorted(index.parent.iterdir())
    assert len(pages) == 2  # 4 rows, 3 cards a page
    first = index.read_text(encoding="utf-8")
    [second_name] = gallery_links(first)
    second = (index.parent / second_name).read_text(encoding="utf-8")
    assert first.count('class="card"') == 3 and second.count('class="card"') == 1
    assert index.name in gallery_links(second)  # back to the index
    assert "page 2 of 2" in second and "use 32" in second  # the rejected row, last in manifest order
    one_a_page = Path(write_dataset_index(database, run_id, str(out), page_size=1)["gallery"])
    index_links = gallery_links(one_a_page.read_text(encoding="utf-8"))
    assert len(index_links) == 3 and all((one_a_page.parent / link).is_file() for link in index_links)
    middle = (one_a_page.parent / index_links[1]).read_text(encoding="utf-8")
    assert gallery_links(middle) == [
        one_a_page.name,
        index_links[0],
        index_links[2],
    ]  # index, previous, next


def test_chunked_export_writes_what_a_whole_run_export_writes(database, finished_run, tmp_path):
    """Rows read and written one at a time (a chunk of 1: the first chunk's error column is all null) give the
    files the whole-table export gave."""
    run_id, out = finished_run
    samples = database.samples(run_id)
    streamed = write_dataset_index(database, run_id, str(out), chunk_rows=1)
    whole_csv = tmp_path / "whole.csv"
    write_metadata_csv(samples, str(out), str(whole_csv))
    assert Path(streamed["metadata"]).read_bytes() == whole_csv.read_bytes()
    table = pq.read_table(streamed["samples"])
    assert pq.ParquetFile(streamed["samples"]).num_row_groups == 4
    assert table.to_pylist() == pa.Table.from_pylist(samples).to_pylist()
    assert table.column_names == list(samples[0])
    for fmt in ("csv", "jsonl"):
        by_row, whole = tmp_path / f"by_row.{fmt}", tmp_path / f"whole.{fmt}"
        assert write_samples(iter(samples), str(by_row), fmt, chunk_rows=1) == 4  # a generator is enough
        write_samples(samples, str(whole), fmt)
        assert by_row.read_bytes() == whole.read_bytes()


def test_a_column_the_first_chunk_has_only_nulls_in_gets_the_tables_type():
    from reelbatch.tasks.export import _arrow_schema

    schema = _arrow_schema([{"finished_at": None, "error": None, "frames": None}])
    assert schema.field("finished_at").type == pa.timestamp("us", tz="UTC")  # stored UTC, exported UTC
    assert (schema.field("error").type, schema.field("frames").type) == (pa.string(), pa.int64())


@pytest.mark.server
def test_dataset_index_streams_to_s3(database, finished_run, s3_bucket):
    import s3fs

    run_id, out = finished_run
    root = f"s3://{s3_bucket}/dataset"
    locations = write_dataset_index(database, run_id, root, chunk_rows=2, page_size=2)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    rows = list(csv.DictReader(fs.open(locations["metadata"], "r", encoding="utf-8")))
    assert len(rows) == 2 and tuple(rows[0]) == METADATA_COLUMNS
    with fs.open(locations["samples"], "rb") as fh:
        assert pq.read_table(fh).num_rows == 4
    index = fs.cat(locations["gallery"]).decode()
    [second] = gallery_links(index)
    assert fs.cat(f"{s3_bucket}/dataset/gallery/{second}").decode().count('class="card"') == 2


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_exports_carry_every_sample_column(database, finished_run, tmp_path, fmt):
    run_id, _ = finished_run
    samples = database.samples(run_id)
    target = tmp_path / f"export.{fmt}"
    assert write_samples(samples, str(target), fmt) == 4
    if fmt == "csv":
        rows = list(csv.DictReader(target.open(newline="", encoding="utf-8")))
        assert all(r["prompt"].startswith("'=") for r in rows if r["prompt"])  # neutralised for spreadsheets
    elif fmt == "jsonl":
        rows = [json.loads(line) for line in target.read_text().splitlines()]
    else:
        rows = pq.read_table(target).to_pylist()
    assert len(rows) == 4 and set(rows[0]) == set(samples[0])


@pytest.mark.parametrize(
    "value,expected",
    [("=1+1", "'=1+1"), ("+x", "'+x"), ("-y", "'-y"), ("@z", "'@z"), ("a=b", "a=b"), (-3, -3), (None, None)],
)
def test_formula_neutralisation(value, expected):
    assert neutralise_formula(value) == expected


def test_export_command_streams_the_run_to_a_file(database, database_url, finished_run, tmp_path):
    from tests.cli_runner import reelbatch

    run_id, _ = finished_run
    target = tmp_path / "rows.jsonl"
    done = reelbatch("export", run_id[:8], "--format", "jsonl", "-o", str(target), "--db", database_url)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    assert [r["row"] for r in rows] == [2, 3, 4, 9] and f"4 rows of run {run_id}" in done.stderr
