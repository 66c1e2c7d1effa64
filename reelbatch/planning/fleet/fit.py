"""Jobs sized for the fleet they run on: how wide each bucket's jobs are, and how long.

The chooser (``planning.chooser``) gives each bucket the plan with the fewest GPU-seconds per sample: one GPU when a
video fits, a CFG pair when it must, and so on. That is the right width while there is more work than GPUs. When
there is not (a few prompts on 32 GPUs), narrow jobs leave most of the fleet idle while a few GPUs run the whole
manifest, and a single-prompt script (one prompt, ``ulysses = G`` on a whole node) ends sooner. So, for packed
``group``-width jobs of unpinned buckets:

* ``group_plans``: every job width a bucket may take on this fleet: for each group size that divides the node's
  GPUs, the most efficient dp=1 plan that passes every rule of the family on the target device and fits the
  target GPU's memory (CFG pair, Ulysses, ring: ``planning.rules``). The chooser's plan is the narrowest.
* ``fit_fleet``: the width per bucket and the job length that end the run first on the fleet, by the fleet
  schedule itself (``fleet.schedule``, the same event simulation ``reelbatch simulate`` plays). Widths are searched
  only while the fleet is not full (below) and the chooser's widths leave more than ``IDLE_TO_WIDEN`` of its GPU
  time idle (a large manifest balances within a fraction of a percent). The search tries
  one width cap for every bucket at a time (2, 4, 8 GPUs...), then moves one bucket at a time to another width
  while that ends the run sooner: at most ``MAX_WIDTH_TRIALS`` assignments, each scored by a coarse job-length
  search; the best one is then cut with the full search and kept only when it ends the run more than
  ``WIDTH_GAIN`` sooner than the chooser's widths do. A wider plan costs GPU-seconds (its parallel efficiency), so
  it must buy wall time; on a large manifest none does. Whenever the job length was searched, one more layout is
  scored: one job per prompt (its videos after one load) at each bucket's widest plan, what single-prompt scripts
  do on a whole node but with the most efficient plan of that width. The chooser's widths are kept only when they
  end no later than it (within ``TIE_S``), so a plan never ends later than the naive policy the simulator
  compares it with (``reelbatch simulate``; bench/fleet_sizes.py).

Job length (``fleet_target_seconds``): when the fleet's work per GPU is less than ``FLEET_SEARCH_JOBS``
target-length jobs, the target is the one of a few candidates (``target_seconds`` times 1, 3/4, 1/2, 1/3, and the
work per GPU divided by 1..16, with and without one model load on top, where that is shorter) whose schedule on
the fleet ends first, so a small manifest is spread over the fleet instead of queueing behind a few 30-minute jobs,
and is not cut into more model loads than it needs. Above that, or when the target already cuts
``FLEET_FULL_JOBS_PER_GPU`` jobs per GPU and ``FEW_JOBS`` in all, the fleet is full: the tail is a small fraction
of the makespan, the target stands and every bucket keeps the chooser's width.

Pure Python; nothing here reads a sample, only counts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from reelbatch.models.registry import ModelFamily
from reelbatch.planning.chooser import memory_gib_per_gpu
from reelbatch.planning.cost import CostModel
from reelbatch.planning.cuts import Cut, cut_bucket, samples_per_replica
from reelbatch.planning.fleet.schedule import FleetJob, schedule_jobs
from reelbatch.planning.packing_options import PackingOptions
from reelbatch.planning.rules import candidate_plans, plan_violations, preference_key
from reelbatch.schemas import Backend, BucketKey, ParallelPlan

FLEET_SEARCH_JOBS = 100  # work per GPU below this many target-length jobs: search the target on the fleet
SHORTER_TARGETS = (1.0, 0.75, 0.5, 0.33)  # fractions of target_seconds tried by the search
# Jobs per GPU at the target length from which the fleet is full anyway (max_samples_per_job cuts many small jobs):
# shorter jobs would only add model loads, and scoring each candidate would schedule thousands of jobs forty times.
FLEET_FULL_JOBS_PER_GPU = 4
FEW_JOBS = 256  # ... unless they are this few: then searching costs little, and a small fleet may still idle
WIDTH_GAIN = 0.005  # a wider plan must shorten the makespan by more than this fraction to be kept
TIE_S = 1.0  # seconds of makespan within which the chooser's widths count as no slower than another layout
MAX_WIDTH_TRIALS = 20  # width assignments scored per plan (each one a coarse target search)
# Widths are searched only when the chooser's widths leave more than this fraction of the fleet's GPU time idle.
IDLE_TO_WIDEN = 0.02
COARSE_SPLITS = (1, 2, 4, 8, 16)  # work per GPU divided by these: the job lengths a width assignment is scored at


class Shape(NamedTuple):
    """One bucket's jobs under one plan: the plan, seconds per sample on its group, the model load; and, when its
    jobs compile where that pays back (``--compile auto``), the cost model that decides and prices it."""

    bucket: BucketKey | None
    plan: ParallelPlan
    seconds: float
    load: float
    compiler: CostModel | None = None  # None: the jobs never compile (or always do: folded into seconds and load)

    def compiles(self, rounds: int) -> bool:
        """Whether a job of ``rounds`` samples per replica compiles (``CostModel.compile_pays``)."""
        return self.compiler is not None and self.compiler.compile_pays(rounds * self.seconds)

    def duration(self, rounds: int) -> float:
        """Wall time of a job of ``rounds`` samples per replica: load, then compute, compiled where it pays."""
        compute = rounds * self.seconds
        if self.compiler is not None and self.compiler.compile_pays(compute):
            return self.load + self.compiler.compiled_seconds(compute)
        return self.load + compute

    def rows_for(self, target: float) -> int:
        """Samples per replica whose job lasts about ``target`` (the inverse of ``duration``; at least 1)."""
        rows = samples_per_replica(self.seconds, self.load, target)
        if self.compiler is not None and self.compiles(rows):
            faster = self.seconds * self.compiler.compile_time_factor
            compiled = samples_per_replica(faster, self.load + self.compiler.compile_seconds, target)
            return compiled if self.compiles(compiled) else rows
        return rows


def group(plan: ParallelPlan) -> int:
    """GPUs of one sample's group (the job width of a dp=1 plan)."""
    return plan.cfg * plan.ulysses * plan.ring


