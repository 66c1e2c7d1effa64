"""The cost model and the fleet simulator (fast: registry families, no weights, no GPU)."""

from __future__ import annotations

import json
import math

import pytest

from reelbatch.models.catalog import ModelCatalog
from reelbatch.models.registry import FAMILIES
from reelbatch.planning import choose_plan
from reelbatch.planning.calibration import calibration_rows, fit_timings
from reelbatch.planning.cost import DEFAULT_COST_MODEL, CostModel, gpu_name
from reelbatch.planning.fleet.simulation import naive_plan, simulate, simulate_plan
from reelbatch.planning.planner import plan_run
from reelbatch.schemas import BucketKey, ManifestRow, ParallelPlan

CATALOG = ModelCatalog.from_config()
REPORT_KEYS = {"makespan_s", "lower_bound_s", "ratio", "gpu_utilization", "padding_ratio", "gpu_hours"}


def bucket(
    model: str, height: int, width: int, frames: int, steps: int = 50, guidance: float = 5.0, **fields
) -> BucketKey:
    return BucketKey(
        model=model,
        height=height,
        width=width,
        num_frames=frames,
        num_inference_steps=steps,
        guidance_scale=guidance,
        **fields,
    )


# --- Cost model ---------------------------------------------------------------------------------------------------


def test_the_calibration_constants_are_what_the_fit_gives():
    fit = fit_timings()
    assert fit.model.to_dict() == DEFAULT_COST_MODEL.to_dict()  # regenerate cost.py's constants if this fails
    assert fit.rms_log_error() < 0.06
    assert all(abs(row.error) < 0.2 for row in fit.fitted)  # every fitted row within 20 %
    excluded = [row for row in fit.rows if row.excluded]
    assert {row.model for row in excluded} >= {"consisid"} and all(row.excluded for row in excluded)
    assert len(fit.fitted) + len(excluded) == len(calibration_rows()) == 42
    assert "| seed article |" in fit.rows_markdown() and "tokens_exponent" in fit.parameters_markdown()


def test_unknown_plans_are_the_best_plan_that_splits_one_video_or_excluded():
    rows = {(r.gpu, r.height, r.gpus): r for r in calibration_rows() if r.parallel == "unknown"}
    assert rows[("h100", 720, 2)].plan == ParallelPlan(cfg=2)
    assert rows[("h100", 720, 4)].plan is None and "even token count" in rows[("h100", 720, 4)].excluded


def test_efficiencies_keep_the_field_order_and_gpus_differ_in_speed_and_communication():
    cost = DEFAULT_COST_MODEL
    cfg2, u2, r2, u8, u2r4 = (
        ParallelPlan(cfg=2),
        ParallelPlan(ulysses=2),
        ParallelPlan(ring=2),
        ParallelPlan(ulysses=8),
        ParallelPlan(ulysses=2, ring=4),
    )
    efficiency = cost.efficiency
    assert 1.0 == efficiency(ParallelPlan(dp=8)) > efficiency(cfg2) > efficiency(u2) > efficiency(r2)
    assert cost.efficiency(u8) > cost.efficiency(u2r4)
    assert cost.efficiency(u8, "rtx4090") < cost.efficiency(u8, "a800") <= cost.efficiency(u8) * 1.01
    b, wan = bucket("wan2.1-t2v-14b", 720, 1280, 81), FAMILIES["wan2.1-t2v-14b"]
    h100 = cost.single_gpu_seconds(b, wan)
    assert cost.single_gpu_seconds(b, wan, "RTX 4090") == pytest.approx(h100 * cost.gpu_factors["rtx4090"])
    assert 1700 < h100 < 1900  # Wan2.1 README: 1837.9 s on one H100
    assert cost.sample_seconds(b, wan, u8) == pytest.approx(cost.sample_gpu_seconds(b, wan, u8) / 8)
    no_cfg = b.model_copy(update={"guidance_scale": 1.0})
    assert cost.single_gpu_seconds(no_cfg, wan) == pytest.approx(h100 / 2)
    assert gpu_name("NVIDIA H100") == "h100" and gpu_name("4090") == "rtx4090"
    with pytest.raises(ValueError, match="unknown GPU type"):
        cost.on("tpu-v5")


