"""What a plan is made of: a bucket's planned work (``BucketPlan``), the jobs it is cut into (``PlannedJob``) and
the whole run (``RunPlan``, the ``plan --json`` document). Plain data: no planning decisions are taken here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from reelbatch.defaults import JOB_TIMEOUT_FLOOR_S, JOB_TIMEOUT_MARGIN
from reelbatch.models.registry import ModelFamily
from reelbatch.schemas import Backend, BucketKey, ParallelPlan, RowRejection, Sample

# BucketKey fields a job id hashes only when set, so that the ids of jobs recorded before them stay the same.
BUCKET_FIELDS_ADDED_LATER = ("cache", "lora_sha256", "lora_scale")


def job_id(index: int, bucket: BucketKey, samples: Iterable[Sample]) -> str:
    """Position, then a hash of the bucket and the sample ids: the same work gets the same id on a rerun."""
    # A bucket without a step cache or a LoRA hashes as it did before they existed (resume finds its jobs again).
    unset = {name for name in BUCKET_FIELDS_ADDED_LATER if getattr(bucket, name) is None}
    digest = hashlib.sha256(bucket.model_dump_json(exclude=unset or None).encode())
    for sample in samples:
        digest.update(sample.sample_id.encode())
    return f"job-{index:04d}-{digest.hexdigest()[:8]}"


@dataclass
class PlannedJob:
    index: int  # position in the plan; the id is ``job-<index>-<hash of the bucket and the sample ids>``
    bucket: BucketKey
    family: ModelFamily
    plan: ParallelPlan
    samples: Sequence[Sample]  # a list, or rows.SampleRefs (made into Samples when first read)
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
    compile: bool = False  # torch.compile the transformer once for the job (the cost model's choice, or forced)
    # GPU-seconds the job would cost more without each speed-up it uses (planning.speedups.SPEEDUPS); empty: none
    saved_gpu_seconds: dict[str, float] = field(default_factory=dict)
    # Not an init field: dataclasses.replace() makes a job with new samples or a new index compute its own id.
    _job_id: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def job_id(self) -> str:
        """Made when first asked for: it hashes the sample ids, which planning itself never needs."""
        if self._job_id is None:
            self._job_id = job_id(self.index, self.bucket, self.samples)
        return self._job_id

    @property
    def timeout_s(self) -> float:
        """Wall-clock limit for the job: the estimate with a margin, at least the floor."""
        # Never shorter than the uncompiled job's: a compile that saves less than the cost model says is no hang.
        uncompiled = self.estimated_gpu_seconds + max(0.0, self.saved_gpu_seconds.get("compile", 0.0))
        wall = uncompiled / self.plan.world_size
        return max(JOB_TIMEOUT_FLOOR_S, JOB_TIMEOUT_MARGIN * wall)

    def to_json(self, with_id: bool = True) -> dict:
        return {
            **({"job_id": self.job_id} if with_id else {}),
            "model": self.bucket.model,
            "height": self.bucket.height,
            "width": self.bucket.width,
            "num_frames": self.bucket.num_frames,
            "num_inference_steps": self.bucket.num_inference_steps,
            "guidance_scale": self.bucket.guidance_scale,
            "guidance_scale_2": self.bucket.guidance_scale_2,
            "embedded_guidance_scale": self.bucket.embedded_guidance_scale,
            "conditioning": self.bucket.conditioning,
            "sequence_batch": self.bucket.sequence_batch,
            "lora_sha256": self.bucket.lora_sha256,
            "lora_scale": self.bucket.lora_scale,
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
            "cache": self.bucket.cache,
            "compile": self.compile,
            "saved_gpu_seconds": dict(self.saved_gpu_seconds),
        }


@dataclass
class BucketPlan:
    """One bucket's work before it is cut into jobs: every sample it runs, under the plan chosen for it."""

    bucket: BucketKey
    family: ModelFamily
    plan: ParallelPlan
    samples: Sequence[Sample]
    tokens: int
    notes: list[str] = field(default_factory=list)
    refused: list[dict] = field(default_factory=list)
    memory_gib_per_gpu: float = 0.0
    warnings: list[str] = field(default_factory=list)
    gpu_seconds_per_sample: float = 0.0  # under ``plan`` (the chooser's estimate)
    backend: Backend = "native"
    # Wider dp=1 plans the bucket's jobs may take on the fleet, each with its memory per GPU (planning.fleet.fit).
    group_plans: list[tuple[ParallelPlan, float]] = field(default_factory=list)

    def job(
        self,
        index: int,
        plan: ParallelPlan,
        samples: Sequence[Sample],
        padded_slots: int,
        *,
        estimated_gpu_seconds: float,
        estimated_seconds: float,
        filled_slots: int = 0,
        memory_gib_per_gpu: float | None = None,
        extra_note: str | None = None,
        compile: bool = False,
    ) -> PlannedJob:
        """A job of this bucket; every job gets its own copy of the notes and warnings, and shares ``refused``.

        ``memory_gib_per_gpu`` is the job's plan's when it differs from the bucket's; ``extra_note`` says why.
        ``compile``: the estimates are those of the compiled job.
        """
        return PlannedJob(
            index,
            self.bucket,
            self.family,
            plan,
            samples,
            padded_slots,
            self.tokens,
            [*self.notes, extra_note] if extra_note else list(self.notes),
            backend=self.backend,
            refused=self.refused,
            estimated_gpu_seconds=estimated_gpu_seconds,
            memory_gib_per_gpu=self.memory_gib_per_gpu if memory_gib_per_gpu is None else memory_gib_per_gpu,
            warnings=list(self.warnings),
            estimated_seconds=estimated_seconds,
            filled_slots=filled_slots,
            compile=compile,
        )


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
        estimated = sum(job.estimated_gpu_seconds for job in self.jobs)
        saved = _savings(job.saved_gpu_seconds for job in self.jobs)
        return {
            "jobs": len(self.jobs),
            "samples": self.samples,
            "padded_slots": self.padded_slots,
            "padding_ratio": round(self.padded_slots / slots, 6) if slots else 0.0,
            "estimated_gpu_seconds": round(estimated, 6),
            # The same jobs without compile, step caches and few-step weights (planning.speedups), and per speed-up
            "gpu_seconds_without_speedups": round(estimated + sum(saved.values()), 6),
            "saved_gpu_seconds": saved,
        }

    def buckets(self) -> list[BucketSummary]:
        """The jobs summed per bucket and plan, in order of each bucket's first (longest) job."""
        by_bucket: dict[tuple[int, int], BucketSummary] = {}
        for job in self.jobs:
            key = (id(job.bucket), id(job.plan))  # a bucket's jobs share its key and plan objects: no hashing
            summary = by_bucket.get(key)
            if summary is None:
                summary = by_bucket[key] = BucketSummary(job)
            summary.add(job)
        # Two equal buckets made apart (never by plan_run, maybe by hand) are one bucket.
        merged: dict[tuple[BucketKey, ParallelPlan], BucketSummary] = {}
        for summary in by_bucket.values():
            kept = merged.setdefault((summary.first.bucket, summary.first.plan), summary)
            if kept is not summary:
                kept.merge(summary)
        return list(merged.values())

    def to_json(self, jobs: bool = False) -> dict:
        """The ``plan --json`` document (schema in README.md): ``jobs`` lists every job (their ids hash every
        sample id: slow on a big manifest), ``buckets`` sums them."""
        doc = {
            "rows": self.rows,
            "accepted": self.accepted,
            "rejected": [r.model_dump() for r in sorted(self.rejected, key=lambda r: r.row)],
            "buckets": [bucket.to_json() for bucket in self.buckets()],
            "summary": self.summary(),
        }
        if jobs:
            doc["jobs"] = [job.to_json() for job in self.jobs]
        return doc


