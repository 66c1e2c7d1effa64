"""Cutting: every bucket's samples into jobs, in one pass, and how the run's jobs are sized for a fleet.

Without ``PackingOptions`` a bucket is cut by ``cut_jobs``: jobs of at most ``max_samples_per_job`` samples, the
plan's dp on every job. With them (packing, the flow's default):

* ``cut_bucket``: one bucket's samples -> job sizes. A job of ``dp`` replicas holds a multiple of dp samples; only
  the last job of a bucket may be short of one, and that is the bucket's only padding. The number of samples per
  replica is chosen so a job lasts about ``target_seconds`` of wall time, model load included (cost.py); the
  sizes within a bucket differ by at most one replica row, except the last job, which ``tail`` splits in halves.
* padded slots are kept (``pad``: computed and thrown away) or turned into extra videos of the bucket's own
  prompts (``fill``: new seeds, recorded as samples), and the jobs are ordered longest first.
  ``width="group"`` (default) gives each unpinned bucket jobs of dp=1: one sample's GPU group (1 GPU for a video
  that fits, 2 for CFG parallel, ...), so several jobs share a node (8 GPUs -> 4 jobs of 2) and no job pads;
  ``width="node"`` keeps the plan's dp (one job spans the node, as ``cut_jobs`` does). A pinned plan keeps its dp.

Jobs are sized for the fleet they run on (``planning.fleet.fit``): while the fleet is not full (a small manifest),
``group``-width jobs of unpinned buckets may take a wider plan (CFG pair, Ulysses, ring: the bucket's
``group_plans``) and a shorter job length, whichever ends the run first on the fleet; a big manifest keeps the
chooser's widths and the target length. The last job of every bucket is split in halves (``tail_split``), which
gives the end of the run short jobs to fill idle GPUs with.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from reelbatch.defaults import COMPILE, CompileMode
from reelbatch.identity import output_key, sample_id, sample_seed
from reelbatch.planning.cost import CostModel
from reelbatch.planning.cuts import Cut, _cuts, cut_bucket, cut_jobs, samples_per_replica
from reelbatch.planning.fleet.fit import Shape, fit_fleet, fleet_target_seconds, group
from reelbatch.planning.jobs import BucketPlan, PlannedJob, RunPlan
from reelbatch.planning.packing_options import PackingOptions
from reelbatch.planning.speedups import price_jobs
from reelbatch.rows import SampleRefs, concat_samples
from reelbatch.schemas import BucketKey, ManifestRow, ParallelPlan, Sample

__all__ = [  # the cutting arithmetic lives in planning.cuts, the fleet fit in planning.fleet.fit
    "Cut",
    "cut_bucket",
    "cut_buckets",
    "cut_jobs",
    "extra_samples",
    "fleet_target_seconds",
    "pack_buckets",
    "pack_plan",
    "samples_per_replica",
]


# --- Fill: padded slots become extra videos of the bucket's prompts ---------------------------------------------------


def extra_samples(rows: Sequence[ManifestRow], count: int, taken: set[str], next_index: dict[int, int]) -> list[Sample]:
    """``count`` new samples cycling over ``rows``: video indices past each row's ``num_videos``.

    Each extra sample is exactly the video the row would get with a larger ``num_videos`` (same seed rule, same
    identity hash), so a later run that asks for it reuses the file. Ids already in ``taken`` are skipped.
    """
    if count and not rows:
        raise ValueError("padding=fill needs the manifest rows of the bucket")
    made: list[Sample] = []
    position = 0
    while len(made) < count:
        row = rows[position % len(rows)]
        position += 1
        index = next_index.get(row.row, row.num_videos)
        next_index[row.row] = index + 1
        seed = sample_seed(row, index)
        identity = sample_id(row, index, seed)
        if identity in taken:
            continue
        taken.add(identity)
        made.append(
            Sample(
                sample_id=identity,
                row=row.row,
                row_id=row.id,
                video_index=index,
                prompt=row.prompt,
                negative_prompt=row.negative_prompt,
                seed=seed,
                output_key=output_key(identity),
            )
        )
    return made


# --- The one cutting pass ---------------------------------------------------------------------------------------------


def cut_buckets(
    buckets: Sequence[BucketPlan],
    *,
    max_samples_per_job: int,
    cost: CostModel,
    packing: PackingOptions | None = None,
    gpus_per_node: int | None = None,
    rows: Sequence[ManifestRow] | None = None,
    skipped: Sequence[tuple[Sample, BucketKey]] = (),
    compile: CompileMode = COMPILE,
) -> list[PlannedJob]:
    """Every bucket cut into jobs: by ``cut_jobs`` in bucket order, or packed by ``packing`` (see ``pack_buckets``,
    which compiles by ``packing.compile``); either way priced (``speedups.price_jobs``: ``compile`` decides)."""
    if packing is not None:
        return pack_buckets(buckets, packing, gpus_per_node=gpus_per_node, rows=rows, skipped=skipped)
    jobs: list[PlannedJob] = []
    for work in buckets:
        estimates: dict[int, tuple[float, float]] = {}  # a bucket's full jobs all have the same number of slots
        for part, size, padded in _cuts(work.samples, work.plan.dp, max_samples_per_job):
            slots = size + padded
            estimate = estimates.get(slots)
            if estimate is None:
                estimate = estimates[slots] = (
                    round(work.gpu_seconds_per_sample * slots, 6),
                    round(cost.job_seconds(work.bucket, work.family, work.plan, slots), 3),
                )
            jobs.append(
                work.job(
                    len(jobs), work.plan, part, padded, estimated_gpu_seconds=estimate[0], estimated_seconds=estimate[1]
                )
            )
    price_jobs(jobs, cost, compile)
    return jobs


def priced_shape(work: BucketPlan, plan: ParallelPlan, cost: CostModel, options: PackingOptions, load: float) -> Shape:
    """A bucket's jobs under ``plan`` as the fit prices them: compiled (``--compile on``), compiled where that pays
    back (``auto``: ``Shape.duration``), or not (``off``). ``planning.speedups.choose_compile`` decides the same per
    job once they are cut."""
    seconds = cost.sample_seconds(work.bucket, work.family, plan)
    if options.compile == "on":
        return Shape(work.bucket, plan, seconds * cost.compile_time_factor, load + cost.compile_seconds)
    if options.compile == "auto":
        return Shape(work.bucket, plan, seconds, load, compiler=cost)
    return Shape(work.bucket, plan, seconds, load)


def pack_buckets(
    buckets: Sequence[BucketPlan],
    options: PackingOptions,
    *,
    gpus_per_node: int | None = None,
    rows: Sequence[ManifestRow] | None = None,
    skipped: Sequence[tuple[Sample, BucketKey]] = (),
) -> list[PlannedJob]:
    """Every bucket cut by ``options``, the jobs ordered longest first and numbered in that order.

    ``gpus_per_node`` is what the buckets were planned for (default: options.gpus_per_node, else the widest plan).
    ``rows`` (the accepted manifest rows) are needed for ``padding="fill"``; extra videos never repeat a planned
    sample or a ``skipped`` one. Every job gets ``estimated_seconds`` (wall time, load included),
    ``estimated_gpu_seconds`` (compute of its slots) and, with fill, ``filled_slots``.
    """
    cost = options.cost
    node_gpus = options.gpus_per_node or gpus_per_node or max((work.plan.world_size for work in buckets), default=1)
    choices: list[list[Shape]] = []  # per bucket: the chooser's width first, then the wider ones it may take
    memories: list[list[float]] = []
    for work in buckets:
        plan = work.plan
        load = cost.load_seconds(work.family, options.storage)
        if options.width == "group" and work.bucket.plan is None:
            plan = ParallelPlan(dp=1, cfg=plan.cfg, ulysses=plan.ulysses, ring=plan.ring)
            wider = [(p, m) for p, m in work.group_plans if group(p) > group(plan)]
        else:
            wider = []
        options_of = [(plan, work.memory_gib_per_gpu), *wider]
        choices.append([priced_shape(work, p, cost, options, load) for p, _ in options_of])
        memories.append([m for _, m in options_of])
    counts = [len(work.samples) for work in buckets]
    picks, all_cuts = fit_fleet(choices, counts, options, node_gpus, lambda index: prompt_sizes(buckets[index].samples))
    shapes = [bucket_choices[pick] for bucket_choices, pick in zip(choices, picks, strict=True)]

    fills = options.padding == "fill" and any(cut.padded for cuts in all_cuts for cut in cuts)
    row_of = {row.row: row for row in rows or ()} if fills else {}
    # Extra videos must not repeat a planned or finished one: only then are the planned samples' ids needed.
    taken = {s.sample_id for work in buckets for s in work.samples} if fills else set()
    taken.update(sample.sample_id for sample, _ in skipped)
    next_index: dict[int, int] = {}
    packed: list[PlannedJob] = []
    for index, (shape, work, cuts) in enumerate(zip(shapes, buckets, all_cuts, strict=True)):
        bucket, plan = shape.bucket, shape.plan
        assert bucket is not None
        gpu_seconds_per_sample = cost.sample_gpu_seconds(bucket, work.family, plan)  # uncompiled: choose_compile
        widened = _widened_note(choices[index][0].plan, plan, sum(counts), options.nodes * node_gpus)
        memory = memories[index][picks[index]]
        start = 0
        for cut in cuts:
            part = work.samples[start : start + cut.samples]
            start += cut.samples
            padded, filled = cut.padded, 0
            if padded and options.padding == "fill":
                sources = list(dict.fromkeys(s.row for s in part))
                missing = [r for r in sources if r not in row_of]
                if missing:
                    raise ValueError(f"padding=fill needs the manifest rows (rows {missing[:3]} not given)")
                part = [*part, *extra_samples([row_of[r] for r in sources], padded, taken, next_index)]
                padded, filled = 0, cut.padded
            packed.append(
                work.job(
                    len(packed),
                    plan,
                    part,
                    padded,
                    estimated_gpu_seconds=round(gpu_seconds_per_sample * cut.slots, 6),
                    estimated_seconds=round(shape.duration(cut.rounds), 3),
                    compile=options.compile == "on" or shape.compiles(cut.rounds),
                    filled_slots=filled,
                    memory_gib_per_gpu=round(memory, 2),
                    extra_note=widened,
                )
            )
    order = sorted(range(len(packed)), key=lambda i: (-packed[i].estimated_seconds, i))
    jobs = [packed[i] for i in order]
    for index, job in enumerate(jobs):
        job.index = index  # made above, so no id was computed yet (an id hashes the index): no copy needed
    price_jobs(jobs, cost, options.compile)
    return jobs


def prompt_sizes(samples: Sequence[Sample]) -> list[int]:
    """How many consecutive samples each row has (a bucket's samples come row by row)."""
    if isinstance(samples, SampleRefs):
        rows = samples.rows
        if not len(rows):
            return []
        starts = np.flatnonzero(np.diff(rows)) + 1
        return np.diff(np.concatenate(([0], starts, [len(rows)]))).tolist()
    return [len(list(group)) for _, group in itertools.groupby(sample.row for sample in samples)]


WIDENED = "widened for the fleet:"


def _widened_note(chosen: ParallelPlan, plan: ParallelPlan, samples: int, fleet: int) -> str | None:
    if plan == chosen:
        return None
    return (
        f"{WIDENED} {plan.short()} on {group(plan)} GPUs instead of {chosen.short()} on {group(chosen)}: "
        f"{samples:,} sample{'s' if samples != 1 else ''} on {fleet} GPUs end sooner on wider jobs than with GPUs idle"
    )


def pack_plan(
    run_plan: RunPlan,
    options: PackingOptions = PackingOptions(),
    *,
    gpus_per_node: int | None = None,
    rows: Sequence[ManifestRow] | None = None,
) -> RunPlan:
    """An existing plan's buckets re-cut by ``options`` (``pack_buckets``); ``plan_run(packing=...)`` cuts once.

    Job ids are reassigned in the new order (``job-0000`` is the longest); which jobs compile is decided again
    (``options.compile``) and a job's width note is the new cut's.
    """
    parts: dict[BucketKey, tuple[PlannedJob, list[Sequence[Sample]]]] = {}
    for job in run_plan.jobs:
        parts.setdefault(job.bucket, (job, []))[1].append(job.samples)
    buckets = [
        BucketPlan(
            bucket,
            first.family,
            first.plan,
            concat_samples(samples),
            first.tokens,
            [note for note in first.notes if not note.startswith(WIDENED)],
            first.refused,
            first.memory_gib_per_gpu,
            first.warnings,
            backend=first.backend,
        )
        for bucket, (first, samples) in parts.items()
    ]
    jobs = pack_buckets(buckets, options, gpus_per_node=gpus_per_node, rows=rows, skipped=run_plan.skipped)
    return replace(run_plan, jobs=jobs)