def test_load_time_per_family_and_storage():
    cost = DEFAULT_COST_MODEL
    wan, small = FAMILIES["wan2.1-t2v-14b"], FAMILIES["wan2.1-t2v-1.3b"]
    assert cost.load_seconds(wan, "s3") > cost.load_seconds(wan, "local") > cost.load_seconds(small, "local") > 0
    b = bucket("wan2.1-t2v-1.3b", 480, 832, 81)
    job = cost.job_seconds(b, small, ParallelPlan(dp=2), 5)  # 5 slots on dp2: 3 rounds
    assert job == pytest.approx(cost.load_seconds(small) + 3 * cost.sample_seconds(b, small, ParallelPlan(dp=2)))
    with pytest.raises(ValueError, match="storage"):
        cost.load_seconds(wan, "ftp")


def test_overrides_from_a_dict_json_and_toml(tmp_path):
    overrides = {
        "gpu": "l40s",
        "gpu_factors": {"L40S": 1.8},
        "comm_factors": {"l40s": 3.0},
        "base_seconds": {"wan2.1-t2v-1.3b": 9.0},
        "efficiency": {"ulysses": {"8": 0.5}},
        "load": {"s3": {"fixed_seconds": 5, "gib_per_second": 1.0, "families": {"hunyuanvideo": 600}}},
    }
    from_dict = CostModel.from_overrides(overrides)
    path = tmp_path / "cost.json"
    path.write_text(json.dumps(overrides))
    toml = tmp_path / "cost.toml"
    toml.write_text(
        'gpu = "l40s"\n[gpu_factors]\nL40S = 1.8\n[comm_factors]\nl40s = 3.0\n[base_seconds]\n'
        '"wan2.1-t2v-1.3b" = 9.0\n[efficiency.ulysses]\n8 = 0.5\n[load.s3]\nfixed_seconds = 5\n'
        "gib_per_second = 1.0\n[load.s3.families]\nhunyuanvideo = 600\n"
    )
    for model in (from_dict, CostModel.from_overrides(path), CostModel.from_overrides(str(toml))):
        assert model.gpu == "l40s" and model.gpu_factors["h100"] == 1.0  # tables merge, nothing else is lost
        assert model.efficiency(ParallelPlan(ulysses=8)) == 0.5
        assert model.efficiency(ParallelPlan(ulysses=4)) == pytest.approx(math.exp(-3.0 * model.sp_loss * 3))
        small = FAMILIES["wan2.1-t2v-1.3b"]
        b = bucket("wan2.1-t2v-1.3b", 480, 832, 81)
        assert model.single_gpu_seconds(b, small) == pytest.approx(
            DEFAULT_COST_MODEL.single_gpu_seconds(b, small) * 9.0 / DEFAULT_COST_MODEL.base(small) * 1.8
        )
        assert model.load_seconds(FAMILIES["hunyuanvideo"], "s3") == 600
        assert model.load_seconds(small, "s3") == pytest.approx(5 + small.param_memory_gib)
    assert CostModel.from_overrides(None).to_dict() == DEFAULT_COST_MODEL.to_dict()
    for bad, message in (
        ({"speed": 1}, "unknown key"),
        ({"gpu_factors": {"x": -1}}, "positive"),
        ({"efficiency": {"dp": {"2": 0.9}}}, "cfg, ulysses or ring"),
        ({"load": {"nfs": {}}}, "storage kinds"),
        ({"gpu": "nope"}, "unknown GPU type"),
    ):
        with pytest.raises(ValueError, match=message):
            CostModel.from_overrides(bad)


