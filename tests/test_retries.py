"""Failures end in a clear state with the right retry: real torchrun jobs with injected faults, through the CLI."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reelbatch.infra.launcher import _tagged_pids

pytestmark = [pytest.mark.torchrun, pytest.mark.usefixtures("prefect_api")]

MANIFEST = "prompt,seed,guidance_scale,num_inference_steps,plan\na cat walks,1,5,2,{plan}\na dog runs,2,5,2,{plan}\n"


def run(tmp_path: Path, fault: str, *args: str, plan: str = "dp=2") -> tuple[subprocess.CompletedProcess, float]:
    (tmp_path / "m.csv").write_text(MANIFEST.format(plan=plan))
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "reelbatch.cli",
            "run",
            "m.csv",
            "--gpus",
            "2",
            "--out",
            "videos",
            "--db",
            f"sqlite:///{tmp_path / 'state.db'}",
            *args,
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
        env={**os.environ, "REELBATCH_FAULT": fault},
    )
    return done, time.monotonic() - started


def database(tmp_path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(tmp_path / "state.db")
    db.row_factory = sqlite3.Row
    return db


def attempts(tmp_path: Path) -> list[sqlite3.Row]:
    return database(tmp_path).execute("select * from job_attempts order by attempt").fetchall()


def all_done(tmp_path: Path) -> bool:
    statuses = [r[0] for r in database(tmp_path).execute("select status from samples")]
    return statuses == ["done", "done"]


@pytest.mark.slow  # test_failures.py classifies and retries a crash in make test
def test_rank_crash_is_classified_retried_and_succeeds(tmp_path):
    done, _ = run(tmp_path, "crash:rank=1:sample=0:attempt=1")
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = attempts(tmp_path)
    assert (first["failure_kind"], first["failed_rank"]) == ("rank_crash", 1)
    assert first["seconds"] < 90  # the healthy rank did not wait for a collective timeout (30 min)
    assert second["failure_kind"] is None and all_done(tmp_path)


@pytest.mark.slow
def test_hang_times_out_and_leaves_no_process(tmp_path):
    # The retry must start, load and finish within the limit too, also on a busy 2-core machine.
    done, _ = run(tmp_path, "hang:rank=0:sample=0:attempt=1", "--job-timeout", "45")
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = attempts(tmp_path)
    assert first["failure_kind"] == "timeout" and first["timed_out"]
    assert first["seconds"] < 45 + 30
    assert not _tagged_pids(first["launch_id"]) and not _tagged_pids(second["launch_id"])
    assert all_done(tmp_path)


@pytest.mark.slow
def test_oom_retries_with_sequence_batch_and_no_cfg_parallel(tmp_path):
    # Latency puts the CFG bucket on a CFG pair: the memory-hungry plan the retry must leave.
    done, _ = run(tmp_path, "oom:rank=1:sample=0:attempt=1", "--objective", "latency", plan="")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = attempts(tmp_path)
    assert [(r["failure_kind"], r["cfg"], r["dp"], bool(r["sequence_batch"])) for r in rows] == [
        ("oom", 2, 1, False),
        (None, 1, 2, True),
    ]
    [job] = database(tmp_path).execute("select * from jobs").fetchall()
    assert (job["cfg"], job["dp"], bool(job["sequence_batch"]), job["status"]) == (1, 2, True, "done")
    assert all_done(tmp_path)


def test_out_of_memory_steps_down_to_leaner_plans(tiny_models, tmp_path):
    from reelbatch.contract import JobSpec
    from reelbatch.schemas import BucketKey, ParallelPlan, Sample
    from reelbatch.tasks.execute import lower_memory_variant

    spec = JobSpec(
        job_id="j",
        bucket=BucketKey(
            model="tiny-wan", height=32, width=32, num_frames=5, num_inference_steps=2, guidance_scale=5.0
        ),
        model_path=str(tiny_models["tiny-wan"]),
        family="wan",
        plan=ParallelPlan(dp=2, cfg=2),
        micro_batch=2,
        samples=[Sample(sample_id="s", row=2, prompt="p", seed=1, output_key="s.mp4")],
        output_dir=str(tmp_path),
        results_path=str(tmp_path / "r.jsonl"),
    )
    lean = lower_memory_variant(spec)
    assert (lean.plan, lean.bucket.sequence_batch, lean.micro_batch, lean.vae_tiling) == (
        ParallelPlan(dp=4),
        True,
        1,
        True,
    )
    sliced = lower_memory_variant(lean)  # then the data-parallel ranks hold slices of one sequence instead
    assert sliced is not None and sliced.plan == ParallelPlan(ulysses=4)  # 4 heads, 8 tokens: ulysses 4 is legal
    assert lower_memory_variant(sliced) is None  # nothing leaner left
