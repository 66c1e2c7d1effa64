"""What the speed-ups do to a plan: which jobs compile, and the GPU-seconds saved by compiling, step caches and
few-step weights.

A job's estimate (``PlannedJob.estimated_gpu_seconds`` / ``estimated_seconds``) is the job as it will run: with
its bucket's step cache and steps (``CostModel.single_gpu_seconds`` prices both) and, once ``choose_compile`` has
decided, with its compile. ``saved_gpu_seconds`` then says, per speed-up, how many GPU-seconds the job would cost
more without it, taking them off in a fixed order so that the three add up to the whole difference:

1. ``compile``: the uncompiled job minus the compiled one (negative where a forced ``--compile on`` does not pay);
2. ``step_cache``: the same job without its cache (the cache's time factor divided out);
3. ``few_step``: a step-distilled family's rows at the steps and guidance of the checkpoint it was distilled from
   (``ModelFamily.undistilled``), under the same plan (its GPU-seconds: CFG as sequential passes where the plan
   has no CFG parallel); a row of such a family asking for as many steps as that checkpoint saves nothing.

`reelbatch plan` prints the plan's GPU-hours with and without them (``RunPlan.summary``). Pure Python.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from reelbatch.defaults import CompileMode
from reelbatch.planning.cost import CostModel
from reelbatch.planning.jobs import PlannedJob

SPEEDUPS = ("compile", "step_cache", "few_step")  # the order their savings are taken off


def compute_seconds(job: PlannedJob, cost: CostModel) -> float:
    """The job's uncompiled wall time past its model load: its rounds of samples."""
    rounds = math.ceil((len(job.samples) + job.padded_slots) / job.plan.dp)
    return rounds * cost.sample_seconds(job.bucket, job.family, job.plan)


# A job's compile decision and estimates: (compile, estimated GPU-seconds, estimated seconds, compile saving or None)
Priced = tuple[bool, float, float, float | None]


def choose_compile(jobs: Sequence[PlannedJob], cost: CostModel, mode: CompileMode) -> None:
    """Set each job's ``compile``: ``on`` all, ``off`` none, ``auto`` where it pays back (``CostModel.compile_pays``),
    and its estimates to match.

    A job comes priced uncompiled, or compiled (``job.compile``: the packer cut it as a job that compiles). A
    compiled job's wall time is its load, the compile, then faster steps (``CostModel.compiled_seconds``); every
    GPU of the job pays the compile; ``saved_gpu_seconds["compile"]`` is what that saves against the same job
    uncompiled (negative where ``on`` forces a compile that does not pay back). The jobs of a big manifest are
    copies of a few shapes: each distinct one is priced once.
    """
    priced: dict[tuple[int, int, int, bool, float], Priced] = {}
    for job in jobs:
        slots = len(job.samples) + job.padded_slots
        key = (id(job.bucket), id(job.plan), slots, job.compile, job.estimated_seconds)  # the jobs hold these
        outcome = priced.get(key)
        if outcome is None:
            outcome = priced[key] = _price(job, slots, cost, mode)
        job.compile, job.estimated_gpu_seconds, job.estimated_seconds, saved = outcome
        job.saved_gpu_seconds.pop("compile", None)
        if saved is not None:
            job.saved_gpu_seconds["compile"] = saved


def _price(job: PlannedJob, slots: int, cost: CostModel, mode: CompileMode) -> Priced:
    compute = compute_seconds(job, cost)
    load = max(0.0, job.estimated_seconds - (cost.compiled_seconds(compute) if job.compile else compute))
    uncompiled_gpu = cost.sample_gpu_seconds(job.bucket, job.family, job.plan) * slots
    if not (mode == "on" or (mode == "auto" and cost.compile_pays(compute))):
        return False, round(uncompiled_gpu, 6), round(load + compute, 3), None
    compiled_gpu = uncompiled_gpu * cost.compile_time_factor + cost.compile_seconds * job.plan.world_size
    return (
        True,
        round(compiled_gpu, 6),
        round(load + cost.compiled_seconds(compute), 3),
        round(uncompiled_gpu - compiled_gpu, 6),
    )


def count_savings(jobs: Sequence[PlannedJob], cost: CostModel) -> None:
    """Fill each job's ``saved_gpu_seconds`` for its step cache and few-step weights (after ``choose_compile``)."""
    factors: dict[int, tuple[float, float]] = {}  # per bucket object: (cache factor, undistilled / distilled)
    for job in jobs:
        key = id(job.bucket)
        factor = factors.get(key)
        if factor is None:
            factor = factors[key] = _factors(job, cost)
        cache_factor, distilled_ratio = factor
        if cache_factor in (0.0, 1.0) and distilled_ratio == 1.0:  # 0.0: a cost model that makes caching free
            continue
        uncompiled = job.estimated_gpu_seconds + job.saved_gpu_seconds.get("compile", 0.0)
        uncached = uncompiled / cache_factor if cache_factor > 0 else uncompiled
        if 0.0 < cache_factor != 1.0:
            job.saved_gpu_seconds["step_cache"] = round(uncached - uncompiled, 6)
        if distilled_ratio != 1.0:
            job.saved_gpu_seconds["few_step"] = round(uncached * distilled_ratio - uncached, 6)


def _factors(job: PlannedJob, cost: CostModel) -> tuple[float, float]:
    bucket, family = job.bucket, job.family
    cache_factor = cost.cache_time_factor(bucket.cache)
    full = family.undistilled
    if full is None or bucket.num_inference_steps >= full.num_inference_steps:
        return cache_factor, 1.0  # not a step-distilled family, or a row that asks for as many steps anyway
    uncached = bucket.model_copy(update={"cache": None})
    undistilled = uncached.model_copy(
        update={"num_inference_steps": full.num_inference_steps, "guidance_scale": full.guidance_scale}
    )
    ratio = cost.single_gpu_seconds(undistilled, family) / cost.single_gpu_seconds(uncached, family)
    return cache_factor, ratio


def price_jobs(jobs: Sequence[PlannedJob], cost: CostModel, mode: CompileMode) -> None:
    """Each job's compile decided and its estimates and savings set (``choose_compile``, then ``count_savings``):
    the last step of cutting (``packing.cut_buckets``, ``pack_buckets``)."""
    choose_compile(jobs, cost, mode)
    count_savings(jobs, cost)


def job_seconds(job: PlannedJob, cost: CostModel, storage: str = "local") -> float:
    """A job's wall time on ``cost``'s GPU from ``storage``: its load, then its samples, compiled when it compiles
    (what the fleet simulator plays)."""
    compute = compute_seconds(job, cost)
    return cost.load_seconds(job.family, storage) + (cost.compiled_seconds(compute) if job.compile else compute)
