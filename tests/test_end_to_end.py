"""`reelbatch run` from a CSV to mp4 files and database rows, through Prefect, torchrun and SQLite."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reelbatch.engine.video import read_mp4

pytestmark = pytest.mark.torchrun

HOSTILE = "line one\nline two \"quoted\" 'single' $(touch PWNED); `touch PWNED2` | rm -rf / ; DROP TABLE samples;--"

ROWS = [
    # id, prompt, negative, model, height, width, frames, guidance, num_videos, plan (pinned or chosen)
    ("cfg", "a cat walks on a sunny street", "blurry", "tiny-wan", 32, 32, 5, 5.0, 2, ""),
    ("hostile", HOSTILE, "", "tiny-wan", 32, 32, 5, 5.0, 1, ""),
    ("nocfg", "snow falls over a village", "", "tiny-wan", 32, 32, 5, 1.0, 1, ""),
    ("path", "../../etc/passwd", "ugly", "tiny-hunyuan", 32, 32, 5, 4.0, 1, "dp=1,cfg=2"),
    ("bad", "a bad size", "", "tiny-wan", 30, 32, 5, 5.0, 1, ""),
]


def manifest(tmp_path: Path) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        [
            "id",
            "prompt",
            "negative_prompt",
            "model",
            "height",
            "width",
            "num_frames",
            "guidance_scale",
            "num_videos",
            "plan",
            "num_inference_steps",
        ]
    )
    for r in ROWS:
        writer.writerow([*r, 2])
    path = tmp_path / "prompts.csv"
    path.write_text(buffer.getvalue(), encoding="utf-8")
    return path


def reelbatch(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "reelbatch.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def test_run_writes_videos_and_matching_rows(tmp_path):
    path = manifest(tmp_path)
    db_file = tmp_path / "state.db"
    done = reelbatch("run", str(path), "--gpus", "2", "--out", "videos", "--db", f"sqlite:///{db_file}", cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]  # one row rejected, everything else done
    assert "Run summary" in done.stderr and "Traceback" not in done.stderr

    db = sqlite3.connect(db_file)
    db.row_factory = sqlite3.Row
    [run] = db.execute("select * from runs").fetchall()
    assert run["status"] == "done" and (run["rows_total"], run["rows_accepted"], run["rows_rejected"]) == (5, 4, 1)
    samples = db.execute("select * from samples order by row, video_index").fetchall()
    done_rows = [s for s in samples if s["status"] == "done"]
    rejected = [s for s in samples if s["status"] == "rejected"]
    assert len(done_rows) == 5 and len(rejected) == 1
    # Line 7, not 6: the hostile prompt spans two lines of the file.
    assert rejected[0]["row"] == 7 and rejected[0]["reject_column"] == "height" and rejected[0]["reject_fix"]

    out = (tmp_path / "videos").resolve()
    for sample in done_rows:
        video_path = Path(sample["output_path"])
        assert video_path.is_relative_to(out) and video_path.name == f"{sample['sample_id']}.mp4"
        frames = read_mp4(video_path)
        assert frames.shape == (sample["num_frames"], sample["height"], sample["width"], 3)
        assert frames.dtype == np.uint8
        sidecar = json.loads(video_path.with_suffix(".json").read_text())
        assert sidecar["prompt"] == sample["prompt"] and sidecar["seed"] == sample["seed"]
    assert {s["prompt"] for s in done_rows} >= {HOSTILE, "../../etc/passwd"}  # stored verbatim

    # Every mp4 has its done row and every done row its mp4: no partial or padding files.
    videos = {p for p in out.rglob("*.mp4") if ".reelbatch" not in p.parts}
    assert videos == {Path(s["output_path"]) for s in done_rows}
    assert not [p for p in out.rglob("*partial*") if ".reelbatch" not in p.parts]
    # Prompt text reached no path and no shell.
    assert not list(tmp_path.rglob("PWNED*"))
    assert not [p for p in tmp_path.rglob("*") if "passwd" in str(p)]

    jobs = db.execute("select * from jobs").fetchall()
    assert {j["status"] for j in jobs} == {"done"}
    # Packed: one sample's GPU group per job, so nothing is padded; the pinned row runs as a CFG pair, as pinned.
    shapes = [(j["dp"], j["cfg"], j["ulysses"], j["padded_slots"]) for j in jobs]
    assert (1, 2, 1, 0) in shapes and set(shapes) <= {(1, 2, 1, 0), (1, 1, 1, 0)}
    assert sum(j["samples_count"] for j in jobs) == 5

    listing = reelbatch("runs", "--db", f"sqlite:///{db_file}", "--json", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    [listed] = json.loads(listing.stdout)
    assert listed["id"] == run["id"] and listed["status"] == "done"
    assert listed["counts"]["done"] == 5 and listed["counts"]["rejected"] == 1


@pytest.mark.usefixtures("prefect_api")  # the ephemeral server is what the test above runs with
def test_strict_refuses_the_whole_run(tmp_path):
    path = manifest(tmp_path)
    db_file = tmp_path / "state.db"
    done = reelbatch("run", str(path), "--strict", "--out", "videos", "--db", f"sqlite:///{db_file}", cwd=tmp_path)
    assert done.returncode == 1
    assert "nothing was launched" in done.stderr
    assert not (tmp_path / "videos").exists() or not list((tmp_path / "videos").rglob("*.mp4"))
    assert sqlite3.connect(db_file).execute("select count(*) from runs").fetchone()[0] == 0