def test_the_chooser_uses_the_cost_model():
    b, wan = bucket("wan2.1-t2v-1.3b", 480, 832, 81), FAMILIES["wan2.1-t2v-1.3b"]
    h100 = choose_plan(b, wan, 8)
    rtx = choose_plan(b, wan, 8, cost_model=DEFAULT_COST_MODEL.on("rtx4090"), gpu_memory_gib=24)
    assert h100.plan == rtx.plan == ParallelPlan(dp=8)
    expected = DEFAULT_COST_MODEL.sample_gpu_seconds(b, wan, h100.plan)
    assert h100.estimated_gpu_seconds_per_sample == pytest.approx(expected, rel=1e-6)
    assert rtx.estimated_seconds_per_sample > 2 * h100.estimated_seconds_per_sample


# --- Simulator ----------------------------------------------------------------------------------------------------


def manifest(count: int = 120) -> list[ManifestRow]:
    shapes = [
        dict(model="wan2.1-t2v-1.3b", height=480, width=832, num_frames=81, num_inference_steps=50),
        dict(model="hunyuanvideo", height=544, width=960, num_frames=97, num_inference_steps=30, guidance_scale=1.0),
        dict(model="wan2.1-t2v-14b", height=720, width=1280, num_frames=81, num_inference_steps=50),  # cfg2
        dict(model="wan2.1-t2v-14b", height=480, width=832, num_frames=81, num_inference_steps=40, sequence_batch=True),
        # An image-to-video row (the image was checked at intake: the simulator reads no file) of a family with
        # no native sequence parallel (token_replace).
        dict(
            model="hunyuanvideo-i2v",
            height=544,
            width=960,
            num_frames=97,
            num_inference_steps=30,
            image="frames/first.png",
            image_sha256="ab" * 32,
        ),
    ]
    return [
        ManifestRow(
            row=i + 2,
            prompt=f"prompt {i}",
            seed=i,
            num_videos=1 + i % 3,
            **{"guidance_scale": 5.0, **shapes[i % len(shapes)]},
        )
        for i in range(count)
    ]


def test_simulate_reports_both_policies_with_the_promised_keys():
    report = simulate(manifest(), nodes=2, gpus_per_node=8, gpu="h100")
    doc = report.to_json()
    assert REPORT_KEYS <= set(doc) and REPORT_KEYS <= set(doc["naive"])
    json.dumps(doc)
    report.schedule.check()
    report.naive_schedule.check()
    for figures in (report.packed, report.naive):
        assert figures.makespan_s >= figures.lower_bound_s > 0 and figures.ratio >= 1.0
        assert 0 < figures.gpu_utilization <= 1.0 and figures.gpu_hours > 0
    assert report.packed.lower_bound_s == report.naive.lower_bound_s
    samples = sum(1 + i % 3 for i in range(120))
    assert report.packed.samples == report.naive.samples == samples and report.packed.padding_ratio == 0.0
    assert report.speedup > 1.0 and doc["speedup_vs_naive"] == pytest.approx(report.speedup, rel=1e-3)
    assert report.naive.jobs == 120  # one job per prompt
    # Wider jobs than a group exist (Wan 14B 720p needs a CFG pair at least; compiled, the fit widens it to a CFG
    # pair x Ulysses 2) and share nodes with 1-GPU jobs.
    widths = {p.job_id: len(p.gpus) for p in report.schedule.placements}
    assert 1 in widths.values() and max(widths.values()) > 1
    assert all(job.plan.world_size >= 2 for job in report.run_plan.jobs if job.bucket.height == 720)
    assert any("wan2.1-t2v-1.3b" in note and "ulysses4 ring2" in note for note in report.naive_notes)
    assert any("hunyuanvideo-i2v" in note and "dp1" in note for note in report.naive_notes)
    assert all(line for line in report.summary_lines())


