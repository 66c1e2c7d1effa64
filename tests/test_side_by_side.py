"""Jobs side by side on disjoint device groups: the pool, the flow's scheduler, and a real run on CPU rank slots."""

from __future__ import annotations

import csv
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from prefect import flow, task

from reelbatch.contract import JobSpec
from reelbatch.infra.devices import DeviceGroup, DevicePool, local_pool
from reelbatch.schemas import BucketKey, ParallelPlan
from reelbatch.tasks.executors import execute_jobs
from tests.test_end_to_end import reelbatch


def overlapping(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def peak_width(intervals: list[tuple[float, float, int]]) -> int:
    """Most devices held at once; an end and a start at the same instant do not overlap."""
    events = sorted(
        [(start, 1, width) for start, _, width in intervals] + [(end, 0, -width) for _, end, width in intervals]
    )
    held = peak = 0
    for _, _, change in events:
        held += change
        peak = max(peak, held)
    return peak


def wait_until(condition, timeout_s: float = 10.0) -> None:
    """Poll ``condition`` until it holds; past the deadline the test's own assertions say what went wrong."""
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)


# --- the pool -------------------------------------------------------------------------------------------------


def test_groups_are_disjoint_aligned_and_come_back():
    pool = DevicePool(8, cuda=True, host="node")
    pairs = [pool.try_take(2) for _ in range(4)]
    assert [g.devices for g in pairs] == [("0", "1"), ("2", "3"), ("4", "5"), ("6", "7")]
    assert pool.try_take(1) is None and pool.in_use == 8
    pool.give_back(pairs[1])
    one = pool.try_take(1)
    assert one.devices == ("2",) and one.environment() == {"CUDA_VISIBLE_DEVICES": "2"}
    assert pool.try_take(2) is None  # 3 is free but not an aligned pair
    assert pool.peak_in_use == 8


def test_pools_of_two_runs_on_one_machine_never_share_a_gpu(tmp_path):
    first, second = DevicePool(4, cuda=True, lock_dir=tmp_path), DevicePool(4, cuda=True, lock_dir=tmp_path)
    a = first.try_take(2)
    b = second.try_take(2)
    assert a.devices == ("0", "1") and b.devices == ("2", "3")  # second skipped the pair the first run holds
    assert first.try_take(2) is None and second.try_take(1) is None
    second.give_back(b)
    assert first.try_take(2).devices == ("2", "3")


