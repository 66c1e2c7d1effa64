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

The cost model is ``planning/cost.py`` (calibrated on /work/shared/design/timings.csv, docs/COST_MODEL.md): one
sample on one GPU takes ``base(family) * (tokens / 100k) ** 1.29 * steps * passes * gpu_factor`` seconds (passes = 2
with CFG), and a plan divides that by its efficiency, ``exp(-(0.023 [cfg=2] + 0.040 (ulysses * ring - 1)))``
times 0.906 when ring is used: on H100 CFG parallel 0.977, Ulysses 2/4/8 0.961/0.888/0.758, ring 2/8 0.871/0.687.
That reproduces the field's order (data parallel, then CFG, then Ulysses, then ring). Estimates are for H100 unless
``choose_plan`` gets a ``cost_model`` on another GPU type (``CostModel.on("a800")``); the ranking does not depend on
the GPU type (its communication factor scales every loss alike).

The memory model: ``family.param_memory_gib`` (every rank holds all weights: Ulysses and ring split activations,
not weights) + ``family.activation_gib_per_ktoken`` * tokens / sp / 1000, doubled when the rank batches the cond
and uncond passes (CFG on, cfg=1, sequence_batch off).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from reelbatch.defaults import GPU_MEMORY_GIB, OBJECTIVE, OBJECTIVES, Objective  # noqa: F401 (re-exported)
from reelbatch.models.registry import ModelFamily
from reelbatch.planning.cost import DEFAULT_COST_MODEL, REFERENCE_TOKENS, TOKENS_EXPONENT, CostModel  # noqa: F401 (were defined here)
from reelbatch.planning.fixes import validate_plan
from reelbatch.planning.rules import (
    PlanProblem,
    bucket_problems,
    candidate_plans,
    plan_violations,
    plan_warnings,
    preference_key,
)
from reelbatch.schemas import Backend, BucketKey, ParallelPlan

DEFAULT_GPU_MEMORY_GIB = GPU_MEMORY_GIB
LARGEST_GPU_COUNT_TO_SUGGEST = 64


# --- Cost and memory model ----------------------------------------------------------------------------------------


def plan_efficiency(plan: ParallelPlan, cost_model: CostModel | None = None) -> float:
    """Speed-up of one parallel group over one GPU, divided by the group's GPU count (dp costs nothing)."""
    return (cost_model or DEFAULT_COST_MODEL).efficiency(plan)


def single_gpu_seconds(bucket: BucketKey, family: ModelFamily, cost_model: CostModel | None = None) -> float:
    """Estimated seconds for one sample on one GPU (H100 unless ``cost_model`` says otherwise)."""
    return (cost_model or DEFAULT_COST_MODEL).single_gpu_seconds(bucket, family)


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
    objective: Objective = OBJECTIVE,
    cost_model: CostModel | None = None,
) -> PlanChoice:
    """The best plan for ``bucket`` on ``gpus`` ranks, or none with the problem to fix.

    A plan pinned on the bucket is validated and never changed (exceeding the memory estimate is then a warning:
    the estimate is rough and the operator chose); one narrower than ``gpus`` is a job width, refused only when
    wider. ``backend`` defaults to the bucket's. ``cost_model`` (default:
    the calibrated H100 model) gives the estimates in the choice.
    """
    if gpus < 1:
        raise ValueError("gpus must be at least 1")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, not {objective!r}")
    backend = backend or bucket.backend
    if bucket.plan is not None:
        return _pinned(bucket, family, bucket.plan, gpus, backend, device, gpu_memory_gib, cost_model)
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
            return _choice(bucket, family, plan, cost_model, notes=notes, refused=refused, warnings=warnings)
    problem = _out_of_memory(bucket, family, gpus, backend, device, gpu_memory_gib, objective)
    return PlanChoice(None, refused=refused, problems=[problem], warnings=warnings)


def _choice(
    bucket: BucketKey, family: ModelFamily, plan: ParallelPlan, cost_model: CostModel | None, **fields
) -> PlanChoice:
    cost = cost_model or DEFAULT_COST_MODEL
    return PlanChoice(
        plan,
        estimated_gpu_seconds_per_sample=round(cost.sample_gpu_seconds(bucket, family, plan), 6),
        estimated_seconds_per_sample=round(cost.sample_seconds(bucket, family, plan), 6),
        memory_gib_per_gpu=round(memory_gib_per_gpu(bucket, family, plan), 2),
        **fields,
    )


