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

Job sizing is fleet-aware (``fit_to_fleet``): when the fleet's work per GPU is less than ``FLEET_SEARCH_JOBS``
target-length jobs, the target is the one of a few candidates (``target_seconds`` times 1, 3/4, 1/2, 1/3, and the
work per GPU divided by 1..16 where that is shorter) whose schedule on the fleet (``fleet.schedule``) ends first,
so a small manifest is spread over the fleet instead of queueing behind a few 30-minute jobs, and is not cut into
more model loads than it needs. Above that, the tail is a small fraction of the makespan and the target stands.
The last job of every bucket is split in halves (``tail_split``), which gives the end of the run short jobs to
fill idle GPUs with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from reelbatch.identity import output_key, sample_id, sample_seed
from reelbatch.planning.cost import CostModel
from reelbatch.planning.fleet.schedule import FleetJob, schedule_jobs
from reelbatch.planning.jobs import BucketPlan, PlannedJob, RunPlan
from reelbatch.planning.packing_options import PackingOptions
from reelbatch.rows import SampleRefs, concat_samples
from reelbatch.schemas import BucketKey, ManifestRow, ParallelPlan, Sample

FLEET_SEARCH_JOBS = 100  # work per GPU below this many target-length jobs: search the target on the fleet
SHORTER_TARGETS = (1.0, 0.75, 0.5, 0.33)  # fractions of target_seconds tried by the search
# Jobs per GPU at the target length from which the fleet is full anyway (max_samples_per_job cuts many small jobs):
# shorter jobs would only add model loads, and scoring each candidate would schedule thousands of jobs forty times.
FLEET_FULL_JOBS_PER_GPU = 4


# --- Cutting one bucket -----------------------------------------------------------------------------------------------


def cut_jobs(samples: Sequence[Sample], dp: int, max_samples_per_job: int) -> list[tuple[Sequence[Sample], int]]:
    """Cut a bucket into chunks that are multiples of dp; only the last chunk may need padding."""
    return [(part, padded) for part, _, padded in _cuts(samples, dp, max_samples_per_job)]


