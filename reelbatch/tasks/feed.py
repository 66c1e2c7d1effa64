"""``JobFeed``: a run's jobs handed from the recorder to the executor as they are recorded.

The flow records its jobs in batches (``tasks.dispatch.record_jobs``, longest first) while the executor already runs
the ones recorded: a job reaches the executor only once its row and its samples' rows are committed, so no job starts
before it is recorded, and the first jobs start after one batch instead of after the whole run is written.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from reelbatch.contract import JobSpec

Job = tuple[int, JobSpec]  # (priority, spec): lower priorities start first


class JobFeed:
    """Jobs in the order they were recorded. One thread puts batches and closes the feed (with the error that stopped
    it, if any); another takes what has arrived. Safe between threads of one process, never pickled."""

    def __init__(self) -> None:
        self._jobs: list[Job] = []
        self._taken = 0
        self._closed = False
        self._error: BaseException | None = None
        self._changed = threading.Condition()

    @classmethod
    def of(cls, jobs: Sequence[Job]) -> JobFeed:
        """A closed feed of jobs already recorded."""
        feed = cls()
        feed.put(jobs)
        feed.close()
        return feed

    def put(self, jobs: Sequence[Job]) -> None:
        """Jobs now recorded: they may start."""
        with self._changed:
            if self._closed:
                raise RuntimeError("jobs put into a closed feed")
            self._jobs.extend(jobs)
            self._changed.notify_all()

    def close(self, error: BaseException | None = None) -> None:
        """No more jobs will come; ``error``: what stopped the recording (``take`` raises it once the rest is taken)."""
        with self._changed:
            self._closed = True
            self._error = error
            self._changed.notify_all()

    def take(self, timeout: float = 0.0) -> list[Job]:
        """The jobs put since the last take, waiting up to ``timeout`` seconds for some while the feed is open.

        Raises the recorder's error (a ``RuntimeError`` from it) once every job recorded before it was taken.
        """
        with self._changed:
            if self._taken == len(self._jobs) and not self._closed and timeout > 0:
                self._changed.wait(timeout)
            new = self._jobs[self._taken :]
            self._taken = len(self._jobs)
            if not new and self._error is not None:
                raise RuntimeError(f"recording the run's jobs failed: {self._error}") from self._error
            return new

    @property
    def exhausted(self) -> bool:
        """Closed and every job taken: nothing more will come from ``take``."""
        with self._changed:
            return self._closed and self._taken == len(self._jobs) and self._error is None

    def all(self) -> list[Job]:
        """Every job put so far, taken or not, in the order put."""
        with self._changed:
            return list(self._jobs)
