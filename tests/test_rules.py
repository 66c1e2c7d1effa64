"""Parallel-plan rules, fixes and the plan chooser, from the registry alone (no torch, no weights)."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reelbatch.models.catalog import ModelCatalog, UnknownModel
from reelbatch.models.registry import FAMILIES, SequenceParallelSupport
from reelbatch.planning import candidate_plans, choose_plan, plan_efficiency, validate_plan
from reelbatch.planning.buckets import bucket_key
from reelbatch.planning.chooser import rank_plans
from reelbatch.planning.planner import plan_run
from reelbatch.planning.rules import bucket_problems, plan_violations
from reelbatch.schemas import BucketKey, ManifestRow, ParallelPlan
from tests.hypothesis_budget import scaled

CATALOG = ModelCatalog.from_config()
HUNYUAN = FAMILIES["hunyuanvideo"]


def bucket(
    model: str = "tiny-wan",
    height: int = 32,
    width: int = 32,
    frames: int = 5,
    guidance: float = 5.0,
    steps: int = 4,
    **extra,
) -> BucketKey:
    return BucketKey(
        model=model,
        height=height,
        width=width,
        num_frames=frames,
        num_inference_steps=steps,
        guidance_scale=guidance,
        **extra,
    )


def row(line: int = 2, **overrides) -> ManifestRow:
    values = dict(
        row=line,
        prompt=f"prompt {line}",
        model="tiny-wan",
        height=32,
        width=32,
        num_frames=5,
        num_inference_steps=4,
        guidance_scale=5.0,
        seed=line,
    )
    return ManifestRow(**{**values, **overrides})


def plan_rule_names(b: BucketKey, family, plan: ParallelPlan, world_size: int, device: str = "cuda") -> list[str]:
    return [v.rule for v in plan_violations(b, family, plan, world_size=world_size, backend=b.backend, device=device)]


# --- Registry -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "height,width,frames,tokens",
    [
        (544, 960, 97, 51000),
        (720, 720, 25, 14175),
        (720, 720, 97, 50625),
        (960, 960, 193, 176400),
        (720, 1280, 129, 118800),
    ],
)
def test_worked_token_counts_of_the_facts_file(height, width, frames, tokens):
    assert HUNYUAN.tokens(height, width, frames) == tokens
    assert FAMILIES["wan2.1-t2v-14b"].tokens(height, width, frames) == tokens  # same strides and patch


def test_ti2v_has_32_pixels_per_token():
    ti2v = FAMILIES["wan2.2-ti2v-5b"]
    assert ti2v.pixels_per_token == ti2v.size_multiple == 32
    assert ti2v.tokens(704, 1280, 121) == 31 * 22 * 40


def test_registry_entries_are_consistent():
    for family in FAMILIES.values():
        for height, width in family.allowed_sizes or ():
            assert height % family.size_multiple == 0 and width % family.size_multiple == 0, family.name
        assert family.param_memory_gib > 0 and family.activation_gib_per_ktoken > 0 and family.step_seconds_100k > 0
        assert family.true_cfg == (family.kind == "hunyuan")
    # (height, width) convention: SkyReels-V2 "544x960" is landscape only.
    assert (544, 960) in FAMILIES["skyreels-v2-t2v-14b"].allowed_sizes
    assert (960, 544) not in FAMILIES["skyreels-v2-t2v-14b"].allowed_sizes
    assert FAMILIES["wan2.1-i2v-14b"].context_tokens == 512 + 257
    assert {f.heads for n, f in FAMILIES.items() if n.startswith(("hunyuan", "skyreels-v1"))} == {24}
    assert FAMILIES["wan2.2-t2v-a14b"].param_memory_gib > 2 * 26  # both experts resident


def test_registry_families_plan_without_weights_but_cannot_run_without_a_folder():
    assert "wan2.1-t2v-14b" in CATALOG.names()
    with pytest.raises(UnknownModel, match=re.escape("--model-path wan2.1-t2v-14b=DIR")):
        CATALOG.local_path("wan2.1-t2v-14b")
    result = plan_run(
        [row(model="wan2.1-t2v-14b", height=480, width=832, num_frames=81)], [], 1, CATALOG, gpus=8, device="cuda"
    )
    assert result.rejected == [] and result.jobs[0].plan.world_size == 8


# --- Rule 4: HunyuanVideo's published xDiT configurations ---------------------------------------------------------

# HunyuanVideo README, "Supported Parallel Configurations" (129 frames): the sp degrees that run and some that do
# not, (height, width). The table writes "1280 720" as width x height; rule 4 is symmetric, so both orientations.
PUBLISHED_XDIT = [
    (720, 1280, {2, 3, 4, 5, 8}, {6}),
    (1280, 720, {2, 3, 4, 5, 8}, {6}),
    (960, 960, {2, 3, 4, 6}, {8}),
    (720, 720, {3, 5}, {2, 4, 6, 7, 8}),  # only 5 and 3
    (544, 960, {2, 3, 4, 6}, {8}),
    (1104, 832, {2, 3, 4}, {6, 8}),
]


def _sp_runs(height: int, width: int, sp: int) -> bool:
    """Some split of sp into ulysses x ring passes every rule under xdit on sp GPUs."""
    b = bucket("hunyuanvideo", height, width, 129, guidance=1.0, backend="xdit")
    return any(
        validate_plan(b, HUNYUAN, ParallelPlan(ulysses=u, ring=sp // u), world_size=sp).ok
        for u in range(1, sp + 1)
        if sp % u == 0
    )


@pytest.mark.parametrize("height,width,runs,fails", PUBLISHED_XDIT)
def test_hunyuan_xdit_supported_configurations_follow_from_rules_2_and_4(height, width, runs, fails):
    for sp in runs:
        assert _sp_runs(height, width, sp), f"{height}x{width} should run on sp={sp}"
    for sp in fails:
        assert not _sp_runs(height, width, sp), f"{height}x{width} should not run on sp={sp}"


def test_720x720_runs_on_sp_3_and_5_only():
    assert {sp for sp in range(2, 9) if _sp_runs(720, 720, sp)} == {3, 5}


@pytest.mark.parametrize(
    "height,width,combos",
    [
        (1280, 720, ["8x1", "4x2", "2x4", "1x8"]),
        (720, 1280, ["1x5"]),
        (720, 1280, ["3x1", "1x3"]),
        (960, 960, ["6x1", "3x2", "2x3", "1x6"]),
        (720, 720, ["1x5"]),
        (720, 720, ["3x1", "1x3"]),
    ],
)
def test_the_published_ulysses_x_ring_combos_pass(height, width, combos):
    b = bucket("hunyuanvideo", height, width, 129, guidance=1.0, backend="xdit")
    for combo in combos:
        ulysses, ring = map(int, combo.split("x"))
        assert validate_plan(b, HUNYUAN, ParallelPlan(ulysses=ulysses, ring=ring), world_size=ulysses * ring).ok


def test_sp5_on_hunyuan_needs_ring_because_5_does_not_divide_24_heads():
    b = bucket("hunyuanvideo", 720, 1280, 129, guidance=1.0, backend="xdit")
    check = validate_plan(b, HUNYUAN, ParallelPlan(ulysses=5), world_size=5)
    [problem] = check.problems
    assert problem.rule == "ulysses_heads" and problem.suggested_plan == ParallelPlan(ring=5)


def test_hunyuan_split_refusal_quotes_xdit_and_offers_degrees_and_sizes():
    b = bucket("hunyuanvideo", 720, 720, 129, guidance=1.0, backend="xdit")
    [problem] = validate_plan(b, HUNYUAN, ParallelPlan(ulysses=8), world_size=8).problems
    assert problem.rule == "hunyuan_sequence_split"
    assert "Cannot split video sequence into ulysses_degree x ring_degree" in problem.message
    assert "3 or 5" in problem.fix and "720x1280" in problem.fix
    assert validate_plan(b, HUNYUAN, problem.suggested_plan, world_size=8).ok
    # 544x960 is the size HunyuanVideo suggests next to 720x720 for even degrees.
    [two] = validate_plan(b, HUNYUAN, ParallelPlan(ulysses=2), world_size=2).problems
    assert "624x832" in two.fix or "544x960" in two.fix


# --- Other rules ---------------------------------------------------------------------------------------------------


def test_wan_13b_refuses_ulysses_8_and_suggests_ulysses_2_or_4_with_ring():
    wan = FAMILIES["wan2.1-t2v-1.3b"]
    b = bucket("wan2.1-t2v-1.3b", 480, 832, 81)
    [problem] = validate_plan(b, wan, ParallelPlan(ulysses=8), world_size=8).problems
    assert problem.rule == "ulysses_heads" and "12" in problem.message
    assert "ulysses 2 or 4" in problem.fix and "ring" in problem.fix
    assert problem.suggested_plan.ulysses * problem.suggested_plan.ring == 8  # keeps the sequence split
    assert validate_plan(b, wan, problem.suggested_plan, world_size=8).ok
    # On CPU there is no ring: the fix moves the rest to dp instead.
    [cpu] = validate_plan(b, wan, ParallelPlan(ulysses=8), world_size=8, device="cpu").problems
    assert "ring" not in cpu.fix.split("e.g.")[0] and cpu.suggested_plan.ring == 1
    assert validate_plan(b, wan, cpu.suggested_plan, world_size=8, device="cpu").ok


def test_seed_error_sequence_batch_with_cfg_parallel_is_refused_with_a_fix_that_passes():
    b = bucket(sequence_batch=True)
    family = FAMILIES["tiny-wan"]
    [problem] = validate_plan(b, family, ParallelPlan(cfg=2), world_size=2).problems
    assert problem.rule == "sequence_batch_with_cfg_parallel" and "cfg=1" in problem.fix
    assert validate_plan(b, family, ParallelPlan.parse(problem.fix.split()[1].rstrip(",")), world_size=2).ok
    assert validate_plan(b, family, problem.suggested_plan, world_size=2).ok


def test_seed_error_batch_not_divisible_by_world_size_is_padded_never_refused():
    rows = [row(line=i + 2, guidance_scale=1.0) for i in range(3)]  # 3 samples, no CFG, 2 ranks: dp2
    result = plan_run(rows, [], 3, CATALOG, gpus=2, device="cpu")
    assert result.rejected == [] and result.accepted == 3
    [job] = result.jobs
    assert job.plan == ParallelPlan(dp=2) and (len(job.samples), job.padded_slots) == (3, 1)


@pytest.mark.parametrize(
    "plan,world_size,guidance,rule",
    [
        (ParallelPlan(dp=3, cfg=2), 4, 5.0, "plan_product"),
        (ParallelPlan(cfg=3), 3, 5.0, "cfg_degree"),
        (ParallelPlan(cfg=2), 2, 1.0, "cfg_without_guidance"),
        (ParallelPlan(ulysses=3), 3, 5.0, "ulysses_heads"),  # 4 heads
        (ParallelPlan(ulysses=8), 8, 5.0, "ulysses_heads"),  # more ranks than heads
    ],
)
def test_plan_rules_name_the_rule_and_a_passing_plan(plan, world_size, guidance, rule):
    b = bucket(guidance=guidance)
    family = FAMILIES["tiny-wan"]
    problems = validate_plan(b, family, plan, world_size=world_size, device="cpu").problems
    assert rule in [p.rule for p in problems]
    for problem in problems:
        assert str(problem.suggested_plan) in problem.fix
        assert validate_plan(b, family, problem.suggested_plan, world_size=world_size, device="cpu").ok


def test_rule_3_applies_to_native_but_not_to_xdit_which_pads_wan():
    b = bucket(height=48, width=32, frames=9)  # 3 x 3 x 2 = 18 tokens
    family = FAMILIES["tiny-wan"]
    assert family.tokens(48, 32, 9) == 18
    [problem] = validate_plan(b, family, ParallelPlan(ulysses=4), world_size=4).problems
    assert problem.rule == "sequence_not_divisible" and "backend xdit" in problem.fix
    assert validate_plan(b, family, ParallelPlan(ulysses=4), world_size=4, backend="xdit").ok
    # HunyuanVideo's native context parallelism does not pad either.
    assert plan_rule_names(bucket("tiny-hunyuan", 48, 32, 9), FAMILIES["tiny-hunyuan"], ParallelPlan(ulysses=4), 4) == [
        "sequence_not_divisible"
    ]


def test_cpu_refuses_ring_and_xdit():
    b = bucket()
    family = FAMILIES["tiny-wan"]
    [ring] = validate_plan(b, family, ParallelPlan(ring=2), world_size=2, device="cpu").problems
    assert ring.rule == "ring_needs_gpu" and "GPU attention backend" in ring.message
    assert validate_plan(b, family, ring.suggested_plan, world_size=2, device="cpu").ok
    assert validate_plan(b, family, ParallelPlan(ring=2), world_size=2, device="cuda").ok
    [xdit] = validate_plan(b, family, ParallelPlan(dp=2), world_size=2, backend="xdit", device="cpu").problems
    assert xdit.rule == "xdit_needs_gpu" and xdit.column == "backend"
    assert "xfuser cannot be imported without a GPU; use backend native" in xdit.message


def test_a_backend_without_sequence_parallelism_refuses_it():
    without = dataclasses.replace(
        FAMILIES["tiny-hunyuan"], native=SequenceParallelSupport(ulysses=False, ring=False, split="exact")
    )
    b = bucket("tiny-hunyuan")
    [problem] = validate_plan(b, without, ParallelPlan(ulysses=2), world_size=2).problems
    assert problem.rule == "sequence_parallel_unsupported" and "backend xdit" in problem.fix
    assert problem.suggested_plan.ulysses == problem.suggested_plan.ring == 1


def test_frames_must_be_4k_plus_1():
    [problem] = validate_plan(bucket(frames=6), FAMILIES["tiny-wan"], ParallelPlan(), world_size=1).problems
    assert (problem.rule, problem.column, problem.fix) == ("frames_not_4k_plus_1", "num_frames", "use 5 or 9")


@pytest.mark.parametrize(
    "model,height,width,allowed",
    [
        ("wan2.2-ti2v-5b", 704, 1280, True),
        ("wan2.2-ti2v-5b", 1280, 704, True),
        ("wan2.2-ti2v-5b", 720, 1280, False),
        ("wan2.1-t2v-1.3b", 480, 832, True),
        ("wan2.1-t2v-1.3b", 720, 1280, False),
        ("wan2.1-t2v-14b", 1280, 720, True),
        ("skyreels-v2-t2v-14b", 544, 960, True),
        ("skyreels-v2-t2v-14b", 960, 544, False),
        ("hunyuanvideo", 832, 1104, True),
        ("hunyuanvideo", 512, 512, False),
        ("tiny-wan", 48, 80, True),  # tiny models: any multiple of 16
        ("tiny-hunyuan", 112, 16, True),
    ],
)
def test_allowed_sizes_per_family(model, height, width, allowed):
    family = FAMILIES[model]
    problems = validate_plan(bucket(model, height, width, 5), family, ParallelPlan(), world_size=1).problems
    assert (problems == []) == allowed
    if not allowed:
        [problem] = problems
        assert problem.rule == "size_not_allowed" and problem.fix.startswith("use one of: ")
        listed = problem.fix.removeprefix("use one of: ").removesuffix(" (height x width)").split(", ")
        assert sorted(listed) == sorted(f"{h}x{w}" for h, w in family.allowed_sizes)


def test_ti2v_needs_multiples_of_32():
    ti2v = FAMILIES["wan2.2-ti2v-5b"]
    [listed] = bucket_problems(bucket("wan2.2-ti2v-5b", 720, 1280, 121), ti2v, backend="native", device="cuda")
    assert "not a multiple of 32" in listed.message and "704x1280" in listed.fix
    any_size = dataclasses.replace(ti2v, allowed_sizes=None)  # the pixel rule on its own
    [problem] = bucket_problems(bucket("x", 720, 1280, 121), any_size, backend="native", device="cuda")
    assert (problem.rule, problem.column, problem.fix) == ("size_not_multiple_of_32", "height", "use 704 or 736")
    assert not bucket_problems(bucket("x", 736, 1280, 121), any_size, backend="native", device="cuda")


def test_hunyuan_past_192_frames_warns_about_looping():
    long = validate_plan(bucket("hunyuanvideo", 960, 960, 193), HUNYUAN, ParallelPlan(), world_size=1)
    assert any("RIFLEx" in w for w in long.warnings)
    assert not validate_plan(bucket("hunyuanvideo", 960, 960, 129), HUNYUAN, ParallelPlan(), world_size=1).warnings
    wan = FAMILIES["wan2.1-t2v-14b"]
    assert not validate_plan(bucket("wan2.1-t2v-14b", 720, 1280, 193), wan, ParallelPlan(), world_size=1).warnings


FIX_CASES = [
    # model, height, width, frames, guidance, sequence_batch, backend, device
    ("tiny-wan", 32, 32, 5, 5.0, False, "native", "cpu"),
    ("tiny-wan", 48, 32, 9, 1.0, True, "native", "cuda"),
    ("tiny-hunyuan", 48, 80, 9, 4.0, False, "xdit", "cuda"),
    ("wan2.1-t2v-1.3b", 480, 832, 81, 5.0, False, "native", "cuda"),
    ("wan2.1-t2v-1.3b", 480, 832, 81, 5.0, True, "native", "cpu"),
    ("wan2.2-ti2v-5b", 704, 1280, 121, 5.0, False, "native", "cuda"),
    ("hunyuanvideo", 720, 720, 129, 1.0, False, "xdit", "cuda"),
    ("hunyuanvideo", 720, 1280, 129, 6.0, False, "native", "cuda"),
    ("skyreels-v1-t2v", 544, 960, 97, 6.0, True, "xdit", "cuda"),
    ("skyreels-v2-t2v-14b", 544, 960, 97, 6.0, False, "native", "cpu"),
]


@pytest.mark.parametrize("model,height,width,frames,guidance,sequence_batch,backend,device", FIX_CASES)
def test_every_plan_fix_names_a_plan_that_passes(
    model, height, width, frames, guidance, sequence_batch, backend, device
):
    """For every plan of 1..8 ranks, also at the wrong world size: each problem's suggested plan passes."""
    family = FAMILIES[model]
    b = bucket(model, height, width, frames, guidance, sequence_batch=sequence_batch, backend=backend)
    checked = 0
    for world_size in range(1, 9):
        plans = [*candidate_plans(world_size), ParallelPlan(cfg=3), ParallelPlan(dp=2, ulysses=3)]
        for plan in plans:
            for problem in validate_plan(b, family, plan, world_size=world_size, device=device).problems:
                assert problem.fix.strip()
                if problem.suggested_plan is not None:
                    assert str(problem.suggested_plan) in problem.fix
                    again = validate_plan(b, family, problem.suggested_plan, world_size=world_size, device=device)
                    assert again.ok, (plan, problem, again.problems)
                    checked += 1
    assert checked > 10