def _cuts(samples: Sequence[Sample], dp: int, max_samples_per_job: int) -> list[tuple[Sequence[Sample], int, int]]:
    """``cut_jobs`` with each part's size: (part, samples, padded slots)."""
    chunk = max(dp, (max_samples_per_job // dp) * dp)
    count = len(samples)
    sizes = [(start, min(chunk, count - start)) for start in range(0, count, chunk)]
    if isinstance(samples, SampleRefs):  # thousands of parts of a big manifest: no per-part checks
        table, rows, videos = samples.table, samples.rows, samples.videos
        return [(SampleRefs(table, rows, videos, start, start + size), size, -size % dp) for start, size in sizes]
    return [(samples[start : start + size], size, -size % dp) for start, size in sizes]


@dataclass(frozen=True)
class Cut:
    """One job of a bucket: ``samples`` real samples and ``padded`` slots (samples + padded divide by dp)."""

    samples: int
    padded: int
    dp: int

    @property
    def slots(self) -> int:
        return self.samples + self.padded

    @property
    def rounds(self) -> int:
        return self.slots // self.dp


def samples_per_replica(sample_seconds: float, load_seconds: float, target_seconds: float) -> int:
    """Samples one replica runs so that load + samples * sample_seconds is nearest ``target_seconds`` (>= 1)."""
    if sample_seconds <= 0:
        return 1 << 30
    return max(1, round((target_seconds - load_seconds) / sample_seconds))


def cut_bucket(
    count: int, dp: int, per_replica: int, max_samples_per_job: int | None = None, tail: bool = False
) -> list[Cut]:
    """Cut ``count`` samples into jobs of whole replica rows of ``dp`` samples, balanced, padding only the last.

    A bucket needs ceil(count / dp) rows; each job takes about ``per_replica`` rows (fewer when
    ``max_samples_per_job`` caps it, never fewer than one); rows are spread evenly over the jobs, the short row
    (count % dp samples plus padding) goes to the last job. With ``tail`` the last job is split in halves
    (16 rows -> 8, 4, 2, 1, 1): a few more model loads per bucket buy short jobs that fill the fleet's last hour.
    """
    if count <= 0:
        return []
    if dp < 1 or per_replica < 1:
        raise ValueError("dp and per_replica must be at least 1")
    rows = -(-count // dp)
    per_job = per_replica
    if max_samples_per_job is not None:
        per_job = min(per_job, max(1, max_samples_per_job // dp))
    jobs = -(-rows // per_job)
    base, extra = divmod(rows, jobs)
    sizes = [base + (1 if index < extra else 0) for index in range(jobs)]
    if tail and sizes[-1] > 1:
        last = sizes.pop()
        while last:
            sizes.append((last + 1) // 2)
            last -= sizes[-1]
    cuts = []
    left = count
    for job_rows in sizes:
        take = min(left, job_rows * dp)
        cuts.append(Cut(take, job_rows * dp - take, dp))
        left -= take
    return cuts


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


# --- Job length for the fleet -----------------------------------------------------------------------------------------


def _group(plan: ParallelPlan) -> int:
    return plan.cfg * plan.ulysses * plan.ring


def _cut_all(
    shapes: Sequence[tuple], counts: Sequence[int], target: float, options: PackingOptions, tail: bool
) -> list[list[Cut]]:
    return [
        cut_bucket(count, plan.dp, samples_per_replica(seconds, load, target), options.max_samples_per_job, tail=tail)
        for (_, plan, seconds, load), count in zip(shapes, counts, strict=True)
    ]


def _makespan(shapes: Sequence[tuple], cuts: list[list[Cut]], nodes: int, gpus_per_node: int) -> float:
    jobs = [
        FleetJob("", plan.world_size, load + cut.rounds * seconds)
        for (_, plan, seconds, load), bucket_cuts in zip(shapes, cuts, strict=True)
        for cut in bucket_cuts
    ]
    return schedule_jobs(jobs, nodes, gpus_per_node).makespan


def fleet_target_seconds(
    shapes: Sequence[tuple], counts: Sequence[int], options: PackingOptions, gpus_per_node: int
) -> tuple[float, bool]:
    """The job length to aim for and whether to split the tail: ``target_seconds`` and ``tail_split``, or a
    shorter target (and the tail kept whole) when that ends the run sooner on the fleet.

    ``shapes`` are (bucket, job plan, seconds per sample, load seconds), ``counts`` the samples per bucket.
    """
    target = options.target_seconds
    fleet = options.nodes * gpus_per_node
    gpu_seconds = sum(
        count * seconds * _group(plan) for (_, plan, seconds, _), count in zip(shapes, counts, strict=True)
    )
    share = gpu_seconds / fleet
    if not options.fit_to_fleet or share >= FLEET_SEARCH_JOBS * target:
        return target, options.tail_split
    at_target = sum(len(cuts) for cuts in _cut_all(shapes, counts, target, options, options.tail_split))
    if at_target >= FLEET_FULL_JOBS_PER_GPU * fleet:
        return target, options.tail_split
    shorter = (share / n for n in range(1, 17) if share / n < target)
    candidates = sorted({*(target * f for f in SHORTER_TARGETS), *shorter}, reverse=True)
    tails = (True, False) if options.tail_split else (False,)
    scored = [
        (_makespan(shapes, _cut_all(shapes, counts, t, options, tail), options.nodes, gpus_per_node), -t, not tail)
        for t in candidates
        for tail in tails
    ]
    _, best, whole = min(scored)
    return -best, not whole


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
) -> list[PlannedJob]:
    """Every bucket cut into jobs: by ``cut_jobs`` in bucket order, or packed by ``packing`` (see ``pack_buckets``)."""
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
    return jobs


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
    shapes = []  # (bucket, plan of its jobs, seconds per sample, load seconds)
    for work in buckets:
        plan = work.plan
        if options.width == "group" and work.bucket.plan is None:
            plan = ParallelPlan(dp=1, cfg=plan.cfg, ulysses=plan.ulysses, ring=plan.ring)
        seconds = cost.sample_seconds(work.bucket, work.family, plan)
        load = cost.load_seconds(work.family, options.storage)
        shapes.append((work.bucket, plan, seconds, load))
    counts = [len(work.samples) for work in buckets]
    target, tail = fleet_target_seconds(shapes, counts, options, node_gpus)
    all_cuts = _cut_all(shapes, counts, target, options, tail)

    fills = options.padding == "fill" and any(cut.padded for cuts in all_cuts for cut in cuts)
    row_of = {row.row: row for row in rows or ()} if fills else {}
    # Extra videos must not repeat a planned or finished one: only then are the planned samples' ids needed.
    taken = {s.sample_id for work in buckets for s in work.samples} if fills else set()
    taken.update(sample.sample_id for sample, _ in skipped)
    next_index: dict[int, int] = {}
    packed: list[PlannedJob] = []
    for (bucket, plan, seconds, load), work, cuts in zip(shapes, buckets, all_cuts, strict=True):
        gpu_seconds_per_sample = cost.sample_gpu_seconds(bucket, work.family, plan)
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
                    estimated_seconds=round(load + cut.rounds * seconds, 3),
                    filled_slots=filled,
                )
            )
    order = sorted(range(len(packed)), key=lambda i: (-packed[i].estimated_seconds, i))
    jobs = [packed[i] for i in order]
    for index, job in enumerate(jobs):
        job.index = index  # made above, so no id was computed yet (an id hashes the index): no copy needed
    return jobs


def pack_plan(
    run_plan: RunPlan,
    options: PackingOptions = PackingOptions(),
    *,
    gpus_per_node: int | None = None,
    rows: Sequence[ManifestRow] | None = None,
) -> RunPlan:
    """An existing plan's buckets re-cut by ``options`` (``pack_buckets``); ``plan_run(packing=...)`` cuts once.

    Job ids are reassigned in the new order (``job-0000`` is the longest).
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
            first.notes,
            first.refused,
            first.memory_gib_per_gpu,
            first.warnings,
            backend=first.backend,
        )
        for bucket, (first, samples) in parts.items()
    ]
    jobs = pack_buckets(buckets, options, gpus_per_node=gpus_per_node, rows=rows, skipped=run_plan.skipped)
    return replace(run_plan, jobs=jobs)
