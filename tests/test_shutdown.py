"""Clean shutdown: SIGTERM/SIGINT to `reelbatch run` ends its ranks and its Prefect server and leaves the run
`interrupted`, resumable; a second signal ends it at once; a run whose orchestrator died shows `interrupted` once
its heartbeat is stale. Against real processes: torchrun ranks, the Prefect ephemeral server, both databases."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from reelbatch.contract import CRASH_ENV, FAULT_ENV
from reelbatch.infra import shutdown
from reelbatch.infra.db import Database, RunRecord, utcnow
from reelbatch.infra.db.queries import HEARTBEAT_ENV
from reelbatch.infra.launcher import LaunchStopped, _tagged_pids, kill_launch, launch
from tests.test_db import create_run, done, make_job, samples_by_id

RANK_SCRIPTS_PARENT = Path(__file__).parent

# Four videos without CFG on 2 ranks (dp=2), at most 2 per job: two jobs (as tests/test_crash_resume.py).
MANIFEST = "prompt,seed,guidance_scale,num_inference_steps\n" + "".join(
    f"video number {i},{i},1.0,2\n" for i in range(4)
)
RUN_ARGS = ("m.csv", "--gpus", "2", "--out", "videos", "--max-samples-per-job", "2")
WAIT_S = 180  # the CLI starts Prefect's server and torchrun on 2 busy cores: minutes, at worst


@pytest.fixture(autouse=True)
def no_stop_left_over() -> Iterator[None]:
    shutdown.reset()
    yield
    shutdown.reset()


# --- the database: interrupting a run, heartbeats ---


def test_interrupt_run_puts_unfinished_work_back_to_pending(database: Database) -> None:
    run_id = create_run(database)
    database.add_job(run_id, make_job("a", run_id, rows=[2, 3]))
    database.add_job(run_id, make_job("b", run_id, rows=[4]))
    database.add_job(run_id, make_job("c", run_id, rows=[5]))
    database.mark_job_running("a")
    database.record_sample_results("a", [done("a-s2")], {"a-s2": "/v/a2.mp4"})
    database.mark_job_running("b")
    database.finish_job("b", status="failed", returncode=1, seconds=1.0, error="[oom] boom")

    assert database.interrupt_run(run_id, "interrupted: SIGTERM")
    assert not database.interrupt_run(run_id, "again"), "only a running run is interrupted"

    summary = database.run_summary(run_id)
    assert summary.status == "interrupted" and summary.finished_at is not None
    jobs = {job["id"]: (job["status"], job["error"]) for job in database.jobs(run_id)}
    assert jobs == {"a": ("pending", "interrupted: SIGTERM"), "b": ("failed", "[oom] boom"), "c": ("pending", None)}
    samples = {sample_id: s["status"] for sample_id, s in samples_by_id(database, run_id).items()}
    assert samples == {"a-s2": "done", "a-s3": "pending", "b-s4": "failed", "c-s5": "pending"}

    database.reopen_run(run_id)  # what `reelbatch resume` does first
    assert database.run_summary(run_id).status == "running"


def test_a_finished_run_is_not_interrupted(database: Database) -> None:
    run_id = create_run(database)
    database.add_job(run_id, make_job("a", run_id, rows=[2]))
    database.mark_job_running("a")
    database.record_sample_results("a", [done("a-s2")], {"a-s2": "/v/a2.mp4"})
    database.finish_job("a", status="done", returncode=0, seconds=1.0)
    assert database.finish_run(run_id) == "done"
    assert not database.interrupt_run(run_id, "interrupted: SIGTERM")
    assert database.run_summary(run_id).status == "done"


def set_heartbeat(database: Database, run_id: str, seconds_ago: float) -> None:
    with database.write_session() as session:
        session.execute(
            update(RunRecord)
            .where(RunRecord.id == run_id)
            .values(heartbeat_at=utcnow() - timedelta(seconds=seconds_ago))
        )


def test_a_running_run_with_a_stale_heartbeat_shows_as_interrupted(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(HEARTBEAT_ENV, "10")  # stale after 4 beats: 40 s
    run_id = create_run(database)
    assert database.run_summary(run_id).status == "running"  # a new run has a fresh heartbeat

    set_heartbeat(database, run_id, 60)
    assert database.run_summary(run_id).status == "interrupted"
    assert [r.status for r in database.list_runs() if r.id == run_id] == ["interrupted"]
    assert database.run_record(run_id)["status"] == "running", "derived when read, never written"

    database.beat_run(run_id)
    assert database.run_summary(run_id).status == "running"

    set_heartbeat(database, run_id, 60)
    database.add_job(run_id, make_job("a", run_id, rows=[2]))
    database.finish_job("a", status="failed", returncode=1, seconds=1.0, error="x")
    database.finish_run(run_id)
    assert database.run_summary(run_id).status == "failed", "only a running run can be stale"


def test_the_heartbeat_thread_renews_the_run_while_it_runs(database: Database) -> None:
    run_id = create_run(database)
    set_heartbeat(database, run_id, 3600)
    before = utcnow()
    renewed = threading.Event()

    with database.run_heartbeat(run_id, interval_s=0.05):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not renewed.is_set():
            if database.run_record(run_id)["heartbeat_at"] >= before:
                renewed.set()
            time.sleep(0.05)
    assert renewed.is_set()
    beat = database.run_record(run_id)["heartbeat_at"]
    time.sleep(0.3)
    assert database.run_record(run_id)["heartbeat_at"] == beat, "the thread stops with the block"


# --- the launcher ---


def test_no_launch_starts_once_stopping(tmp_path: Path) -> None:
    shutdown.request_stop(signal.SIGTERM)
    with pytest.raises(LaunchStopped, match="SIGTERM"):
        launch("rank_scripts.hang", [str(tmp_path)], nproc_per_node=2, log_path=tmp_path / "job.log", timeout_s=60)
    assert not (tmp_path / "job.log").exists()


@pytest.mark.torchrun
def test_a_stop_ends_a_running_launch(tmp_path: Path) -> None:
    python_path = os.pathsep.join(filter(None, [str(RANK_SCRIPTS_PARENT), os.environ.get("PYTHONPATH")]))
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            launch(
                "rank_scripts.hang", [str(tmp_path)], nproc_per_node=2, log_path=tmp_path / "job.log",
                timeout_s=WAIT_S, env={"PYTHONPATH": python_path}, launch_id="stoppedlaunch",
            )  # fmt: skip
        except BaseException as exc:  # noqa: BLE001 - the test looks at what it was
            outcome["raised"] = exc

    job = threading.Thread(target=run)
    job.start()
    try:
        wait_until(lambda: len(list(tmp_path.glob("*.pid"))) == 2, "the ranks never started")
        shutdown.request_stop(signal.SIGTERM)
        job.join(timeout=WAIT_S)
        assert not job.is_alive()
        assert isinstance(outcome.get("raised"), LaunchStopped)
        assert not _tagged_pids("stoppedlaunch")
    finally:
        kill_launch("stoppedlaunch")
        job.join(timeout=30)


# --- `reelbatch run` as a process ---


def wait_until(condition: Callable[[], object], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(what)
        time.sleep(0.2)


class Cli:
    """One `reelbatch` command in a session of its own; its output goes through files, not pipes (a helper left
    running would hold a pipe open)."""

    def __init__(self, tmp_path: Path, db_url: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.tmp_path = tmp_path
        logs = tmp_path / "logs"
        logs.mkdir(exist_ok=True)
        n = len(list(logs.iterdir()))
        self.stdout_path, self.stderr_path = logs / f"{n}.out", logs / f"{n}.err"
        environment = {k: v for k, v in os.environ.items() if k not in (CRASH_ENV, FAULT_ENV)}
        with open(self.stdout_path, "w") as stdout, open(self.stderr_path, "w") as stderr:
            self.process = subprocess.Popen(
                # -X faulthandler: a command that does not end is sent SIGABRT, and prints where it was.
                [sys.executable, "-X", "faulthandler", "-m", "reelbatch.cli", *args, "--db", db_url],
                stdout=stdout,
                stderr=stderr,
                cwd=tmp_path,
                env={**environment, **(env or {})},
                start_new_session=True,
            )

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait(self) -> int:
        try:
            return self.process.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGABRT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
            self.kill()
            raise AssertionError(f"the command did not end: {self.stderr[-6000:]}") from None

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()


def cli(tmp_path: Path, db_url: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = Cli(tmp_path, db_url, *args, env=env)
    returncode = command.wait()
    command.kill()  # whatever it left in its session
    return subprocess.CompletedProcess(args, returncode, command.stdout, command.stderr)


def children(pid: int) -> dict[int, str]:
    """The live child processes of ``pid``: their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
    return found


