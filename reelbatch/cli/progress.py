"""Rich progress bars for the CLI: one bar for all samples, one per running job."""

from __future__ import annotations

import threading

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn


class RichProgressSink:
    def __init__(self, console: Console):
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[state]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._lock = threading.Lock()
        self._overall: TaskID | None = None  # made on entering, when the bars start
        self._jobs: dict[str, TaskID] = {}

    def __enter__(self):
        self._progress.__enter__()
        self._overall = self._progress.add_task("all videos", total=0, state="")
        return self

    def __exit__(self, *exc):
        return self._progress.__exit__(*exc)

    @property
    def _all_videos(self) -> TaskID:
        assert self._overall is not None, "the sink reports only inside its with block"
        return self._overall

    def run_planned(self, jobs, samples):
        with self._lock:
            self._progress.update(self._all_videos, total=samples, state=f"{jobs} jobs")

    def job_started(self, job_id, samples, description):
        with self._lock:
            self._jobs[job_id] = self._progress.add_task(f"  {description}", total=samples, state="starting ranks")

    def sample_finished(self, job_id, sample_id, status):
        with self._lock:
            task = self._jobs.get(job_id)
            if task is not None:
                self._progress.update(task, advance=1, state="generating")
            self._progress.update(self._all_videos, advance=1)

    def job_finished(self, job_id, status):
        with self._lock:
            task = self._jobs.get(job_id)
            if task is not None:
                self._progress.update(task, state=status)