# --- Choosing ------------------------------------------------------------------------------------------------------


def test_efficiencies_follow_the_field_order_and_the_published_timings():
    dp2, cfg2, u2, r2 = (ParallelPlan(dp=2), ParallelPlan(cfg=2), ParallelPlan(ulysses=2), ParallelPlan(ring=2))
    assert plan_efficiency(dp2) == 1.0 > plan_efficiency(cfg2) > plan_efficiency(u2) > plan_efficiency(r2)
    # Speed-up / GPUs from timings.csv (large models on H100 / A800) against the model, within 0.1.
    measured = [
        (ParallelPlan(cfg=2), 771.03 / 387.01 / 2),  # SkyReels-V1 A800
        (ParallelPlan(cfg=2, ulysses=2), 771.03 / 205.49 / 4),
        (ParallelPlan(cfg=2, ulysses=4), 771.03 / 107.41 / 8),
        (ParallelPlan(ulysses=2), 1837.9 / 945.1 / 2),  # Wan2.1 14B H100
        (ParallelPlan(ulysses=4), 1837.9 / 497.0 / 4),
        (ParallelPlan(ulysses=8), 1837.9 / 287.9 / 8),
        (ParallelPlan(ulysses=4), 1904.08 / 514.08 / 4),  # HunyuanVideo H100
        (ParallelPlan(ulysses=8), 1904.08 / 337.58 / 8),
        (ParallelPlan(ulysses=3), 1735.01 / 645.45 / 3),  # xDiT HunyuanVideo 960x960
        (ParallelPlan(ulysses=6), 1735.01 / 367.02 / 6),
    ]
    for plan, efficiency in measured:
        assert plan_efficiency(plan) == pytest.approx(efficiency, abs=0.1), plan


