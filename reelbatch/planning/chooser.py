"""Choosing a bucket's parallel plan: enumerate, filter by the rules and a memory model, rank by a cost model.

Every factorisation of the job's ranks into (dp, cfg, ulysses, ring) is a candidate. A candidate is refused when
it breaks a rule (``rules.py``) or when one GPU's estimated memory (weights + activations of the tokens it holds)
exceeds ``gpu_memory_gib``. The survivors are ranked:

* ``throughput`` (the default, for datasets): fewest GPU-seconds per sample, i.e. the highest parallel
  efficiency. Data parallel wastes nothing on communication, so it wins whenever the video fits one GPU; then
  CFG parallel, then Ulysses, then ring, which is the field's order of preference and what the constants below
  reproduce. Padded slots are not part of the ranking (a bucket of one video on 8 GPUs still goes dp8; the job's
  ``estimated_gpu_seconds`` shows the waste).
* ``latency``: shortest wall time for one sample. dp does not help one sample; CFG and sequence parallel do.

The cost model is deliberately simple (a calibrated one is a later issue): one sample on one H100 takes
``family.step_seconds_100k * (tokens / 100k) ** TOKENS_EXPONENT * steps * passes`` seconds (passes = 2 with CFG),
and a plan divides that by its efficiency. Efficiencies come from /work/shared/design/timings.csv (speed-up over
one GPU divided by the GPU count):

* CFG parallel 2: SkyReels-V1 A800 0.996, SkyReels-V1 fp8 RTX 4090 0.980, ConsisID H100 0.962 -> mean 0.98.
* Ulysses u: 1 - 0.029 (u - 1). HunyuanVideo H100 u2/u4/u8 1.02/0.93/0.71, Wan2.1 14B H100 0.97/0.92/0.80,
  xDiT HunyuanVideo u3/u6 0.90/0.79; the line gives 0.97/0.91/0.80 at 2/4/8. SkyReels-V1 cfg2+u2 (0.94) and
  cfg2+u4 (0.90) match the product of the two factors (0.95, 0.89).
* Ring r: 1 - 0.08 (r - 1), i.e. 0.92/0.76/0.44 at 2/4/8: below Ulysses at every degree, as the field reports
  (Wan2.1 1.3B ring8 0.29 on RTX 4090; ConsisID cfg2+ring2 0.71 is a small model dominated by communication).
* TOKENS_EXPONENT 1.3: SkyReels-V1 720x720x25 (14k tokens, 2.4 s per pass-step) against HunyuanVideo
  720x1280x129 (119k tokens, 38 s) on H100: ln(38/2.4) / ln(119/14) = 1.30, between linear layers (1) and
  attention (2).

The memory model: ``family.param_memory_gib`` (every rank holds all weights: Ulysses and ring split activations,
not weights) + ``family.activation_gib_per_ktoken`` * tokens / sp / 1000, doubled when the rank batches the cond
and uncond passes (CFG on, cfg=1, sequence_batch off).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from reelbatch.models.registry import ModelFamily
from reelbatch.planning.rules import (
    PlanProblem,
    bucket_problems,
    candidate_plans,
    plan_violations,
    plan_warnings,
    preference_key,
    validate_plan,
)
from reelbatch.schemas import Backend, BucketKey, ParallelPlan

Objective = Literal["throughput", "latency"]
OBJECTIVES: tuple[Objective, ...] = ("throughput", "latency")

DEFAULT_GPU_MEMORY_GIB = 80.0
TOKENS_EXPONENT = 1.3
REFERENCE_TOKENS = 100_000
CFG_PARALLEL_EFFICIENCY = 0.98
ULYSSES_LOSS_PER_EXTRA_RANK = 0.029
RING_LOSS_PER_EXTRA_RANK = 0.08
LOWEST_DEGREE_EFFICIENCY = 0.1  # keeps the linear laws positive for degrees far beyond the data
LARGEST_GPU_COUNT_TO_SUGGEST = 64


# --- Cost and memory model ----------------------------------------------------------------------------------------


def plan_efficiency(plan: ParallelPlan) -> float:
    """Speed-up of one parallel group over one GPU, divided by the group's GPU count (dp costs nothing)."""
    cfg = CFG_PARALLEL_EFFICIENCY if plan.cfg == 2 else 1.0
    ulysses = max(LOWEST_DEGREE_EFFICIENCY, 1 - ULYSSES_LOSS_PER_EXTRA_RANK * (plan.ulysses - 1))
    ring = max(LOWEST_DEGREE_EFFICIENCY, 1 - RING_LOSS_PER_EXTRA_RANK * (plan.ring - 1))
    return cfg * ulysses * ring


