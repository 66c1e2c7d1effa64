"""Shape buckets, parallel plans and jobs: everything decided before a GPU is touched.

Rows with the same generation shape share a bucket (one pipeline call shape). Each bucket gets a parallel plan
and is cut into jobs whose sample count is a multiple of the plan's data-parallel degree, so only the last job of
a bucket can need padding. Nothing here needs torch or weights.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from reelbatch.identity import expand_row
from reelbatch.models.registry import ModelCatalog, ModelFamily, UnknownModel
from reelbatch.schemas import BucketKey, ManifestRow, ParallelPlan, RowRejection, Sample

DEFAULT_MAX_SAMPLES_PER_JOB = 32
MODEL_FIX = "point --model-path NAME=DIR (or the models file) at a local diffusers pipeline folder"


@dataclass(frozen=True)
class PlanProblem:
    rule: str
    message: str
    fix: str


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
        }


@dataclass
class RunPlan:
    rows: int
    accepted: int
    rejected: list[RowRejection]
    jobs: list[PlannedJob]

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
    return BucketKey(
        model=row.model,
        height=row.height,
        width=row.width,
        num_frames=row.num_frames,
        num_inference_steps=row.num_inference_steps,
        guidance_scale=row.guidance_scale,
        embedded_guidance_scale=row.embedded_guidance_scale,
        sequence_batch=row.sequence_batch,
    )


def choose_plan(bucket: BucketKey, gpus: int) -> tuple[ParallelPlan, list[str]]:
    """CFG parallel when the bucket uses CFG, the GPU count is even and sequence_batch is off; the rest is dp."""
    notes: list[str] = []
    cfg = 1
    if not bucket.uses_cfg:
        notes.append(f"guidance_scale {bucket.guidance_scale:g} <= 1: no CFG, so no CFG parallel")
    elif bucket.sequence_batch:
        notes.append("sequence_batch is on: the CFG passes run one after another on each rank, CFG parallel is off")
    elif gpus % 2:
        notes.append(f"{gpus} GPUs is odd: CFG parallel needs rank pairs, using data parallel only")
    else:
        cfg = 2
    return ParallelPlan(dp=gpus // cfg, cfg=cfg), notes


def validate_plan(bucket: BucketKey, family: ModelFamily, plan: ParallelPlan, world_size: int) -> list[PlanProblem]:
    """Rules a plan must pass before launch; each problem carries a fix that would pass."""
    problems: list[PlanProblem] = []
    if plan.world_size != world_size:
        problems.append(
            PlanProblem(
                "plan_product",
                f"dp*cfg*ulysses*ring = {plan.world_size} but the job has {world_size} ranks",
                f"use dp={max(1, world_size // (plan.cfg * plan.ulysses * plan.ring))} or {plan.world_size} GPUs",
            )
        )
    if plan.cfg not in (1, 2):
        problems.append(PlanProblem("cfg_degree", f"cfg={plan.cfg}: the CFG degree is 1 or 2", "use cfg=1 or cfg=2"))
    if plan.cfg == 2 and not bucket.uses_cfg:
        problems.append(
            PlanProblem(
                "cfg_without_guidance",
                f"cfg=2 but guidance_scale {bucket.guidance_scale:g} <= 1 turns CFG off",
                f"use cfg=1, dp={plan.dp * 2}",
            )
        )
    if plan.cfg == 2 and bucket.sequence_batch:
        problems.append(
            PlanProblem(
                "sequence_batch_with_cfg_parallel",
                "sequence_batch runs each CFG pass with batch 1, which cannot be split over a CFG rank pair",
                f"use cfg=1, dp={plan.dp * 2}, or set sequence_batch=false",
            )
        )
    if plan.ulysses > 1 or plan.ring > 1:
        problems.append(
            PlanProblem(
                "sequence_parallel_unsupported",
                f"{family.name}: sequence parallel (ulysses={plan.ulysses}, ring={plan.ring}) is not available yet",
                "use ulysses=1, ring=1 and spread the GPUs over dp and cfg",
            )
        )
    return problems


def _job_id(index: int, bucket: BucketKey, samples: Sequence[Sample]) -> str:
    digest = hashlib.sha256(bucket.model_dump_json().encode())
    for sample in samples:
        digest.update(sample.sample_id.encode())
    return f"job-{index:04d}-{digest.hexdigest()[:8]}"


def cut_jobs(samples: Sequence[Sample], dp: int, max_samples_per_job: int) -> list[tuple[list[Sample], int]]:
    """Cut a bucket into chunks that are multiples of dp; only the last chunk may need padding."""
    chunk = max(dp, (max_samples_per_job // dp) * dp)
    pieces = []
    for start in range(0, len(samples), chunk):
        part = list(samples[start : start + chunk])
        pieces.append((part, -len(part) % dp))
    return pieces


def plan_run(
    rows: Sequence[ManifestRow],
    rejected: Sequence[RowRejection],
    total_rows: int,
    catalog: ModelCatalog,
    gpus: int,
    max_samples_per_job: int = DEFAULT_MAX_SAMPLES_PER_JOB,
) -> RunPlan:
    if gpus < 1:
        raise ValueError("--gpus must be at least 1")
    buckets: dict[BucketKey, list[ManifestRow]] = {}
    for row in rows:
        buckets.setdefault(bucket_key(row), []).append(row)

    rejections = list(rejected)
    jobs: list[PlannedJob] = []
    seen: dict[str, int] = {}  # sample id -> row that asked for it first
    accepted = len(rows)
    for bucket, bucket_rows in buckets.items():
        try:
            family = catalog.family(bucket.model)
        except UnknownModel as exc:
            family, problems = None, [PlanProblem("model_unavailable", str(exc).strip("'\""), MODEL_FIX)]
        else:
            plan, notes = choose_plan(bucket, gpus)
            problems = validate_plan(bucket, family, plan, gpus)
        if problems:
            accepted -= len(bucket_rows)
            rejections.extend(
                RowRejection(row=r.row, column="plan", rule=p.rule, message=p.message, fix=p.fix)
                for r in bucket_rows
                for p in problems
            )
            continue
        samples = []
        for r in bucket_rows:
            row_samples = [s for s in expand_row(r) if s.sample_id not in seen]
            if len(row_samples) < r.num_videos:
                first = seen.get(expand_row(r)[0].sample_id, r.row)
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
            seen.update({s.sample_id: r.row for s in row_samples})
            samples.extend(row_samples)
        if not samples:
            continue
        tokens = family.tokens(bucket.height, bucket.width, bucket.num_frames)
        for part, padded in cut_jobs(samples, plan.dp, max_samples_per_job):
            jobs.append(PlannedJob(_job_id(len(jobs), bucket, part), bucket, family, plan, part, padded, tokens, notes))
    return RunPlan(rows=total_rows, accepted=accepted, rejected=rejections, jobs=jobs)


# Prefect is imported last so that everything above reads, and is tested, as plain Python.
from prefect import task  # noqa: E402

plan_run_task = task(name="plan-jobs")(plan_run)