def test_the_bound_is_the_best_plan_over_all_gpus():
    rows = [
        ManifestRow(
            row=2,
            prompt="p",
            model="wan2.1-t2v-1.3b",
            height=480,
            width=832,
            num_frames=81,
            num_inference_steps=50,
            guidance_scale=5.0,
            num_videos=64,
        )
    ]
    report = simulate(rows, nodes=1, gpus_per_node=8, compile="off")
    b, wan = bucket("wan2.1-t2v-1.3b", 480, 832, 81), FAMILIES["wan2.1-t2v-1.3b"]
    assert report.packed.lower_bound_s == pytest.approx(64 * DEFAULT_COST_MODEL.single_gpu_seconds(b, wan) / 8)
    # 64 equal samples on 8 GPUs: 8 per GPU, one load each; nothing better exists.
    load = DEFAULT_COST_MODEL.load_seconds(wan)
    assert report.packed.makespan_s == pytest.approx(report.packed.lower_bound_s + load, rel=1e-3)
    # Compiled (8 samples per GPU pay it back), every sample is faster, the bound counts them at that speed, and
    # the compile is paid once per job with the load.
    compiled = simulate(rows, nodes=1, gpus_per_node=8)
    assert {job.compile for job in compiled.run_plan.jobs} == {True}
    assert compiled.packed.lower_bound_s == pytest.approx(
        report.packed.lower_bound_s * DEFAULT_COST_MODEL.compile_time_factor
    )
    assert compiled.packed.makespan_s == pytest.approx(
        compiled.packed.lower_bound_s + load + DEFAULT_COST_MODEL.compile_seconds, rel=1e-3
    )


def test_padding_policies_and_widths_in_the_simulator():
    rows = manifest(40)
    node = simulate(rows, nodes=1, gpus_per_node=8, width="node")
    filled = simulate(rows, nodes=1, gpus_per_node=8, width="node", padding="fill")
    assert node.packed.padded_slots > 0 and node.packed.padding_ratio > 0
    assert filled.packed.padded_slots == 0 and filled.packed.extra_samples == node.packed.padded_slots
    assert filled.packed.samples == node.packed.samples + filled.packed.extra_samples
    assert filled.naive.samples == node.naive.samples  # the naive policy runs the manifest's videos only


def test_naive_plans_follow_the_scripts():
    memory = 80.0
    assert naive_plan(
        bucket("hunyuanvideo", 720, 1280, 129), FAMILIES["hunyuanvideo"], 8, gpu_memory_gib=memory
    ) == ParallelPlan(ulysses=8)
    assert naive_plan(
        bucket("wan2.1-t2v-1.3b", 480, 832, 81), FAMILIES["wan2.1-t2v-1.3b"], 8, gpu_memory_gib=memory
    ) == ParallelPlan(ulysses=4, ring=2)  # 12 heads: no ulysses 8
    # HunyuanVideo-I2V's token_replace keeps the first frame's tokens apart: no native sequence parallel.
    assert (
        naive_plan(
            bucket("hunyuanvideo-i2v", 544, 960, 97, conditioning="first_frame"),
            FAMILIES["hunyuanvideo-i2v"],
            8,
            gpu_memory_gib=memory,
        )
        == ParallelPlan()
    )


def test_simulating_an_unpacked_plan_and_other_gpus():
    rows = manifest(30)
    legacy = plan_run(rows, [], len(rows), CATALOG, 8, device="cuda")
    report = simulate_plan(legacy, nodes=1, gpus_per_node=8)
    assert report.packed.jobs == len(legacy.jobs) and report.packed.makespan_s > 0
    report.schedule.check()
    wan_only = [r for r in rows if r.model == "wan2.1-t2v-1.3b"]
    h100 = simulate(wan_only, nodes=1, gpus_per_node=8, gpu="h100")
    rtx = simulate(wan_only, nodes=1, gpus_per_node=8, gpu="rtx4090")
    assert rtx.packed.makespan_s > 2 * h100.packed.makespan_s and rtx.gpu == "rtx4090"
    # A 13B HunyuanVideo-family model does not fit 24 GiB: its rows are rejected, the rest is simulated.
    mixed = simulate(rows, nodes=1, gpus_per_node=8, gpu="rtx4090")
    assert mixed.run_plan.rejected and all(j.bucket.model.startswith("wan") for j in mixed.run_plan.jobs)