def test_throughput_prefers_dp_then_cfg_then_ulysses_then_ring():
    order = rank_plans(candidate_plans(4), "throughput")
    assert [p.short() for p in order[:4]] == ["dp4", "dp2 cfg2", "dp2 ulysses2", "cfg2 ulysses2"]
    assert order.index(ParallelPlan(dp=2, ulysses=2)) < order.index(ParallelPlan(dp=2, ring=2))


def test_a_long_hunyuan_video_that_does_not_fit_one_gpu_gets_sequence_parallel():
    long = bucket("hunyuanvideo", 960, 960, 193, guidance=1.0, steps=50)
    alone = choose_plan(long, HUNYUAN, 1, gpu_memory_gib=80.0)
    assert alone.plan is None
    [problem] = alone.problems
    assert problem.rule == "out_of_memory" and "--gpus 2" in problem.fix
    pair = choose_plan(long, HUNYUAN, 2, gpu_memory_gib=80.0)
    assert pair.plan is not None and pair.plan.ulysses * pair.plan.ring > 1
    assert pair.refused[0].plan == ParallelPlan(dp=2) and pair.refused[0].rule == "out_of_memory"
    assert pair.memory_gib_per_gpu <= 80.0 and any("GiB" in note for note in pair.notes)
    assert any("RIFLEx" in w for w in pair.warnings)
    # The same video on bigger GPUs needs no sequence parallelism.
    assert choose_plan(long, HUNYUAN, 2, gpu_memory_gib=141.0).plan == ParallelPlan(dp=2)


