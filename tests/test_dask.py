"""Scale-out on Dask: the storage rules for remote workers, the task runner, and a real run on a LocalCluster."""

from __future__ import annotations

import csv
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from reelbatch.infra.dask_cluster import (
    SHARED_PATHS_ENV,
    check_shared_storage,
    dask_setup,
    gpu_slices,
    local_gpu_cluster,
    task_runner_for,
    worker_host,
)
from tests.test_end_to_end import reelbatch
from tests.test_side_by_side import peak_width

REMOTE = "tcp://10.0.0.7:8786"
POSTGRES = "postgresql+psycopg://reelbatch:s3cret@db.internal:5432/reelbatch"


# --- storage the workers must reach ------------------------------------------------------------------------------


def test_without_a_remote_cluster_local_storage_is_fine(tmp_path):
    check_shared_storage(str(tmp_path / "videos"), f"sqlite:///{tmp_path / 'x.db'}", None)


def test_a_remote_cluster_takes_object_storage_and_a_database_server():
    check_shared_storage("s3://bucket/videos", POSTGRES, REMOTE)
    check_shared_storage("gs://bucket/videos", "mysql+pymysql://u@10.0.0.9/r", REMOTE)


def test_a_local_output_folder_is_refused_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv(SHARED_PATHS_ENV, raising=False)
    with pytest.raises(ValueError) as refused:
        check_shared_storage(str(tmp_path / "videos"), POSTGRES, REMOTE)
    message = str(refused.value)
    assert REMOTE in message and "local output folder" in message and "its own disk" in message
    assert "--out s3://bucket/prefix" in message and SHARED_PATHS_ENV in message
    with pytest.raises(ValueError, match="memory"):
        check_shared_storage("memory://videos", POSTGRES, REMOTE)


def test_a_sqlite_database_is_refused_and_postgres_suggested(tmp_path, monkeypatch):
    monkeypatch.delenv(SHARED_PATHS_ENV, raising=False)
    with pytest.raises(ValueError) as refused:
        check_shared_storage("s3://bucket/videos", f"sqlite:///{tmp_path / 'state.db'}", REMOTE)
    assert "SQLite file" in str(refused.value) and "--db postgresql+psycopg://" in str(refused.value)
    for memory in ("sqlite://", "sqlite:///:memory:"):
        with pytest.raises(ValueError, match="in-memory SQLite"):
            check_shared_storage("s3://bucket/videos", memory, REMOTE)


def test_both_problems_are_reported_at_once(tmp_path):
    with pytest.raises(ValueError) as refused:
        check_shared_storage(str(tmp_path / "videos"), "sqlite:///state.db", REMOTE)
    assert "output folder" in str(refused.value) and "SQLite file" in str(refused.value)


def test_a_declared_shared_folder_is_accepted(tmp_path, monkeypatch):
    shared, other = tmp_path / "mnt" / "shared", tmp_path / "mnt" / "shared2"
    monkeypatch.setenv(SHARED_PATHS_ENV, f"/nowhere{':'}{shared}")
    check_shared_storage(str(shared / "videos"), f"sqlite:///{shared / 'state.db'}", REMOTE)
    check_shared_storage(f"file://{shared}/videos", POSTGRES, REMOTE)
    with pytest.raises(ValueError, match="local output folder"):  # a sibling that only shares a name prefix
        check_shared_storage(str(other / "videos"), POSTGRES, REMOTE)


def test_a_database_on_loopback_is_refused_for_remote_workers_without_leaking_the_password():
    with pytest.raises(ValueError) as refused:
        check_shared_storage("s3://b/v", "postgresql+psycopg://u:hunter2@127.0.0.1:5432/r", REMOTE)
    assert "worker's own machine" in str(refused.value) and "hunter2" not in str(refused.value)
    with pytest.raises(ValueError, match="a local socket"):
        check_shared_storage("s3://b/v", "postgresql+psycopg:///reelbatch", REMOTE)
    # A scheduler on loopback only takes workers from this machine, where the database is local too.
    check_shared_storage("s3://b/v", "postgresql+psycopg://u@localhost/r", "tcp://127.0.0.1:8786")


# --- the task runner ---------------------------------------------------------------------------------------------


def test_no_dask_asked_means_no_task_runner():
    assert task_runner_for(None, 0, 2) is None


def test_an_address_connects_to_that_cluster():
    from prefect_dask import DaskTaskRunner

    runner = task_runner_for("tcp://scheduler:8786", 0, 8)
    assert isinstance(runner, DaskTaskRunner) and runner.address == "tcp://scheduler:8786"


def test_local_workers_make_a_cluster_when_the_flow_starts_and_bad_arguments_are_refused():
    runner = task_runner_for(None, 3, 4)
    assert runner.cluster_class is local_gpu_cluster
    assert runner.cluster_kwargs == {"n_workers": 3, "gpus_per_worker": 4}
    assert runner.duplicate() == runner  # Prefect copies the runner per flow run
    with pytest.raises(ValueError, match="not both"):
        task_runner_for("tcp://scheduler:8786", 2, 2)
    with pytest.raises(ValueError, match="at least one GPU"):
        task_runner_for(None, 2, 0)