def is_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def launch_ids(db_url: str) -> list[str]:
    with Database(db_url) as database:
        try:
            runs = database.list_runs()
        except Exception:  # noqa: BLE001 - the command has not created the schema yet
            return []
        return [job["launch_id"] for run in runs for job in database.jobs(run.id) if job["launch_id"]]


def live_launches(db_url: str) -> list[str]:
    return [launch_id for launch_id in launch_ids(db_url) if _tagged_pids(launch_id)]


class MidRun:
    """`reelbatch run` with a rank that hangs (``fault``), once its ranks run; its Prefect server's pid."""

    def __init__(
        self,
        tmp_path: Path,
        db_url: str,
        fault: str = "hang:rank=0:sample=0",
        args: tuple[str, ...] = RUN_ARGS,
        **env: str,
    ) -> None:
        (tmp_path / "m.csv").write_text(MANIFEST)
        self.db_url = db_url
        self.command = Cli(tmp_path, db_url, "run", *args, env={FAULT_ENV: fault, **env})
        try:
            wait_until(lambda: live_launches(db_url) or self.command.process.poll() is not None, "no job started")
            assert self.command.process.poll() is None, self.command.stderr[-3000:]
            servers = [pid for pid, line in children(self.command.process.pid).items() if "uvicorn" in line]
            assert len(servers) == 1, children(self.command.process.pid)
            self.server = servers[0]
        except BaseException:
            self.clean_up()
            raise

    def signal(self, signum: int) -> None:
        os.kill(self.command.process.pid, signum)

    def clean_up(self) -> None:
        self.command.kill()
        for launch_id in launch_ids(self.db_url):
            kill_launch(launch_id)

    def assert_nothing_left(self) -> None:
        assert not live_launches(self.db_url), "a rank or torchrun of the stopped run survived"
        assert not is_running(self.server), "the Prefect server the command started survived"


