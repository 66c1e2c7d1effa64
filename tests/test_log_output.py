"""What `reelbatch run` prints away from a terminal: progress lines (text or JSON), --quiet, unclipped tables."""

from __future__ import annotations

import builtins
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from reelbatch.cli.progress import LogLinesSink, RichProgressSink, RunOutput
from reelbatch.progress import NullSink
from tests.cli_runner import reelbatch

PROGRESS_KEYS = {"event", "time", "finished", "done", "failed", "total", "jobs_over", "jobs", "elapsed_s"}
PROGRESS_KEYS |= {"videos_per_min", "eta_s", "reused"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines_of(fmt: str, interval_s: float = 30.0) -> tuple[LogLinesSink, list[str], Clock]:
    lines: list[str] = []
    clock = Clock()
    return LogLinesSink(lines.append, fmt, interval_s, clock=clock), lines, clock


def test_a_line_per_finished_job_with_counts_rate_and_eta():
    sink, lines, clock = lines_of("text")
    sink.run_planned(jobs=2, samples=4)
    assert lines == [lines[0]] and "4 videos in 2 jobs" in lines[0]
    sink.job_started("job-a", 3, "tiny-wan 32x32x5")
    clock.now += 60
    sink.sample_finished("job-a", "s1", "done")
    sink.sample_finished("job-a", "s2", "done")
    sink.sample_finished("job-a", "s3", "failed")
    assert len(lines) == 1  # samples move the counts, jobs make the lines
    sink.job_finished("job-a", "done")
    # 3 videos over in a minute: 3 a minute, the last one in 20 s.
    assert "job job-a done: 3/4 videos (1 failed), 1/2 jobs, 3.0 videos/min, ETA 0m20s" in lines[1]


def test_a_retried_sample_counts_once():
    sink, lines, clock = lines_of("json")
    sink.run_planned(jobs=1, samples=2)
    sink.job_started("job-a", 2, "")
    clock.now += 30
    sink.sample_finished("job-a", "s1", "failed")
    sink.job_finished("job-a", "oom")
    sink.job_started("job-a", 2, "")  # the retry
    sink.sample_finished("job-a", "s1", "done")
    sink.sample_finished("job-a", "s2", "done")
    sink.job_finished("job-a", "done")
    last = json.loads(lines[-1])
    assert (last["finished"], last["done"], last["failed"], last["total"]) == (2, 2, 0, 2)
    assert (last["jobs_over"], last["jobs"], last["eta_s"]) == (1, 1, 0.0)


def test_videos_another_run_made_are_over_but_not_in_the_rate():
    sink, lines, clock = lines_of("json")
    sink.run_planned(jobs=1, samples=4)
    sink.job_started("job-a", 4, "")
    clock.now += 60
    sink.sample_finished("job-a", "s1", "reused")
    sink.sample_finished("job-a", "s2", "reused")
    sink.sample_finished("job-a", "s3", "done")
    sink.job_finished("job-a", "done")
    last = json.loads(lines[-1])
    assert (last["finished"], last["done"], last["reused"], last["failed"]) == (3, 1, 2, 0)
    assert (last["videos_per_min"], last["eta_s"]) == (1.0, 60.0)  # one video made in a minute, one left


def test_a_heartbeat_line_when_no_job_finished_for_the_interval():
    sink, lines, clock = lines_of("json", interval_s=30)
    clock.now += 100
    sink.heartbeat()
    assert lines == []  # nothing to count before the plan
    sink.run_planned(jobs=1, samples=10)
    sink.job_started("job-a", 10, "")
    clock.now += 29
    sink.heartbeat()
    assert len(lines) == 1
    clock.now += 1
    sink.sample_finished("job-a", "s1", "done")
    sink.heartbeat()
    beat = json.loads(lines[-1])
    assert beat["event"] == "progress" and beat["finished"] == 1 and beat["eta_s"] == pytest.approx(270)
    assert set(beat) == PROGRESS_KEYS
    sink.heartbeat()
    assert len(lines) == 2  # the interval starts again at each line


def test_the_heartbeat_thread_stops_with_the_sink():
    sink, lines, _ = lines_of("text", interval_s=3600)
    with sink:
        sink.run_planned(jobs=1, samples=1)
    assert sink._heart is not None and not sink._heart.is_alive()


def test_bars_at_a_terminal_lines_elsewhere_nothing_when_quiet():
    terminal = Console(file=io.StringIO(), force_terminal=True)
    log = Console(file=io.StringIO())
    assert isinstance(RunOutput().progress(terminal), RichProgressSink)
    assert isinstance(RunOutput().progress(log), LogLinesSink)
    assert isinstance(RunOutput(log_format="json").progress(terminal), LogLinesSink)
    with RunOutput(quiet=True).progress(terminal) as sink:
        assert isinstance(sink, NullSink)


# --- the command, in this process, with the flow replaced by one that reports two jobs ---

LONG_FOLDER = "videos-" + "x" * 90  # past 80 columns: rich would cut it in a table


@pytest.fixture
def fake_flow(monkeypatch):
    """`reelbatch run` up to the flow; the flow reports 3 videos in 2 jobs (one fails) and returns its report."""
    import reelbatch.flows.generate as generate
    from reelbatch import progress
    from reelbatch.infra.images import IMAGE_ROOTS_ENV
    from reelbatch.tasks.record import RunReport

    monkeypatch.setenv(IMAGE_ROOTS_ENV, "")  # run sets it for its run: give it back afterwards
    for name, value in {"PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}.items():
        monkeypatch.setenv(name, value)

    def generate_dataset(manifest, config, resume_run_id=None):
        sink = progress.sink()
        # The flow runs with Prefect's log_prints: a print inside it becomes a log record, not a line on stdout.
        with monkeypatch.context() as flow_run:
            flow_run.setattr(builtins, "print", lambda *args, **kwargs: None)
            sink.run_planned(2, 3)
            for job_id, statuses in (("job-a", ["done", "done"]), ("job-b", ["failed"])):
                sink.job_started(job_id, len(statuses), "tiny-wan 32x32x5")
                for number, status in enumerate(statuses):
                    sink.sample_finished(job_id, f"{job_id}-{number}", status)
                sink.job_finished(job_id, "done" if "failed" not in statuses else "unknown")
        return RunReport(
            run_id="run-1",
            status="partial",
            rows=3,
            accepted=3,
            rejected=[],
            jobs=2,
            done=2,
            failed=1,
            output=config.output,
            started_at=0.0,
            warnings=["column `colour` is not one reelbatch knows"],
        )

    monkeypatch.setattr(generate, "generate_dataset", generate_dataset)


def run_command(tmp_path: Path, *options: str):
    manifest = tmp_path / "m.csv"
    manifest.write_text("prompt\na cat\na dog\na car\n")
    out = str(tmp_path.resolve() / LONG_FOLDER)
    return reelbatch("run", str(manifest), "--out", out, "--db", f"sqlite:///{tmp_path / 'r.db'}", *options)


def test_run_away_from_a_terminal_prints_progress_lines(tmp_path, fake_flow):
    done = run_command(tmp_path)
    assert done.returncode == 1  # a video failed
    progress = [line for line in done.stderr.splitlines() if " videos (" in line]
    assert len(progress) == 2 and "job job-b unknown: 3/3 videos (1 failed), 2/2 jobs" in progress[1]
    assert "ETA" in progress[0] and "videos/min" in progress[0]
    assert str(tmp_path.resolve() / LONG_FOLDER) in done.stderr  # the report's table is not cut to 80 columns
    assert "Run summary" in done.stderr and "not one reelbatch knows" in done.stderr


def test_quiet_prints_only_the_report(tmp_path, fake_flow):
    done = run_command(tmp_path, "--quiet")
    assert done.returncode == 1
    assert " videos (" not in done.stderr and "planned" not in done.stderr
    assert "Run summary" in done.stderr and "2 done" in done.stderr


def test_json_log_format_prints_one_object_a_line(tmp_path, fake_flow):
    done = run_command(tmp_path, "--log-format", "json")
    assert done.returncode == 1
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [e["event"] for e in events] == ["planned", "job_finished", "job_finished", "report"]
    assert all(set(e) >= PROGRESS_KEYS for e in events[:-1])
    assert (events[2]["job_id"], events[2]["finished"], events[2]["failed"], events[2]["total"]) == ("job-b", 3, 1, 3)
    report = events[-1]
    assert (report["run_id"], report["status"], report["done"], report["failed"], report["exit_code"]) == (
        "run-1",
        "partial",
        2,
        1,
        1,
    )
    assert report["warnings"] and "Run summary" not in done.stderr
    quiet = run_command(tmp_path, "--log-format", "json", "--quiet")
    assert [json.loads(line)["event"] for line in quiet.stdout.splitlines()] == ["report"]


def test_log_format_is_checked(tmp_path):
    done = reelbatch("run", str(tmp_path / "m.csv"), "--log-format", "xml")
    assert done.returncode == 2 and "xml" in done.stderr


def test_resume_takes_the_same_output_options():
    shown = reelbatch("resume", "--help").stdout
    assert all(option in shown for option in ("--quiet", "--log-format", "--log-interval"))


def test_a_job_that_ran_on_a_dask_worker_moves_the_progress_lines_here():
    """Rank events stay on the worker: the flow's process reports the job's videos from its result."""
    from reelbatch.progress import reporting_to
    from reelbatch.tasks.execute import JobResult
    from reelbatch.tasks.executors import report_job_over
    from tests.test_db import make_job

    sink, lines, clock = lines_of("json")
    sink.run_planned(jobs=2, samples=6)
    spec = make_job("job-a", "r" * 32, rows=[1, 2, 3])
    clock.now += 60
    with reporting_to(sink):
        report_job_over(spec, JobResult("job-a", "failed", attempts=1, done=1, failed=1, reused=1))
    last = json.loads(lines[-1])
    assert (last["finished"], last["done"], last["reused"], last["failed"], last["jobs_over"]) == (3, 1, 1, 1, 1)
