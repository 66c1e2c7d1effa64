"""kill -9 of the orchestrator at several points of a real run, then `reelbatch resume`: nothing lost or doubled."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from reelbatch.contract import CRASH_ENV
from reelbatch.infra.launcher import _tagged_pids

pytestmark = [pytest.mark.torchrun, pytest.mark.usefixtures("prefect_api")]

# Four videos without CFG on 2 ranks (dp=2), at most 2 per job: two jobs.
MANIFEST = "prompt,seed,guidance_scale,num_inference_steps\n" + "".join(
    f"video number {i},{i},1.0,2\n" for i in range(4)
)


def reelbatch(tmp_path: Path, *args: str, crash_at: str | None = None) -> subprocess.CompletedProcess:
    """Run the CLI in a session of its own; output goes through files, not pipes.

    A process killed with SIGKILL cannot stop its helpers (Prefect's ephemeral API server): they would hold a
    pipe open forever. Once the CLI is gone its session is killed, as a reboot would; torchrun ranks live in
    sessions of their own and survive, like real orphans.
    """
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    if crash_at:
        env[CRASH_ENV] = crash_at
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    stdout_path, stderr_path = logs / f"{len(list(logs.iterdir()))}.out", logs / f"{len(list(logs.iterdir()))}.err"
    with open(stdout_path, "w") as stdout, open(stderr_path, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "reelbatch.cli", *args, "--db", f"sqlite:///{tmp_path / 'state.db'}"],
            stdout=stdout,
            stderr=stderr,
            cwd=tmp_path,
            env=env,
            start_new_session=True,
        )
        try:
            returncode = process.wait(timeout=600)
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return subprocess.CompletedProcess(process.args, returncode, stdout_path.read_text(), stderr_path.read_text())


def check_consistent(tmp_path: Path, run_id: str) -> list[sqlite3.Row]:
    db = sqlite3.connect(tmp_path / "state.db")
    db.row_factory = sqlite3.Row
    rows = db.execute("select * from samples where run_id = ? and sample_id is not null", (run_id,)).fetchall()
    assert len(rows) == 4 and len({r["sample_id"] for r in rows}) == 4  # exact count, no duplicates
    assert {r["status"] for r in rows} == {"done"}
    out = (tmp_path / "videos").resolve()
    files = {p for p in out.rglob("*.mp4") if ".reelbatch" not in p.parts}
    assert files == {Path(r["output_path"]) for r in rows}  # every done row has its file and vice versa
    assert not [p for p in out.rglob("*") if "partial" in p.name and ".reelbatch" not in p.parts]
    for (launch_id,) in db.execute("select launch_id from jobs where launch_id is not null"):
        assert not _tagged_pids(launch_id), "a rank of a killed orchestrator survived the resume"
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("crash_at", ["before_launch", "mid_job", "collect"])
def test_resume_after_kill_finishes_the_run_exactly(tmp_path, crash_at):
    (tmp_path / "m.csv").write_text(MANIFEST)
    args = ("m.csv", "--gpus", "2", "--out", "videos", "--max-samples-per-job", "2")
    crashed = reelbatch(tmp_path, "run", *args, crash_at=crash_at)
    assert crashed.returncode == -9, crashed.stderr[-2000:]

    [run] = json.loads(reelbatch(tmp_path, "runs", "--json").stdout)
    assert run["status"] == "running"
    resumed = reelbatch(tmp_path, "resume", run["id"][:10])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    check_consistent(tmp_path, run["id"])

    # The same manifest again, as a new run: every video is reused, nothing is generated.
    again = reelbatch(tmp_path, "run", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "4 reused" in again.stderr
    newest = json.loads(reelbatch(tmp_path, "runs", "--json").stdout)[0]
    assert newest["id"] != run["id"] and newest["jobs"] == 0
    rows = check_consistent(tmp_path, newest["id"])
    assert {r["reused_from_run"] for r in rows} == {run["id"]}