# --- Widths a bucket may take -----------------------------------------------------------------------------------------


def group_plans(
    bucket: BucketKey,
    family: ModelFamily,
    gpus: int,
    *,
    backend: Backend,
    device: str,
    gpu_memory_gib: float,
    cost: CostModel,
) -> list[tuple[ParallelPlan, float]]:
    """Per group size dividing ``gpus``, the most efficient dp=1 plan that passes every rule and fits; narrowest
    first, each with its memory per GPU."""

    def rank(plan: ParallelPlan) -> tuple:  # lower is better: efficiency, then the field's order (Ulysses before ring)
        return (-round(cost.efficiency(plan), 9), preference_key(plan))

    best: dict[int, tuple[ParallelPlan, float]] = {}
    for candidate in candidate_plans(gpus):
        plan = ParallelPlan(dp=1, cfg=candidate.cfg, ulysses=candidate.ulysses, ring=candidate.ring)
        width = group(plan)
        kept = best.get(width)
        if kept is not None and rank(kept[0]) <= rank(plan):
            continue
        memory = memory_gib_per_gpu(bucket, family, plan)
        if memory > gpu_memory_gib or plan_violations(
            bucket, family, plan, world_size=width, backend=backend, device=device
        ):
            continue
        best[width] = (plan, memory)
    return [best[width] for width in sorted(best)]


# --- Job length -------------------------------------------------------------------------------------------------------


def cut_all(
    shapes: Sequence[Shape], counts: Sequence[int], target: float, options: PackingOptions, tail: bool
) -> list[list[Cut]]:
    return [
        cut_bucket(count, shape.plan.dp, shape.rows_for(target), options.max_samples_per_job, tail=tail)
        for shape, count in zip(shapes, counts, strict=True)
    ]


def makespan(shapes: Sequence[Shape], cuts: list[list[Cut]], nodes: int, gpus_per_node: int) -> float:
    jobs = [
        FleetJob("", shape.plan.world_size, shape.duration(cut.rounds))
        for shape, bucket_cuts in zip(shapes, cuts, strict=True)
        for cut in bucket_cuts
    ]
    return schedule_jobs(jobs, nodes, gpus_per_node).makespan


