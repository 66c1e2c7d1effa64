"""Step caches (diffusers' FirstBlockCache) and compiled transformers, in one process: what the engine makes of them,
what the planner refuses before any GPU time, and what the cost model decides. Rank-parallel runs:
test_step_cache_ranks.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from reelbatch.contract import JobSpec, read_results
from reelbatch.engine.adapters import adapter_for
from reelbatch.engine.caching import compile_denoisers, enable_step_cache
from reelbatch.engine.checks import PlanNotRunnable, check_runnable
from reelbatch.engine.loading import load_pipeline
from reelbatch.engine.rank import run_job, slots_for_rank
from reelbatch.engine.sampler import VideoSampler
from reelbatch.identity import expand_row
from reelbatch.models.catalog import family_from_folder
from reelbatch.models.pipelines import step_caches
from reelbatch.models.registry import FAMILIES
from reelbatch.planning.buckets import bucket_key
from reelbatch.planning.cost import DEFAULT_COST_MODEL
from reelbatch.planning.fixes import validate_plan
from reelbatch.planning.planner import plan_run
from reelbatch.planning.speedups import choose_compile
from reelbatch.schemas import BucketKey, ManifestRow, ParallelPlan, RunDefaults
from reelbatch.stepcache import parse_cache

CPU = torch.device("cpu")
STEPS = 6


def bucket(model: str, cache: str | None, sequence_batch: bool = False, guidance: float = 5.0) -> BucketKey:
    return BucketKey(
        model=model,
        height=32,
        width=48,
        num_frames=5,
        num_inference_steps=STEPS,
        guidance_scale=guidance,
        sequence_batch=sequence_batch,
        cache=cache,
    )


def generate(path: Path, b: BucketKey, compiled: bool = False):
    """One video (frames) from a freshly loaded pipeline, and the cache's counter (None without a cache)."""
    pipe = load_pipeline(str(path), CPU)
    counter = enable_step_cache(pipe, b.cache)
    if compiled:
        compile_denoisers(pipe)
    sampler = VideoSampler(adapter_for(pipe, b, CPU), cached=counter is not None)
    return sampler(["a cat walks along a street"], ["blurry"], [11])[0], counter


# --- the engine ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["tiny-wan", "tiny-hunyuan"])
def test_threshold_zero_gives_exactly_the_uncached_video(tiny_models, model):
    cached, counter = generate(tiny_models[model], bucket(model, "fbc:0.0"))
    # Cached, each pass runs in a forward of its own, as sequence_batch does: bit for bit the same video.
    sequential, _ = generate(tiny_models[model], bucket(model, None, sequence_batch=True))
    np.testing.assert_array_equal(cached, sequential)
    batched, _ = generate(tiny_models[model], bucket(model, None))
    np.testing.assert_allclose(cached, batched, atol=1e-5)
    assert (counter.passes, counter.cached) == (2 * STEPS, 0)


@pytest.mark.parametrize("model", ["tiny-wan", "tiny-hunyuan"])
def test_a_positive_threshold_skips_transformer_work_and_changes_the_video(tiny_models, model):
    plain, _ = generate(tiny_models[model], bucket(model, "fbc:0.0"))
    cached, counter = generate(tiny_models[model], bucket(model, "fbc:0.3"))
    assert counter.passes == 2 * STEPS  # every step still runs both guidance passes' first block ...
    assert 0 < counter.cached < counter.passes  # ... and the cache served some of them (never the first step's)
    assert not np.array_equal(cached, plain)  # reused residuals are an approximation
    assert np.abs(cached - plain).max() < 0.5  # of the same video


def test_the_cache_decides_per_pass_without_cfg_too(tiny_models):
    frames, counter = generate(tiny_models["tiny-wan"], bucket("tiny-wan", "fbc:0.3", guidance=1.0))
    assert frames.shape == (5, 32, 48, 3)
    assert counter.passes == STEPS and 0 < counter.cached < STEPS


def test_every_pipeline_class_takes_the_caches_its_spec_says(tiny_models):
    """models/pipelines.py's ``caches`` against diffusers itself: enable_cache works exactly where it says."""
    for name, path in tiny_models.items():
        family = family_from_folder(name, path)
        pipe = load_pipeline(str(path), CPU)
        try:
            enable_step_cache(pipe, "fbc:0.1")
            took = True
        except ValueError:  # diffusers: "Model class ... not registered"
            took = False
        assert took == ("fbc" in step_caches(family.pipeline_class)), (name, family.pipeline_class)


def job(tmp: Path, model_path: Path, cache: str | None, **fields) -> JobSpec:
    row = ManifestRow(row=2, prompt="waves at dusk", negative_prompt="blurry", model="tiny-wan", height=32,
                      width=32, num_frames=5, num_inference_steps=STEPS, guidance_scale=5.0, seed=5, num_videos=2,
                      cache=cache)  # fmt: skip
    samples = expand_row(row)
    return JobSpec(
        job_id="job",
        bucket=bucket_key(row),
        model_path=str(model_path),
        family="wan",
        plan=ParallelPlan(),
        samples=samples,
        output_dir=str(tmp / "staging"),
        results_path=str(tmp / "results.jsonl"),
        micro_batch=2,
        **fields,
    )


