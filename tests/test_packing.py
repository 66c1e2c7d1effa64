"""Packing without GPUs: job sizes, padding policies, GPU groups on nodes and the fleet schedule."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reelbatch.gpus import GpuAllocator, partition_node
from reelbatch.models.catalog import ModelCatalog
from reelbatch.planning.cost import DEFAULT_COST_MODEL
from reelbatch.planning.fleet.schedule import FleetJob, makespan_seconds, schedule_jobs
from reelbatch.planning.packing import (
    Cut,
    cut_bucket,
    extra_samples,
    pack_plan,
    samples_per_replica,
)
from reelbatch.planning.packing_options import PackingOptions
from reelbatch.planning.planner import plan_run
from reelbatch.schemas import ManifestRow, ParallelPlan
from tests.hypothesis_budget import scaled

CATALOG = ModelCatalog.from_config()
WAN13 = dict(model="wan2.1-t2v-1.3b", height=480, width=832, num_frames=81, num_inference_steps=50)


def row(line: int, **overrides) -> ManifestRow:
    values = dict(row=line, prompt=f"prompt {line}", guidance_scale=5.0, seed=line * 100, **WAN13)
    return ManifestRow(**{**values, **overrides})


# --- Cutting one bucket -----------------------------------------------------------------------------------------


@settings(max_examples=scaled(300), deadline=None)
@given(
    count=st.integers(0, 300),
    dp=st.integers(1, 8),
    per_replica=st.integers(1, 40),
    cap=st.one_of(st.none(), st.integers(1, 64)),
    tail=st.booleans(),
)
def test_cut_bucket_keeps_every_sample_and_pads_only_the_last_job(count, dp, per_replica, cap, tail):
    cuts = cut_bucket(count, dp, per_replica, cap, tail=tail)
    assert sum(c.samples for c in cuts) == count
    assert all(c.samples > 0 and c.slots % dp == 0 and c.padded < dp for c in cuts)
    assert sum(1 for c in cuts if c.padded) <= 1 and all(c.padded == 0 for c in cuts[:-1])
    assert sum(c.padded for c in cuts) == -count % dp
    rounds = [c.rounds for c in cuts]
    assert rounds == sorted(rounds, reverse=True)  # longest first within a bucket
    if tail and rounds:
        assert rounds[-1] == 1  # the last job was halved down to one row
    elif rounds:
        assert max(rounds) - min(rounds) <= 1  # balanced: sizes differ by at most one replica row
    if cap is not None and cuts:
        assert max(c.slots for c in cuts) <= max(cap, dp) or max(c.rounds for c in cuts) == 1


def test_the_tail_split_halves_the_last_job_and_keeps_its_padding_last():
    assert [c.rounds for c in cut_bucket(100, 1, 16, tail=True)] == [15, 15, 14, 14, 14, 14, 7, 4, 2, 1]
    cuts = cut_bucket(61, 4, 8, tail=True)  # 16 rows of 4: 8 + (4, 2, 1, 1), the last row short by 3
    assert [c.rounds for c in cuts] == [8, 4, 2, 1, 1] and [c.padded for c in cuts] == [0, 0, 0, 0, 3]
    assert cut_bucket(3, 1, 8, tail=True) == [Cut(2, 0, 1), Cut(1, 0, 1)]


def test_samples_per_replica_aims_at_the_target_including_load():
    assert samples_per_replica(100.0, 40.0, 1800.0) == 18  # 40 + 18 * 100 = 1840 s, nearest to 1800
    assert samples_per_replica(5000.0, 40.0, 1800.0) == 1  # one sample longer than the target: one per job
    assert samples_per_replica(0.0, 40.0, 1800.0) > 10**6


# --- Packing a run plan: properties -----------------------------------------------------------------------------


@st.composite
def manifests(draw):
    """A few buckets of registry families (planned for CUDA, no weights), sometimes a pinned dp plan."""
    gpus = draw(st.sampled_from([1, 2, 4, 8]))
    shapes = [
        WAN13,
        dict(model="hunyuanvideo", height=544, width=960, num_frames=97, num_inference_steps=30),
        dict(model="wan2.1-t2v-14b", height=720, width=1280, num_frames=81, num_inference_steps=50),
    ]
    rows = []
    for line in range(2, 2 + draw(st.integers(1, 25))):
        shape = draw(st.sampled_from(shapes))
        pinned = None
        if shape is WAN13 and draw(st.integers(0, 3)) == 0:
            pinned = ParallelPlan(dp=gpus)  # a pinned plan keeps its dp: the bucket may pad once
        rows.append(
            row(
                line,
                **shape,
                num_videos=draw(st.integers(1, 5)),
                guidance_scale=draw(st.sampled_from([1.0, 5.0])),
                sequence_batch=draw(st.booleans()),
                plan=pinned,
            )
        )
    return rows, gpus


def _plan(rows, gpus, compile="auto", **options):
    return plan_run(
        rows,
        [],
        len(rows),
        CATALOG,
        gpus,
        device="cuda",
        packing=PackingOptions(gpus_per_node=gpus, **options),
        compile=compile,
    )


@settings(max_examples=scaled(60), deadline=None)
@given(
    case=manifests(),
    width=st.sampled_from(["group", "node"]),
    target=st.sampled_from([60.0, 900.0, 1800.0]),
    nodes=st.integers(1, 3),
)
def test_pad_packing_loses_nothing_and_pads_at_most_once_per_bucket(case, width, target, nodes):
    rows, gpus = case
    legacy = plan_run(rows, [], len(rows), CATALOG, gpus, device="cuda")
    packed = _plan(rows, gpus, width=width, target_seconds=target, nodes=nodes)
    before = Counter(s.sample_id for job in legacy.jobs for s in job.samples)
    after = Counter(s.sample_id for job in packed.jobs for s in job.samples)
    assert after == before and max(after.values(), default=1) == 1  # nothing lost, nothing duplicated
    partial = Counter()
    for job in packed.jobs:
        assert (len(job.samples) + job.padded_slots) % job.plan.dp == 0 and job.padded_slots < job.plan.dp
        assert job.plan.world_size <= gpus and job.filled_slots == 0
        if job.bucket.plan is not None:
            assert job.plan == job.bucket.plan  # pinned: never changed
        elif width == "group":
            assert job.plan.dp == 1 and job.padded_slots == 0
        partial[job.bucket] += bool(job.padded_slots)
    assert all(count <= 1 for count in partial.values())
    seconds = [job.estimated_seconds for job in packed.jobs]
    assert seconds == sorted(seconds, reverse=True) and all(s > 0 for s in seconds)  # longest first
    assert len({job.job_id for job in packed.jobs}) == len(packed.jobs)


@settings(max_examples=scaled(60), deadline=None)
@given(case=manifests(), width=st.sampled_from(["group", "node"]))
def test_fill_packing_turns_padding_into_new_videos_of_the_same_prompts(case, width):
    rows, gpus = case
    legacy = plan_run(rows, [], len(rows), CATALOG, gpus, device="cuda")
    packed = _plan(rows, gpus, width=width, padding="fill")
    before = {s.sample_id for job in legacy.jobs for s in job.samples}
    after = [s for job in packed.jobs for s in job.samples]
    assert len(after) == len({s.sample_id for s in after})  # no duplicate, extras included
    assert before <= {s.sample_id for s in after}
    extras = [s for s in after if s.sample_id not in before]
    assert len(extras) == sum(job.filled_slots for job in packed.jobs)
    by_row = {r.row: r for r in rows}
    for sample in extras:
        source = by_row[sample.row]
        assert sample.video_index >= source.num_videos and sample.prompt == source.prompt
        assert sample.seed == source.seed + sample.video_index  # the row's seed rule, continued
    for job in packed.jobs:
        assert job.padded_slots == 0 and len(job.samples) % job.plan.dp == 0  # exactly divisible
    # Padding the pad policy would have had equals what fill made.
    padded = _plan(rows, gpus, width=width, padding="pad")
    assert sum(j.padded_slots for j in padded.jobs) == len(extras)


def test_fill_makes_the_video_a_larger_num_videos_would_make():
    from reelbatch.identity import expand_row

    source = row(2, num_videos=1)
    [extra] = extra_samples([source], 1, set(), {})
    assert extra == expand_row(source.model_copy(update={"num_videos": 2}))[1]


def test_group_width_runs_one_sample_group_per_job_and_node_width_keeps_dp():
    rows = [row(line, num_videos=3) for line in range(2, 12)]  # 30 samples of ~100 s, fit one H100 each
    group = _plan(rows, 8)
    assert {job.plan for job in group.jobs} == {ParallelPlan(dp=1)}
    node = _plan(rows, 8, width="node")
    assert {job.plan for job in node.jobs} == {ParallelPlan(dp=8)}
    assert sum(j.padded_slots for j in node.jobs) == 2  # 30 samples on dp8: one job pads 2 slots
    assert sum(j.padded_slots for j in group.jobs) == 0


def test_jobs_aim_at_the_target_wall_time_with_the_load_amortised():
    rows = [row(line, num_videos=4) for line in range(2, 402)]  # 1,600 samples of ~113 s on 8 GPUs
    packed = _plan(rows, 8, "off", target_seconds=1800.0, fit_to_fleet=False, tail_split=False)
    family = CATALOG.family("wan2.1-t2v-1.3b")
    per_sample = DEFAULT_COST_MODEL.sample_seconds(packed.jobs[0].bucket, family, ParallelPlan())
    load = DEFAULT_COST_MODEL.load_seconds(family)
    for job in packed.jobs:
        assert abs(job.estimated_seconds - 1800.0) <= per_sample  # within one sample of the target
        assert job.estimated_seconds == pytest.approx(load + len(job.samples) * per_sample, abs=1e-2)
    s3 = _plan(rows, 8, "off", target_seconds=1800.0, storage="s3", fit_to_fleet=False, tail_split=False)
    assert max(len(j.samples) for j in s3.jobs) < max(len(j.samples) for j in packed.jobs)  # slower load
    # Fitted to the fleet (6.3 h of work per GPU is under 20 targets), the run ends no later.
    fitted = _plan(rows, 8, "off", target_seconds=1800.0)
    assert makespan_seconds(fitted, 1, 8) <= makespan_seconds(packed, 1, 8)
    # Jobs of this length pay back a compile (--compile auto): they are cut as compiled jobs, the compile paid with
    # the load and every sample faster, so more samples fit the same target.
    compiled = _plan(rows, 8, target_seconds=1800.0, fit_to_fleet=False, tail_split=False)
    fast, compile_s = per_sample * DEFAULT_COST_MODEL.compile_time_factor, DEFAULT_COST_MODEL.compile_seconds
    for job in compiled.jobs:
        assert job.compile and abs(job.estimated_seconds - 1800.0) <= fast
        assert job.estimated_seconds == pytest.approx(load + compile_s + len(job.samples) * fast, abs=1e-2)
    assert min(len(j.samples) for j in compiled.jobs) > max(len(j.samples) for j in packed.jobs)
    assert makespan_seconds(compiled, 1, 8) < makespan_seconds(packed, 1, 8)


def test_a_small_manifest_is_spread_over_a_big_fleet():
    rows = [row(line) for line in range(2, 34)]  # 32 samples of ~100 s
    one_node = _plan(rows, 8, nodes=1)
    fleet = _plan(rows, 8, nodes=4)
    assert len(fleet.jobs) >= 32 > len(one_node.jobs) >= 8  # a job per GPU at least, never one long queue


def test_fill_without_rows_says_what_it_needs():
    rows = [row(2, num_videos=3, plan=ParallelPlan(dp=2))]
    result = plan_run(rows, [], 1, CATALOG, 2, device="cuda")
    with pytest.raises(ValueError, match="manifest rows"):
        pack_plan(result, PackingOptions(padding="fill"), gpus_per_node=2)
    with pytest.raises(ValueError, match="pad or fill"):
        PackingOptions(padding="drop")


# --- GPU groups and the schedule ------------------------------------------------------------------------------


def test_eight_gpus_split_into_four_groups_of_two():
    assert partition_node([2, 2, 2, 2], 8) == [(0, 1), (2, 3), (4, 5), (6, 7)]
    groups = partition_node([1, 4, 2, 1], 8)
    assert groups[1] == (0, 1, 2, 3) and sorted(g for group in groups for g in group) == list(range(8))
    with pytest.raises(ValueError, match="do not fit"):
        partition_node([4, 4, 1], 8)


def test_the_allocator_keeps_aligned_blocks_for_wide_jobs():
    allocator = GpuAllocator(1, 8)
    assert allocator.allocate(1) == (0, (0,))
    assert allocator.allocate(1) == (0, (1,))  # fills the pair already broken, not a fresh one
    assert allocator.allocate(2) == (0, (2, 3))
    assert allocator.allocate(4) == (0, (4, 5, 6, 7))
    assert allocator.allocate(1) is None
    allocator.release(0, (2, 3))
    assert allocator.allocate(2) == (0, (2, 3))
    with pytest.raises(ValueError, match="already free"):
        allocator.release(0, (5,)) or allocator.release(0, (5,))


def test_the_schedule_runs_longest_first_and_fills_holes_with_short_jobs():
    jobs = [FleetJob("short", 1, 10.0), FleetJob("long", 1, 100.0), FleetJob("mid", 1, 50.0)]
    order = [p.job_id for p in sorted(schedule_jobs(jobs, 1, 1).placements, key=lambda p: p.start)]
    assert order == ["long", "mid", "short"]
    # An 8-GPU job waits for the node; single-GPU jobs fill the idle GPUs meanwhile.
    schedule = schedule_jobs(
        [FleetJob("a", 1, 100.0), FleetJob("wide", 8, 60.0)] + [FleetJob(f"s{i}", 1, 10.0) for i in range(20)], 1, 8
    )
    schedule.check()
    start = {p.job_id: p.start for p in schedule.placements}
    assert start["a"] == 0 and start["wide"] == 100.0
    assert all(start[f"s{i}"] < 100.0 for i in range(20)) and schedule.makespan == 160.0
    assert {p.cuda_visible_devices for p in schedule.placements if p.job_id == "wide"} == {"0,1,2,3,4,5,6,7"}


@settings(max_examples=scaled(150), deadline=None)
@given(
    jobs=st.lists(st.tuples(st.sampled_from([1, 1, 2, 2, 3, 4, 8]), st.floats(1.0, 1000.0)), max_size=60),
    nodes=st.integers(1, 4),
    gpus_per_node=st.sampled_from([4, 8]),
)
def test_gpu_groups_are_disjoint_on_every_node_at_every_moment(jobs, nodes, gpus_per_node):
    fleet = [FleetJob(f"j{i}", min(width, gpus_per_node), seconds) for i, (width, seconds) in enumerate(jobs)]
    schedule = schedule_jobs(fleet, nodes, gpus_per_node)
    assert sorted(p.job_id for p in schedule.placements) == sorted(j.job_id for j in fleet)
    width = {j.job_id: j.gpus for j in fleet}
    events = sorted({p.start for p in schedule.placements})
    for moment in events:  # every start is a moment where the set of running jobs changes
        running = [p for p in schedule.placements if p.start <= moment < p.end]
        for node in range(nodes):
            used = [g for p in running if p.node == node for g in p.gpus]
            assert len(used) == len(set(used)) and all(0 <= g < gpus_per_node for g in used)
    assert all(len(p.gpus) == width[p.job_id] and p.end - p.start > 0 for p in schedule.placements)
    total = sum(seconds * w for w, seconds in ((j.gpus, j.seconds) for j in fleet))
    assert schedule.makespan >= total / (nodes * gpus_per_node) - 1e-6
    schedule.check()
