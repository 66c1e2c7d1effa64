"""Test-only fault injection for the orchestrator. Never set these variables in production.

``REELBATCH_TEST_CRASH_AT=before_launch|mid_job|collect`` makes the orchestrator process SIGKILL itself the first
time it reaches that point of a run, exactly as ``kill -9`` would, so the crash tests exercise the real recovery
path (orphaned ranks, half-collected jobs) instead of a mock.
"""

from __future__ import annotations

import os
import signal

CRASH_ENV = "REELBATCH_TEST_CRASH_AT"
CRASH_POINTS = ("before_launch", "mid_job", "collect")


def crash_point(name: str) -> None:
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
