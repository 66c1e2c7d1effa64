"""Dataset index, exports and gallery from database rows (no GPU work: rows and files are made here)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from reelbatch.engine.video import write_mp4
from reelbatch.tasks.export import METADATA_COLUMNS, neutralise_formula, write_dataset_index, write_samples
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


def test_gallery_is_one_offline_page_with_previews(database, finished_run):
    run_id, out = finished_run
    page = open(write_dataset_index(database, run_id, str(out))["gallery"], encoding="utf-8").read()
    assert page.count("data:image/png;base64,") == 2  # previews inlined: nothing to fetch
    assert "http://" not in page.replace("http://evil", "")  # no external resources
    assert "decode: boom" in page and "use 32" in page
    assert "<script" not in page and "=HYPERLINK(&quot;" in page  # prompt text is escaped


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