def test_out_of_memory_fix_suggests_sequence_batch_when_cfg_is_batched():
    wan = FAMILIES["wan2.1-t2v-14b"]
    choice = choose_plan(bucket("wan2.1-t2v-14b", 720, 1280, 81, steps=50), wan, 1)
    [problem] = choice.problems
    assert problem.rule == "out_of_memory" and "sequence_batch=true" in problem.fix
    fixed = choose_plan(bucket("wan2.1-t2v-14b", 720, 1280, 81, steps=50, sequence_batch=True), wan, 1)
    assert fixed.plan == ParallelPlan()


def test_latency_and_throughput_choose_differently_on_8_gpus():
    wan = FAMILIES["wan2.1-t2v-1.3b"]
    b = bucket("wan2.1-t2v-1.3b", 480, 832, 81, steps=50)
    throughput = choose_plan(b, wan, 8, objective="throughput")
    latency = choose_plan(b, wan, 8, objective="latency")
    assert throughput.plan == ParallelPlan(dp=8)
    assert latency.plan == ParallelPlan(cfg=2, ulysses=4)
    assert latency.estimated_seconds_per_sample < throughput.estimated_seconds_per_sample / 5
    assert throughput.estimated_gpu_seconds_per_sample < latency.estimated_gpu_seconds_per_sample
    assert any("data parallel" in note for note in throughput.notes)