def _target_search(
    shapes: Sequence[Shape],
    counts: Sequence[int],
    options: PackingOptions,
    gpus_per_node: int,
    coarse: bool = False,
) -> tuple[float, bool, float | None]:
    """(target, tail split, makespan): the makespan is None when the fleet is full and nothing was searched.

    ``coarse`` (scoring widths) tries fewer lengths: the target, the work per GPU over 1, 2, 4, 8 and 16, whole tails.
    """
    target = options.target_seconds
    fleet = options.nodes * gpus_per_node
    gpu_seconds = sum(count * shape.seconds * group(shape.plan) for shape, count in zip(shapes, counts, strict=True))
    share = gpu_seconds / fleet
    if not options.fit_to_fleet or share >= FLEET_SEARCH_JOBS * target:
        return target, options.tail_split, None
    at_target = sum(len(cuts) for cuts in cut_all(shapes, counts, target, options, options.tail_split))
    if at_target >= max(FLEET_FULL_JOBS_PER_GPU * fleet, FEW_JOBS):
        return target, options.tail_split, None
    # The work per GPU in n parts, each part also as compute after one model load (a job's length counts its load).
    load = max((shape.load for shape in shapes), default=0.0)
    parts = (share / n + extra for n in (COARSE_SPLITS if coarse else range(1, 17)) for extra in (0.0, load))
    fractions = (1.0,) if coarse else SHORTER_TARGETS
    candidates = sorted({*(target * f for f in fractions), *(t for t in parts if t < target)}, reverse=True)
    tails = (True, False) if options.tail_split and not coarse else (options.tail_split and not coarse,)
    scored = [
        (makespan(shapes, cut_all(shapes, counts, t, options, tail), options.nodes, gpus_per_node), -t, not tail)
        for t in candidates
        for tail in tails
    ]
    best, longest, whole = min(scored)
    return -longest, not whole, best


def fleet_target_seconds(
    shapes: Sequence[Shape], counts: Sequence[int], options: PackingOptions, gpus_per_node: int
) -> tuple[float, bool]:
    """The job length to aim for and whether to split the tail: ``target_seconds`` and ``tail_split``, or a
    shorter target (and the tail kept whole) when that ends the run sooner on the fleet.

    ``shapes`` are (bucket, job plan, seconds per sample, load seconds), ``counts`` the samples per bucket.
    """
    target, tail, _ = _target_search(shapes, counts, options, gpus_per_node)
    return target, tail


# --- Widths and length together ---------------------------------------------------------------------------------------


def fit_fleet(
    choices: Sequence[Sequence[Shape]],
    counts: Sequence[int],
    options: PackingOptions,
    gpus_per_node: int,
    prompts: Callable[[int], Sequence[int]] | None = None,
) -> tuple[list[int], list[list[Cut]]]:
    """Per bucket, which of its shapes its jobs take (``choices[b][0]``: the chooser's width; the others wider),
    and its cuts: the widths and job length whose schedule on the fleet ends first (module docstring).

    ``prompts(b)``: the samples of bucket b's rows, in order (each row's samples are consecutive); with it the
    one-job-per-prompt layout at each bucket's widest plan is a candidate too.
    """
    narrow = [bucket_shapes[0] for bucket_shapes in choices]
    target, tail, narrow_makespan = _target_search(narrow, counts, options, gpus_per_node)
    narrow_cuts = cut_all(narrow, counts, target, options, tail)
    fleet = options.nodes * gpus_per_node
    if narrow_makespan is None:  # the fleet is full: nothing idles
        return [0] * len(choices), narrow_cuts
    found: list[tuple[float, list[int], list[list[Cut]]]] = []  # other candidates: (makespan, picks, cuts)
    search = any(len(c) > 1 for c in choices) and _idles(narrow, narrow_cuts, narrow_makespan, fleet)
    wide = _widths(choices, counts, options, gpus_per_node) if search else []
    if any(wide):
        shapes = [bucket_shapes[pick] for bucket_shapes, pick in zip(choices, wide, strict=True)]
        wide_target, wide_tail, wide_makespan = _target_search(shapes, counts, options, gpus_per_node)
        if wide_makespan is not None:
            found.append((wide_makespan, wide, cut_all(shapes, counts, wide_target, options, wide_tail)))
    per_prompt = None
    if prompts is not None:
        picks = [len(bucket_shapes) - 1 for bucket_shapes in choices]
        shapes = [bucket_shapes[-1] for bucket_shapes in choices]
        # Buckets whose jobs keep a dp > 1 (pinned, --job-width node) keep their cut: per prompt, each would pad.
        cuts = [
            _prompt_cuts(prompts(b), options.max_samples_per_job) if shape.plan.dp == 1 else narrow_cuts[b]
            for b, shape in enumerate(shapes)
        ]
        per_prompt = makespan(shapes, cuts, options.nodes, gpus_per_node)
        found.append((per_prompt, picks, cuts))
    if not found:
        return [0] * len(choices), narrow_cuts
    best, picks, cuts = min(found, key=lambda item: item[0])
    # A wider layout must buy more than WIDTH_GAIN of wall time; but never end later than one job per prompt does.
    if best < narrow_makespan * (1 - WIDTH_GAIN) or (per_prompt is not None and narrow_makespan > per_prompt + TIE_S):
        return picks, cuts
    return [0] * len(choices), narrow_cuts


