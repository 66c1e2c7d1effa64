"""Plans for the fleet they run on (`plan --gpu`), job widths that fill it, pinned plans narrower than a node.

Fast: registry families, no weights, no GPU (this machine's GPUs are hidden where it matters). The torchrun run of a
pinned narrower plan is marked.
"""

from __future__ import annotations

import csv
import json
import random
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from reelbatch.manifest import read_manifest
from reelbatch.models.catalog import ModelCatalog
from reelbatch.models.registry import FAMILIES
from reelbatch.planning.cost import DEFAULT_COST_MODEL
from reelbatch.planning.fleet.fit import group, group_plans
from reelbatch.planning.fleet.schedule import schedule_jobs
from reelbatch.planning.fleet.simulation import simulate
from reelbatch.planning.packing_options import PackingOptions
from reelbatch.planning.planner import plan_run
from reelbatch.schemas import BucketKey, ManifestRow, ParallelPlan, RunDefaults
from tests.cli_runner import reelbatch

CATALOG = ModelCatalog.from_config()
COLUMNS = ["prompt", "model", "height", "width", "num_frames", "num_inference_steps", "guidance_scale", "plan"]
# (weight, model, height, width, frames, steps, guidance, sequence_batch): a mixed dataset, as bench/fleet.py's
SHAPES = [
    (25, "wan2.1-t2v-14b", 480, 832, 81, 50, 5.0, False),
    (8, "wan2.1-t2v-14b", 720, 1280, 81, 50, 5.0, False),
    (4, "wan2.1-t2v-14b", 720, 1280, 81, 50, 5.0, True),
    (20, "wan2.1-t2v-1.3b", 480, 832, 81, 50, 5.0, False),
    (15, "hunyuanvideo", 544, 960, 97, 50, 1.0, False),
    (5, "hunyuanvideo", 720, 1280, 129, 50, 1.0, False),
    (10, "skyreels-v1-t2v", 544, 960, 97, 30, 6.0, False),
    (8, "wan2.2-ti2v-5b", 704, 1280, 121, 50, 5.0, False),
    (5, "wan2.2-t2v-a14b", 480, 832, 81, 40, 4.0, False),
]


def write_rows(path: Path, rows: list[list]) -> str:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    return str(path)


def mixed_manifest(path: Path, prompts: int, seed: int = 0) -> str:
    """``prompts`` rows over SHAPES, 1-4 videos each (some rows ask for several)."""
    rng = random.Random(seed)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["prompt", "model", "height", "width", "num_frames", "num_inference_steps", "guidance_scale"]
            + ["seed", "num_videos", "sequence_batch"]
        )
        for index in range(prompts):
            _, model, height, width, frames, steps, guidance, sequence_batch = rng.choices(
                SHAPES, [s[0] for s in SHAPES]
            )[0]
            videos = rng.choice([1, 1, 1, 1, 2, 3, 4])
            writer.writerow(
                [f"scene {index}", model, height, width, frames, steps, guidance, index, videos, sequence_batch or ""]
            )
    return str(path)