def test_refused_lists_only_better_ranked_candidates():
    b = bucket("tiny-wan", guidance=1.0)
    choice = choose_plan(b, FAMILIES["tiny-wan"], 2, objective="latency", device="cpu")
    assert choice.plan == ParallelPlan(ulysses=2)
    assert [(r.plan, r.rule) for r in choice.refused] == [(ParallelPlan(cfg=2), "cfg_without_guidance")]
    assert json.dumps([r.to_json() for r in choice.refused])


def test_a_valid_pinned_plan_is_kept_even_when_another_would_rank_higher():
    pinned = ParallelPlan(cfg=2)
    result = plan_run([row(line=2, plan=pinned), row(line=3, plan=pinned)], [], 2, CATALOG, gpus=2, device="cpu")
    [job] = result.jobs
    assert job.plan == pinned and any("pinned" in note for note in job.notes)
    assert bucket_key(row(plan=pinned)).plan == pinned and bucket_key(row(backend="xdit")).backend == "xdit"


def test_an_invalid_pinned_plan_rejects_its_rows_on_the_plan_column():
    rows = [
        row(line=2, plan=ParallelPlan(ulysses=2, ring=1, dp=1, cfg=1)),  # valid
        row(line=3, plan=ParallelPlan(ulysses=3)),  # 3 ranks on a 2-rank job, 4 heads, 8 tokens
        row(line=4),
    ]
    result = plan_run(rows, [], 3, CATALOG, gpus=2, device="cpu")
    assert result.accepted == 2 and len(result.jobs) == 2
    rejected = [r for r in result.rejected if r.row == 3]
    assert {r.rule for r in rejected} == {"plan_product", "ulysses_heads", "sequence_not_divisible"}
    for rejection in rejected:
        assert rejection.column == "plan" and rejection.fix
        assert set(rejection.model_dump()) == {"row", "column", "rule", "message", "fix"}