def test_local_workers_get_disjoint_slices_of_the_visible_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7,8")
    assert gpu_slices(2, 2) == [{"CUDA_VISIBLE_DEVICES": "4,5"}, {"CUDA_VISIBLE_DEVICES": "6,7"}]
    with pytest.raises(ValueError, match="need 6 GPUs but this machine shows 5"):
        gpu_slices(3, 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no CUDA: workers count CPU rank slots, nothing to slice
    assert gpu_slices(2, 2) == [{}, {}]


def test_outside_a_dask_worker_there_is_no_worker_address():
    assert worker_host() is None


def test_the_worker_hook_makes_prefect_read_the_environment_again(monkeypatch):
    """A worker's environment arrives after its process imported Prefect (through the CLI as main module)."""
    from prefect.settings import PREFECT_API_URL

    before = PREFECT_API_URL.value()
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    try:
        dask_setup(None)
        assert PREFECT_API_URL.value() == "http://127.0.0.1:9/api"
    finally:
        monkeypatch.undo()
        dask_setup(None)
    assert PREFECT_API_URL.value() == before


@pytest.mark.server
def test_local_workers_report_to_the_flows_prefect_api(tmp_path):
    """Task runs on the workers use the flow's (here: ephemeral) API, so their logs land next to the flow's."""
    import time

    import dask
    from prefect import flow, get_run_logger, task
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.context import get_run_context
    from prefect.settings import PREFECT_API_URL

    started = tmp_path / "started"
    started.mkdir()

    @task
    def probe(index: int, started: str) -> tuple[str | None, str | None]:
        get_run_logger().warning("probe %d on %s", index, worker_host())
        # Each probe stays on its worker (GPU=1) until both have started, so the second has to go to the other one.
        (Path(started) / str(index)).touch()
        deadline = time.monotonic() + 60
        while len(list(Path(started).iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        return worker_host(), PREFECT_API_URL.value()

    @flow
    def probes() -> tuple[str, str, list[tuple[str | None, str | None]]]:
        context = get_run_context()
        with task_runner_for(None, 2, 1) as runner:
            with dask.annotate(resources={"GPU": 1}):
                futures = [runner.submit(probe, {"index": index, "started": str(started)}) for index in range(2)]
            results = [future.result() for future in futures]
        return str(context.flow_run.id), str(context.client.api_url).rstrip("/"), results

    run_id, api_url, results = probes()
    assert {url for _, url in results} == {api_url}
    hosts = {host for host, _ in results}
    assert len(hosts) == 2 and all(host and host.startswith("tcp://127.0.0.1:") for host in hosts)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    assert {log.message for log in logs} >= {f"probe {i} on {host}" for i, (host, _) in enumerate(results)}


# --- a real run --------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.torchrun
def test_a_run_on_a_local_dask_cluster_never_oversubscribes_a_worker(tmp_path: Path):
    """Two workers with GPU=2 each and jobs wanting 5 ranks: both workers work, neither runs more than 2 ranks.

    One 2-rank job and three 1-rank jobs: more ranks than the cluster has, so Dask must hold a job back, and a
    worker running the 2-rank job has no room for anything else.
    """
    path = tmp_path / "prompts.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["prompt", "model", "height", "width", "num_frames", "num_inference_steps", "guidance_scale", "plan"]
        )
        writer.writerow(["a pinned pair", "tiny-wan", 32, 32, 5, 2, 5.0, "dp=2"])
        for steps in (2, 3, 4):
            writer.writerow([f"a boat, {steps} steps", "tiny-wan", 32, 32, 5, steps, 5.0, ""])
    db_file = tmp_path / "state.db"
    done = reelbatch(
        "run",
        str(path),
        "--gpus",
        "2",
        "--dask-local",
        "2",
        "--out",
        "videos",
        "--db",
        f"sqlite:///{db_file}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    db = sqlite3.connect(db_file)
    db.row_factory = sqlite3.Row
    attempts = db.execute("select * from job_attempts").fetchall()
    assert len(attempts) == 4 and sorted(a["world_size"] for a in attempts) == [1, 1, 1, 2]
    by_worker: dict[str, list[tuple[float, float, int, str]]] = {}
    for a in attempts:
        begin = datetime.fromisoformat(a["started_at"])
        end = begin + timedelta(seconds=a["seconds"])
        by_worker.setdefault(a["host"], []).append((begin.timestamp(), end.timestamp(), a["world_size"], a["devices"]))
    assert len(by_worker) == 2, by_worker  # jobs ran on both workers
    assert all(host.startswith("tcp://127.0.0.1:") for host in by_worker)
    for host, runs in by_worker.items():
        assert peak_width([run[:3] for run in runs]) <= 2, (host, runs)
        for i, a in enumerate(runs):  # jobs side by side on one worker hold different devices
            for b in runs[i + 1 :]:
                if a[0] < b[1] and b[0] < a[1]:
                    assert not set(a[3].split(":")[1].split(",")) & set(b[3].split(":")[1].split(",")), (a, b)
    assert db.execute("select count(*) from samples where status = 'done'").fetchone()[0] == 4
