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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reelbatch import planning
from reelbatch.identity import expand_row
from reelbatch.gpus import visible_gpus
from reelbatch.models.catalog import ModelCatalog, UnknownModel
from reelbatch.models.registry import ModelFamily
from reelbatch.planning import DEFAULT_GPU_MEMORY_GIB, Objective, PlanProblem
from reelbatch.planning.cost import DEFAULT_COST_MODEL, CostModel
from reelbatch.planning.packing import PackingOptions, job_id, pack_plan
from reelbatch.rows import RowTable, SampleRefs, dictionary_codes
from reelbatch.schemas import (
    Backend,
    BucketKey,
    ManifestRow,
    ParallelPlan,
    RowRejection,
    Sample,
    many_models,
)
from reelbatch.settings import JOB_TIMEOUT_FLOOR_S, JOB_TIMEOUT_MARGIN

DEFAULT_MAX_SAMPLES_PER_JOB = 32

__all__ = [  # PlanProblem is re-exported: it used to live here
    "DEFAULT_MAX_SAMPLES_PER_JOB", "PlanProblem", "PlanRefused", "PlannedJob", "RunPlan", "bucket_key",
    "choose_plan", "cut_jobs", "default_device", "plan_run",
]


def default_device() -> str:
    """Where the ranks will run: ``cuda`` when this machine sees GPUs, else ``cpu`` (gloo ranks)."""
    return "cuda" if visible_gpus() > 0 else "cpu"


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
            "guidance_scale_2": self.bucket.guidance_scale_2,
            "embedded_guidance_scale": self.bucket.embedded_guidance_scale,
            "conditioning": self.bucket.conditioning,
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