def test_plan_json_carries_backend_estimates_and_refusals():
    rows = [
        row(
            line=2,
            model="hunyuanvideo",
            height=960,
            width=960,
            num_frames=193,
            guidance_scale=1.0,
            num_inference_steps=50,
            num_videos=3,
        )
    ]
    doc = plan_run(rows, [], 1, CATALOG, gpus=2, device="cuda").to_json(jobs=True)
    [job] = doc["jobs"]
    assert job["backend"] == "native" and job["plan"]["ulysses"] * job["plan"]["ring"] == 2
    assert job["refused_plans"][0] == {
        "plan": ParallelPlan(dp=2).as_dict(),
        "rule": "out_of_memory",
        "message": job["refused_plans"][0]["message"],
    }
    assert job["memory_gib_per_gpu"] <= 80 and any("RIFLEx" in w for w in job["warnings"])
    choice = choose_plan(bucket_key(rows[0]), HUNYUAN, 2)
    # Three 193-frame videos pay back a compile (--compile auto): the uncompiled estimate, less what compiling saves.
    assert job["compile"] is True
    uncompiled = job["estimated_gpu_seconds"] + job["saved_gpu_seconds"]["compile"]
    assert uncompiled == pytest.approx(choice.estimated_gpu_seconds_per_sample * 3)
    assert doc["summary"]["estimated_gpu_seconds"] == pytest.approx(job["estimated_gpu_seconds"])
    json.dumps(doc)