@pytest.fixture
def no_local_gpu(monkeypatch):
    """This machine plans as a CPU-only one, whatever runs the test."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


# --- Plans for the target fleet -----------------------------------------------------------------------------------


def test_plan_for_a_gpu_fleet_allows_ring_on_a_cpu_only_planner(tmp_path, no_local_gpu):
    # Wan2.1 1.3B has 12 heads: no ulysses 8, so splitting one video over 8 GPUs needs ring attention.
    pinned = write_rows(
        tmp_path / "pinned.csv", [["a cat", "wan2.1-t2v-1.3b", 480, 832, 81, 50, 1.0, "ulysses=4,ring=2"]]
    )
    local = reelbatch("plan", pinned, "--gpus", "8", "--json")
    assert local.returncode == 1
    assert [r["rule"] for r in json.loads(local.stdout)["rejected"]] == ["ring_needs_gpu"]
    fleet = reelbatch("plan", pinned, "--gpus", "8", "--gpu", "h100", "--json")
    assert fleet.returncode == 0, fleet.stdout + fleet.stderr
    doc = json.loads(fleet.stdout)
    [bucket] = doc["buckets"]
    assert bucket["plan"]["ring"] == 2 and doc["fleet"]["gpu"] == "h100" and doc["fleet"]["gpus_per_node"] == 8

    # Chosen, not pinned: the latency objective splits one video over all 8 GPUs, with ring, on the fleet only.
    free = write_rows(tmp_path / "free.csv", [["a cat", "wan2.1-t2v-1.3b", 480, 832, 81, 50, 1.0, ""]])
    args = ("plan", free, "--gpus", "8", "--objective", "latency", "--json")
    on_cpu = json.loads(reelbatch(*args).stdout)["buckets"][0]["plan"]
    on_h100 = json.loads(reelbatch(*args, "--nodes", "2").stdout)["buckets"][0]["plan"]
    assert on_cpu["ring"] == 1 and any(
        r["rule"] == "ring_needs_gpu" for r in json.loads(reelbatch(*args).stdout)["buckets"][0]["refused_plans"]
    )
    assert on_h100["ring"] > 1 and on_h100["ulysses"] * on_h100["ring"] == 8


def test_the_fleet_gpu_memory_decides_which_plans_fit(tmp_path, no_local_gpu):
    # HunyuanVideo 13B at 720p needs ~44 GiB per GPU even split over 8: an H100 (80 GiB) holds it, an RTX 4090 not.
    manifest = write_rows(tmp_path / "big.csv", [["a storm", "hunyuanvideo", 720, 1280, 129, 50, 1.0, ""]])
    h100 = reelbatch("plan", manifest, "--gpu", "h100", "--json")
    assert h100.returncode == 0 and json.loads(h100.stdout)["accepted"] == 1
    for args in (("--gpu", "rtx4090"), ("--gpu", "h100", "--gpu-memory-gib", "24")):
        small = reelbatch("plan", manifest, *args, "--json")
        assert small.returncode == 1, args
        [rejected] = json.loads(small.stdout)["rejected"]
        assert rejected["rule"] == "out_of_memory" and "24 GiB" in rejected["message"]
    assert json.loads(reelbatch("plan", manifest, "--gpu", "rtx4090", "--json").stdout)["fleet"]["gpu"] == "rtx4090"
    # Without a fleet, this machine's planning is unchanged: 80 GiB unless told.
    assert json.loads(reelbatch("plan", manifest, "--gpus", "8", "--json").stdout)["accepted"] == 1
    bad = reelbatch("plan", manifest, "--gpu", "tpu-v5")
    assert bad.returncode == 2 and "unknown GPU type" in bad.stderr


def test_group_plans_follow_the_device_rules_and_memory():
    wan14 = BucketKey(
        model="wan2.1-t2v-14b", height=720, width=1280, num_frames=81, num_inference_steps=50, guidance_scale=5.0
    )
    found = group_plans(
        wan14,
        FAMILIES["wan2.1-t2v-14b"],
        8,
        backend="native",
        device="cuda",
        gpu_memory_gib=80,
        cost=DEFAULT_COST_MODEL,
    )
    # One GPU does not hold both CFG passes at 720p; per width, the most efficient plan (CFG pair before Ulysses).
    assert [plan for plan, _ in found] == [
        ParallelPlan(cfg=2),
        ParallelPlan(cfg=2, ulysses=2),
        ParallelPlan(cfg=2, ulysses=4),
    ]
    assert all(memory <= 80 for _, memory in found)
    small = BucketKey(
        model="wan2.1-t2v-1.3b", height=480, width=832, num_frames=81, num_inference_steps=50, guidance_scale=1.0
    )
    family = FAMILIES["wan2.1-t2v-1.3b"]
    cpu = group_plans(small, family, 8, backend="native", device="cpu", gpu_memory_gib=80, cost=DEFAULT_COST_MODEL)
    cuda = group_plans(small, family, 8, backend="native", device="cuda", gpu_memory_gib=80, cost=DEFAULT_COST_MODEL)
    assert [group(p) for p, _ in cpu] == [1, 2, 4] and all(p.ring == 1 for p, _ in cpu)
    assert [group(p) for p, _ in cuda] == [1, 2, 4, 8] and cuda[-1][0] == ParallelPlan(ulysses=4, ring=2)


# --- Widths that fill the fleet -----------------------------------------------------------------------------------


@pytest.mark.parametrize("prompts", [1, 3, 50, 12_000])
def test_packed_is_never_slower_than_the_naive_policy(tmp_path, prompts):
    read = read_manifest(mixed_manifest(tmp_path / "m.csv", prompts), RunDefaults(), CATALOG.names())
    report = simulate(read, nodes=4, gpus_per_node=8, gpu="h100", catalog=CATALOG)
    report.schedule.check()
    packed, naive = report.packed, report.naive
    assert packed.samples == naive.samples > 0
    assert packed.makespan_s <= naive.makespan_s
    widened = [job for job in report.run_plan.jobs if any("widened for the fleet" in n for n in job.notes)]
    if prompts <= 3:
        # A few prompts on 32 GPUs: their jobs take wider plans than the chooser's one-GPU or CFG-pair groups.
        assert widened and all(group(job.plan) > 2 for job in widened)
    if prompts >= 10_000:
        # More work than GPUs: the chooser's widths stand, and the makespan is near the bound. Uncompiled (the bound
        # has no compile to pay once per job); compiling where it pays back then only ends the run sooner.
        uncompiled = simulate(read, nodes=4, gpus_per_node=8, gpu="h100", catalog=CATALOG, compile="off")
        assert not widened and uncompiled.packed.ratio <= 1.05
        assert packed.makespan_s < uncompiled.packed.makespan_s


@pytest.mark.parametrize(
    ("model", "prompts", "nodes", "gpus"),
    [("wan2.1-t2v-1.3b", 2, 2, 4), ("wan2.2-t2v-a14b", 2, 2, 4), ("wan2.2-t2v-a14b", 4, 4, 8)],
)
def test_prompts_of_several_videos_are_not_cut_slower_than_naive(model, prompts, nodes, gpus):
    # Three videos a prompt, a node a prompt: jobs of the three videos after one load, as naive's, but on a CFG pair
    # x Ulysses group (more efficient than naive's Ulysses alone): cutting them 2 + 1 would cost a load and a round.
    rows = [
        ManifestRow(row=i + 2, prompt=f"p{i}", model=model, height=480, width=832, num_frames=81,
                    num_inference_steps=40, guidance_scale=5.0, seed=i, num_videos=3)
        for i in range(prompts)
    ]  # fmt: skip
    report = simulate(rows, nodes=nodes, gpus_per_node=gpus, gpu="h100", catalog=CATALOG)
    assert report.packed.makespan_s < report.naive.makespan_s


def test_a_single_prompt_spreads_its_videos_over_the_fleet():
    row = ManifestRow(
        row=2,
        prompt="p",
        model="wan2.1-t2v-14b",
        height=720,
        width=1280,
        num_frames=81,
        num_inference_steps=50,
        guidance_scale=5.0,
        num_videos=4,
    )
    report = simulate([row], nodes=4, gpus_per_node=8, gpu="h100", catalog=CATALOG)
    # Four videos, four nodes: one job of a whole node each (CFG pair x Ulysses 4), all at once.
    assert [job.plan for job in report.run_plan.jobs] == [ParallelPlan(cfg=2, ulysses=4)] * 4
    assert {p.node for p in report.schedule.placements} == {0, 1, 2, 3}
    assert report.packed.makespan_s < report.naive.makespan_s / 3  # naive: one job, the videos one after another


def test_tiny_models_keep_their_narrow_jobs():
    # Their compute is nothing next to the model load: a wider plan buys no wall time, so none is taken.
    rows = [
        ManifestRow(
            row=i + 2,
            prompt=f"p{i}",
            model="tiny-wan",
            height=32,
            width=32,
            num_frames=5,
            num_inference_steps=4,
            guidance_scale=5.0,
        )
        for i in range(3)
    ]
    options = PackingOptions(gpus_per_node=4)
    plan = plan_run(rows, [], 3, CATALOG, 4, device="cpu", packing=options)
    assert {job.plan for job in plan.jobs} == {ParallelPlan()}


# --- A pinned plan narrower than the node is a job width ----------------------------------------------------------


def pinned_rows(count: int, plan: ParallelPlan, model: str = "tiny-wan") -> list[ManifestRow]:
    return [
        ManifestRow(
            row=i + 2,
            prompt=f"p{i}",
            model=model,
            height=32,
            width=32,
            num_frames=5,
            num_inference_steps=4,
            guidance_scale=5.0,
            plan=plan,
        )
        for i in range(count)
    ]


def test_a_pinned_plan_narrower_than_the_node_is_a_job_width():
    ulysses2 = ParallelPlan(ulysses=2)
    options = PackingOptions(gpus_per_node=8, max_samples_per_job=1)
    plan = plan_run(pinned_rows(4, ulysses2), [], 4, CATALOG, 8, device="cpu", packing=options)
    assert plan.rejected == [] and len(plan.jobs) == 4
    assert all(job.plan == ulysses2 and job.plan.world_size == 2 for job in plan.jobs)
    assert any("side by side" in note for note in plan.jobs[0].notes)
    # On one node of 8 the four 2-rank jobs start together, on disjoint GPU pairs.
    from reelbatch.planning.fleet.schedule import FleetJob

    schedule = schedule_jobs([FleetJob(j.job_id, j.plan.world_size, j.estimated_seconds) for j in plan.jobs], 1, 8)
    schedule.check()
    assert {p.start for p in schedule.placements} == {0.0}
    assert sorted(p.gpus for p in schedule.placements) == [(0, 1), (2, 3), (4, 5), (6, 7)]
    # Wider than the node is still refused, with the product rule and a fix.
    wide = plan_run(pinned_rows(1, ParallelPlan(ulysses=4)), [], 1, CATALOG, 2, device="cpu")
    assert "plan_product" in {r.rule for r in wide.rejected} and not wide.jobs


def test_plan_command_accepts_a_narrower_pinned_plan(tmp_path, no_local_gpu):
    manifest = write_rows(
        tmp_path / "pinned.csv", [[f"p{i}", "tiny-wan", 32, 32, 5, 4, 5.0, "ulysses=2"] for i in range(3)]
    )
    done = reelbatch("plan", manifest, "--gpus", "8", "--json", "--jobs")
    assert done.returncode == 0, done.stdout + done.stderr
    jobs = json.loads(done.stdout)["jobs"]
    assert jobs and all(job["plan"]["world_size"] == 2 for job in jobs)


@pytest.mark.slow
@pytest.mark.torchrun
@pytest.mark.usefixtures("prefect_api")
def test_a_run_places_narrower_pinned_jobs_side_by_side(tmp_path):
    """Two buckets pinned to ulysses=2 on 4 CPU rank slots: two 2-rank jobs at once, each its own pair."""
    import subprocess
    import sys

    rows = [[f"a boat, {steps} steps", "tiny-wan", 32, 32, 5, steps, 5.0, "ulysses=2"] for steps in (2, 3)]
    manifest = write_rows(tmp_path / "prompts.csv", rows)
    db_file = tmp_path / "state.db"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "reelbatch.cli",
            "run",
            manifest,
            "--gpus",
            "4",
            "--out",
            "videos",
            "--db",
            f"sqlite:///{db_file}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    db = sqlite3.connect(db_file)
    db.row_factory = sqlite3.Row
    attempts = db.execute("select * from job_attempts").fetchall()
    assert len(attempts) == 2 and all(a["world_size"] == 2 for a in attempts)
    assert len({a["devices"] for a in attempts}) == 2  # disjoint pairs of rank slots
    spans = []
    for a in attempts:
        begin = datetime.fromisoformat(a["started_at"])
        spans.append((begin, begin + timedelta(seconds=a["seconds"])))
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1]  # they ran at the same time
    jobs = db.execute("select dp, cfg, ulysses, ring, world_size from jobs").fetchall()
    assert [tuple(job) for job in jobs] == [(1, 1, 2, 1, 2)] * 2
    assert db.execute("select count(*) from samples where status = 'done'").fetchone()[0] == 2
