"""Fleet simulation: plan and pack a manifest with the real planner, then play its jobs on K nodes of G GPUs.

``simulate(rows, nodes=K, gpus_per_node=G, gpu="h100")`` runs ``planning.planner.plan_run`` with packing
(``planning.packing``), plays the jobs on the fleet with ``fleet.schedule.schedule_jobs`` (longest waiting job
that fits starts whenever GPUs free up) and reports, for that policy and for a naive one:

* ``makespan_s``: when the last job ends;
* ``lower_bound_s``: the manifest's samples at the best GPU-seconds per sample any plan of a node's GPUs reaches
  (the throughput choice), summed, over all GPUs of the fleet; no model load, no padding, perfect balance. The
  same bound for both policies;
* ``ratio`` = makespan / lower bound; ``gpu_utilization``: GPU-seconds held by jobs / (makespan x all GPUs);
* ``padding_ratio``: padded slots / (samples + padded slots); ``gpu_hours``: GPU-hours held by jobs.

The naive policy is what single-prompt scripts do: one job per manifest row (its ``num_videos`` videos one after
another, the model loaded once per row), holding a whole node, with ``ulysses = G`` (dp=1, cfg=1). Where
``ulysses = G`` breaks a rule for the family (heads, token split, no native sequence parallel), the largest valid
sequence-parallel degree sp <= G is used, Ulysses first then ring (what Wan's scripts do for the 12-head 1.3B:
ulysses 4 x ring 2); a row that no sp = G plan fits still holds the whole node. ``SimulationReport.naive_notes``
lists every such fallback.

Pure Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from reelbatch.defaults import COMPILE, OBJECTIVE, CompileMode, Objective
from reelbatch.models.catalog import ModelCatalog
from reelbatch.models.registry import ModelFamily
from reelbatch.planning.chooser import DEFAULT_GPU_MEMORY_GIB, choose_plan, memory_gib_per_gpu
from reelbatch.planning.cost import DEFAULT_COST_MODEL, CostModel, StorageKind
from reelbatch.planning.fleet.schedule import FleetJob, Schedule, schedule_jobs
from reelbatch.planning.jobs import PlannedJob, RunPlan
from reelbatch.planning.packing_options import DEFAULT_TARGET_SECONDS, JobWidth, PackingOptions, PaddingPolicy
from reelbatch.planning.planner import plan_run
from reelbatch.planning.rules import divisors, plan_violations
from reelbatch.planning.speedups import job_seconds
from reelbatch.schemas import BucketKey, ManifestRow, ParallelPlan, RowRejection

SIMULATION_DEVICE = "cuda"  # the fleet has GPUs, whatever machine plans it


@dataclass
class PolicyFigures:
    makespan_s: float
    lower_bound_s: float
    gpu_utilization: float
    padding_ratio: float
    gpu_hours: float
    jobs: int = 0
    samples: int = 0
    padded_slots: int = 0
    extra_samples: int = 0
    load_gpu_hours: float = 0.0

    @property
    def ratio(self) -> float:
        return self.makespan_s / self.lower_bound_s if self.lower_bound_s else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "makespan_s": round(self.makespan_s, 1),
            "lower_bound_s": round(self.lower_bound_s, 1),
            "ratio": round(self.ratio, 4),
            "gpu_utilization": round(self.gpu_utilization, 4),
            "padding_ratio": round(self.padding_ratio, 6),
            "gpu_hours": round(self.gpu_hours, 2),
            "jobs": self.jobs,
            "samples": self.samples,
            "padded_slots": self.padded_slots,
            "extra_samples": self.extra_samples,
            "load_gpu_hours": round(self.load_gpu_hours, 2),
        }


@dataclass
class SimulationReport:
    nodes: int
    gpus_per_node: int
    gpu: str
    storage: str
    packed: PolicyFigures
    naive: PolicyFigures
    run_plan: RunPlan
    schedule: Schedule
    naive_schedule: Schedule
    naive_notes: list[str] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        """How many times faster than the naive policy the packed plan finishes."""
        return self.naive.makespan_s / self.packed.makespan_s if self.packed.makespan_s else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            **self.packed.to_json(),
            "naive": self.naive.to_json(),
            "speedup_vs_naive": round(self.speedup, 3),
            "fleet": {
                "nodes": self.nodes,
                "gpus_per_node": self.gpus_per_node,
                "gpu": self.gpu,
                "storage": self.storage,
            },
            "naive_notes": self.naive_notes,
        }

    def summary_lines(self) -> list[str]:
        """Plain sentences for a terminal."""
        p, n = self.packed, self.naive
        fleet = f"{self.nodes} x {self.gpus_per_node} {self.gpu.upper()}"
        compiled = sum(1 for job in self.run_plan.jobs if job.compile)
        return [
            f"fleet {fleet}: makespan {p.makespan_s / 3600:,.2f} h (lower bound {p.lower_bound_s / 3600:,.2f} h, "
            f"ratio {p.ratio:.3f}), GPU utilisation {p.gpu_utilization:.1%}, {p.gpu_hours:,.1f} GPU-hours, "
            f"{p.jobs} jobs ({compiled} compiled), padding {p.padding_ratio:.2%}",
            f"naive (one job per prompt, ulysses={self.gpus_per_node} on a whole node, nothing compiled): makespan "
            f"{n.makespan_s / 3600:,.2f} h (ratio {n.ratio:.3f}), {n.gpu_hours:,.1f} GPU-hours; "
            f"packed is {self.speedup:.2f}x faster",
        ]


def naive_plan(
    bucket: BucketKey,
    family: ModelFamily,
    gpus_per_node: int,
    *,
    gpu_memory_gib: float,
    cost: CostModel = DEFAULT_COST_MODEL,
    device: str = SIMULATION_DEVICE,
) -> ParallelPlan:
    """The plan a single-prompt script would use on a whole node: ulysses = G, else the largest valid sp."""
    free = bucket.model_copy(update={"plan": None})
    for sp in range(gpus_per_node, 0, -1):
        plans = [ParallelPlan(ulysses=u, ring=sp // u) for u in divisors(sp)]
        valid = [
            p
            for p in plans
            if not plan_violations(free, family, p, world_size=sp, backend=bucket.backend, device=device)
            and memory_gib_per_gpu(free, family, p) <= gpu_memory_gib
        ]
        if valid:
            return max(valid, key=lambda p: (cost.efficiency(p), p.ulysses))
    return ParallelPlan()


def _packed_figures(
    run_plan: RunPlan, cost: CostModel, storage: str, memory: float, nodes: int, gpus_per_node: int, name
) -> tuple[PolicyFigures, Schedule]:
    """The plan's own jobs played on the fleet: figures and schedule. ``name(job)`` names each placement.

    Durations are the cost model's (compiled where the job compiles), computed once per (bucket, plan, slots,
    compile): the jobs of a big manifest are thousands of copies of a few shapes. Nothing here reads a job's
    samples, only their number.
    """
    seconds_of: dict[tuple[int, int, int, bool], float] = {}
    load_of: dict[int, float] = {}
    best: dict[int, float] = {}  # per bucket: the best GPU-seconds per sample a plan on one node reaches
    jobs: list[FleetJob] = []
    load_held = bound_gpu_seconds = 0.0
    real_samples = all_samples = padded = 0
    for job in run_plan.jobs:
        size = len(job.samples)
        slots = size + job.padded_slots
        # The run plan holds these objects for as long as this runs.
        key = (id(job.bucket), id(job.plan), slots, job.compile)
        seconds = seconds_of.get(key)
        if seconds is None:
            seconds = seconds_of[key] = job_seconds(job, cost, storage)
        jobs.append(FleetJob(name(job), job.plan.world_size, seconds))
        load = load_of.get(id(job.family))
        if load is None:
            load = load_of[id(job.family)] = cost.load_seconds(job.family, storage)
        load_held += load * job.plan.world_size
        if id(job.bucket) not in best:
            best[id(job.bucket)] = _best_sample_gpu_seconds(job, cost, gpus_per_node, memory)
        count = size - job.filled_slots
        real_samples += count
        all_samples += size
        padded += job.padded_slots
        # A compiled job's samples run faster: the bound counts them at that speed (the compile itself is overhead).
        bound_gpu_seconds += best[id(job.bucket)] * count * (cost.compile_time_factor if job.compile else 1.0)
    schedule = schedule_jobs(jobs, nodes, gpus_per_node)
    figures = PolicyFigures(
        makespan_s=schedule.makespan,
        # The bound: every real sample at its best GPU-seconds, over all GPUs of the fleet.
        lower_bound_s=bound_gpu_seconds / (nodes * gpus_per_node),
        gpu_utilization=schedule.utilization(),
        padding_ratio=padded / (all_samples + padded) if all_samples + padded else 0.0,
        gpu_hours=schedule.busy_gpu_seconds / 3600,
        jobs=len(jobs),
        samples=all_samples,
        padded_slots=padded,
        extra_samples=all_samples - real_samples,
        load_gpu_hours=load_held / 3600,
    )
    return figures, schedule


def _best_sample_gpu_seconds(job: PlannedJob, cost: CostModel, gpus_per_node: int, memory: float) -> float:
    free = job.bucket.model_copy(update={"plan": None})
    choice = choose_plan(
        free,
        job.family,
        gpus_per_node,
        backend=job.bucket.backend,
        device=SIMULATION_DEVICE,
        gpu_memory_gib=memory,
        cost_model=cost,
    )
    if choice.plan is not None:
        return choice.estimated_gpu_seconds_per_sample
    return cost.sample_gpu_seconds(job.bucket, job.family, job.plan)


def estimate_fleet(
    run_plan: RunPlan,
    *,
    nodes: int = 1,
    gpus_per_node: int = 8,
    gpu: str = "h100",
    cost_model: CostModel | None = None,
    storage: StorageKind = "local",
    gpu_memory_gib: float | None = None,
) -> PolicyFigures:
    """The plan's jobs played on the fleet (``simulate_plan``'s packed figures, without the naive policy).

    What `reelbatch plan --nodes/--gpu` reports; placements are named by job position, so no job id (a hash of
    every sample id) is computed.
    """
    cost = (cost_model or DEFAULT_COST_MODEL).on(gpu)
    memory = gpu_memory_gib or cost.memory_gib() or DEFAULT_GPU_MEMORY_GIB
    figures, _ = _packed_figures(run_plan, cost, storage, memory, nodes, gpus_per_node, lambda job: str(job.index))
    return figures


def simulate_plan(
    run_plan: RunPlan,
    *,
    nodes: int = 1,
    gpus_per_node: int = 8,
    gpu: str = "h100",
    cost_model: CostModel | None = None,
    storage: StorageKind = "local",
    gpu_memory_gib: float | None = None,
) -> SimulationReport:
    """Play an existing plan's jobs (packed or not) and the naive policy for the same samples on the fleet.

    Job durations come from ``cost_model`` on ``gpu`` with ``storage`` (so an unpacked ``reelbatch plan`` can be
    costed too); the plan's jobs must fit ``gpus_per_node``.
    """
    cost = (cost_model or DEFAULT_COST_MODEL).on(gpu)
    memory = gpu_memory_gib or cost.memory_gib() or DEFAULT_GPU_MEMORY_GIB
    packed, schedule = _packed_figures(run_plan, cost, storage, memory, nodes, gpus_per_node, lambda job: job.job_id)
    lower_bound, real_samples = packed.lower_bound_s, packed.samples - packed.extra_samples

    # The naive policy: one job per row, a whole node each.
    per_row: dict[tuple[BucketKey, int], tuple[PlannedJob, int]] = {}
    for job in run_plan.jobs:
        for sample in job.samples[: len(job.samples) - job.filled_slots]:
            key = (job.bucket, sample.row)
            _, count = per_row.get(key, (job, 0))
            per_row[key] = (job, count + 1)
    plans: dict[BucketKey, ParallelPlan] = {}
    notes: list[str] = []
    naive_jobs = []
    naive_load = 0.0
    for (bucket, row), (job, count) in per_row.items():
        if bucket not in plans:
            plans[bucket] = naive_plan(bucket, job.family, gpus_per_node, gpu_memory_gib=memory, cost=cost)
            plan = plans[bucket]
            note = (
                f"{bucket.model} {bucket.height}x{bucket.width}x{bucket.num_frames}: ulysses={gpus_per_node} "
                f"is not valid; naive uses {plan.short()} (sp {plan.world_size}) on the node's "
                f"{gpus_per_node} GPUs"
            )
            if plan.ulysses != gpus_per_node and note not in notes:
                notes.append(note)
        plan = plans[bucket]
        load = cost.load_seconds(job.family, storage)
        seconds = load + count * cost.sample_seconds(bucket, job.family, plan)
        naive_load += load * gpus_per_node
        naive_jobs.append(FleetJob(f"naive-{bucket.model}-{row}", gpus_per_node, seconds))
    naive_schedule = schedule_jobs(naive_jobs, nodes, gpus_per_node)
    naive = PolicyFigures(
        makespan_s=naive_schedule.makespan,
        lower_bound_s=lower_bound,
        gpu_utilization=naive_schedule.utilization(),
        padding_ratio=0.0,
        gpu_hours=naive_schedule.busy_gpu_seconds / 3600,
        jobs=len(naive_jobs),
        samples=real_samples,
        load_gpu_hours=naive_load / 3600,
    )
    return SimulationReport(
        nodes, gpus_per_node, cost.gpu, storage, packed, naive, run_plan, schedule, naive_schedule, notes
    )


def simulate(
    rows: Sequence[ManifestRow] | Any,
    *,
    nodes: int = 1,
    gpus_per_node: int = 8,
    gpu: str = "h100",
    catalog: ModelCatalog | None = None,
    cost_model: CostModel | None = None,
    storage: StorageKind = "local",
    target_seconds: float = DEFAULT_TARGET_SECONDS,
    padding: PaddingPolicy = "pad",
    width: JobWidth = "group",
    fit_to_fleet: bool = True,
    max_samples_per_job: int | None = None,
    gpu_memory_gib: float | None = None,
    objective: Objective = OBJECTIVE,
    rejected: Sequence[RowRejection] = (),
    total_rows: int | None = None,
    compile: CompileMode = COMPILE,
) -> SimulationReport:
    """Plan ``rows`` (``ManifestRow``s, or a ``ManifestReadResult``) for the fleet, pack, and simulate both policies.

    The plan is ``planner.plan_run`` on ``gpus_per_node`` ranks for CUDA devices with ``gpu_memory_gib``
    (default: the GPU type's memory), packed by ``PackingOptions(target_seconds, padding, width, storage, nodes)``.
    The report's ``run_plan`` is that plan (its jobs ordered longest first); ``compile`` is the run's ``--compile``
    (the naive policy never compiles).
    """
    if hasattr(rows, "rows") and hasattr(rows, "rejections"):  # a ManifestReadResult
        read: Any = rows
        rejected, total_rows, rows = read.rejections, read.total_rows, read.rows
    cost = (cost_model or DEFAULT_COST_MODEL).on(gpu)
    memory = gpu_memory_gib or cost.memory_gib() or DEFAULT_GPU_MEMORY_GIB
    options = PackingOptions(
        target_seconds=target_seconds,
        padding=padding,
        width=width,
        storage=storage,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        max_samples_per_job=max_samples_per_job,
        fit_to_fleet=fit_to_fleet,
        cost_model=cost,
    )
    run_plan = plan_run(
        rows,
        rejected,
        total_rows if total_rows is not None else len(rows) + len(rejected),
        catalog or ModelCatalog.from_config(),
        gpus_per_node,
        gpu_memory_gib=memory,
        objective=objective,
        device=SIMULATION_DEVICE,
        packing=options,
        cost_model=cost,
        compile=compile,
    )
    return simulate_plan(
        run_plan,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        gpu=gpu,
        cost_model=cost,
        storage=storage,
        gpu_memory_gib=memory,
    )