def test_a_bucket_no_plan_can_fix_is_rejected_with_the_row_columns():
    rows = [row(line=2, model="wan2.1-t2v-1.3b", height=720, width=1280, num_frames=81)]
    result = plan_run(rows, [], 1, CATALOG, gpus=2, device="cuda")
    [rejection] = result.rejected
    assert (rejection.rule, rejection.column) == ("size_not_allowed", "height") and "480x832" in rejection.fix


# --- Property: whatever the bucket, the chosen plan passes and every refusal has a fix ----------------------------

FAMILY_NAMES = sorted(FAMILIES)


@st.composite
def cases(draw) -> tuple[BucketKey, int]:
    """A bucket (tiny or registry family, mostly-valid shapes, sometimes a pinned plan) and a GPU count."""
    gpus = draw(st.integers(1, 8))
    name = draw(st.sampled_from(FAMILY_NAMES))
    family = FAMILIES[name]
    if family.allowed_sizes and draw(st.integers(0, 3)):
        height, width = draw(st.sampled_from(sorted(family.allowed_sizes)))
    else:
        height, width = (draw(st.integers(1, 80)) * 16 for _ in range(2))
    frames = draw(st.integers(0, 60)) * 4 + 1 if draw(st.integers(0, 4)) else draw(st.integers(1, 250))
    pinned = None
    if draw(st.integers(0, 2)) == 0:  # a third pinned: mostly plans of the right size, some of any size
        any_plan = st.builds(
            ParallelPlan, dp=st.integers(1, 4), cfg=st.integers(1, 3), ulysses=st.integers(1, 8), ring=st.integers(1, 4)
        )
        pinned = draw(st.one_of(st.sampled_from(candidate_plans(gpus)), any_plan))
    bucket_ = BucketKey(
        model=name,
        height=height,
        width=width,
        num_frames=frames,
        num_inference_steps=draw(st.integers(1, 60)),
        guidance_scale=draw(st.sampled_from([0.0, 1.0, 1.5, 5.0, 7.5])),
        sequence_batch=draw(st.booleans()),
        plan=pinned,
        backend=draw(st.sampled_from(["native", "native", "xdit"])),
    )
    return bucket_, gpus


