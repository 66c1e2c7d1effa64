"""What the speed-ups do to a plan's figures: compiled jobs' estimates, the GPU-hours saved by each speed-up, the
same figures in `reelbatch plan`, and compiled jobs in the fleet simulator."""

from __future__ import annotations

import json

import pytest

from reelbatch.models.catalog import ModelCatalog
from reelbatch.models.registry import FAMILIES
from reelbatch.planning.cost import DEFAULT_COST_MODEL
from reelbatch.planning.fleet.simulation import estimate_fleet
from reelbatch.planning.planner import plan_run
from reelbatch.planning.speedups import compute_seconds
from reelbatch.schemas import ManifestRow
from tests.cli_runner import reelbatch

CATALOG = ModelCatalog.from_config()
WAN, WAN_4STEP = "wan2.1-t2v-14b", "wan2.1-t2v-14b-4step"


def row(number: int, model: str = WAN, cache: str | None = None, videos: int = 1) -> ManifestRow:
    defaults = FAMILIES[model].defaults
    return ManifestRow(
        row=number,
        prompt=f"a cat, take {number}",
        model=model,
        height=480,
        width=832,
        num_frames=81,
        num_inference_steps=defaults.num_inference_steps,
        guidance_scale=defaults.guidance_scale,
        seed=number,
        cache=cache,
        num_videos=videos,
    )


def plan(rows, compile: str = "off", gpus: int = 1):
    return plan_run(rows, [], len(rows), CATALOG, gpus, device="cuda", compile=compile)


def test_a_compiled_job_is_estimated_compiled_and_keeps_the_uncompiled_timeout():
    rows = [row(2, videos=4)]
    eager, compiled = plan(rows, "off").jobs[0], plan(rows, "on").jobs[0]
    compute = compute_seconds(eager, DEFAULT_COST_MODEL)
    load = eager.estimated_seconds - compute
    assert compiled.compile and not eager.compile
    assert compiled.estimated_seconds == pytest.approx(load + DEFAULT_COST_MODEL.compiled_seconds(compute), abs=1e-2)
    assert compiled.estimated_seconds < eager.estimated_seconds
    expected_gpu = eager.estimated_gpu_seconds * DEFAULT_COST_MODEL.compile_time_factor + (
        DEFAULT_COST_MODEL.compile_seconds * compiled.plan.world_size
    )
    assert compiled.estimated_gpu_seconds == pytest.approx(expected_gpu)
    assert compiled.saved_gpu_seconds["compile"] == pytest.approx(eager.estimated_gpu_seconds - expected_gpu)
    assert compiled.timeout_s == eager.timeout_s  # a slower compile than estimated is no reason to kill the job
    assert eager.saved_gpu_seconds == {}


def test_a_forced_compile_that_cannot_pay_back_shows_as_a_cost():
    short = row(2).model_copy(update={"num_inference_steps": 1})
    job = plan([short], "on").jobs[0]
    assert job.saved_gpu_seconds["compile"] < 0
    assert plan([short], "auto").jobs[0].compile is False


def test_gpu_hours_without_the_speedups_are_those_of_the_same_rows_planned_without_them():
    """Cached, few-step and compiled rows against the rows a user without them would run: the base checkpoint at
    its own steps and guidance, no cache, nothing compiled. On one GPU both get the same (1x1) plans."""
    fast = [row(2, cache="fbc:0.06", videos=3), row(3, model=WAN_4STEP, videos=2), row(4, model=WAN_4STEP,
            cache="fbc:0.03")]  # fmt: skip
    slow = [row(2, videos=3), row(3, videos=2), row(4)]
    with_them, without = plan(fast, "on").summary(), plan(slow, "off").summary()
    assert with_them["gpu_seconds_without_speedups"] == pytest.approx(without["estimated_gpu_seconds"])
    assert with_them["estimated_gpu_seconds"] < without["estimated_gpu_seconds"] / 2
    saved = with_them["saved_gpu_seconds"]
    assert set(saved) == {"compile", "step_cache", "few_step"} and all(v > 0 for v in saved.values())
    assert sum(saved.values()) == pytest.approx(
        with_them["gpu_seconds_without_speedups"] - with_them["estimated_gpu_seconds"]
    )
    # One speed-up at a time: the cache alone saves what dividing out its time factor gives.
    cached = plan([row(2, cache="fbc:0.06", videos=3)], "off").summary()
    assert set(cached["saved_gpu_seconds"]) == {"step_cache"}
    assert cached["gpu_seconds_without_speedups"] == pytest.approx(
        cached["estimated_gpu_seconds"] / DEFAULT_COST_MODEL.cache_time_factor("fbc:0.06")
    )
    plain = plan(slow, "off").summary()
    assert plain["saved_gpu_seconds"] == {} and plain["gpu_seconds_without_speedups"] == plain["estimated_gpu_seconds"]


