"""Parallel plans: the rules a plan must pass before launch, and the choice of the best plan for a bucket.

Pure Python (no torch, no weights): ``reelbatch plan`` and the tests run it anywhere. ``rules`` holds the checks,
``fixes`` the plan each broken rule suggests and ``validate_plan``, ``chooser`` the enumeration, memory model, cost
model and ranking.
"""

from reelbatch.planning.chooser import (
    DEFAULT_GPU_MEMORY_GIB,
    OBJECTIVES,
    Objective,
    PlanChoice,
    RefusedPlan,
    choose_plan,
    memory_gib_per_gpu,
    plan_efficiency,
    single_gpu_seconds,
)
from reelbatch.planning.fixes import validate_plan
from reelbatch.planning.rules import PlanCheck, PlanProblem, candidate_plans

__all__ = [
    "DEFAULT_GPU_MEMORY_GIB",
    "OBJECTIVES",
    "Objective",
    "PlanCheck",
    "PlanChoice",
    "PlanProblem",
    "RefusedPlan",
    "candidate_plans",
    "choose_plan",
    "memory_gib_per_gpu",
    "plan_efficiency",
    "single_gpu_seconds",
    "validate_plan",
]
