"""Progress events from tasks to whoever is watching (the CLI's progress bars, or nobody).

Tasks run in the flow's process (threads), so a process-wide sink is enough; the default does nothing, so the
flow behaves the same under Prefect workers, tests and the CLI.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any, Protocol


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


class Tally:
    """A run's videos and jobs over so far, as the events say, with the rate and the time left they imply.

    A job that is retried reports its samples again: a sample that failed and is then done counts once, as done,
    and a job counts once whatever its attempts. Only failed sample ids are kept, so memory follows failures,
    not the run's size.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.total = 0
        self.jobs = 0
        self.done = 0
        self.reused = 0  # made by another run meanwhile (claims): over, but not this run's work, so not in the rate
        self._failed: set[str] = set()
        self._jobs_over: dict[str, str] = {}
        self.started_at: float | None = None  # the first job's start: planning and staging are not generating

    def planned(self, jobs: int, samples: int) -> None:
        self.jobs, self.total = jobs, samples

    def job_started(self) -> None:
        if self.started_at is None:
            self.started_at = self._clock()

    def sample(self, sample_id: str, status: str) -> None:
        if status == "reused":
            self.reused += 1
        elif status == "done":
            self._failed.discard(sample_id)
            self.done += 1
        else:
            self._failed.add(sample_id)

    def job_over(self, job_id: str, status: str) -> None:
        self._jobs_over[job_id] = status

    @property
    def failed(self) -> int:
        return len(self._failed)

    @property
    def finished(self) -> int:
        return self.done + self.reused + self.failed

    def snapshot(self) -> dict[str, Any]:
        """Counts, videos per minute and seconds left (None until a video is over)."""
        elapsed = 0.0 if self.started_at is None else self._clock() - self.started_at
        per_minute = 60.0 * (self.finished - self.reused) / elapsed if elapsed > 0 else 0.0
        left = max(self.total - self.finished, 0)
        eta = 60.0 * left / per_minute if per_minute > 0 else (0.0 if left == 0 and self.total else None)
        return {
            "finished": self.finished,
            "done": self.done,
            "reused": self.reused,
            "failed": self.failed,
            "total": self.total,
            "jobs_over": len(self._jobs_over),
            "jobs": self.jobs,
            "elapsed_s": round(elapsed, 1),
            "videos_per_min": round(per_minute, 2),
            "eta_s": None if eta is None else round(eta, 1),
        }