def only_run(db_url: str):
    with Database(db_url) as database:
        [run] = database.list_runs()
        return run, database.samples(run.id), database.jobs(run.id)


@pytest.mark.slow
@pytest.mark.torchrun
def test_sigterm_interrupts_the_run_and_resume_finishes_it(tmp_path: Path, database_url: str) -> None:
    mid_run = MidRun(tmp_path, database_url)
    try:
        mid_run.signal(signal.SIGTERM)
        returncode = mid_run.command.wait()
        assert returncode == 143, mid_run.command.stderr[-3000:]
        mid_run.assert_nothing_left()
    finally:
        mid_run.clean_up()

    run, samples, jobs = only_run(database_url)
    assert run.status == "interrupted" and run.finished_at is not None
    assert {s["status"] for s in samples} == {"pending"}, "the hung job finished nothing"
    assert "running" not in {job["status"] for job in jobs}
    assert f"reelbatch resume {run.id}" in mid_run.command.stderr

    resumed = cli(tmp_path, database_url, "resume", run.id)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run, samples, _ = only_run(database_url)
    assert run.status == "done"
    assert [s["status"] for s in samples] == ["done"] * 4


@pytest.mark.slow
@pytest.mark.torchrun
def test_sigint_interrupts_the_run_with_exit_130(tmp_path: Path) -> None:
    """One job of four videos on two ranks; rank 0 hangs on its second video, so its first one is made before the
    stop: that video is kept (done, its file there), the unmade ones are pending."""
    db_url = f"sqlite:///{tmp_path / 'state.db'}"
    one_job = ("m.csv", "--gpus", "2", "--out", "videos", "--max-samples-per-job", "4")
    mid_run = MidRun(tmp_path, db_url, fault="hang:rank=0:sample=1", args=one_job)
    try:
        reported = lambda: any(path.read_text().strip() for path in (tmp_path / "videos").rglob("results.jsonl"))  # noqa: E731
        wait_until(reported, "rank 0 never finished its first video")
        mid_run.signal(signal.SIGINT)
        returncode = mid_run.command.wait()
        assert returncode == 130, mid_run.command.stderr[-3000:]
        mid_run.assert_nothing_left()
    finally:
        mid_run.clean_up()
    run, samples, _ = only_run(db_url)
    assert run.status == "interrupted"
    made = [s for s in samples if s["status"] == "done"]
    assert made and all(Path(s["output_path"]).is_file() for s in made), "a finished video was not kept"
    assert {s["status"] for s in samples if s not in made} == {"pending"}