def _add_savings(total: dict[str, float], saved: Mapping[str, float]) -> None:
    """Add one ``saved_gpu_seconds`` into ``total``, per speed-up."""
    for name, seconds in saved.items():
        total[name] = total.get(name, 0.0) + seconds


def _savings(per_job: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """The jobs' ``saved_gpu_seconds`` summed per speed-up (only those some job uses)."""
    total: dict[str, float] = {}
    for saved in per_job:
        _add_savings(total, saved)
    return {name: round(seconds, 6) for name, seconds in total.items()}


@dataclass
class BucketSummary:
    """The jobs of one bucket under one plan, summed: a line of `reelbatch plan`'s table."""

    first: PlannedJob  # the bucket's first job (its notes, refused plans and memory are the bucket's)
    jobs: int = 0
    samples: int = 0
    padded_slots: int = 0
    filled_slots: int = 0
    estimated_gpu_seconds: float = 0.0
    longest_job_seconds: float = 0.0
    saved_gpu_seconds: dict[str, float] = field(default_factory=dict)

    def add(self, job: PlannedJob) -> None:
        _add_savings(self.saved_gpu_seconds, job.saved_gpu_seconds)
        self.jobs += 1
        self.samples += len(job.samples)
        self.padded_slots += job.padded_slots
        self.filled_slots += job.filled_slots
        self.estimated_gpu_seconds += job.estimated_gpu_seconds
        self.longest_job_seconds = max(self.longest_job_seconds, job.estimated_seconds)

    def merge(self, other: BucketSummary) -> None:
        _add_savings(self.saved_gpu_seconds, other.saved_gpu_seconds)
        self.jobs += other.jobs
        self.samples += other.samples
        self.padded_slots += other.padded_slots
        self.filled_slots += other.filled_slots
        self.estimated_gpu_seconds += other.estimated_gpu_seconds
        self.longest_job_seconds = max(self.longest_job_seconds, other.longest_job_seconds)

    @property
    def padding_ratio(self) -> float:
        slots = self.samples + self.padded_slots
        return self.padded_slots / slots if slots else 0.0

    def to_json(self) -> dict:
        job = self.first
        return {
            **{key: value for key, value in job.to_json(with_id=False).items() if key in BUCKET_FIELDS},
            "jobs": self.jobs,
            "samples": self.samples,
            "padded_slots": self.padded_slots,
            "filled_slots": self.filled_slots,
            "padding_ratio": round(self.padding_ratio, 6),
            "estimated_gpu_seconds": round(self.estimated_gpu_seconds, 6),
            "longest_job_seconds": self.longest_job_seconds,
            "saved_gpu_seconds": {name: round(seconds, 6) for name, seconds in self.saved_gpu_seconds.items()},
        }


# What a bucket's jobs have in common: the fields of a job's JSON that a bucket's JSON repeats.
BUCKET_FIELDS = (
    "model",
    "height",
    "width",
    "num_frames",
    "num_inference_steps",
    "guidance_scale",
    "guidance_scale_2",
    "embedded_guidance_scale",
    "conditioning",
    "sequence_batch",
    "lora_sha256",
    "lora_scale",
    "plan",
    "tokens",
    "notes",
    "backend",
    "refused_plans",
    "memory_gib_per_gpu",
    "warnings",
    "cache",
)