def test_a_cached_job_reports_and_records_its_counts(tmp_path, tiny_models):
    spec = job(tmp_path, tiny_models["tiny-wan"], "fbc:0.3")
    assert [len(batch) for batch in slots_for_rank(spec, 0)] == [1, 1]  # one sample per call under a cache
    assert run_job(spec) == 0
    results = read_results(spec.results_path)
    assert {r.status for r in results} == {"done"}
    for result in results:
        assert result.transformer_forwards == 2 * STEPS and 0 < (result.cached_forwards or 0) < 2 * STEPS
        sidecar = json.loads((Path(spec.output_dir) / result.file).with_suffix(".json").read_text())  # type: ignore[arg-type]
        assert (sidecar["cache"], sidecar["compiled"]) == ("fbc:0.3", False)
        assert (sidecar["transformer_forwards"], sidecar["cached_forwards"]) == (
            result.transformer_forwards,
            result.cached_forwards,
        )


def test_an_uncached_job_reports_no_counts(tmp_path, tiny_models):
    spec = job(tmp_path, tiny_models["tiny-wan"], None)
    assert run_job(spec) == 0
    assert {(r.transformer_forwards, r.cached_forwards) for r in read_results(spec.results_path)} == {(None, None)}


@pytest.mark.slow  # inductor compiles for about 90 s on two cores
def test_compiled_transformer_gives_the_eager_video(tiny_models):
    """torch.compile (inductor on CPU) once, then every pass reuses it: the same video within float tolerance, with
    a step cache on (the compiled blocks include the cache's hooks, which decide the same way)."""
    b = bucket("tiny-wan", "fbc:0.3", sequence_batch=True).model_copy(update={"num_inference_steps": 3})
    try:
        eager, eager_counter = generate(tiny_models["tiny-wan"], b)
        compiled, compiled_counter = generate(tiny_models["tiny-wan"], b, compiled=True)
    finally:
        torch._dynamo.reset()
    np.testing.assert_allclose(compiled, eager, atol=1e-4)
    assert (compiled_counter.passes, compiled_counter.cached) == (eager_counter.passes, eager_counter.cached)
    assert compiled_counter.cached > 0


# --- before any GPU time: the rules ----------------------------------------------------------------------------------


def test_an_unsupported_cache_is_refused_at_planning_with_the_row_rule_and_fix():
    rows = [
        ManifestRow(row=2, prompt="a", model="tiny-skyreels-v2", height=32, width=32, num_frames=5,
                    num_inference_steps=4, guidance_scale=5.0, seed=1, cache="fbc:0.1"),
        ManifestRow(row=3, prompt="b", model="tiny-wan", height=32, width=32, num_frames=5,
                    num_inference_steps=4, guidance_scale=5.0, seed=1, cache="fbc:0.1"),
    ]  # fmt: skip
    plan = plan_run(rows, [], 2, _catalog(), gpus=2, device="cpu")
    (rejection,) = plan.rejected
    assert (rejection.row, rejection.column, rejection.rule) == (2, "cache", "cache_not_supported")
    assert "cache none" in rejection.fix and "WanPipeline" in rejection.fix
    assert plan.accepted == 1 and {job.bucket.cache for job in plan.jobs} == {"fbc:0.1"}


def _catalog():
    from reelbatch.models.catalog import ModelCatalog

    return ModelCatalog.from_config()


@pytest.mark.parametrize("plan", [ParallelPlan(ulysses=2), ParallelPlan(cfg=1, ring=2), ParallelPlan(cfg=2, ulysses=2)])
def test_a_cache_under_sequence_parallel_is_refused_with_a_plan_that_passes(plan):
    b = bucket("wan2.1-t2v-14b", "fbc:0.05").model_copy(update={"height": 480, "width": 832, "num_frames": 81})
    family = FAMILIES["wan2.1-t2v-14b"]
    check = validate_plan(b, family, plan, world_size=plan.world_size, device="cuda")
    problem = next(p for p in check.problems if p.rule == "cache_needs_whole_sequence")
    assert problem.suggested_plan is not None
    assert problem.suggested_plan.ulysses == problem.suggested_plan.ring == 1
    assert validate_plan(b, family, problem.suggested_plan, world_size=plan.world_size, device="cuda").ok
    assert "cache none" in problem.fix
    # Without the cache the same plan passes (the rule is the cache's alone).
    assert validate_plan(
        b.model_copy(update={"cache": None}), family, plan, world_size=plan.world_size, device="cuda"
    ).ok


def test_cfg_parallel_and_data_parallel_are_fine_with_a_cache():
    b = bucket("tiny-wan", "fbc:0.05")
    for plan in (ParallelPlan(cfg=2), ParallelPlan(dp=2), ParallelPlan(dp=2, cfg=2)):
        assert validate_plan(b, FAMILIES["tiny-wan"], plan, world_size=plan.world_size, device="cpu").ok


