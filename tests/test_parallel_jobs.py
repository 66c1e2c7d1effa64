"""Real torchrun jobs on CPU (gloo): data parallel with padding and CFG parallel give the single-rank videos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from reelbatch.contract import RANK_ENTRY, JobSpec, read_results
from reelbatch.engine.rank import run_job as run_rank_job
from reelbatch.engine.video import read_mp4
from reelbatch.identity import expand_row
from reelbatch.infra.launcher import launch
from reelbatch.planning.buckets import bucket_key
from reelbatch.planning.planner import choose_plan
from reelbatch.schemas import ManifestRow, ParallelPlan

pytestmark = pytest.mark.torchrun

PROMPTS = ["a cat walks on a sunny street", "waves crash on a rocky shore", "a robot paints a portrait"]


def rows(model: str, guidance: float, sequence_batch: bool = False) -> list[ManifestRow]:
    return [
        ManifestRow(
            row=i + 2,
            prompt=p,
            negative_prompt="blurry" if i % 2 else "",
            model=model,
            height=32,
            width=32,
            num_frames=5,
            num_inference_steps=3,
            guidance_scale=guidance,
            seed=100 + i,
            sequence_batch=sequence_batch,
        )
        for i, p in enumerate(PROMPTS)
    ]


def run_job(tmp: Path, name: str, manifest_rows, plan: ParallelPlan, model_path: Path) -> JobSpec:
    samples = [s for r in manifest_rows for s in expand_row(r)]
    folder = tmp / name
    spec = JobSpec(
        job_id=name,
        bucket=bucket_key(manifest_rows[0]),
        model_path=str(model_path),
        family="wan" if "wan" in manifest_rows[0].model else "hunyuan",
        plan=plan,
        samples=samples,
        padded_slots=-len(samples) % plan.dp,
        output_dir=str(folder / "staging"),
        results_path=str(folder / "results.jsonl"),
        keep_frames=True,
    )
    folder.mkdir(parents=True)
    (folder / "job.json").write_text(spec.model_dump_json())
    if plan.world_size == 1:  # the reference: the same rank code, in this process (no launch to pay for)
        assert run_rank_job(spec) == 0
        return spec
    result = launch(
        RANK_ENTRY,
        [str(folder / "job.json")],
        nproc_per_node=plan.world_size,
        log_path=folder / "ranks.log",
        timeout_s=300,
    )
    assert result.returncode == 0, "\n".join(result.tail)
    return spec


def frames_of(spec: JobSpec) -> dict[str, np.ndarray]:
    out = Path(spec.output_dir)
    return {s.sample_id: np.load(out / Path(s.output_key).with_suffix(".frames.npy")) for s in spec.samples}


def test_data_parallel_with_padding_gives_the_single_rank_videos(tmp_path, tiny_models):
    manifest_rows = rows("tiny-wan", guidance=5.0, sequence_batch=True)
    plan, notes = choose_plan(bucket_key(manifest_rows[0]), gpus=2)
    assert plan == ParallelPlan(dp=2, cfg=1)  # sequence_batch turns CFG parallel off ...
    assert any("sequence_batch" in note for note in notes)  # ... and the plan says so

    single = run_job(tmp_path, "single", manifest_rows, ParallelPlan(dp=1), tiny_models["tiny-wan"])
    two = run_job(tmp_path, "dp2", manifest_rows, plan, tiny_models["tiny-wan"])
    assert two.padded_slots == 1  # 3 samples on 2 ranks: padded, not refused

    reference, parallel = frames_of(single), frames_of(two)
    assert reference.keys() == parallel.keys()
    for sample_id in reference:
        np.testing.assert_allclose(parallel[sample_id], reference[sample_id], atol=1e-5)

    # Padding is stripped: exactly one result and one mp4 per real sample, readable with the right shape.
    results = read_results(two.results_path)
    assert sorted(r.sample_id for r in results) == sorted(reference)
    assert {r.status for r in results} == {"done"}, [r.error for r in results]
    for sample in two.samples:
        video = read_mp4(Path(two.output_dir) / sample.output_key)
        assert video.shape == (5, 32, 32, 3) and video.dtype == np.uint8
    assert len(list(Path(two.output_dir).rglob("*.mp4"))) == len(PROMPTS)


def test_cfg_parallel_pair_gives_the_single_rank_cfg_videos(tmp_path, tiny_models):
    manifest_rows = rows("tiny-hunyuan", guidance=4.0)
    plan, _ = choose_plan(bucket_key(manifest_rows[0]), gpus=2, objective="latency")
    assert plan == ParallelPlan(dp=1, cfg=2)

    single = run_job(tmp_path, "single", manifest_rows, ParallelPlan(dp=1), tiny_models["tiny-hunyuan"])
    pair = run_job(tmp_path, "cfg2", manifest_rows, plan, tiny_models["tiny-hunyuan"])
    reference, parallel = frames_of(single), frames_of(pair)
    for sample_id in reference:
        np.testing.assert_allclose(parallel[sample_id], reference[sample_id], atol=1e-5)
    # Only one rank of the pair writes: one result per sample, all from rank 0.
    results = read_results(pair.results_path)
    assert len(results) == len(PROMPTS) and {r.rank for r in results} == {0}
