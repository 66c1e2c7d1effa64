"""The deployments for real: a Prefect server on loopback, `prefect deploy --all` from prefect.yaml, a process
worker on the `reelbatch` pool, and generate-dataset triggered through the API with pasted CSV text."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reelbatch.manifest import ManifestError
from reelbatch.tasks.intake import MAX_INLINE_MANIFEST_BYTES, resolve_manifest
from tests import prefect_server

REPO = Path(__file__).resolve().parent.parent
PREFECT = prefect_server.PREFECT
CSV = (
    "id,prompt,model,height,width,num_frames,num_inference_steps,guidance_scale,seed\n"
    "a,a cat walks on a sunny street,tiny-wan,32,32,5,2,5.0,1\n"
    "b,snow falls over a village,tiny-wan,32,32,5,2,1.0,2\n"
    "bad,a bad size,tiny-wan,30,32,5,2,5.0,3\n"
)
RUN_S = 540


def _prefect(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([PREFECT, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_pasted_manifest_over_the_parameter_cap_points_to_submit(tmp_path):
    text = "prompt\n" + "a cat\n" * (MAX_INLINE_MANIFEST_BYTES // 6 + 1)
    with pytest.raises(ManifestError, match="reelbatch submit manifest.csv --deployment generate-dataset"):
        resolve_manifest(None, text, str(tmp_path))
    assert not (tmp_path / ".reelbatch").exists()  # refused before anything was written


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A fresh Prefect server on a free loopback port; yields the environment its clients need."""
    home = tmp_path_factory.mktemp("prefect-server")
    env = {
        **os.environ,
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "INFO",
        # `{{ $PWD }}` in prefect.yaml's pull step is the folder deploy runs in; a child does not update PWD.
        "PWD": str(REPO),
    }
    try:
        process, api = prefect_server.start(home, env)
    except prefect_server.ServerDidNotStart as error:
        pytest.fail(str(error))
    try:
        yield {**env, "PREFECT_HOME": str(home / "home"), "PREFECT_API_URL": api}
    finally:
        prefect_server.stop(process)


@pytest.fixture(scope="module")
def deployed(server) -> dict[str, str]:
    """The work pool and both deployments of prefect.yaml, registered as the README says."""
    pool = _prefect("work-pool", "create", "reelbatch", "--type", "process", env=server)
    assert pool.returncode == 0, pool.stdout + pool.stderr
    deploy = _prefect("--no-prompt", "deploy", "--all", env=server)
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
    # An invalid prefect.yaml only warns and skips deployments: insist on both.
    assert "generate-dataset/generate-dataset" in deploy.stdout and "nightly-dataset/nightly-dataset" in deploy.stdout
    return server


@pytest.fixture
def api(deployed):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: deployed["PREFECT_API_URL"]}):
        yield deployed


@pytest.mark.slow
@pytest.mark.server
def test_nightly_cron_schedule_is_registered(api):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("nightly-dataset/nightly-dataset")
        generate = client.read_deployment_by_name("generate-dataset/generate-dataset")
    [schedule] = nightly.schedules
    assert schedule.active and schedule.schedule.cron == "0 2 * * *" and schedule.schedule.timezone == "Europe/Paris"
    assert nightly.work_pool_name == generate.work_pool_name == "reelbatch"
    assert (
        nightly.parameters["config"]["db_secret"]
        == generate.parameters["config"]["db_secret"]
        == "reelbatch-database-url"
    )
    assert generate.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
    # The run form: descriptions from the flow's docstring, the paste box, the run's config as a typed and
    # described sub-form (the secret by name).
    schema = generate.parameter_openapi_schema
    properties, config = schema["properties"], schema["definitions"]["RunConfig"]["properties"]
    assert {"manifest", "manifest_text", "config"} <= set(properties)
    assert {"db_secret", "packing", "defaults", "strict"} <= set(config)
    assert all(properties[name].get("description") for name in ("manifest", "manifest_text", "config"))
    assert all(config[name].get("description") for name in ("output", "db_secret"))
    assert not generate.schedules


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.torchrun
@pytest.mark.timeout(RUN_S + 300)
def test_generate_dataset_runs_on_a_worker_from_pasted_csv(api, tmp_path, tiny_models):
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    db_file = tmp_path / "state.db"
    Secret(value=f"sqlite:///{db_file}").save("reelbatch-database-url", overwrite=True)
    with get_client(sync_client=True) as client:
        # The 02:00 run must not land on this test's worker if the test happens to run at that hour.
        client.pause_deployment(client.read_deployment_by_name("nightly-dataset/nightly-dataset").id)
    flow_run = run_deployment(
        name="generate-dataset/generate-dataset",
        timeout=0,
        as_subflow=False,
        parameters={
            "manifest_text": CSV,
            # No db_secret: Prefect replaces the deployment's config whole, and the flow keeps the fields left out.
            "config": {"output": str(tmp_path / "videos"), "gpus_per_node": 2},
        },
    )
    worker_log = tmp_path / "worker.log"
    with worker_log.open("w") as log:
        worker = subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", "reelbatch", "--type", "process"],
            cwd=tmp_path,
            env=api,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            final = _wait_for(flow_run.id, RUN_S)
            # The same text again through `reelbatch submit` as a file: a new run that reuses every video.
            manifest = tmp_path / "prompts.csv"
            manifest.write_text(CSV)
            submitted = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "reelbatch.cli",
                    "submit",
                    str(manifest),
                    "--deployment",
                    "generate-dataset",
                    "--out",
                    str(tmp_path / "videos"),
                    "--param",
                    "gpus_per_node=2",
                    "--wait",
                ],
                cwd=tmp_path,
                env=api,
                capture_output=True,
                text=True,
                timeout=RUN_S,
            )
        finally:
            prefect_server.stop(worker)
    logs = worker_log.read_text()[-4000:]
    assert final.state.is_completed(), f"{final.state}\n{logs}"

    db = sqlite3.connect(db_file)
    [(run_id, status, source, rejected)] = db.execute(
        "select id, status, manifest_source, rows_rejected from runs order by created_at limit 1"
    ).fetchall()
    assert status == "done" and rejected == 1
    assert source.startswith(str(tmp_path / "videos" / ".reelbatch" / "manifests"))  # pasted text, stored
    counts = dict(db.execute("select status, count(*) from samples where run_id = ? group by status", (run_id,)))
    assert counts == {"done": 2, "rejected": 1}
    for (path,) in db.execute("select output_path from samples where run_id = ? and status = 'done'", (run_id,)):
        assert Path(path).is_file()

    assert submitted.returncode == 0, submitted.stdout + submitted.stderr + logs
    link = f"{api['PREFECT_API_URL'].removesuffix('/api')}/runs/flow-run/"
    assert link in submitted.stdout and "Completed" in submitted.stderr
    [(second, second_source)] = db.execute("select id, manifest_source from runs where id != ?", (run_id,)).fetchall()
    assert second_source.endswith("-prompts.csv")
    reused = db.execute("select reused_from_run from samples where run_id = ? and status = 'done'", (second,))
    assert [r for (r,) in reused] == [run_id, run_id]


def _wait_for(flow_run_id, timeout_s: float):
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            if run.state.is_final() or time.monotonic() > deadline:
                return run
            time.sleep(2)
