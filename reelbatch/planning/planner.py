"""``plan_run``: manifest rows -> a ``RunPlan``. Everything decided before a GPU is touched.

Rows are grouped into buckets (``buckets``); each bucket gets a parallel plan from the chooser (rules checked,
best plan chosen, or the bucket's rows rejected with a fix) and is cut into jobs once (``packing.cut_buckets``):
jobs whose sample count is a multiple of the plan's data-parallel degree, so only the last job of a bucket can
need padding. Nothing here needs torch, weights or Prefect (``tasks.shard`` wraps ``plan_run`` as a task).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any

from reelbatch.defaults import COMPILE, MAX_SAMPLES_PER_JOB, OBJECTIVE, CompileMode, Objective
from reelbatch.gpus import visible_gpus
from reelbatch.identity import expand_row
from reelbatch.models.catalog import ModelCatalog, UnknownModel
from reelbatch.models.registry import ModelFamily
from reelbatch.planning import chooser
from reelbatch.planning.buckets import (
    duplicate_of,
    duplicate_suspects,
    positions_by_bucket,
    rows_by_bucket,
    table_samples,
)
from reelbatch.planning.chooser import DEFAULT_GPU_MEMORY_GIB
from reelbatch.planning.cost import DEFAULT_COST_MODEL, CostModel
from reelbatch.planning.fleet.fit import group_plans
from reelbatch.planning.jobs import BucketPlan, RunPlan
from reelbatch.planning.packing import cut_buckets
from reelbatch.planning.packing_options import PackingOptions
from reelbatch.planning.rules import PlanProblem
from reelbatch.rows import RowTable
from reelbatch.schemas import BucketKey, ManifestRow, ParallelPlan, RowRejection, Sample, many_models

DEFAULT_MAX_SAMPLES_PER_JOB = MAX_SAMPLES_PER_JOB  # re-exported under its planning name


def default_device() -> str:
    """Where the ranks will run: ``cuda`` when this machine sees GPUs, else ``cpu`` (gloo ranks)."""
    return "cuda" if visible_gpus() > 0 else "cpu"


class PlanRefused(ValueError):
    """No plan passes for a bucket; ``problems`` say why and how to fix it."""

    def __init__(self, problems: list[PlanProblem]) -> None:
        super().__init__("; ".join(f"{p.rule}: {p.message} (fix: {p.fix})" for p in problems))
        self.problems = problems


def choose_plan(
    bucket: BucketKey,
    gpus: int,
    *,
    catalog: ModelCatalog | None = None,
    objective: Objective = OBJECTIVE,
    device: str | None = None,
    gpu_memory_gib: float = DEFAULT_GPU_MEMORY_GIB,
) -> tuple[ParallelPlan, list[str]]:
    """The plan ``plan_run`` would give ``bucket`` on ``gpus`` ranks, and its notes (``chooser.choose_plan``).

    A one-call form for tests and scripts: looks the family up, raises ``PlanRefused`` when no plan passes.
    """
    family = (catalog or ModelCatalog.from_config()).family(bucket.model)
    choice = chooser.choose_plan(
        bucket,
        family,
        gpus,
        backend=bucket.backend,
        device=device or default_device(),
        gpu_memory_gib=gpu_memory_gib,
        objective=objective,
    )
    if choice.plan is None:
        raise PlanRefused(choice.problems)
    return choice.plan, choice.notes


def _xdit_not_runnable(family: ModelFamily, plan: ParallelPlan) -> PlanProblem:
    # The rules of xDiT are encoded (and tested) so plans can be checked, but the ranks have no xfuser run
    # path yet: refusing here costs no GPU time, failing at rank start would.
    return PlanProblem(
        "backend_not_runnable",
        f"{family.name}: xDiT's rules accept {plan.short()} for this bucket, but this version of reelbatch"
        " checks xdit plans without running them",
        "use backend native (--backend native, or backend=native in the row)",
        column="backend",
    )


@many_models()
def plan_run(
    rows: Sequence[ManifestRow],
    rejected: Sequence[RowRejection],
    total_rows: int,
    catalog: ModelCatalog,
    gpus: int,
    max_samples_per_job: int = DEFAULT_MAX_SAMPLES_PER_JOB,
    *,
    gpu_memory_gib: float = DEFAULT_GPU_MEMORY_GIB,
    objective: Objective = OBJECTIVE,
    device: str | None = None,
    skip: Collection[str] = frozenset(),
    packing: PackingOptions | None = None,
    cost_model: CostModel | None = None,
    compile: CompileMode = COMPILE,
) -> RunPlan:
    """Bucket the rows, give each bucket a plan (or reject its rows with a fix) and cut the buckets into jobs.

    ``device`` is where the ranks run (``cuda`` or ``cpu``; default: ``cuda`` when GPUs are visible); some rules
    depend on it (ring attention and xfuser need GPUs). Samples whose id is in ``skip`` (videos an earlier run
    already made) get no job: they are listed in ``RunPlan.skipped`` and their rows still count as accepted.
    ``packing`` (planning.packing_options.PackingOptions) cuts the buckets into jobs of a target wall time on a fleet,
    ordered longest first, each unpinned bucket's job width fitted to the fleet (``planning.fleet.fit``: wider
    plans while GPUs would otherwise idle, with ``objective="throughput"``); without it each bucket is cut by
    ``cut_jobs``. ``cost_model`` (planning.cost) gives the estimates (default: the calibrated H100 model).
    ``compile``: ``on`` / ``off`` compile every job's transformer or none; ``auto`` the jobs whose denoising time,
    by the cost model, pays back the compile time.
    """
    if gpus < 1:
        raise ValueError("--gpus must be at least 1")
    device = device or default_device()
    cost = cost_model or DEFAULT_COST_MODEL
    if packing is not None:
        packing = replace(packing, compile=compile, cost_model=packing.cost_model or cost_model)
    fit_widths = packing is not None and packing.width == "group" and objective == "throughput"
    if isinstance(rows, RowTable) and (skip or rows.has_images()):
        # Resuming compares every sample id with the finished ones, and a row's images decide its bucket: make them.
        rows = list(rows)
    table = rows if isinstance(rows, RowTable) else None
    # Each bucket's rows: positions in the table (numpy), or the rows themselves (a list).
    buckets: Mapping[BucketKey, Any] = positions_by_bucket(table) if table is not None else rows_by_bucket(rows)
    suspects = duplicate_suspects(table) if table is not None else None
    videos = table.videos_per_row() if table is not None else None

    rejections = list(rejected)
    planned: list[BucketPlan] = []
    seen: dict[str, int] = {}  # sample id -> row that asked for it first
    skipped: list[tuple[Sample, BucketKey]] = []
    accepted = len(rows)
    for bucket, bucket_rows in buckets.items():
        try:
            family = catalog.family(bucket.model)
        except UnknownModel as exc:
            problems = [PlanProblem(exc.rule, str(exc), exc.fix, column="model")]
            choice = None
        else:
            choice = chooser.choose_plan(
                bucket,
                family,
                gpus,
                backend=bucket.backend,
                device=device,
                gpu_memory_gib=gpu_memory_gib,
                objective=objective,
                cost_model=cost_model,
            )
            problems = choice.problems
            if choice.plan is not None and bucket.backend == "xdit":
                problems = [_xdit_not_runnable(family, choice.plan)]
        if choice is None or choice.plan is None or problems:
            lines = table.lines[bucket_rows].tolist() if table is not None else [r.row for r in bucket_rows]
            accepted -= len(lines)
            rejections.extend(
                RowRejection(row=line, column=p.column, rule=p.rule, message=p.message, fix=p.fix)
                for line in lines
                for p in problems
            )
            continue
        samples: Sequence[Sample]
        if table is not None:
            assert suspects is not None and videos is not None  # made with the table above
            samples, duplicates = table_samples(table, bucket_rows, suspects, videos, seen, rejections)
            accepted -= duplicates
        else:
            listed: list[Sample] = []
            for r in bucket_rows:
                row_samples = expand_row(r)  # the ids of one row's videos differ from each other (video index)
                duplicate = duplicate_of(r, row_samples, seen)
                if duplicate is not None:
                    accepted -= 1
                    rejections.append(duplicate)
                    continue
                if skip:
                    skipped.extend((s, bucket) for s in row_samples if s.sample_id in skip)
                    row_samples = [s for s in row_samples if s.sample_id not in skip]
                listed.extend(row_samples)
            samples = listed
        if not samples:
            continue
        widths = (
            group_plans(
                bucket,
                family,
                gpus,
                backend=bucket.backend,
                device=device,
                gpu_memory_gib=gpu_memory_gib,
                cost=packing.cost,
            )
            if packing is not None and fit_widths and bucket.plan is None
            else []
        )
        planned.append(
            BucketPlan(
                bucket,
                family,
                choice.plan,
                samples,
                family.tokens(bucket.height, bucket.width, bucket.num_frames),
                list(choice.notes),
                [r.to_json() for r in choice.refused],
                choice.memory_gib_per_gpu,
                list(choice.warnings),
                choice.estimated_gpu_seconds_per_sample,
                backend=bucket.backend,
                group_plans=widths,
            )
        )
    # One cutting pass: the plain cut, or packed for the fleet (then longest first).
    jobs = cut_buckets(
        planned,
        max_samples_per_job=max_samples_per_job,
        cost=cost,
        packing=packing,
        gpus_per_node=gpus,
        rows=rows,
        skipped=skipped,
        compile=compile,
    )
    return RunPlan(rows=total_rows, accepted=accepted, rejected=rejections, jobs=jobs, skipped=skipped)
