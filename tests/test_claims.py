"""One video, one maker: claims on videos being made, in the database and between real concurrent runs.

The database tests run on SQLite and PostgreSQL (``database`` fixture). The run tests start `reelbatch run` as real
processes (tiny built-in models on CPU, torchrun with gloo) into one output folder and database.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text, update

from reelbatch import progress
from reelbatch.config import RunConfig
from reelbatch.contract import CRASH_ENV, folder_fields, new_attempt_folder, write_job_spec
from reelbatch.defaults import CLAIM_LEASE_ENV
from reelbatch.infra.db import Database, SampleRecord, utcnow
from reelbatch.infra.db.models import SampleClaimRecord
from reelbatch.infra.failures import RetryPolicy
from reelbatch.progress import NullSink
from reelbatch.tasks.claiming import JobClaims, Settled
from reelbatch.tasks.execute import execute_job
from tests.test_db import create_run, done, make_job

ROOT = "/data/videos"
IDS = [f"{n:064x}" for n in range(6)]


def claim(database: Database, run_id: str, ids: list[str], job_id: str = "job-a", lease_s: float = 60.0) -> set[str]:
    return database.claim_samples(ROOT, ids, run_id=run_id, job_id=job_id, host="node-1", lease_s=lease_s)


def expire(database: Database, run_id: str) -> None:
    """Move a run's leases into the past, as if its maker had stopped renewing them long ago."""
    table = SampleClaimRecord.__table__
    with database.write_session() as session:
        session.execute(update(table).where(table.c.run_id == run_id).values(expires_at=utcnow() - timedelta(hours=1)))


# --- the claims table (both backends) ---


def test_a_claimed_video_is_held_by_one_run_until_released(database: Database) -> None:
    first, second = create_run(database), create_run(database)
    assert claim(database, first, IDS[:4]) == set(IDS[:4])
    holders = database.sample_claims(ROOT, IDS)
    assert set(holders) == set(IDS[:4])
    assert {(c.run_id, c.job_id, c.host) for c in holders.values()} == {(first, "job-a", "node-1")}
    assert all(c.expires_at > c.heartbeat_at for c in holders.values())

    # Another run gets only what nobody holds; the same ids under another output root are other videos.
    assert claim(database, second, IDS, job_id="job-b") == set(IDS[4:])
    assert database.claim_samples("/elsewhere", IDS[:1], run_id=second, job_id="x", host="h", lease_s=5) == {IDS[0]}

    # Only the holder's release frees a claim.
    assert database.release_claims(ROOT, IDS[:2], second) == 0
    assert database.release_claims(ROOT, IDS[:2], first) == 2
    assert claim(database, second, IDS[:4], job_id="job-b") == set(IDS[:2])
    assert {c.run_id for c in database.sample_claims(ROOT, IDS[:2]).values()} == {second}


def test_an_expired_claim_is_taken_over_and_its_old_holder_cannot_renew_it(database: Database) -> None:
    killed, survivor = create_run(database), create_run(database)
    claim(database, killed, IDS[:3])
    expire(database, killed)
    assert claim(database, survivor, IDS[:3], job_id="job-b") == set(IDS[:3])
    assert database.renew_claims(killed, "job-a", 60.0) == 0
    assert {c.run_id for c in database.sample_claims(ROOT, IDS[:3]).values()} == {survivor}


def test_renewing_extends_the_lease_of_what_the_job_holds(database: Database) -> None:
    run_id, other = create_run(database), create_run(database)
    claim(database, run_id, IDS[:2], lease_s=10.0)
    claim(database, run_id, IDS[2:3], job_id="job-other", lease_s=10.0)
    before = database.sample_claims(ROOT, IDS[:3])
    assert database.renew_claims(run_id, "job-a", 3600.0) == 2
    after = database.sample_claims(ROOT, IDS[:3])
    assert all(after[i].expires_at > before[i].expires_at + timedelta(seconds=3000) for i in IDS[:2])
    assert after[IDS[2]] == before[IDS[2]]  # another job's claim is its own to renew
    # A renewed lease that then runs out is free again.
    expire(database, run_id)
    assert claim(database, other, IDS[:2], job_id="job-b") == set(IDS[:2])


