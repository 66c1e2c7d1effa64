"""Fixes for broken plan rules, and the whole check of a plan (``validate_plan``).

A plan-rule fix names a concrete plan (``PlanProblem.suggested_plan``) that passes every plan rule for the same
bucket and world size: the passing plans are enumerated and the one nearest to the refused plan, keeping what the
broken rule does not touch, is suggested. The rules themselves are in ``planning.rules``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from reelbatch.models.registry import ModelFamily
from reelbatch.planning.rules import (
    PlanCheck,
    PlanProblem,
    Violation,
    bucket_problems,
    candidate_plans,
    degree_list,
    is_gpu,
    plan_violations,
    plan_warnings,
    preference_key,
    size_text,
)
from reelbatch.schemas import PLAN_DEGREES, Backend, BucketKey, ParallelPlan


def passing_plans(
    bucket: BucketKey, family: ModelFamily, *, world_size: int, backend: Backend, device: str
) -> list[ParallelPlan]:
    """Candidate plans for ``world_size`` ranks that break no plan rule (dp=world_size always does)."""
    return [
        p
        for p in candidate_plans(world_size)
        if not plan_violations(bucket, family, p, world_size=world_size, backend=backend, device=device)
    ]


def _distance(a: ParallelPlan, b: ParallelPlan) -> float:
    """How far apart two plans are: factor-of-two steps summed over the degrees."""
    return sum(abs(math.log2(getattr(a, d) / getattr(b, d))) for d in PLAN_DEGREES)


def _nearest(
    plan: ParallelPlan, passing: list[ParallelPlan], prefer: Callable[[ParallelPlan], bool] = lambda p: True
) -> ParallelPlan:
    return min(passing, key=lambda p: (not prefer(p), _distance(plan, p), preference_key(p)))


def _keeps(plan: ParallelPlan, *degrees: str) -> Callable[[ParallelPlan], bool]:
    """A preference for plans that keep ``degrees`` of ``plan`` unchanged."""
    return lambda p: all(getattr(p, d) == getattr(plan, d) for d in degrees)


def _fix_for(
    violation: Violation,
    bucket: BucketKey,
    family: ModelFamily,
    plan: ParallelPlan,
    passing: list[ParallelPlan],
    *,
    world_size: int,
    backend: Backend,
    device: str,
) -> PlanProblem:
    """Turn a violation into a problem whose fix names a passing plan (and says why that one)."""
    rule = violation.rule
    sp = plan.ulysses * plan.ring

    def keep_sp(p: ParallelPlan) -> bool:
        return p.ulysses * p.ring == sp

    extra = ""
    if rule == "plan_product":
        suggestion = _nearest(plan, passing, _keeps(plan, "cfg", "ulysses", "ring"))
        own_size_ok = not plan_violations(
            bucket, family, plan, world_size=plan.world_size, backend=backend, device=device
        )
        fix = f"use {suggestion} for {world_size} ranks"
        if own_size_ok:
            fix += f", or give the job {plan.world_size} GPUs (--gpus {plan.world_size})"
        return PlanProblem(rule, violation.message, fix, suggested_plan=suggestion)
    if rule in ("cfg_degree", "cfg_without_guidance", "sequence_batch_with_cfg_parallel"):
        keeps_sequence_split = _keeps(plan, "ulysses", "ring")
        suggestion = _nearest(plan, passing, lambda p: p.cfg == 1 and keeps_sequence_split(p))
        if rule == "sequence_batch_with_cfg_parallel":
            extra = ", or set sequence_batch=false to keep CFG parallel"
        return PlanProblem(rule, violation.message, f"use {suggestion}{extra}", suggested_plan=suggestion)
    if rule == "cache_needs_whole_sequence":
        suggestion = _nearest(plan, passing, lambda p: p.ulysses == 1 and p.ring == 1)
        return PlanProblem(
            rule,
            violation.message,
            f"use {suggestion} (each rank caches whole passes), or set cache none to keep the sequence split",
            suggested_plan=suggestion,
        )
    if rule == "sequence_parallel_unsupported":
        support = family.sequence_parallel(backend)
        suggestion = _nearest(
            plan, passing, lambda p: (support.ulysses or p.ulysses == 1) and (support.ring or p.ring == 1)
        )
        other: Backend = "xdit" if backend == "native" else "native"
        if is_gpu(device) and not plan_violations(
            bucket, family, plan, world_size=world_size, backend=other, device=device
        ):
            extra = f", or keep the plan with backend {other}"
        return PlanProblem(rule, violation.message, f"use {suggestion}{extra}", suggested_plan=suggestion)
    if rule == "ulysses_heads":
        suggestion = _nearest(plan, passing, keep_sp)
        good_ulysses = [p.ulysses for p in passing if p.ulysses > 1]
        ring_ok = any(p.ring > 1 for p in passing)
        if good_ulysses:
            fix = f"use ulysses {degree_list(good_ulysses)} (they divide the {family.heads} heads)"
            fix += " and ring for the rest of the sequence parallelism" if ring_ok else ""
        else:
            fix = f"no ulysses degree up to {world_size} divides the {family.heads} heads"
            fix += "; use ring instead" if ring_ok else "; use dp or cfg"
        return PlanProblem(rule, violation.message, f"{fix}, e.g. {suggestion}", suggested_plan=suggestion)
    if rule == "ring_needs_gpu":
        suggestion = _nearest(plan, passing, lambda p: p.ring == 1 and keep_sp(p))
        return PlanProblem(
            rule,
            violation.message,
            f"on CPU use ulysses or dp instead of ring, e.g. {suggestion}",
            suggested_plan=suggestion,
        )
    if rule == "sequence_not_divisible":
        tokens = family.tokens(bucket.height, bucket.width, bucket.num_frames)
        suggestion = _nearest(plan, passing)
        good_sp = [p.ulysses * p.ring for p in passing if p.ulysses * p.ring > 1]
        if good_sp:
            fix = f"{tokens} tokens split evenly over ulysses*ring = {degree_list(good_sp)}: use e.g. {suggestion}"
        else:
            fix = f"no sequence-parallel degree up to {world_size} splits {tokens} tokens evenly: use {suggestion}"
        if (
            family.xdit.split == "padded"
            and backend == "native"
            and is_gpu(device)
            and not plan_violations(bucket, family, plan, world_size=world_size, backend="xdit", device=device)
        ):
            fix += ", or keep the plan with backend xdit (it pads the sequence)"
        return PlanProblem(rule, violation.message, fix, suggested_plan=suggestion)
    if rule == "hunyuan_sequence_split":
        return _hunyuan_split_problem(violation, bucket, family, plan, passing, world_size)
    raise AssertionError(f"no fix written for rule {rule}")  # every rule above must have one


def _hunyuan_split_problem(
    violation: Violation,
    bucket: BucketKey,
    family: ModelFamily,
    plan: ParallelPlan,
    passing: list[ParallelPlan],
    world_size: int,
) -> PlanProblem:
    sp = plan.ulysses * plan.ring
    h, w = family.latent_grid(bucket.height, bucket.width)
    splits = [d for d in range(2, max(8, world_size) + 1) if h % d == 0 or w % d == 0]
    suggestion = _nearest(plan, passing)
    size = size_text(bucket.height, bucket.width)
    parts = [
        f"{size} splits over ulysses*ring = {degree_list(splits)} only"
        if splits
        else f"{size} splits over no sequence-parallel degree"
    ]
    parts.append(f"at {world_size} ranks use e.g. {suggestion}")
    if family.allowed_sizes and bucket.height > 0 and bucket.width > 0:
        # Nearby sizes (same area and aspect first) that do split over the requested degree.
        def closeness(hw: tuple[int, int]) -> float:
            area = math.log(hw[0] * hw[1] / (bucket.height * bucket.width))
            aspect = math.log((hw[0] / hw[1]) / (bucket.height / bucket.width))
            return abs(area) + abs(aspect)

        fitting = sorted(
            (
                s
                for s in family.allowed_sizes
                if any(side % sp == 0 for side in family.latent_grid(*s)) and s != (bucket.height, bucket.width)
            ),
            key=closeness,
        )
        if fitting:
            parts.append(
                f"or keep ulysses*ring = {sp} with size "
                f"{' or '.join(size_text(*s) for s in fitting[:2])} (height x width)"
            )
    return PlanProblem(violation.rule, violation.message, "; ".join(parts), suggested_plan=suggestion)


def validate_plan(
    bucket: BucketKey,
    family: ModelFamily,
    plan: ParallelPlan,
    *,
    world_size: int,
    backend: Backend | None = None,
    device: str = "cuda",
) -> PlanCheck:
    """Every rule ``plan`` must pass for ``bucket`` on ``world_size`` ranks; each problem carries a fix.

    ``backend`` defaults to the bucket's. Plan-rule fixes name a plan that passes every plan rule (and so the whole
    check when the bucket itself is fine); bucket-rule fixes change the row or the backend.
    """
    backend = backend or bucket.backend
    problems = bucket_problems(bucket, family, backend=backend, device=device)
    violations = plan_violations(bucket, family, plan, world_size=world_size, backend=backend, device=device)
    if violations:
        passing = passing_plans(bucket, family, world_size=world_size, backend=backend, device=device)
        problems += [
            _fix_for(v, bucket, family, plan, passing, world_size=world_size, backend=backend, device=device)
            for v in violations
        ]
    return PlanCheck(problems=problems, warnings=plan_warnings(bucket, family))
