"""The denoising loop, in one process: faithful to diffusers, and a sample's video independent of its batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reelbatch.contract import JobSpec
from reelbatch.engine.adapters import adapter_for
from reelbatch.engine.loading import load_pipeline
from reelbatch.engine.rank import slots_for_rank
from reelbatch.engine.sampler import VideoSampler
from reelbatch.schemas import BucketKey, ParallelPlan, Sample

CPU = torch.device("cpu")
FAMILY = {"tiny-wan": "wan", "tiny-hunyuan": "hunyuan"}


def bucket(model: str, guidance: float = 5.0, sequence_batch: bool = False) -> BucketKey:
    return BucketKey(
        model=model,
        height=32,
        width=48,
        num_frames=5,
        num_inference_steps=3,
        guidance_scale=guidance,
        sequence_batch=sequence_batch,
    )


@pytest.fixture(scope="module")
def pipes(tiny_models):
    return {name: load_pipeline(str(path), CPU) for name, path in tiny_models.items()}


def sampler_for(pipes, model: str, **kwargs) -> VideoSampler:
    b = bucket(model, **kwargs)
    return VideoSampler(adapter_for(pipes[model], b, CPU))


def diffusers_reference(pipe, model: str, prompt: str, negative: str, seed: int, guidance: float) -> np.ndarray:
    """The same video from the pipeline's own __call__, guidance mapped as reelbatch documents it."""
    cfg = {"guidance_scale": guidance} if model == "tiny-wan" else {"true_cfg_scale": guidance, "guidance_scale": 6.0}
    return np.asarray(
        pipe(
            prompt,
            negative_prompt=negative,
            height=32,
            width=48,
            num_frames=5,
            num_inference_steps=3,
            generator=torch.Generator().manual_seed(seed),
            output_type="np",
            **cfg,
        ).frames
    )[0]


@pytest.mark.parametrize("model", ["tiny-wan", "tiny-hunyuan"])
@pytest.mark.parametrize("guidance", [5.0, 1.0])
def test_sequential_loop_reproduces_the_diffusers_pipeline(pipes, model, guidance):
    ours = sampler_for(pipes, model, guidance=guidance, sequence_batch=True)(["a cat walks"], ["blurry"], [11])[0]
    reference = diffusers_reference(pipes[model], model, "a cat walks", "blurry", 11, guidance)
    np.testing.assert_allclose(ours, reference, atol=1e-5)


@pytest.mark.parametrize("model", ["tiny-wan", "tiny-hunyuan"])
def test_batched_cfg_matches_sequential_cfg(pipes, model):
    batched = sampler_for(pipes, model, sequence_batch=False)(["waves at dusk"], ["static"], [3])
    sequential = sampler_for(pipes, model, sequence_batch=True)(["waves at dusk"], ["static"], [3])
    np.testing.assert_allclose(batched, sequential, atol=1e-5)


@pytest.mark.parametrize("model", ["tiny-wan", "tiny-hunyuan"])
def test_a_sample_does_not_depend_on_its_batch(pipes, model):
    sampler = sampler_for(pipes, model)
    alone = sampler(["a red car"], [""], [42])[0]
    in_batch = sampler(["snow falls", "a red car", "a robot"], ["", "", "ugly"], [1, 42, 9])[1]
    np.testing.assert_allclose(alone, in_batch, atol=1e-5)


def test_different_seeds_give_different_videos(pipes):
    sampler = sampler_for(pipes, "tiny-wan")
    a, b = sampler(["a red car", "a red car"], ["", ""], [1, 2])
    assert np.abs(a - b).max() > 1e-3


def test_frames_have_the_requested_shape(pipes):
    frames = sampler_for(pipes, "tiny-hunyuan")(["a cat"], [""], [0])
    assert frames.shape == (1, 5, 32, 48, 3)
    assert 0.0 <= frames.min() and frames.max() <= 1.0


def _spec(samples: int, padded: int, dp: int, micro_batch: int = 1) -> JobSpec:
    return JobSpec(
        job_id="j",
        bucket=bucket("tiny-wan"),
        model_path="/nowhere",
        family="wan",
        plan=ParallelPlan(dp=dp),
        samples=[
            Sample(sample_id=f"s{i}", row=i + 2, prompt="p", seed=i, output_key=f"s{i}.mp4") for i in range(samples)
        ],
        padded_slots=padded,
        micro_batch=micro_batch,
        output_dir="/tmp/x",
        results_path="/tmp/x/r.jsonl",
    )


@pytest.mark.parametrize("samples,dp,micro_batch", [(3, 2, 1), (5, 4, 2), (8, 4, 1), (1, 2, 1), (7, 3, 3)])
def test_ranks_walk_the_padded_job_in_lock_step(samples, dp, micro_batch):
    spec = _spec(samples, -samples % dp, dp, micro_batch)
    per_rank = [slots_for_rank(spec, r) for r in range(dp)]
    # Every rank takes the same number of steps, so collectives line up ...
    assert len({len(batches) for batches in per_rank}) == 1
    # ... and every real sample is generated exactly once; padding slots are None.
    real = [s.sample_id for batches in per_rank for batch in batches for s in batch if s is not None]
    assert sorted(real) == sorted(s.sample_id for s in spec.samples)
    padding = sum(s is None for batches in per_rank for batch in batches for s in batch)
    assert padding == spec.padded_slots