def test_bucket_lines_carry_their_own_savings():
    buckets = plan([row(2, cache="fbc:0.06"), row(3)], "off").to_json()["buckets"]
    by_cache = {b["cache"]: b["saved_gpu_seconds"] for b in buckets}
    assert set(by_cache[None]) == set() and set(by_cache["fbc:0.06"]) == {"step_cache"}


def test_plan_prints_gpu_hours_with_and_without_the_speedups(tmp_path):
    manifest = tmp_path / "prompts.csv"
    manifest.write_text(
        "model,prompt,height,width,num_frames,cache\n"
        f"{WAN},a cat,480,832,81,fbc:0.06\n"
        f"{WAN_4STEP},a dog,480,832,81,\n"
        f"{WAN},a bird,480,832,81,\n",
        encoding="utf-8",
    )
    text = reelbatch("plan", str(manifest), "--gpu", "h100", "--compile", "off")
    assert text.returncode == 0, text.stderr
    summary = json.loads(reelbatch("plan", str(manifest), "--gpu", "h100", "--compile", "off", "--json").stdout)[
        "summary"
    ]
    before = summary["gpu_seconds_without_speedups"] / 3600
    after = summary["estimated_gpu_seconds"] / 3600
    line = next(line for line in text.stdout.splitlines() if line.startswith("Without"))
    assert line.startswith("Without step cache and few-step weights: ")
    assert f"about {before:,.2f} H100 GPU-hours ({before / after:.2f}x); saved by step cache " in line
    assert f"by step cache {summary['saved_gpu_seconds']['step_cache'] / 3600:,.2f}, by few-step weights " in line
    # A forced compile of jobs too short to pay it back costs GPU-hours: shown as such.
    forced = reelbatch("plan", str(manifest), "--gpus", "1", "--compile", "on").stdout
    assert "compile adds " in next(line for line in forced.splitlines() if line.startswith("Without"))
    # Without any speed-up, no such line.
    plain = tmp_path / "plain.csv"
    plain.write_text(f"model,prompt,height,width,num_frames\n{WAN},a bird,480,832,81\n", encoding="utf-8")
    assert "Without" not in reelbatch("plan", str(plain), "--gpu", "h100", "--compile", "off").stdout


def test_the_fleet_simulator_plays_compiled_jobs_compiled():
    rows = [row(n, videos=8) for n in range(2, 10)]
    eager, compiled = plan(rows, "off", gpus=8), plan(rows, "on", gpus=8)
    slow = estimate_fleet(eager, nodes=1, gpus_per_node=8)
    fast = estimate_fleet(compiled, nodes=1, gpus_per_node=8)
    assert fast.makespan_s < slow.makespan_s
    assert fast.lower_bound_s == pytest.approx(slow.lower_bound_s * DEFAULT_COST_MODEL.compile_time_factor)
    assert fast.ratio >= 1.0  # the bound stays a bound: compiled samples at their compiled speed


def test_a_distilled_family_asked_for_its_base_steps_saves_no_steps():
    as_many = row(2, model=WAN_4STEP).model_copy(update={"num_inference_steps": 50})
    fewer = row(3, model=WAN_4STEP).model_copy(update={"num_inference_steps": 8})
    saved = {job.bucket.num_inference_steps: job.saved_gpu_seconds for job in plan([as_many, fewer]).jobs}
    assert "few_step" not in saved[50] and saved[8]["few_step"] > 0


def test_pack_buckets_and_pack_plan_price_their_jobs():
    from reelbatch.planning.packing import pack_plan
    from reelbatch.planning.packing_options import PackingOptions

    rows = [row(n, videos=8) for n in range(2, 6)]
    unpacked = plan_run(rows, [], len(rows), CATALOG, 8, device="cuda", compile="off")
    repacked = pack_plan(unpacked, PackingOptions(gpus_per_node=8))  # the project's default: --compile auto
    assert {job.compile for job in repacked.jobs} == {True}
    for job in repacked.jobs:
        assert job.saved_gpu_seconds["compile"] > 0
        assert sum(1 for note in job.notes if note.startswith("widened for the fleet")) <= 1