def test_the_chooser_leaves_sequence_parallel_out_for_a_cached_bucket():
    from reelbatch.planning.planner import choose_plan

    # A 14B Wan video that needs more than one GPU's memory for dp: uncached it may go Ulysses, cached it must not.
    b = bucket("wan2.1-t2v-14b", "fbc:0.05").model_copy(update={"height": 720, "width": 1280, "num_frames": 81})
    plan, _ = choose_plan(b, gpus=8, device="cuda", objective="latency", catalog=_catalog())
    assert plan.ulysses == plan.ring == 1
    uncached, _ = choose_plan(b.model_copy(update={"cache": None}), gpus=8, device="cuda", objective="latency",
                              catalog=_catalog())  # fmt: skip
    assert uncached.ulysses * uncached.ring > 1


def test_the_engine_refuses_a_cached_sequence_parallel_spec_before_loading(tmp_path, tiny_models):
    spec = job(tmp_path, tiny_models["tiny-wan"], "fbc:0.05").model_copy(update={"plan": ParallelPlan(ulysses=2)})
    with pytest.raises(PlanNotRunnable, match="cache fbc:0.05"):
        check_runnable(spec, "cpu")


def test_the_cache_setting_has_one_canonical_form():
    assert parse_cache("FBC") == parse_cache("fbc:0.05") == "fbc:0.05"
    assert parse_cache("none") is parse_cache("") is None
    assert RunDefaults(cache="fbc:0.10").cache == "fbc:0.1"
    with pytest.raises(ValueError, match="fbc:THRESHOLD"):
        RunDefaults(cache="teacache")


# --- the cost model --------------------------------------------------------------------------------------------------


def test_the_cost_model_prices_the_cache_and_decides_when_compiling_pays():
    model, family = DEFAULT_COST_MODEL, FAMILIES["hunyuanvideo"]
    b = bucket("hunyuanvideo", None).model_copy(update={"height": 720, "width": 1280, "num_frames": 129})
    plain = model.single_gpu_seconds(b, family)
    assert model.single_gpu_seconds(b.model_copy(update={"cache": "fbc:0.0"}), family) == plain
    # The published point: First Block Cache at 0.06 on HunyuanVideo, 3676 s -> 2271 s.
    at_06 = model.single_gpu_seconds(b.model_copy(update={"cache": "fbc:0.06"}), family)
    assert at_06 == pytest.approx(plain * 2271 / 3676)
    assert plain > model.single_gpu_seconds(b.model_copy(update={"cache": "fbc:0.03"}), family) > at_06
    # Compiling pays when the denoising it speeds up (x 198.1/259.7) saves more than the compile costs.
    assert model.compile_time_factor == pytest.approx(198.1 / 259.7)
    assert not model.compile_pays(model.compile_seconds)  # a short job
    assert model.compile_pays(plain)  # one 720p HunyuanVideo: tens of minutes
    assert model.compiled_seconds(plain) < plain


@pytest.mark.parametrize("mode,expected", [("off", False), ("on", True)])
def test_compile_on_and_off_are_obeyed(mode, expected):
    rows = [ManifestRow(row=2, prompt="a", model="tiny-wan", height=32, width=32, num_frames=5,
                        num_inference_steps=4, guidance_scale=5.0, seed=1)]  # fmt: skip
    plan = plan_run(rows, [], 1, _catalog(), gpus=1, device="cpu", compile=mode)
    assert [job.compile for job in plan.jobs] == [expected]
    assert plan.to_json(jobs=True)["jobs"][0]["compile"] is expected


def test_compile_auto_compiles_only_jobs_long_enough_to_pay_it_back():
    rows = [
        ManifestRow(row=2 + i, prompt=f"p{i}", model="wan2.1-t2v-14b", height=480, width=832, num_frames=81,
                    num_inference_steps=steps, guidance_scale=5.0, seed=i)
        for i, steps in enumerate((50, 1))
    ]  # fmt: skip
    plan = plan_run(rows, [], 2, _catalog(), gpus=1, device="cuda", compile="auto")
    by_steps = {job.bucket.num_inference_steps: job for job in plan.jobs}
    assert by_steps[50].compile and not by_steps[1].compile  # minutes of denoising vs seconds
    # The tiny models' jobs never pay back a compile.
    tiny = [ManifestRow(row=2, prompt="a", model="tiny-wan", height=32, width=32, num_frames=5,
                        num_inference_steps=4, guidance_scale=5.0, seed=1)]  # fmt: skip
    assert not plan_run(tiny, [], 1, _catalog(), gpus=1, device="cpu").jobs[0].compile
    # Only the compiled job's estimate changes; choose_compile alone decides the same and estimates the same.
    uncompiled = plan_run(rows, [], 2, _catalog(), gpus=1, device="cuda", compile="off")
    eager = {job.bucket.num_inference_steps: job.estimated_seconds for job in uncompiled.jobs}
    assert by_steps[1].estimated_seconds == eager[1] and by_steps[50].estimated_seconds < eager[50]
    choose_compile(uncompiled.jobs, DEFAULT_COST_MODEL, "auto")
    assert [job.compile for job in uncompiled.jobs] == [job.compile for job in plan.jobs]
    assert [job.estimated_seconds for job in uncompiled.jobs] == [job.estimated_seconds for job in plan.jobs]