def single_gpu_seconds(bucket: BucketKey, family: ModelFamily) -> float:
    """Estimated seconds for one sample on one H100 (the denoising loop; encode and decode are not modelled)."""
    tokens = family.tokens(bucket.height, bucket.width, bucket.num_frames)
    passes = 2 if bucket.uses_cfg else 1
    per_step = family.step_seconds_100k * (tokens / REFERENCE_TOKENS) ** TOKENS_EXPONENT
    return per_step * bucket.num_inference_steps * passes


def memory_gib_per_gpu(bucket: BucketKey, family: ModelFamily, plan: ParallelPlan) -> float:
    tokens = family.tokens(bucket.height, bucket.width, bucket.num_frames)
    batched_cfg = bucket.uses_cfg and plan.cfg == 1 and not bucket.sequence_batch
    held = tokens / (plan.ulysses * plan.ring) * (2 if batched_cfg else 1)
    return family.param_memory_gib + family.activation_gib_per_ktoken * held / 1000


def _rank_key(plan: ParallelPlan, objective: Objective) -> tuple:
    efficiency = plan_efficiency(plan)
    group = plan.cfg * plan.ulysses * plan.ring
    gpu_seconds = round(1 / efficiency, 9)  # per sample, in units of the single-GPU time
    if objective == "latency":
        return (round(1 / (group * efficiency), 9), gpu_seconds, preference_key(plan))
    return (gpu_seconds, preference_key(plan))


def rank_plans(plans: list[ParallelPlan], objective: Objective) -> list[ParallelPlan]:
    """Best first under ``objective``; ties follow the field's preference (dp, cfg, ulysses, ring)."""
    return sorted(plans, key=lambda p: _rank_key(p, objective))


# --- The choice ---------------------------------------------------------------------------------------------------


class RefusedPlan(NamedTuple):
    plan: ParallelPlan
    rule: str
    message: str

    def to_json(self) -> dict:
        return {"plan": self.plan.as_dict(), "rule": self.rule, "message": self.message}


