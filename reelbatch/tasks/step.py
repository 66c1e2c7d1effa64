"""The one way a step becomes a Prefect task: named for the UI, never cached.

Prefect's default cache policy hashes every input of a task (cloudpickle, quoted inputs too) to make a cache key
before the task runs. A million-row manifest handed to the image check and the planner spent 95 of its 111 s
before the first launch there, and the key bought nothing: the default policy includes the flow run's id, so no
result was ever reused across runs, and within a run each step runs once. Re-runs resume from the database
(videos already made are reused), not from Prefect's result cache.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from prefect import Task, task
from prefect.cache_policies import NO_CACHE

P = ParamSpec("P")
R = TypeVar("R")


def step(name: str, fn: Callable[P, R]) -> Task[P, R]:
    """``fn`` as a Prefect task called ``name`` that computes no cache key."""
    return task(name=name, cache_policy=NO_CACHE)(fn)
