"""Shape buckets, parallel plans and jobs: everything decided before a GPU is touched.

Rows with the same generation shape (and the same pinned plan and backend) share a bucket (one pipeline call
shape). Each bucket gets a parallel plan from ``reelbatch.planning`` (rules checked, best plan chosen, or the
bucket's rows rejected with a fix) and is cut into jobs whose sample count is a multiple of the plan's
data-parallel degree, so only the last job of a bucket can need padding. Nothing here needs torch or weights.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from operator import attrgetter

from reelbatch import planning
from reelbatch.identity import expand_row
from reelbatch.infra.cluster import visible_gpus
from reelbatch.models.registry import ModelCatalog, ModelFamily, UnknownModel
from reelbatch.planning import DEFAULT_GPU_MEMORY_GIB, Objective, PlanProblem
from reelbatch.planning.cost import DEFAULT_COST_MODEL, CostModel
from reelbatch.planning.packing import PackingOptions, job_id, pack_plan
from reelbatch.settings import JOB_TIMEOUT_FLOOR_S, JOB_TIMEOUT_MARGIN
from reelbatch.schemas import Backend, BucketKey, ManifestRow, ParallelPlan, RowRejection, Sample, many_models

DEFAULT_MAX_SAMPLES_PER_JOB = 32
MODEL_FIX = "point --model-path NAME=DIR (or the models file) at a local diffusers pipeline folder"

__all__ = [  # PlanProblem is re-exported: it used to live here
    "DEFAULT_MAX_SAMPLES_PER_JOB", "PlanProblem", "PlanRefused", "PlannedJob", "RunPlan", "bucket_key",
    "choose_plan", "cut_jobs", "default_device", "plan_run",
]


def default_device() -> str:
    """Where the ranks will run: ``cuda`` when this machine sees GPUs, else ``cpu`` (gloo ranks)."""
    return "cuda" if visible_gpus() > 0 else "cpu"


@dataclass
class PlannedJob:
    job_id: str
    bucket: BucketKey
    family: ModelFamily
    plan: ParallelPlan
    samples: list[Sample]
    padded_slots: int
    tokens: int
    notes: list[str] = field(default_factory=list)
    backend: Backend = "native"
    refused: list[dict] = field(default_factory=list)  # better-ranked plans and why not: RefusedPlan.to_json()
    estimated_gpu_seconds: float = 0.0  # the whole job, padded slots included (H100 estimate)
    memory_gib_per_gpu: float = 0.0
    warnings: list[str] = field(default_factory=list)
    estimated_seconds: float = 0.0  # wall time incl. one model load from local disk (planning.cost)
    filled_slots: int = 0  # padded slots turned into extra videos (padding="fill"); they are in ``samples``

    @property
    def timeout_s(self) -> float:
        """Wall-clock limit for the job: the estimate with a margin, at least the floor."""
        wall = self.estimated_gpu_seconds / self.plan.world_size
        return max(JOB_TIMEOUT_FLOOR_S, JOB_TIMEOUT_MARGIN * wall)

    def to_json(self) -> dict:
        return {
            "job_id": self.job_id,
            "model": self.bucket.model,
            "height": self.bucket.height,
            "width": self.bucket.width,
            "num_frames": self.bucket.num_frames,
            "num_inference_steps": self.bucket.num_inference_steps,
            "guidance_scale": self.bucket.guidance_scale,
            "sequence_batch": self.bucket.sequence_batch,
            "plan": self.plan.as_dict(),
            "samples": len(self.samples),
            "padded_slots": self.padded_slots,
            "tokens": self.tokens,
            "notes": self.notes,
            "backend": self.backend,
            "refused_plans": self.refused,
            "estimated_gpu_seconds": self.estimated_gpu_seconds,
            "memory_gib_per_gpu": self.memory_gib_per_gpu,
            "warnings": self.warnings,
            "estimated_seconds": self.estimated_seconds,
            "filled_slots": self.filled_slots,
        }


@dataclass
class RunPlan:
    rows: int
    accepted: int
    rejected: list[RowRejection]
    jobs: list[PlannedJob]
    skipped: list[tuple[Sample, BucketKey]] = field(default_factory=list)  # already made (``skip``): no job

    @property
    def samples(self) -> int:
        return sum(len(job.samples) for job in self.jobs)

    @property
    def padded_slots(self) -> int:
        return sum(job.padded_slots for job in self.jobs)

    def summary(self) -> dict:
        slots = self.samples + self.padded_slots
        return {
            "jobs": len(self.jobs),
            "samples": self.samples,
            "padded_slots": self.padded_slots,
            "padding_ratio": round(self.padded_slots / slots, 6) if slots else 0.0,
            "estimated_gpu_seconds": round(sum(job.estimated_gpu_seconds for job in self.jobs), 6),
        }

    def to_json(self) -> dict:
        """The ``plan --json`` document (schema in README.md)."""
        return {
            "rows": self.rows,
            "accepted": self.accepted,
            "rejected": [r.model_dump() for r in sorted(self.rejected, key=lambda r: r.row)],
            "jobs": [job.to_json() for job in self.jobs],
            "summary": self.summary(),
        }


def bucket_key(row: ManifestRow) -> BucketKey:
    # A bucket is the row's fields that shape the pipeline call; they carry the same names on both models.
    return BucketKey(**{name: getattr(row, name) for name in BucketKey.model_fields})


_bucket_fields = attrgetter(*BucketKey.model_fields)


def _bucket_rows(rows: Sequence[ManifestRow]) -> dict[BucketKey, list[ManifestRow]]:
    """The rows by bucket, in the order buckets first appear.

    Rows are grouped by the plain tuple of their bucket fields, and a ``BucketKey`` (a pydantic model, slow to
    build and to hash) is built once per group, not once per row.
    """
    groups: dict[tuple, list[ManifestRow]] = {}
    for row in rows:
        fields = _bucket_fields(row)
        group = groups.get(fields)
        if group is None:
            groups[fields] = group = []
        group.append(row)
    buckets: dict[BucketKey, list[ManifestRow]] = {}
    for group in groups.values():
        # Distinct tuples that validate to one BucketKey (e.g. "5.0" and 5.0 on unvalidated rows) share a bucket.
        buckets.setdefault(bucket_key(group[0]), []).extend(group)
    return buckets


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
    objective: Objective = "throughput",
    device: str | None = None,
    gpu_memory_gib: float = DEFAULT_GPU_MEMORY_GIB,
) -> tuple[ParallelPlan, list[str]]:
    """The plan ``plan_run`` would give ``bucket`` on ``gpus`` ranks, and its notes (``planning.choose_plan``).

    A one-call form for tests and scripts: looks the family up, raises ``PlanRefused`` when no plan passes.
    """
    family = (catalog or ModelCatalog.from_config()).family(bucket.model)
    choice = planning.choose_plan(
        bucket, family, gpus, backend=bucket.backend, device=device or default_device(),
        gpu_memory_gib=gpu_memory_gib, objective=objective,
    )
    if choice.plan is None:
        raise PlanRefused(choice.problems)
    return choice.plan, choice.notes


def cut_jobs(samples: Sequence[Sample], dp: int, max_samples_per_job: int) -> list[tuple[list[Sample], int]]:
    """Cut a bucket into chunks that are multiples of dp; only the last chunk may need padding."""
    chunk = max(dp, (max_samples_per_job // dp) * dp)
    pieces = []
    for start in range(0, len(samples), chunk):
        part = list(samples[start : start + chunk])
        pieces.append((part, -len(part) % dp))
    return pieces


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
    objective: Objective = "throughput",
    device: str | None = None,
    skip: Collection[str] = frozenset(),
    packing: PackingOptions | None = None,
    cost_model: CostModel | None = None,
) -> RunPlan:
    """Bucket the rows, give each bucket a plan (or reject its rows with a fix) and cut the buckets into jobs.

    ``device`` is where the ranks run (``cuda`` or ``cpu``; default: ``cuda`` when GPUs are visible); some rules
    depend on it (ring attention and xfuser need GPUs). Samples whose id is in ``skip`` (videos an earlier run
    already made) get no job: they are listed in ``RunPlan.skipped`` and their rows still count as accepted.
    ``packing`` (planning.packing.PackingOptions) re-cuts the buckets into jobs of a target wall time on a fleet,
    ordered longest first; without it each bucket is cut by ``cut_jobs``. ``cost_model`` (planning.cost) gives
    the estimates (default: the calibrated H100 model).
    """
    if gpus < 1:
        raise ValueError("--gpus must be at least 1")
    device = device or default_device()
    cost = cost_model or DEFAULT_COST_MODEL
    buckets = _bucket_rows(rows)

    rejections = list(rejected)
    jobs: list[PlannedJob] = []
    seen: dict[str, int] = {}  # sample id -> row that asked for it first
    skipped: list[tuple[Sample, BucketKey]] = []
    accepted = len(rows)
    for bucket, bucket_rows in buckets.items():
        try:
            family = catalog.family(bucket.model)
        except UnknownModel as exc:
            problems = [PlanProblem("model_unavailable", str(exc).strip("'\""), MODEL_FIX)]
            choice = None
        else:
            choice = planning.choose_plan(
                bucket, family, gpus, backend=bucket.backend, device=device, gpu_memory_gib=gpu_memory_gib,
                objective=objective, cost_model=cost_model,
            )
            problems = choice.problems
            if choice.plan is not None and bucket.backend == "xdit":
                problems = [_xdit_not_runnable(family, choice.plan)]
        if choice is None or choice.plan is None or problems:
            accepted -= len(bucket_rows)
            rejections.extend(
                RowRejection(row=r.row, column=p.column, rule=p.rule, message=p.message, fix=p.fix)
                for r in bucket_rows
                for p in problems
            )
            continue
        samples = []
        for r in bucket_rows:
            row_samples = expand_row(r)  # the ids of one row's videos differ from each other (video index)
            if any(s.sample_id in seen for s in row_samples):
                first = seen.get(row_samples[0].sample_id, r.row)
                accepted -= 1
                rejections.append(
                    RowRejection(
                        row=r.row,
                        column="seed",
                        rule="duplicate_sample",
                        message=f"asks for the same video as row {first} (same prompt, parameters and seed)",
                        fix="give the row a different seed, or raise num_videos on the first row",
                    )
                )
                continue
            for s in row_samples:
                seen[s.sample_id] = r.row
            if skip:
                skipped.extend((s, bucket) for s in row_samples if s.sample_id in skip)
                row_samples = [s for s in row_samples if s.sample_id not in skip]
            samples.extend(row_samples)
        if not samples:
            continue
        plan = choice.plan
        tokens = family.tokens(bucket.height, bucket.width, bucket.num_frames)
        refused = [r.to_json() for r in choice.refused]
        for part, padded in cut_jobs(samples, plan.dp, max_samples_per_job):
            jobs.append(
                PlannedJob(
                    job_id(len(jobs), bucket, part), bucket, family, plan, part, padded, tokens, list(choice.notes),
                    backend=bucket.backend,
                    refused=refused,
                    estimated_gpu_seconds=round(choice.estimated_gpu_seconds_per_sample * (len(part) + padded), 6),
                    memory_gib_per_gpu=choice.memory_gib_per_gpu,
                    warnings=list(choice.warnings),
                    estimated_seconds=round(cost.job_seconds(bucket, family, plan, len(part) + padded), 3),
                )
            )
    result = RunPlan(rows=total_rows, accepted=accepted, rejected=rejections, jobs=jobs, skipped=skipped)
    if packing is not None:
        if packing.cost_model is None and cost_model is not None:
            packing = replace(packing, cost_model=cost_model)
        result = pack_plan(result, packing, gpus_per_node=gpus, rows=rows)
    return result


# Prefect is imported last so that everything above reads, and is tested, as plain Python.
from prefect import task  # noqa: E402

plan_run_task = task(name="plan-jobs")(plan_run)
