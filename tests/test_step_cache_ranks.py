"""Step caches under real torchrun ranks (gloo on CPU): data parallel and CFG parallel give the single-rank cached
videos and counts, and `reelbatch run --cache` records the cache and its counts on every video."""

from __future__ import annotations

import csv
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reelbatch.contract import read_results
from reelbatch.schemas import ManifestRow, ParallelPlan
from tests.test_parallel_jobs import frames_of, run_job

pytestmark = pytest.mark.torchrun

PROMPTS = ["a cat walks on a sunny street", "waves crash on a rocky shore", "a robot paints a portrait"]


def cached_rows(model: str, cache: str) -> list[ManifestRow]:
    return [
        ManifestRow(row=i + 2, prompt=p, negative_prompt="blurry", model=model, height=32, width=32, num_frames=5,
                    num_inference_steps=6, guidance_scale=4.0, seed=100 + i, cache=cache)
        for i, p in enumerate(PROMPTS)
    ]  # fmt: skip


def counts_of(spec) -> dict[str, tuple[int | None, int | None]]:
    return {r.sample_id: (r.transformer_forwards, r.cached_forwards) for r in read_results(spec.results_path)}


@pytest.mark.parametrize(
    "model,plan",
    [
        ("tiny-wan", ParallelPlan(dp=2)),
        ("tiny-hunyuan", ParallelPlan(cfg=2)),
        pytest.param("tiny-wan", ParallelPlan(cfg=2), marks=pytest.mark.slow),  # one CFG pair is make test's share
    ],
)
def test_data_and_cfg_parallel_give_the_single_rank_cached_videos(tmp_path, tiny_models, model, plan):
    rows = cached_rows(model, "fbc:0.3")
    single = run_job(tmp_path, "single", rows, ParallelPlan(), tiny_models[model])
    parallel = run_job(tmp_path, plan.short().replace(" ", "-"), rows, plan, tiny_models[model])
    reference, frames = frames_of(single), frames_of(parallel)
    for sample_id in reference:
        np.testing.assert_allclose(frames[sample_id], reference[sample_id], atol=1e-5)
    # The same decisions: the same passes served from the cache, for every video (a CFG pair's counts summed).
    assert counts_of(parallel) == counts_of(single)
    assert all(passes == 12 and 0 < (cached or 0) < 12 for passes, cached in counts_of(single).values())


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_run_with_a_cache_records_it_on_every_video(tmp_path):
    manifest = tmp_path / "prompts.csv"
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["prompt", "model", "height", "width", "num_frames", "num_inference_steps", "seed", "cache"])
        writer.writerow(["a cat walks", "tiny-wan", 32, 32, 5, 6, 1, ""])  # the run's --cache
        writer.writerow(["a dog runs", "tiny-wan", 32, 32, 5, 6, 2, "none"])
        writer.writerow(["a fox jumps", "tiny-skyreels-v2", 32, 32, 5, 6, 3, ""])  # refused: no cache support
    db_file = tmp_path / "state.db"
    done = subprocess.run(
        [sys.executable, "-m", "reelbatch.cli", "run", str(manifest), "--gpus", "2", "--out", "videos",
         "--db", f"sqlite:///{db_file}", "--cache", "fbc:0.3", "--compile", "off"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]  # the SkyReels-V2 row is rejected, the rest done

    db = sqlite3.connect(db_file)
    db.row_factory = sqlite3.Row
    samples = {s["row"]: s for s in db.execute("select * from samples")}
    assert samples[4]["status"] == "rejected" and samples[4]["reject_rule"] == "cache_not_supported"
    cached, plain = samples[2], samples[3]
    assert (cached["status"], cached["cache"], cached["transformer_forwards"]) == ("done", "fbc:0.3", 12)
    assert 0 < cached["cached_forwards"] < 12
    assert (plain["status"], plain["cache"], plain["transformer_forwards"], plain["cached_forwards"]) == (
        "done", None, None, None,
    )  # fmt: skip
    jobs = {j["id"]: j for j in db.execute("select * from jobs")}
    assert {(j["cache"], j["compiled"]) for j in jobs.values()} == {("fbc:0.3", 0), (None, 0)}

    sidecar = json.loads(Path(cached["output_path"]).with_suffix(".json").read_text())
    assert (sidecar["cache"], sidecar["transformer_forwards"], sidecar["cached_forwards"]) == (
        "fbc:0.3", 12, cached["cached_forwards"],
    )  # fmt: skip
    with (tmp_path / "videos" / "metadata.csv").open(encoding="utf-8") as fh:
        listed = {row["sample_id"]: row for row in csv.DictReader(fh)}
    assert listed[cached["sample_id"]]["cache"] == "fbc:0.3"
    assert listed[cached["sample_id"]]["cached_forwards"] == str(cached["cached_forwards"])
    assert listed[plain["sample_id"]]["cache"] == ""
