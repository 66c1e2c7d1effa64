"""The flow's planning step: ``planning.planner.plan_run`` as a Prefect task (the planning itself is plain Python)."""

from __future__ import annotations

from reelbatch.planning.planner import plan_run
from reelbatch.tasks.step import step

plan_run_task = step("plan-jobs", plan_run)
