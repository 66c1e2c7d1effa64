"""s3:// manifest in, s3:// videos out, through a real S3 API server on loopback (moto server mode)."""

from __future__ import annotations

import csv
import io
import sqlite3
import subprocess
import sys

import pytest
import s3fs

from reelbatch.engine.video import read_mp4

pytestmark = [pytest.mark.torchrun, pytest.mark.usefixtures("prefect_api")]


def test_s3_manifest_to_s3_outputs(tmp_path, s3_bucket):
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    manifest = "id,prompt,guidance_scale,num_inference_steps\na,a cat walks,5,2\nb,=cmd|' /C calc'!A0,5,2\nc,bad,5,0\n"
    fs.pipe(f"{s3_bucket}/inbox/prompts.csv", manifest.encode())
    db_file = tmp_path / "state.db"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "reelbatch.cli",
            "run",
            f"s3://{s3_bucket}/inbox/prompts.csv",
            "--gpus",
            "2",
            "--out",
            f"s3://{s3_bucket}/dataset",
            "--db",
            f"sqlite:///{db_file}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
        env={**__import__("os").environ, "REELBATCH_WORK_DIR": str(tmp_path / "work")},
    )
    assert done.returncode == 1, done.stderr[-3000:]  # row c (0 steps) is rejected

    db = sqlite3.connect(db_file)
    db.row_factory = sqlite3.Row
    done_rows = db.execute("select * from samples where status = 'done'").fetchall()
    assert len(done_rows) == 2, done.stderr[-3000:]
    for row in done_rows:
        url = row["output_path"]
        assert url.startswith(f"s3://{s3_bucket}/dataset/") and url.endswith(f"{row['sample_id']}.mp4")
        local = tmp_path / f"{row['sample_id']}.mp4"
        fs.get(url, str(local))
        assert read_mp4(local).shape == (5, 32, 32, 3)
        assert fs.exists(url.removesuffix(".mp4") + ".json")

    # Every uploaded mp4 has its done row; the dataset index sits next to the videos.
    uploaded = {f"s3://{key}" for key in fs.glob(f"{s3_bucket}/dataset/*/*.mp4")}
    assert uploaded == {r["output_path"] for r in done_rows}
    metadata = list(csv.DictReader(io.StringIO(fs.cat(f"{s3_bucket}/dataset/metadata.csv").decode())))
    assert {m["file_name"] for m in metadata} == {r["output_path"].split("/dataset/", 1)[1] for r in done_rows}
    assert fs.exists(f"{s3_bucket}/dataset/samples.parquet")

    # Credentials never reach the database or the output.
    dump = "\n".join(db.iterdump())
    assert "reelbatch-test-secret" not in dump and "reelbatch-test-key" not in dump
    assert "reelbatch-test-secret" not in done.stderr + done.stdout
