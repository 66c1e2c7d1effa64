"""Progress events from tasks to whoever is watching (the CLI's progress bars, or nobody).

Tasks run in the flow's process (threads), so a process-wide sink is enough; the default does nothing, so the
flow behaves the same under Prefect workers, tests and the CLI.
"""

from __future__ import annotations

import contextlib
from typing import Protocol


class ProgressSink(Protocol):
    def run_planned(self, jobs: int, samples: int) -> None: ...
    def job_started(self, job_id: str, samples: int, description: str) -> None: ...
    def sample_finished(self, job_id: str, sample_id: str, status: str) -> None: ...
    def job_finished(self, job_id: str, status: str) -> None: ...


class NullSink:
    def run_planned(self, jobs, samples):
        pass

    def job_started(self, job_id, samples, description):
        pass

    def sample_finished(self, job_id, sample_id, status):
        pass

    def job_finished(self, job_id, status):
        pass


_sink: ProgressSink = NullSink()


def sink() -> ProgressSink:
    return _sink


@contextlib.contextmanager
def reporting_to(new_sink: ProgressSink):
    global _sink
    previous, _sink = _sink, new_sink
    try:
        yield new_sink
    finally:
        _sink = previous