def _prompt_cuts(prompts: Sequence[int], max_samples_per_job: int | None) -> list[Cut]:
    """One dp=1 job per prompt (its videos one after another), cut at ``max_samples_per_job``."""
    cuts = []
    for count in prompts:
        cuts += cut_bucket(count, 1, count, max_samples_per_job)
    return cuts


def _idles(shapes: Sequence[Shape], cuts: list[list[Cut]], makespan: float, fleet: int) -> bool:
    """Whether the fleet idles more than ``IDLE_TO_WIDEN`` of the makespan with the chooser's widths."""
    busy = sum(
        shape.duration(cut.rounds) * shape.plan.world_size
        for shape, bucket_cuts in zip(shapes, cuts, strict=True)
        for cut in bucket_cuts
    )
    return busy < (1 - IDLE_TO_WIDEN) * makespan * fleet


def _widths(
    choices: Sequence[Sequence[Shape]], counts: Sequence[int], options: PackingOptions, gpus_per_node: int
) -> list[int]:
    """The widths the coarse search finds best (all zeros: the chooser's)."""
    trials = 0
    scores: dict[tuple[int, ...], float] = {}

    def score(picks: tuple[int, ...]) -> float:
        nonlocal trials
        if picks not in scores:
            trials += 1
            shapes = [bucket_shapes[pick] for bucket_shapes, pick in zip(choices, picks, strict=True)]
            found = _target_search(shapes, counts, options, gpus_per_node, coarse=True)[2]
            scores[picks] = float("inf") if found is None else found
        return scores[picks]

    best = tuple(0 for _ in choices)
    best_makespan = score(best)

    def better(picks: tuple[int, ...]) -> bool:
        return score(picks) < best_makespan * (1 - WIDTH_GAIN)

    # One width cap for every bucket (each takes its widest plan within the cap), narrowest cap first.
    for cap in sorted({group(shape.plan) for shapes in choices for shape in shapes})[1:]:
        picks = tuple(
            max((i for i, shape in enumerate(shapes) if group(shape.plan) <= cap), default=0) for shapes in choices
        )
        if better(picks):
            best, best_makespan = picks, score(picks)
    # Then one bucket at a time, the best move first, while a move ends the run sooner.
    while trials < MAX_WIDTH_TRIALS:
        moves = [
            best[:b] + (i,) + best[b + 1 :]
            for b, shapes in enumerate(choices)
            for i in range(len(shapes))
            if i != best[b]
        ]
        fresh = [m for m in moves if m not in scores][: MAX_WIDTH_TRIALS - trials]
        winner = min([m for m in moves if m in scores] + fresh, key=score, default=None)
        if winner is None or not better(winner):
            break
        best, best_makespan = winner, score(winner)
    return list(best)