def test_a_killed_run_leaves_no_gpu_claimed(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import fcntl, os, sys, time\n"
                f"fd = os.open({str(tmp_path / '0.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
                "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        pool = DevicePool(2, cuda=True, lock_dir=tmp_path)
        assert pool.try_take(1).devices == ("1",) and pool.try_take(1) is None
    finally:
        holder.kill()
        holder.wait()
    assert pool.try_take(1).devices == ("0",)  # the kernel dropped the dead holder's lock


def test_cuda_names_follow_the_parents_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    pool = local_pool(4)
    group = pool.try_take(2)
    try:
        assert group.environment() == {"CUDA_VISIBLE_DEVICES": "4,5"} and group.describe() == "cuda:4,5"
    finally:
        pool.give_back(group)
    with pytest.raises(ValueError, match="--gpus-per-node 4"):
        local_pool(8)


def test_cpu_groups_set_no_cuda_variable_and_refuse_jobs_wider_than_the_machine():
    pool = DevicePool(2, cuda=False, host="laptop")
    group = pool.try_take(2)
    assert group.environment() == {} and group.describe() == "cpu:0,1"
    with pytest.raises(ValueError, match="does not fit this machine's 2 CPU rank slots"):
        pool.try_take(4)


def test_waiting_jobs_go_by_priority_and_narrow_ones_back_fill():
    pool = DevicePool(4, cuda=True, host="node")
    started: list[str] = []
    blocker = pool.try_take(4)
    lock = threading.Lock()
    release = threading.Event()  # the jobs hold their devices until the test has seen who could start

    def job(name: str, width: int, priority: int) -> None:
        with pool.group(width, priority):
            with lock:
                started.append(name)
            release.wait(10)

    threads = [
        threading.Thread(target=job, args=args)
        for args in [("wide", 4, 1), ("narrow-late", 2, 2), ("narrow-first", 2, 0)]
    ]
    for arrived, thread in enumerate(threads, 1):
        thread.start()
        wait_until(lambda arrived=arrived: len(pool._waiting) == arrived)  # all three wait, in this order of arrival
    assert started == []
    pool.give_back(blocker)
    wait_until(lambda: len(started) == 2)  # the two pairs are lent; the wide job cannot start beside them
    release.set()
    for thread in threads:
        thread.join(timeout=10)
    # narrow-first has the best priority; the wide job cannot fit beside it, so narrow-late back-fills the other
    # pair instead of leaving it idle; the wide job starts once both pairs are back.
    assert started == ["narrow-first", "narrow-late", "wide"]
    assert pool.peak_in_use == 4 and pool.in_use == 0


# --- the flow's scheduler ---------------------------------------------------------------------------------------


def spec(name: str, plan: ParallelPlan) -> JobSpec:
    bucket = BucketKey(
        model="tiny-wan",
        height=32,
        width=32,
        num_frames=5,
        num_inference_steps=2,
        guidance_scale=5.0,
        embedded_guidance_scale=None,
        sequence_batch=False,
    )
    return JobSpec(
        job_id=name,
        run_id="run",
        bucket=bucket,
        model_path="/nowhere",
        family="wan",
        plan=plan,
        samples=[],
        padded_slots=0,
        tokens=8,
        fps=8,
        output_dir="/nowhere",
        results_path="/nowhere",
    )


def test_execute_jobs_never_oversubscribes_and_starts_longest_first():
    widths = {"j0": 4, "j1": 2, "j2": 2, "j3": 1, "j4": 1, "j5": 1, "j6": 2, "j7": 1}
    log: list[tuple[str, float, float, tuple[str, ...]]] = []
    running: set[str] = set()
    overlapped: set[str] = set()
    changed = threading.Condition()

    @task
    def hold(name: str, devices: DeviceGroup) -> str:
        begin = time.monotonic()
        if widths[name] == 4:
            # The whole node: held a while so that a job wrongly started beside it would be seen overlapping.
            # A window to observe, not an ordering: nothing waits for it.
            time.sleep(0.3)
        with changed:  # a narrow job holds its devices until another job ran beside it, or none is left to start
            running.add(name)
            if len(running) > 1:
                overlapped.update(running)
            changed.notify_all()
            changed.wait_for(
                lambda: widths[name] == 4 or name in overlapped or len(log) + len(running) == len(widths), timeout=10
            )
            running.discard(name)
            log.append((name, begin, time.monotonic(), devices.devices))
            changed.notify_all()
        return name

    @flow
    def run_all() -> list[str]:
        jobs = [(priority, spec(name, ParallelPlan(dp=width))) for priority, (name, width) in enumerate(widths.items())]
        pool = DevicePool(4, cuda=False, host="test")
        results = execute_jobs(jobs, pool, lambda s, priority, devices: hold.submit(s.job_id, devices))
        assert pool.in_use == 0
        return results

    assert run_all() == list(widths)  # results in priority order, every job ran once
    intervals = [(begin, end, widths[name]) for name, begin, end, _ in log]
    assert peak_width(intervals) <= 4
    for a in log:
        for b in log:
            if a is not b and overlapping(a[1:3], b[1:3]):
                assert not set(a[3]) & set(b[3]), (a, b)
    first = min(log, key=lambda entry: entry[1])
    assert first[0] == "j0" and not [e for e in log if e is not first and overlapping(first[1:3], e[1:3])]
    narrow = [e for e in log if widths[e[0]] < 4]
    assert any(overlapping(a[1:3], b[1:3]) for a in narrow for b in narrow if a is not b)  # side by side


# --- a real run -------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.torchrun
def test_a_run_puts_jobs_side_by_side_on_cpu_rank_slots(tmp_path: Path):
    """Five buckets of 1-rank jobs and one pinned 2-rank job on 2 CPU rank slots: pairs run together, never three."""
    path = tmp_path / "prompts.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["prompt", "model", "height", "width", "num_frames", "num_inference_steps", "guidance_scale", "plan"]
        )
        for steps in (2, 3, 4, 5):
            writer.writerow([f"a boat, {steps} steps", "tiny-wan", 32, 32, 5, steps, 5.0, ""])
        writer.writerow(["a pinned pair", "tiny-wan", 32, 32, 5, 2, 5.0, "dp=2"])
    db_file = tmp_path / "state.db"
    done = reelbatch("run", str(path), "--gpus", "2", "--out", "videos", "--db", f"sqlite:///{db_file}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    db = sqlite3.connect(db_file)
    db.row_factory = sqlite3.Row
    attempts = db.execute("select * from job_attempts").fetchall()
    assert len(attempts) == 5 and {a["host"] for a in attempts} and all(a["devices"] for a in attempts)
    intervals = []
    for a in attempts:
        begin = datetime.fromisoformat(a["started_at"])
        intervals.append((begin.timestamp(), (begin + timedelta(seconds=a["seconds"])).timestamp(), a["world_size"]))
    assert peak_width(intervals) <= 2
    assert peak_width(intervals) == 2 and sum(w for _, _, w in intervals) == 6
    # At least two 1-rank jobs shared the machine, each on its own slot.
    pairs = [
        (a, b)
        for a in attempts
        for b in attempts
        if a["id"] < b["id"] and overlapping(intervals[attempts.index(a)][:2], intervals[attempts.index(b)][:2])
    ]
    assert pairs and all(a["devices"] != b["devices"] for a, b in pairs)
    assert all(a["world_size"] == 1 and b["world_size"] == 1 for a, b in pairs)
    assert db.execute("select count(*) from samples where status = 'done'").fetchone()[0] == 5