def test_a_run_takes_back_its_own_claims_whichever_job_held_them(database: Database) -> None:
    """A resumed run (or a job Dask ran again) does not wait out the lease of its own dead orchestrator."""
    run_id, other = create_run(database), create_run(database)
    claim(database, run_id, IDS[:2], job_id="job-a")
    assert claim(database, run_id, IDS[:2], job_id="job-a-again") == set(IDS[:2])
    assert {c.job_id for c in database.sample_claims(ROOT, IDS[:2]).values()} == {"job-a-again"}
    assert claim(database, other, IDS[:2], job_id="job-b") == set()


def test_concurrent_claimers_split_the_videos_without_overlap(database: Database) -> None:
    runs = [create_run(database) for _ in range(4)]
    ids = [f"{n:064x}" for n in range(60)]
    won: dict[str, set[str]] = {}
    start = threading.Barrier(len(runs))

    def claimer(run_id: str, order: list[str]) -> None:
        start.wait()
        won[run_id] = claim(database, run_id, order)

    threads = [
        threading.Thread(target=claimer, args=(run_id, ids if n % 2 else ids[::-1])) for n, run_id in enumerate(runs)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [sample_id for held in won.values() for sample_id in held]
    assert sorted(everything) == ids  # every video has exactly one maker
    holders = database.sample_claims(ROOT, ids)
    assert all(holders[sample_id].run_id == run_id for run_id, held in won.items() for sample_id in held)


def test_claims_go_with_their_run(database: Database) -> None:
    run_id = create_run(database)
    claim(database, run_id, IDS[:2])
    with database.write_session() as session:
        session.execute(text("DELETE FROM runs WHERE id = :id"), {"id": run_id})
    assert database.sample_claims(ROOT, IDS) == {}


def test_an_attempt_marks_running_only_the_samples_it_makes(database: Database) -> None:
    """The job's other samples are another run's to make for now: they stay pending, their attempts uncounted."""
    run_id = create_run(database)
    job = make_job("job", run_id, rows=[1, 2, 3])
    database.add_job(run_id, job)
    database.mark_job_running("job", [job.samples[0].sample_id])
    rows = {row["sample_id"]: row for row in database.samples(run_id)}
    assert [(rows[s.sample_id]["status"], rows[s.sample_id]["attempts"]) for s in job.samples] == [
        ("running", 1),
        ("pending", 0),
        ("pending", 0),
    ]


def test_the_lease_comes_from_the_run_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from reelbatch.defaults import CLAIM_LEASE_S

    monkeypatch.delenv(CLAIM_LEASE_ENV, raising=False)
    assert RunConfig().claim_lease() == CLAIM_LEASE_S
    monkeypatch.setenv(CLAIM_LEASE_ENV, "7.5")
    assert RunConfig().claim_lease() == 7.5
    assert RunConfig(claim_lease_s=30).claim_lease() == 30
    monkeypatch.setenv(CLAIM_LEASE_ENV, "soon")
    with pytest.raises(ValueError, match=CLAIM_LEASE_ENV):
        RunConfig().claim_lease()


# --- a job waiting for videos another run is making (in process, no ranks launched) ---


class RecordingSink(NullSink):
    def __init__(self) -> None:
        self.finished: list[tuple[str, str]] = []

    def sample_finished(self, job_id, sample_id, status):
        self.finished.append((sample_id, status))


def test_a_job_waits_for_the_maker_of_its_video_and_reuses_it(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The holder is alive (its lease is renewed) and makes the video while the job waits: nothing is launched
    here, the job ends done with the video recorded as reused from the maker's run."""
    output = str(tmp_path / "videos")
    maker, waiter = create_run(database, output_root=output), create_run(database, output_root=output)
    maker_job = make_job("maker-job", maker, rows=[1])
    [sample] = maker_job.samples
    database.add_job(maker, maker_job)
    assert claim_here(database, output, maker, "maker-job", [sample.sample_id])
    folder = folder_fields(new_attempt_folder(tmp_path / "job"))
    same_video = {"job_id": "waiter-job", "run_id": waiter, "model_path": str(tmp_path), **folder}
    spec = maker_job.model_copy(update=same_video)
    write_job_spec(spec)
    database.add_job(waiter, spec)
    waited = threading.Event()
    log_waiting = JobClaims.log_waiting

    def looked(self: JobClaims, settled: Settled) -> None:
        assert settled.waiting == [sample.sample_id] and settled.holders[sample.sample_id].run_id == maker
        waited.set()
        log_waiting(self, settled)

    monkeypatch.setattr(JobClaims, "log_waiting", looked)

    def maker_finishes() -> None:
        # Once the waiter has found the video claimed (the maker's 60 s lease holds), it is published and let go.
        waited.wait(timeout=120)
        database.record_sample_results("maker-job", [done(sample.sample_id)], {sample.sample_id: f"{output}/v.mp4"})
        database.release_claims(output, [sample.sample_id], maker)

    thread = threading.Thread(target=maker_finishes)
    thread.start()
    sink = RecordingSink()
    try:
        with progress.reporting_to(sink):
            # A short lease of its own: the waiter looks again every third of it.
            result = execute_job(spec, database, output, None, RetryPolicy.from_dict(None), claim_lease_s=0.6)
    finally:
        thread.join()
    assert waited.is_set()
    assert (result.status, result.attempts, result.done, result.reused, result.failed) == ("done", 0, 0, 1, 0)
    assert result.over == 1 and sink.finished == [(sample.sample_id, "reused")]
    [row] = database.samples(waiter)
    assert (row["status"], row["reused_from_run"], row["job_id"]) == ("done", maker, None)
    assert row["output_path"] == f"{output}/v.mp4" and row["attempts"] == 0
    [job] = database.jobs(waiter)
    assert job["status"] == "done" and job["attempts"] == 0 and database.attempts(spec.job_id) == []
    assert database.sample_claims(output, [sample.sample_id]) == {}


def claim_here(database: Database, output: str, run_id: str, job_id: str, ids: list[str]) -> set[str]:
    return database.claim_samples(output, ids, run_id=run_id, job_id=job_id, host="maker-host", lease_s=60.0)


# --- real runs into one output and database ---


def _manifest(videos: range) -> str:
    return "prompt,seed,guidance_scale,num_inference_steps\n" + "".join(f"video number {i},{i},1.0,2\n" for i in videos)


def start_run(
    tmp_path: Path, name: str, manifest: str, db_url: str, *, lease_s: float, crash_at: str | None = None
) -> subprocess.Popen:
    """`reelbatch run` in a session of its own (see tests/test_crash_resume.py), with its own Prefect home."""
    (tmp_path / f"{name}.csv").write_text(manifest)
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    env.update({CLAIM_LEASE_ENV: str(lease_s), "PREFECT_HOME": str(tmp_path / f"prefect-{name}")})
    if crash_at:
        env[CRASH_ENV] = crash_at
    # One rank per job and one video per job: the fewest processes on a shared test machine.
    args = ["run", f"{name}.csv", "--gpus", "1", "--out", "videos", "--db", db_url, "--max-samples-per-job", "1"]
    return subprocess.Popen(
        [sys.executable, "-m", "reelbatch.cli", *args],
        stdout=open(tmp_path / f"{name}.out", "w"),  # noqa: SIM115 - closed with the process
        stderr=open(tmp_path / f"{name}.err", "w"),  # noqa: SIM115
        cwd=tmp_path,
        env=env,
        start_new_session=True,
    )


def finish(process: subprocess.Popen, tmp_path: Path, name: str) -> tuple[int, str]:
    try:
        returncode = process.wait(timeout=600)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # helpers a killed CLI left behind (its Prefect server)
        except ProcessLookupError:
            pass
    return returncode, (tmp_path / f"{name}.err").read_text()


def sample_rows(db_url: str) -> list[dict]:
    with Database(db_url) as database, database.read_session() as session:
        return [dict(row._mapping) for row in session.execute(select(SampleRecord.__table__))]


def check_made_once(tmp_path: Path, rows: list[dict], videos: int) -> None:
    """Every video was made by exactly one job of one run, and its file is where every run's row says."""
    made = Counter(r["sample_id"] for r in rows if r["status"] == "done" and r["job_id"] is not None)
    assert len(made) == videos and set(made.values()) == {1}, made
    files = {p.resolve() for p in (tmp_path / "videos").rglob("*.mp4") if ".reelbatch" not in p.parts}
    assert {Path(r["output_path"]).resolve() for r in rows if r["status"] == "done"} == files
    assert len(files) == videos


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.slow
@pytest.mark.torchrun
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_two_concurrent_runs_make_each_shared_video_once(tmp_path: Path, backend: str, request) -> None:
    db_url = (
        f"sqlite:///{tmp_path / 'state.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("postgres_database_url")
    )
    with Database(db_url) as database:
        database.upgrade()  # both runs find the schema in place (neither creates it while the other looks)
    # Video 1 is in both manifests.
    first = start_run(tmp_path, "first", _manifest(range(0, 2)), db_url, lease_s=20)
    second = start_run(tmp_path, "second", _manifest(range(1, 3)), db_url, lease_s=20)
    for name, process in (("first", first), ("second", second)):
        returncode, stderr = finish(process, tmp_path, name)
        assert returncode == 0, stderr[-3000:]

    rows = sample_rows(db_url)
    check_made_once(tmp_path, rows, videos=3)
    by_run: dict[str, list[dict]] = {}
    for row in rows:
        by_run.setdefault(row["run_id"], []).append(row)
    assert len(by_run) == 2
    with Database(db_url) as database:
        assert {database.run_record(run_id)["status"] for run_id in by_run} == {"done"}
        assert database.sample_claims(os.path.realpath(tmp_path / "videos"), [r["sample_id"] for r in rows]) == {}
    for run_id, own in by_run.items():
        assert len(own) == 2 and {r["status"] for r in own} == {"done"}
        other = next(r for r in by_run if r != run_id)
        for row in own:
            if row["job_id"] is None:  # reused: the other run made it, and this row says so
                assert row["reused_from_run"] == other
            else:
                assert row["reused_from_run"] is None
    reused = [r for r in rows if r["reused_from_run"] is not None]
    assert len(reused) == 1  # the shared video was made by one run and reused by the other


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.slow
@pytest.mark.torchrun
def test_a_killed_makers_videos_are_made_by_the_other_run_after_its_lease(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'state.db'}"
    manifest = _manifest(range(1))  # one video
    killed = start_run(tmp_path, "killed", manifest, db_url, lease_s=15, crash_at="mid_job")
    returncode, stderr = finish(killed, tmp_path, "killed")
    assert returncode == -signal.SIGKILL, stderr[-3000:]
    with Database(db_url) as database:
        [killed_run] = database.list_runs()
        leases = database.sample_claims(killed_run.output_root, _claimed_ids(database))
    assert leases and {c.run_id for c in leases.values()} == {killed_run.id}  # it died holding them
    lease_end = max(c.expires_at for c in leases.values())

    survivor = start_run(tmp_path, "survivor", manifest, db_url, lease_s=15)
    returncode, stderr = finish(survivor, tmp_path, "survivor")
    assert returncode == 0, stderr[-3000:]
    rows = sample_rows(db_url)
    check_made_once(tmp_path, rows, videos=1)
    with Database(db_url) as database:
        [survivor_run] = [r for r in database.list_runs() if r.id != killed_run.id]
        assert survivor_run.status == "done" and survivor_run.reused == 0
        [job] = database.jobs(survivor_run.id)
        attempts = database.attempts(job["id"])
    assert attempts and all(a["started_at"] >= lease_end for a in attempts)  # not before the lease ran out
    makers = [r["run_id"] for r in rows if r["job_id"] is not None and r["status"] == "done"]
    assert makers == [survivor_run.id]


def _claimed_ids(database: Database) -> list[str]:
    with database.read_session() as session:
        return list(session.scalars(select(SampleClaimRecord.sample_id)))


def test_a_forced_run_remakes_earlier_videos_but_reuses_what_a_concurrent_run_makes(
    database: Database, tmp_path: Path
) -> None:
    """--force: a video made before the run started is claimed and made again; one a concurrent run makes after
    the forced run started is reused (one video, one maker still holds between the two)."""
    output = str(tmp_path / "videos")
    earlier = create_run(database, output_root=output)
    earlier_job = make_job("earlier-job", earlier, rows=[1, 2])
    old, new = (sample.sample_id for sample in earlier_job.samples)
    database.add_job(earlier, earlier_job)
    database.record_sample_results("earlier-job", [done(old)], {old: f"{output}/old.mp4"})
    forced = create_run(database, output_root=output)
    database.record_sample_results("earlier-job", [done(new)], {new: f"{output}/new.mp4"})
    spec = earlier_job.model_copy(update={"job_id": "forced-job", "run_id": forced})
    database.add_job(forced, spec)

    settled = JobClaims(database, output, spec, lease_s=60.0, force=True).settle([old, new])
    assert (settled.held, settled.reused) == ([old], [new])
    unforced = JobClaims(database, output, spec, lease_s=60.0).settle([old, new])
    assert unforced.reused == [old] and unforced.held == []