def _grouped(codes: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions sorted by code, keeping their order within a code, and where each code starts and how many."""
    # Few codes: 16-bit ones get numpy's radix sort, much quicker than a comparison sort of 64-bit ones.
    in_order = np.argsort(codes.astype(np.uint16) if count < 2**16 else codes, kind="stable")
    counts = np.bincount(codes, minlength=count)
    return in_order, np.cumsum(counts) - counts, counts


def _first_rows(codes: np.ndarray, count: int) -> dict[int, int]:
    """The first position of each code that occurs."""
    in_order, starts, counts = _grouped(codes, count)
    return {code: int(in_order[starts[code]]) for code in np.flatnonzero(counts).tolist()}


def _bucket_table(table: RowTable) -> dict[BucketKey, np.ndarray]:
    """``_bucket_rows`` for a RowTable: row positions by bucket, buckets in order of first appearance."""
    names = tuple(BucketKey.model_fields)
    shape_of_row = table.shape_of_row.astype(np.int64)
    values_of_shape = {}
    for extra, (index, row) in enumerate(table.overrides.items(), start=len(table.shapes)):
        shape_of_row[index] = extra  # a row built one by one is a shape of its own
        values_of_shape[extra] = tuple(getattr(row, n) for n in names)
    # Shapes whose values are equal (0 and -0, say) share a bucket, whose key is the first accepted row's values,
    # as in _bucket_rows: codes are handed out in the order of each shape's first row.
    all_shapes = len(table.shapes) + len(table.overrides)
    first_rows = _first_rows(shape_of_row, all_shapes)
    code_of_key: dict[tuple, int] = {}
    bucket_of_shape = np.full(all_shapes, -1, dtype=np.int64)
    for shape_index in sorted(first_rows, key=first_rows.get):
        values = values_of_shape.get(shape_index)
        if values is None:
            shape = table.shapes[shape_index]
            values = tuple(shape[n] for n in names)
        bucket_of_shape[shape_index] = code_of_key.setdefault(values, len(code_of_key))
    # Codes were handed out in order of first appearance: that is the order of the buckets too.
    in_order, starts, counts = _grouped(bucket_of_shape[shape_of_row], len(code_of_key))
    buckets: dict[BucketKey, np.ndarray] = {}
    for code, values in enumerate(code_of_key):
        key = BucketKey(**dict(zip(names, values)))
        rows = in_order[starts[code]:starts[code] + counts[code]]
        # Distinct values that validate to one BucketKey (e.g. 5 and 5.0) share a bucket, in file order.
        buckets[key] = np.sort(np.concatenate([buckets[key], rows])) if key in buckets else rows
    return buckets


def _duplicate_suspects(table: RowTable) -> np.ndarray:
    """Rows that may ask for a video another row asks for. Only they are hashed while planning.

    A video is its content (prompt, model, shape, ...), its seed and its video index, and a row's videos have
    seeds ``seed + index``, so two rows with a seed can only share a video when they have the same seed. Rows
    without one get seeds derived from their content, which any row with the same prompt may match. So: when every
    row has a seed and no two share one (the usual dataset manifest), no row is a suspect; otherwise the suspects
    are the rows whose prompt is not unique.
    """
    if not len(table):
        return np.zeros(0, dtype=bool)
    seeds = table.columns.get("seed")
    if seeds is not None and not table.overrides and not seeds.null_count:
        values = np.concatenate([chunk.to_numpy() for chunk in seeds.chunks])[table.positions]
        if (values[1:] > values[:-1]).all() or len(np.unique(values)) == len(values):
            return np.zeros(len(table), dtype=bool)
    prompts = table.columns["prompt"]
    codes = dictionary_codes(prompts)[0][table.positions]
    suspects = np.bincount(codes)[codes] > 1
    if table.overrides:  # their prompt was stripped: compare it with every row's
        stripped = pa.array([row.prompt for row in table.overrides.values()])
        suspects |= pc.is_in(prompts, value_set=stripped).to_numpy(zero_copy_only=False)[table.positions]
        suspects[list(table.overrides)] = True
    return suspects


def _duplicate_of(row: ManifestRow, row_samples: list[Sample], seen: dict[str, int]) -> RowRejection | None:
    """The rejection of a row that asks for a video an earlier row asks for, or None (its ids then join seen)."""
    if any(s.sample_id in seen for s in row_samples):
        first = seen.get(row_samples[0].sample_id, row.row)
        return RowRejection(
            row=row.row,
            column="seed",
            rule="duplicate_sample",
            message=f"asks for the same video as row {first} (same prompt, parameters and seed)",
            fix="give the row a different seed, or raise num_videos on the first row",
        )
    for s in row_samples:
        seen[s.sample_id] = row.row
    return None


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
    return [(samples[start:start + size], size, -size % dp) for start, size in sizes]


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
    if isinstance(rows, RowTable) and (skip or rows.has_images()):
        # Resuming compares every sample id with the finished ones, and a row's images decide its bucket: make them.
        rows = list(rows)
    table = rows if isinstance(rows, RowTable) else None
    buckets = _bucket_table(table) if table is not None else _bucket_rows(rows)
    suspects = _duplicate_suspects(table) if table is not None else None
    videos = table.videos_per_row() if table is not None else None

    rejections = list(rejected)
    jobs: list[PlannedJob] = []
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
            choice = planning.choose_plan(
                bucket, family, gpus, backend=bucket.backend, device=device, gpu_memory_gib=gpu_memory_gib,
                objective=objective, cost_model=cost_model,
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
        if table is not None:
            samples, duplicates = _table_samples(table, bucket_rows, suspects, videos, seen, rejections)
            accepted -= duplicates
        else:
            samples = []
            for r in bucket_rows:
                row_samples = expand_row(r)  # the ids of one row's videos differ from each other (video index)
                duplicate = _duplicate_of(r, row_samples, seen)
                if duplicate is not None:
                    accepted -= 1
                    rejections.append(duplicate)
                    continue
                if skip:
                    skipped.extend((s, bucket) for s in row_samples if s.sample_id in skip)
                    row_samples = [s for s in row_samples if s.sample_id not in skip]
                samples.extend(row_samples)
        if not samples:
            continue
        plan = choice.plan
        tokens = family.tokens(bucket.height, bucket.width, bucket.num_frames)
        refused = [r.to_json() for r in choice.refused]
        estimates: dict[int, tuple[float, float]] = {}  # a bucket's full jobs all have the same number of slots
        for part, size, padded in _cuts(samples, plan.dp, max_samples_per_job):
            slots = size + padded
            estimate = estimates.get(slots)
            if estimate is None:
                estimate = estimates[slots] = (round(choice.estimated_gpu_seconds_per_sample * slots, 6),
                                               round(cost.job_seconds(bucket, family, plan, slots), 3))
            jobs.append(
                PlannedJob(
                    len(jobs), bucket, family, plan, part, padded, tokens, list(choice.notes),
                    backend=bucket.backend,
                    refused=refused,
                    estimated_gpu_seconds=estimate[0],
                    memory_gib_per_gpu=choice.memory_gib_per_gpu,
                    warnings=list(choice.warnings),
                    estimated_seconds=estimate[1],
                )
            )
    result = RunPlan(rows=total_rows, accepted=accepted, rejected=rejections, jobs=jobs, skipped=skipped)
    if packing is not None:
        if packing.cost_model is None and cost_model is not None:
            packing = replace(packing, cost_model=cost_model)
        result = pack_plan(result, packing, gpus_per_node=gpus, rows=rows)
    return result


def _table_samples(table: RowTable, bucket_rows: np.ndarray, suspects: np.ndarray, videos: np.ndarray,
                   seen: dict[str, int], rejections: list[RowRejection]) -> tuple[SampleRefs, int]:
    """A bucket's samples as references (every video of every row, less rows that repeat an earlier row's video)
    and how many rows were left out for that.

    Only the ``_duplicate_suspects`` can repeat a video; they are hashed here, in the order the list path hashes
    rows, so the same rows are rejected with the same messages.
    """
    keep = np.ones(len(bucket_rows), dtype=bool)
    for at in np.flatnonzero(suspects[bucket_rows]).tolist():
        row = table[int(bucket_rows[at])]
        duplicate = _duplicate_of(row, expand_row(row), seen)
        if duplicate is not None:
            rejections.append(duplicate)
            keep[at] = False
    kept = bucket_rows[keep]
    videos_per_row = videos[kept]
    sample_rows = np.repeat(kept, videos_per_row)
    first_of_row = np.repeat(np.cumsum(videos_per_row) - videos_per_row, videos_per_row)
    return SampleRefs(table, sample_rows, np.arange(len(sample_rows)) - first_of_row), len(bucket_rows) - len(kept)


# Prefect is imported last so that everything above reads, and is tested, as plain Python.
from prefect import task  # noqa: E402

plan_run_task = task(name="plan-jobs")(plan_run)
