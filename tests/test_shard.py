"""Planning without weights: sample identity, shape buckets, parallel plans and job cutting."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reelbatch import planning
from reelbatch.identity import expand_row
from reelbatch.models.catalog import ModelCatalog
from reelbatch.planning.buckets import bucket_key
from reelbatch.planning.packing import cut_jobs
from reelbatch.planning.planner import choose_plan, plan_run
from reelbatch.schemas import ManifestRow, ParallelPlan
from tests.hypothesis_budget import scaled


def validate_plan(bucket, family, plan, world_size):
    return planning.validate_plan(bucket, family, plan, world_size=world_size, device="cpu").problems


CATALOG = ModelCatalog.from_config()


def row(line: int = 2, **overrides) -> ManifestRow:
    values = dict(
        row=line,
        prompt="a cat walks",
        model="tiny-wan",
        height=32,
        width=32,
        num_frames=5,
        num_inference_steps=4,
        guidance_scale=5.0,
    )
    return ManifestRow(**{**values, **overrides})


def test_identity_ignores_execution_details_but_not_content():
    base = expand_row(row())[0]
    assert expand_row(row(sequence_batch=True))[0].sample_id == base.sample_id  # how it runs is not what it is
    assert expand_row(row(line=40, id="other"))[0].sample_id == base.sample_id
    for change in (
        {"prompt": "a dog"},
        {"negative_prompt": "ugly"},
        {"height": 48},
        {"seed": 3},
        {"guidance_scale": 4.0},
        {"model": "tiny-hunyuan"},
        {"num_inference_steps": 5},
    ):
        assert expand_row(row(**change))[0].sample_id != base.sample_id, change


def test_videos_of_a_row_get_consecutive_seeds_and_distinct_ids():
    samples = expand_row(row(seed=41, num_videos=3))
    assert [s.seed for s in samples] == [41, 42, 43]
    assert [s.video_index for s in samples] == [0, 1, 2]
    assert len({s.sample_id for s in samples}) == 3


def test_rows_without_seed_get_a_reproducible_one():
    assert expand_row(row())[0].seed == expand_row(row())[0].seed
    assert expand_row(row())[0].seed != expand_row(row(prompt="another"))[0].seed


@pytest.mark.parametrize("prompt", ["../../etc/passwd", "a\nb\"c'd", "/abs/path", "$(rm -rf /); `x`", "C:\\x"])
def test_output_keys_are_hashes_never_prompt_text(prompt):
    sample = expand_row(row(prompt=prompt))[0]
    directory, name = sample.output_key.split("/")
    assert name == f"{sample.sample_id}.mp4" and directory == sample.sample_id[:2]
    assert all(c in "0123456789abcdef" for c in sample.sample_id)


@pytest.mark.parametrize(
    "guidance,sequence_batch,gpus,objective,expected",
    [
        # Throughput: a tiny video fits one GPU, and data parallel beats CFG parallel (no communication).
        (5.0, False, 2, "throughput", ParallelPlan(dp=2, cfg=1)),
        (5.0, False, 8, "throughput", ParallelPlan(dp=8, cfg=1)),
        # Latency: dp does not speed up one sample; CFG parallel first, then Ulysses.
        (5.0, False, 2, "latency", ParallelPlan(dp=1, cfg=2)),
        (5.0, False, 8, "latency", ParallelPlan(dp=1, cfg=2, ulysses=4)),
        (5.0, True, 2, "throughput", ParallelPlan(dp=2, cfg=1)),  # sequence_batch => no CFG parallel
        (1.0, False, 2, "throughput", ParallelPlan(dp=2, cfg=1)),  # guidance <= 1 => no CFG at all
        (0.5, False, 4, "throughput", ParallelPlan(dp=4, cfg=1)),
        (5.0, False, 3, "throughput", ParallelPlan(dp=3, cfg=1)),  # odd: no pairs
        (5.0, False, 1, "throughput", ParallelPlan(dp=1, cfg=1)),
    ],
)
def test_plan_choice(guidance, sequence_batch, gpus, objective, expected):
    bucket = bucket_key(row(guidance_scale=guidance, sequence_batch=sequence_batch))
    plan, notes = choose_plan(bucket, gpus, objective=objective, device="cpu")
    assert plan == expected
    if expected.cfg == 1 and gpus % 2 == 0:
        assert notes, "the plan must say why CFG parallel is off"


def test_validator_refuses_the_seed_failures_with_a_fix():
    family = CATALOG.family("tiny-wan")
    seq = bucket_key(row(sequence_batch=True))
    problems = validate_plan(seq, family, ParallelPlan(dp=1, cfg=2), world_size=2)
    assert [p.rule for p in problems] == ["sequence_batch_with_cfg_parallel"]
    assert "cfg=1" in problems[0].fix
    assert not validate_plan(seq, family, ParallelPlan(dp=2, cfg=1), world_size=2)  # the fix passes

    wrong_size = validate_plan(bucket_key(row()), family, ParallelPlan(dp=3, cfg=2), world_size=4)
    assert [p.rule for p in wrong_size] == ["plan_product"]
    no_cfg = validate_plan(bucket_key(row(guidance_scale=1.0)), family, ParallelPlan(dp=1, cfg=2), world_size=2)
    assert [p.rule for p in no_cfg] == ["cfg_without_guidance"]


def test_plan_run_buckets_by_shape_and_pads_only_the_last_job():
    rows = [row(line=i + 2, prompt=f"p{i}", seed=i) for i in range(7)]
    rows += [row(line=20, prompt="tall", height=48, guidance_scale=1.0, num_videos=3)]
    result = plan_run(rows, [], len(rows), CATALOG, gpus=2, max_samples_per_job=4)
    shapes = [(j.bucket.height, len(j.samples), j.padded_slots, j.plan.short()) for j in result.jobs]
    # Throughput prefers data parallel over CFG parallel when the video fits: 7 samples on dp2 pad one slot.
    assert shapes == [(32, 4, 0, "dp2"), (32, 3, 1, "dp2"), (48, 3, 1, "dp2")]
    summary = result.summary()
    estimated = summary.pop("estimated_gpu_seconds")
    assert estimated == pytest.approx(sum(j.estimated_gpu_seconds for j in result.jobs))
    assert summary.pop("gpu_seconds_without_speedups") == estimated  # no cache, few-step weights or compile
    assert summary == {
        "jobs": 3, "samples": 10, "padded_slots": 2, "padding_ratio": round(2 / 12, 6), "saved_gpu_seconds": {}
    }  # fmt: skip
    doc = result.to_json(jobs=True)
    assert doc["rows"] == 8 and doc["accepted"] == 8 and doc["rejected"] == []
    assert set(doc["jobs"][0]) >= {
        "job_id",
        "model",
        "height",
        "width",
        "num_frames",
        "num_inference_steps",
        "plan",
        "samples",
        "padded_slots",
        "tokens",
        "backend",
        "refused_plans",
        "estimated_gpu_seconds",
        "memory_gib_per_gpu",
        "warnings",
    }
    assert doc["jobs"][0]["plan"] == {"dp": 2, "cfg": 1, "ulysses": 1, "ring": 1, "world_size": 2}
    assert doc["jobs"][0]["backend"] == "native" and doc["jobs"][0]["refused_plans"] == []
    assert doc["summary"]["estimated_gpu_seconds"] > 0


def test_a_row_asking_for_an_existing_video_is_rejected_not_duplicated():
    rows = [row(line=2, seed=1), row(line=3, seed=1), row(line=4, seed=2)]
    result = plan_run(rows, [], 3, CATALOG, gpus=1)
    assert result.samples == 2 and result.accepted == 2
    [rejection] = result.rejected
    assert (rejection.row, rejection.rule) == (3, "duplicate_sample") and "row 2" in rejection.message


@settings(max_examples=scaled(200), deadline=None)
@given(n=st.integers(0, 200), dp=st.integers(1, 8), max_per_job=st.integers(1, 64))
def test_cut_jobs_never_loses_or_duplicates_and_pads_at_most_once(n, dp, max_per_job):
    samples = list(range(n))
    pieces = cut_jobs(samples, dp, max_per_job)
    assert [s for part, _ in pieces for s in part] == samples
    assert all((len(part) + padded) % dp == 0 for part, padded in pieces)
    assert sum(1 for _, padded in pieces if padded) <= 1
    assert all(padded < dp for _, padded in pieces)
    assert all(padded == 0 for _, padded in pieces[:-1])


def test_configured_models_take_their_facts_from_the_folder(tiny_models, tmp_path):
    catalog = ModelCatalog.from_config([f"my-wan={tiny_models['tiny-wan']}", f"my-hv={tiny_models['tiny-hunyuan']}"])
    assert {"my-wan", "my-hv", "tiny-wan", "tiny-hunyuan"} <= catalog.names()
    wan, hunyuan = catalog.family("my-wan"), catalog.family("my-hv")
    assert (wan.kind, wan.heads, wan.true_cfg) == ("wan", 4, False)
    assert (hunyuan.kind, hunyuan.heads, hunyuan.true_cfg) == ("hunyuan", 4, True)
    assert catalog.local_path("my-wan") == tiny_models["tiny-wan"]
    assert wan.tokens(480, 832, 81) == 21 * 30 * 52  # the Wan2.1 stride arithmetic


def test_a_folder_that_is_not_a_pipeline_is_refused_with_its_name(tmp_path):
    catalog = ModelCatalog.from_config([f"broken={tmp_path}"])
    with pytest.raises(KeyError, match="broken"):
        catalog.family("broken")


@pytest.mark.parametrize("entry", ["no-equals-sign", "=dir", "name="])
def test_malformed_model_path_entries_say_what_is_expected(entry):
    with pytest.raises(ValueError, match="NAME=DIR"):
        ModelCatalog.from_config([entry])


def test_a_configured_model_whose_folder_is_broken_rejects_its_rows(tmp_path):
    catalog = ModelCatalog.from_config([f"broken={tmp_path}"])
    rows = [row(line=2, model="broken"), row(line=3)]
    result = plan_run(rows, [], 2, catalog, gpus=2)
    assert result.accepted == 1 and len(result.jobs) == 1
    [rejection] = result.rejected
    assert rejection.row == 2 and rejection.rule == "model_unavailable" and "--model-path" in rejection.fix


def test_skipped_samples_get_no_job_but_their_rows_stay_accepted():
    rows = [row(line=2, seed=1, num_videos=2), row(line=3, seed=5)]
    done = expand_row(rows[0])[0].sample_id
    result = plan_run(rows, [], 2, CATALOG, gpus=1, skip={done})
    assert result.accepted == 2 and result.samples == 2
    assert [(s.sample_id, b.model) for s, b in result.skipped] == [(done, "tiny-wan")]
    assert done not in {s.sample_id for job in result.jobs for s in job.samples}


def test_xdit_plans_are_checked_but_not_launched():
    """xfuser has no run path yet: a row asking for it is refused before launch, naming the plan xDiT would take."""
    result = plan_run([row(backend="xdit")], [], 1, CATALOG, gpus=2, device="cuda")
    assert not result.jobs
    [rejection] = result.rejected
    assert (rejection.column, rejection.rule) == ("backend", "backend_not_runnable") and "native" in rejection.fix


def test_ring_is_not_offered_for_hunyuan_native():
    from reelbatch.planning import validate_plan

    family = CATALOG.family("hunyuanvideo")
    bucket = bucket_key(row(model="hunyuanvideo", height=544, width=960, num_frames=97))
    check = validate_plan(bucket, family, ParallelPlan(ring=2), world_size=2, backend="native", device="cuda")
    assert not check.ok and check.problems[0].fix
    assert validate_plan(bucket, family, ParallelPlan(ulysses=2), world_size=2, backend="native", device="cuda").ok


def test_job_timeout_follows_the_cost_estimate_with_a_floor():
    from reelbatch.defaults import JOB_TIMEOUT_FLOOR_S, JOB_TIMEOUT_MARGIN

    tiny = plan_run([row()], [], 1, CATALOG, gpus=2).jobs[0]
    assert tiny.timeout_s == JOB_TIMEOUT_FLOOR_S  # seconds of work: the floor covers start-up and loading
    long_rows = [
        row(line=2 + i, model="hunyuanvideo", height=720, width=1280, num_frames=129, num_inference_steps=50, seed=i)
        for i in range(8)
    ]
    big = plan_run(long_rows, [], 8, CATALOG, gpus=8, device="cuda").jobs[0]
    # A compiled job's timeout is its uncompiled estimate's: a slow compile is no reason to kill it.
    assert big.compile
    wall = (big.estimated_gpu_seconds + big.saved_gpu_seconds["compile"]) / big.plan.world_size
    assert big.timeout_s == pytest.approx(JOB_TIMEOUT_MARGIN * wall) and big.timeout_s > JOB_TIMEOUT_FLOOR_S


def test_job_ids_hash_the_cache_and_lora_fields_only_when_set():
    """Jobs recorded before step caches and LoRAs existed keep their ids, so `reelbatch resume` finds them again."""
    import hashlib
    import json

    from reelbatch.planning.jobs import job_id

    one = row(seed=3)
    samples = expand_row(one)
    plain = bucket_key(one)
    # The bucket as it was serialised before those fields: every other field, in order, pydantic's compact JSON.
    before = {name: value for name, value in plain.model_dump(mode="json").items()
              if name not in ("cache", "lora_sha256", "lora_scale")}  # fmt: skip
    digest = hashlib.sha256(json.dumps(before, separators=(",", ":")).encode())
    for sample in samples:
        digest.update(sample.sample_id.encode())
    assert job_id(0, plain, samples) == f"job-0000-{digest.hexdigest()[:8]}"
    ids = {
        job_id(0, plain.model_copy(update=change), samples)
        for change in (
            {},
            {"cache": "fbc:0.05"},
            {"lora_sha256": "ab" * 32},
            {"lora_sha256": "ab" * 32, "lora_scale": 0.5},
        )
    }
    assert len(ids) == 4  # each setting is its own job