@pytest.mark.slow
@pytest.mark.torchrun
def test_a_second_signal_ends_the_run_at_once(tmp_path: Path) -> None:
    """Ranks that ignore SIGTERM hold the first stop in its grace period: the second signal ends it all now."""
    db_url = f"sqlite:///{tmp_path / 'state.db'}"
    mid_run = MidRun(tmp_path, db_url, fault="stubborn:sample=0")
    try:
        # A rank still loading its pipeline dies on the first SIGTERM and the stop ends before the second signal.
        stubborn = lambda: any("injecting stubborn" in log.read_text() for log in (tmp_path / "videos").rglob("*.log"))  # noqa: E731
        wait_until(stubborn, "no rank reached its stubborn point")
        mid_run.signal(signal.SIGTERM)
        wait_until(lambda: "the orchestrator is stopping" in mid_run.command.stderr, "the first signal went unseen")
        mid_run.signal(signal.SIGTERM)
        returncode = mid_run.command.wait()
        assert returncode == 143, mid_run.command.stderr[-3000:]
        assert "SIGTERM again: stopped at once" in mid_run.command.stderr
        mid_run.assert_nothing_left()
    finally:
        mid_run.clean_up()


@pytest.mark.slow
@pytest.mark.torchrun
def test_a_killed_orchestrator_shows_interrupted_once_its_heartbeat_is_stale(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'state.db'}"
    beat = {HEARTBEAT_ENV: "0.5"}  # stale after 2 s
    mid_run = MidRun(tmp_path, db_url, **beat)
    try:
        mid_run.command.kill()  # SIGKILL: nothing is recorded

        def shown(heartbeat_s: str) -> str:
            listed = cli(tmp_path, db_url, "runs", "--json", env={HEARTBEAT_ENV: heartbeat_s})
            return json.loads(listed.stdout)[0]["status"]

        assert shown("3600") == "running", "a reader with a longer staleness limit still sees it running"
        wait_until(lambda: shown("0.5") == "interrupted", "the dead run never showed as interrupted", timeout_s=120)
        run_id = only_run(db_url)[0].id
        status = cli(tmp_path, db_url, "status", run_id, env=beat)
        assert "interrupted" in status.stdout + status.stderr
    finally:
        mid_run.clean_up()
