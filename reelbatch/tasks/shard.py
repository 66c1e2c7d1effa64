"""The flow's planning step: ``planning.planner.plan_run`` as a Prefect task (the planning itself is plain Python)."""

from __future__ import annotations

from prefect import task

from reelbatch.planning.planner import plan_run

plan_run_task = task(name="plan-jobs")(plan_run)
