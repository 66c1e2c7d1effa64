"""What `run` and `resume` show while a run goes: rich bars at a terminal, progress lines elsewhere.

At a terminal: one bar for all samples, one per running job. Elsewhere (a log file, a Prefect worker, CI), rich
bars print nothing until the run ends, so the run prints lines instead (`LogLinesSink`), as text or JSON.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from reelbatch import defaults as default
from reelbatch.cli.render import duration, print_rejections, print_report, print_warnings
from reelbatch.progress import NullSink, ProgressSink, Tally


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


def _eta(seconds: float | None) -> str:
    return "?" if seconds is None else duration(seconds)


class LogLinesSink:
    """Progress as lines, for a log file, a Prefect worker or CI, where rich bars print nothing until the end.

    A line when the run is planned, one per finished job, and one at least every ``interval_s`` in between
    (a heartbeat, from a thread of its own, so a long job still shows the run is alive). ``fmt`` "json" writes
    each line as one JSON object.
    """

    def __init__(
        self,
        write: Callable[[str], None],
        fmt: str = default.LOG_FORMAT,
        interval_s: float = default.PROGRESS_LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._write = write
        self._json = fmt == "json"
        self.interval_s = interval_s
        self._clock = clock
        self._tally = Tally(clock)
        self._lock = threading.Lock()
        self._planned = False
        self._last_line = clock()
        self._stop = threading.Event()
        self._heart: threading.Thread | None = None

    def __enter__(self):
        self._heart = threading.Thread(target=self._beat, name="reelbatch-progress-lines", daemon=True)
        self._heart.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._heart is not None:
            self._heart.join()
        return False

    def _beat(self) -> None:
        while not self._stop.wait(max(self._last_line + self.interval_s - self._clock(), 0.05)):
            self.heartbeat()

    def heartbeat(self) -> None:
        """A progress line if the run is planned and no line was written for ``interval_s``."""
        with self._lock:
            if self._planned and self._clock() - self._last_line >= self.interval_s:
                self._emit("progress")

    def run_planned(self, jobs, samples):
        with self._lock:
            self._tally.planned(jobs, samples)
            self._planned = True
            self._emit("planned")

    def job_started(self, job_id, samples, description):
        with self._lock:
            self._tally.job_started()

    def sample_finished(self, job_id, sample_id, status):
        with self._lock:
            self._tally.sample(sample_id, status)

    def job_finished(self, job_id, status):
        with self._lock:
            self._tally.job_over(job_id, status)
            self._emit("job_finished", job_id=job_id, job_status=status)

    def _emit(self, event: str, **fields: str) -> None:
        self._last_line = self._clock()
        state = self._tally.snapshot()
        if self._json:
            self._write(json.dumps({"event": event, "time": now_iso(), **fields, **state}))
            return
        if event == "planned":
            self._write(f"{now_iso()} planned: {state['total']} videos in {state['jobs']} jobs")
            return
        prefix = f"job {fields['job_id']} {fields['job_status']}: " if event == "job_finished" else ""
        self._write(
            f"{now_iso()} {prefix}{state['finished']}/{state['total']} videos ({state['failed']} failed), "
            f"{state['jobs_over']}/{state['jobs']} jobs, {state['videos_per_min']:.1f} videos/min, "
            f"ETA {_eta(state['eta_s'])}"
        )


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def print_line(line: str) -> None:
    """A line for machines, on stdout (messages and errors stay on stderr), flushed for a reader that waits.

    Not `print`: the flow runs with Prefect's log_prints, which turns prints inside it into log records."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


@contextlib.contextmanager
def unclipped(console: Console):
    """Away from a terminal rich lays out for 80 columns and cuts table cells (`st…`); a log keeps them whole."""
    if console.is_terminal:
        yield
        return
    clipped_at = console._width  # None: rich works the width out (80 away from a terminal)
    console.width = UNCLIPPED_WIDTH
    try:
        yield
    finally:
        console._width = clipped_at


UNCLIPPED_WIDTH = 10_000  # rich draws a table only as wide as its cells need; this is a bound, not padding


@dataclass(frozen=True)
class RunOutput:
    """What `run` and `resume` print: the options --quiet, --log-format and --log-interval."""

    quiet: bool = False
    log_format: default.LogFormat = default.LOG_FORMAT
    interval_s: float = default.PROGRESS_LOG_INTERVAL_S

    def progress(self, console: Console) -> contextlib.AbstractContextManager[ProgressSink]:
        """Where the run's progress events go: nowhere, JSON lines, rich bars at a terminal, else text lines."""
        if self.quiet:
            return contextlib.nullcontext(NullSink())
        if self.log_format == "json":
            return LogLinesSink(print_line, "json", self.interval_s)
        if console.is_terminal:
            return RichProgressSink(console)
        return LogLinesSink(
            lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True), "text", self.interval_s
        )

    def report(self, report, console: Console) -> None:
        """The final report: tables (with warnings and rejected rows), or one JSON object with all of it."""
        if self.log_format == "json":
            fields = report.model_dump(mode="json")
            print_line(json.dumps({"event": "report", "time": now_iso(), **fields, "exit_code": report.exit_code}))
            return
        with unclipped(console):
            print_warnings(report.warnings)
            print_rejections(report.rejected)
            print_report(report)