@settings(max_examples=scaled(500), deadline=None)
@given(
    case=cases(),
    device=st.sampled_from(["cuda", "cpu"]),
    memory=st.sampled_from([24.0, 48.0, 80.0, 141.0]),
    objective=st.sampled_from(["throughput", "latency"]),
)
def test_chosen_plans_pass_and_every_refusal_has_a_fix(case, device, memory, objective):
    b, gpus = case
    family = FAMILIES[b.model]
    choice = choose_plan(b, family, gpus, device=device, gpu_memory_gib=memory, objective=objective)
    # A pinned plan narrower than the node is a job width (its jobs run side by side): checked at its own width.
    width = b.plan.world_size if b.plan is not None and b.plan.world_size < gpus else gpus
    if choice.plan is not None:
        assert choice.problems == []
        assert validate_plan(b, family, choice.plan, world_size=width, device=device).ok
        if b.plan is not None:
            assert choice.plan == b.plan  # pinned: never changed
        else:
            assert choice.memory_gib_per_gpu <= memory
            ranked = rank_plans(candidate_plans(gpus), objective)
            assert [r.plan for r in choice.refused] == ranked[: ranked.index(choice.plan)]
    else:
        assert choice.problems
    for problem in choice.problems:
        assert problem.rule and problem.message and problem.fix.strip()
        if problem.suggested_plan is not None:
            assert not plan_violations(
                b, family, problem.suggested_plan, world_size=width, backend=b.backend, device=device
            )
    for refused in choice.refused:
        assert refused.rule and refused.message