def _pinned(
    bucket: BucketKey,
    family: ModelFamily,
    plan: ParallelPlan,
    gpus: int,
    backend: Backend,
    device: str,
    gpu_memory_gib: float,
    cost_model: CostModel | None = None,
) -> PlanChoice:
    # A plan narrower than the node is a job width: its jobs run side by side on the node's GPUs (the launcher and
    # the fleet schedule lend disjoint groups of any width). Only a plan wider than the node has no room.
    width = plan.world_size if plan.world_size < gpus else gpus
    check = validate_plan(bucket, family, plan, world_size=width, backend=backend, device=device)
    if not check.ok:
        return PlanChoice(None, problems=check.problems, warnings=check.warnings)
    warnings = list(check.warnings)
    memory = memory_gib_per_gpu(bucket, family, plan)
    if memory > gpu_memory_gib:
        warnings.append(
            f"pinned plan {plan.short()}: {_memory_message(memory, gpu_memory_gib)}; it may run out of memory"
        )
    notes = [f"plan {plan.short()} is pinned (manifest plan column or --plan): validated, not chosen"]
    if width < gpus:
        notes.append(
            f"pinned plan {plan.short()} is {_gpu_count(width)} wide: up to {gpus // width} of its jobs run side by "
            f"side on {gpus} GPUs"
        )
    return _choice(bucket, family, plan, cost_model, notes=notes, warnings=warnings)


def _gpu_count(gpus: int) -> str:
    return "1 GPU" if gpus == 1 else f"{gpus} GPUs"


def _memory_message(memory: float, limit: float) -> str:
    return f"needs about {memory:.1f} GiB per GPU (estimate), more than the {limit:g} GiB of one GPU"


def _notes(
    bucket: BucketKey,
    plan: ParallelPlan,
    refused: list[RefusedPlan],
    gpus: int,
    objective: Objective,
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
            notes.append(
                f"{objective}: data parallel fits in memory and needs no communication, so CFG parallel is "
                "off; each rank batches the cond and uncond passes"
            )
    elif plan.cfg == 2 and objective == "throughput":
        batched = next((r for r in refused if r.rule == "out_of_memory" and r.plan.cfg == 1), None)
        if batched is not None:
            notes.append(
                f"CFG parallel: each rank holds one CFG pass; batching both ({batched.plan.short()}) {batched.message}"
            )
    sp = plan.ulysses * plan.ring
    if sp > 1:
        memory_bound = [r for r in refused if r.rule == "out_of_memory" and r.plan.ulysses * r.plan.ring < sp]
        if memory_bound:
            notes.append(f"sequence parallel ulysses*ring = {sp}: with less, one sample {memory_bound[-1].message}")
        elif objective == "latency":
            notes.append(f"latency: one sample is split over {plan.cfg * sp} GPUs")
    return notes


def _best_fit(
    bucket: BucketKey,
    family: ModelFamily,
    gpus: int,
    backend: Backend,
    device: str,
    gpu_memory_gib: float,
    objective: Objective,
) -> tuple[ParallelPlan, float] | None:
    """The best-ranked plan that passes every rule and fits, with its memory; None when there is none."""
    for plan in rank_plans(candidate_plans(gpus), objective):
        memory = memory_gib_per_gpu(bucket, family, plan)
        if memory <= gpu_memory_gib and not plan_violations(
            bucket, family, plan, world_size=gpus, backend=backend, device=device
        ):
            return plan, memory
    return None


def _out_of_memory(
    bucket: BucketKey,
    family: ModelFamily,
    gpus: int,
    backend: Backend,
    device: str,
    gpu_memory_gib: float,
    objective: Objective,
) -> PlanProblem:
    """Every valid plan is too big for one GPU: say by how much, and what would fit (each option checked)."""
    valid = [
        p
        for p in candidate_plans(gpus)
        if not plan_violations(bucket, family, p, world_size=gpus, backend=backend, device=device)
    ]
    leanest = min(valid, key=lambda p: (memory_gib_per_gpu(bucket, family, p), preference_key(p)))
    need = memory_gib_per_gpu(bucket, family, leanest)
    options: list[str] = []
    if bucket.uses_cfg and not bucket.sequence_batch:
        fit = _best_fit(
            bucket.model_copy(update={"sequence_batch": True}), family, gpus, backend, device, gpu_memory_gib, objective
        )
        if fit:
            options.append(f"set sequence_batch=true ({fit[0]} then needs about {fit[1]:.0f} GiB per GPU)")
    for more in range(gpus + 1, LARGEST_GPU_COUNT_TO_SUGGEST + 1):
        fit = _best_fit(bucket, family, more, backend, device, gpu_memory_gib, objective)
        if fit:
            options.append(f"run it on {more} GPUs (--gpus {more}) with {fit[0]} (about {fit[1]:.0f} GiB per GPU)")
            break
    stride = family.vae_stride_t
    for frames in range(bucket.num_frames - stride, 0, -stride):
        if _best_fit(
            bucket.model_copy(update={"num_frames": frames}), family, gpus, backend, device, gpu_memory_gib, objective
        ):
            options.append(f"use num_frames {frames} or fewer")
            break
    options.append(f"GPUs with at least {need:.0f} GiB (--gpu-memory-gib)")
    return PlanProblem(
        "out_of_memory",
        f"one sample needs about {need:.1f} GiB per GPU even with {leanest.short()}, the leanest valid plan on "
        f"{_gpu_count(gpus)}: more than the {gpu_memory_gib:g} GiB of one GPU (estimate: weights + activations)",
        "; or ".join(options),
    )
