"""The generate-dataset flow under Prefect's test harness: pasted CSV in, artifacts and rank logs readable back."""

from __future__ import annotations

import csv
import io
import logging
import socket
import sqlite3
import time
from pathlib import Path

import pytest
from prefect import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
    LogFilterTextSearch,
)
from prefect.logging.handlers import APILogHandler
from prefect.testing.utilities import prefect_test_harness

from reelbatch.config import RunConfig
from reelbatch.flows.generate import generate_dataset
from reelbatch.infra.devices import DeviceGroup
from reelbatch.infra.prefect_config import database_url, gpu_limit_name, holding_gpus
from reelbatch.manifest import ManifestError
from reelbatch.tasks.intake import MAX_INLINE_MANIFEST_BYTES, resolve_manifest


@pytest.fixture(scope="module")
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def pasted_csv() -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["prompt", "model", "height", "width", "num_frames", "num_inference_steps", "guidance_scale"])
    writer.writerow(["a lighthouse | at dusk", "tiny-wan", 32, 32, 5, 2, 5.0])
    writer.writerow(["rain on a window", "tiny-wan", 32, 32, 5, 3, 1.0])
    writer.writerow(["a bad size", "tiny-wan", 30, 32, 5, 2, 5.0])
    return buffer.getvalue()


def test_pasted_text_is_stored_once_under_the_output_and_capped(tmp_path: Path):
    text = pasted_csv()
    first = resolve_manifest(None, text, str(tmp_path / "out"))
    assert Path(first).read_bytes() == text.encode("utf-8") and "/.reelbatch/manifests/" in first
    assert resolve_manifest(None, text, str(tmp_path / "out")) == first  # same text, same file: re-runs resume
    with pytest.raises(ManifestError, match="reelbatch submit"):
        resolve_manifest(None, "x" * (MAX_INLINE_MANIFEST_BYTES + 1), str(tmp_path / "out"))
    with pytest.raises(ManifestError, match="not both"):
        resolve_manifest("m.csv", text, str(tmp_path / "out"))
    with pytest.raises(ManifestError, match="no manifest"):
        resolve_manifest(None, "  ", str(tmp_path / "out"))


@pytest.mark.server
@pytest.mark.torchrun
def test_flow_run_publishes_artifacts_and_streams_rank_logs(prefect_server, tmp_path: Path):
    from prefect.blocks.system import Secret

    db_file = tmp_path / "state.db"
    Secret(value=f"sqlite:///{db_file}").save("reelbatch-test-db", overwrite=True)
    assert database_url("sqlite:///elsewhere.db", "reelbatch-test-db") == f"sqlite:///{db_file}"
    with pytest.raises(ValueError, match="no Prefect Secret block named 'missing'"):
        database_url("sqlite:///x.db", "missing")

    # The suite runs Prefect at WARNING (conftest); rank lines are INFO records of the task's run logger.
    # setLevel, not the attribute: it also clears the loggers' cached isEnabledFor answers from earlier tests.
    loggers = [logging.getLogger(name) for name in ("prefect.task_runs", "prefect.flow_runs")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.INFO)
    seen = Captured()
    loggers[0].addHandler(seen)
    try:
        state = generate_dataset(
            manifest_text=pasted_csv(),
            config=RunConfig(output=str(tmp_path / "videos"), db_secret="reelbatch-test-db", gpus_per_node=2),
            return_state=True,
        )
    finally:
        loggers[0].removeHandler(seen)
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
    assert state.is_completed()
    report = state.result()
    assert (report.done, report.failed, len(report.rejected)) == (2, 0, 1)
    flow_run_id = state.state_details.flow_run_id

    db = sqlite3.connect(db_file)
    assert db.execute("select count(*) from samples where status = 'done'").fetchone()[0] == 2

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
        by_type = {a.type: a for a in artifacts}
        assert {"progress", "table", "markdown"} <= set(by_type)
        assert float(by_type["progress"].data) == 100.0
        table = by_type["table"].data
        assert "job-" in str(table) and "dp1" in str(table)
        summary = by_type["markdown"].data
        assert "Rejected rows (1)" in summary and "height" in summary and "metadata.csv" in summary
    # Rank output went to the run-job task's logger line by line, each with its job and rank, inside the task's run
    # context (what the Prefect log handler ships to the API under that task run).
    rank_lines = [r for r in seen.records if " rank 0 | " in r.getMessage()]
    assert rank_lines and all(
        getattr(r, "task_run_id", None) and getattr(r, "flow_run_id", None) == str(flow_run_id) for r in rank_lines
    )
    assert all(getattr(r, "task_name", "").startswith("run-job") for r in rank_lines)
    with get_client(sync_client=True) as client:
        APILogHandler().flush()  # logs travel to the API in batches; read them back like the UI does
        deadline = time.monotonic() + 30
        while True:
            logs = client.read_logs(
                log_filter=LogFilter(
                    flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]),
                    text=LogFilterTextSearch(query="rank 0 |"),
                )
            )
            if logs or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert logs and all(log.task_run_id for log in logs)
        # CPU rank slots are a per-run budget: no machine-wide GPU limit was made for them.
        limits = {limit.name for limit in client.read_global_concurrency_limits(limit=100)}
        assert gpu_limit_name(socket.gethostname()) not in limits


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.server
def test_cuda_jobs_hold_slots_of_the_hosts_gpu_limit(prefect_server):
    group = DeviceGroup(("2", "3"), cuda=True, host="gpu-node", machine_devices=8)
    name = gpu_limit_name(socket.gethostname())
    with get_client(sync_client=True) as client:
        with holding_gpus(group, 2):
            limit = client.read_global_concurrency_limit_by_name(name)
            assert (limit.limit, limit.active_slots) == (8, 2)
        assert client.read_global_concurrency_limit_by_name(name).active_slots == 0