@dataclass
class PlanChoice:
    plan: ParallelPlan | None  # None: no plan passes; ``problems`` say why and how to fix it
    notes: list[str] = field(default_factory=list)
    refused: list[RefusedPlan] = field(default_factory=list)  # better-ranked candidates, and why they were refused
    problems: list[PlanProblem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    estimated_gpu_seconds_per_sample: float = 0.0  # all GPUs of the sample's group together (H100 estimate)
    estimated_seconds_per_sample: float = 0.0  # wall time of one sample
    memory_gib_per_gpu: float = 0.0


def choose_plan(
    bucket: BucketKey,
    family: ModelFamily,
    gpus: int,
    *,
    backend: Backend | None = None,
    device: str = "cuda",
    gpu_memory_gib: float = DEFAULT_GPU_MEMORY_GIB,
    objective: Objective = "throughput",
) -> PlanChoice:
    """The best plan for ``bucket`` on ``gpus`` ranks, or none with the problem to fix.

    A plan pinned on the bucket is validated and never changed (exceeding the memory estimate is then a warning:
    the estimate is rough and the operator chose). ``backend`` defaults to the bucket's.
    """
    if gpus < 1:
        raise ValueError("gpus must be at least 1")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, not {objective!r}")
    backend = backend or bucket.backend
    if bucket.plan is not None:
        return _pinned(bucket, family, bucket.plan, gpus, backend, device, gpu_memory_gib)
    warnings = plan_warnings(bucket, family)
    problems = bucket_problems(bucket, family, backend=backend, device=device)
    if problems:
        return PlanChoice(None, problems=problems, warnings=warnings)

    refused: list[RefusedPlan] = []
    for plan in rank_plans(candidate_plans(gpus), objective):
        violations = plan_violations(bucket, family, plan, world_size=gpus, backend=backend, device=device)
        memory = memory_gib_per_gpu(bucket, family, plan)
        if violations:
            refused.append(RefusedPlan(plan, violations[0].rule, violations[0].message))
        elif memory > gpu_memory_gib:
            refused.append(RefusedPlan(plan, "out_of_memory", _memory_message(memory, gpu_memory_gib)))
        else:
            notes = _notes(bucket, plan, refused, gpus, objective, gpu_memory_gib)
            return _choice(bucket, family, plan, notes=notes, refused=refused, warnings=warnings)
    problem = _out_of_memory(bucket, family, gpus, backend, device, gpu_memory_gib, objective)
    return PlanChoice(None, refused=refused, problems=[problem], warnings=warnings)


def _choice(bucket: BucketKey, family: ModelFamily, plan: ParallelPlan, **fields) -> PlanChoice:
    single = single_gpu_seconds(bucket, family)
    efficiency = plan_efficiency(plan)
    return PlanChoice(
        plan,
        estimated_gpu_seconds_per_sample=round(single / efficiency, 6),
        estimated_seconds_per_sample=round(single / (efficiency * plan.cfg * plan.ulysses * plan.ring), 6),
        memory_gib_per_gpu=round(memory_gib_per_gpu(bucket, family, plan), 2),
        **fields,
    )


def _pinned(
    bucket: BucketKey, family: ModelFamily, plan: ParallelPlan, gpus: int, backend: Backend, device: str,
    gpu_memory_gib: float,
) -> PlanChoice:
    check = validate_plan(bucket, family, plan, world_size=gpus, backend=backend, device=device)
    if not check.ok:
        return PlanChoice(None, problems=check.problems, warnings=check.warnings)
    warnings = list(check.warnings)
    memory = memory_gib_per_gpu(bucket, family, plan)
    if memory > gpu_memory_gib:
        warnings.append(f"pinned plan {plan.short()}: {_memory_message(memory, gpu_memory_gib)}; it may run out "
                        "of memory")
    notes = [f"plan {plan.short()} is pinned (manifest plan column or --plan): validated, not chosen"]
    return _choice(bucket, family, plan, notes=notes, warnings=warnings)


def _gpu_count(gpus: int) -> str:
    return "1 GPU" if gpus == 1 else f"{gpus} GPUs"


def _memory_message(memory: float, limit: float) -> str:
    return f"needs about {memory:.1f} GiB per GPU (estimate), more than the {limit:g} GiB of one GPU"


def _notes(
    bucket: BucketKey, plan: ParallelPlan, refused: list[RefusedPlan], gpus: int, objective: Objective,
    gpu_memory_gib: float,
) -> list[str]:
    """Why the plan looks the way it does: CFG parallel on or off, sequence parallel or not."""
    notes: list[str] = []
    if not bucket.uses_cfg:
        notes.append(f"guidance_scale {bucket.guidance_scale:g} <= 1: no CFG, so no CFG parallel")
    elif bucket.sequence_batch:
        notes.append("sequence_batch is on: the CFG passes run one after another on each rank, CFG parallel is off")
    elif plan.cfg == 1:
        refused_pair = next((r for r in refused if r.plan.cfg == 2), None)
        if gpus == 1:
            notes.append("one GPU: no CFG parallel; the rank batches the cond and uncond passes")
        elif gpus % 2:
            notes.append(f"{gpus} GPUs is odd: CFG parallel needs rank pairs; each rank batches cond and uncond")
        elif refused_pair is not None:
            notes.append(f"CFG parallel is off: {refused_pair.plan.short()} was refused ({refused_pair.rule})")
        else:
            notes.append(f"{objective}: data parallel fits in memory and needs no communication, so CFG parallel is "
                         "off; each rank batches the cond and uncond passes")
    elif plan.cfg == 2 and objective == "throughput":
        batched = next((r for r in refused if r.rule == "out_of_memory" and r.plan.cfg == 1), None)
        if batched is not None:
            notes.append(f"CFG parallel: each rank holds one CFG pass; batching both ({batched.plan.short()}) "
                         f"{batched.message}")
    sp = plan.ulysses * plan.ring
    if sp > 1:
        memory_bound = [r for r in refused if r.rule == "out_of_memory" and r.plan.ulysses * r.plan.ring < sp]
        if memory_bound:
            notes.append(f"sequence parallel ulysses*ring = {sp}: with less, one sample "
                         f"{memory_bound[-1].message}")
        elif objective == "latency":
            notes.append(f"latency: one sample is split over {plan.cfg * sp} GPUs")
    return notes


def _best_fit(
    bucket: BucketKey, family: ModelFamily, gpus: int, backend: Backend, device: str, gpu_memory_gib: float,
    objective: Objective,
) -> tuple[ParallelPlan, float] | None:
    """The best-ranked plan that passes every rule and fits, with its memory; None when there is none."""
    for plan in rank_plans(candidate_plans(gpus), objective):
        memory = memory_gib_per_gpu(bucket, family, plan)
        if memory <= gpu_memory_gib and not plan_violations(
                bucket, family, plan, world_size=gpus, backend=backend, device=device):
            return plan, memory
    return None


def _out_of_memory(
    bucket: BucketKey, family: ModelFamily, gpus: int, backend: Backend, device: str, gpu_memory_gib: float,
    objective: Objective,
) -> PlanProblem:
    """Every valid plan is too big for one GPU: say by how much, and what would fit (each option checked)."""
    valid = [p for p in candidate_plans(gpus)
             if not plan_violations(bucket, family, p, world_size=gpus, backend=backend, device=device)]
    leanest = min(valid, key=lambda p: (memory_gib_per_gpu(bucket, family, p), preference_key(p)))
    need = memory_gib_per_gpu(bucket, family, leanest)
    options: list[str] = []
    if bucket.uses_cfg and not bucket.sequence_batch:
        fit = _best_fit(bucket.model_copy(update={"sequence_batch": True}), family, gpus, backend, device,
                        gpu_memory_gib, objective)
        if fit:
            options.append(f"set sequence_batch=true ({fit[0]} then needs about {fit[1]:.0f} GiB per GPU)")
    for more in range(gpus + 1, LARGEST_GPU_COUNT_TO_SUGGEST + 1):
        fit = _best_fit(bucket, family, more, backend, device, gpu_memory_gib, objective)
        if fit:
            options.append(f"run it on {more} GPUs (--gpus {more}) with {fit[0]} (about {fit[1]:.0f} GiB per GPU)")
            break
    stride = family.vae_stride_t
    for frames in range(bucket.num_frames - stride, 0, -stride):
        if _best_fit(bucket.model_copy(update={"num_frames": frames}), family, gpus, backend, device,
                     gpu_memory_gib, objective):
            options.append(f"use num_frames {frames} or fewer")
            break
    options.append(f"GPUs with at least {need:.0f} GiB (--gpu-memory-gib)")
    return PlanProblem(
        "out_of_memory",
        f"one sample needs about {need:.1f} GiB per GPU even with {leanest.short()}, the leanest valid plan on "
        f"{_gpu_count(gpus)}: more than the {gpu_memory_gib:g} GiB of one GPU (estimate: weights + activations)",
        "; or ".join(options),
    )
