#!/usr/bin/env python
"""Screenshots of the Prefect UI showing a finished generate-dataset run and its artifacts (docs/ui-*.png).

    .venv/bin/python scripts/ui_screenshot.py                 # own server on a free port, a tiny run, screenshots
    .venv/bin/python scripts/ui_screenshot.py --api-url http://127.0.0.1:4200/api   # use a running server

Starts `prefect server start` (unless --api-url), runs examples/prompts.csv on the tiny models against it (the
database URL from a Prefect Secret block, as deployments do), then points headless Chromium at the run's page
and its Artifacts tab. Needs Chromium (Debian/Ubuntu: `apt-get install -y chromium`); nothing else to install.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).with_name("prefect"))
SECRET = "reelbatch-screenshot-database-url"
# The UI is a single-page app that keeps fetching after load: Chromium's virtual time lets it settle first.
RENDER_BUDGET_MS = 20000
DEFAULT_SIZE = "1600,1000"
FORM_SIZE = "1600,1800"  # the run form is long: show the manifest, database and defaults fields


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def start_server(home: Path, timeout_s: float = 240) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # The UI asks the server where its API is; without this it names the default port 4200.
        "PREFECT_UI_API_URL": api_url,
        "PREFECT_SERVER_UI_API_URL": api_url,
    }
    env.pop("PREFECT_API_URL", None)
    log = (home.parent / "server.log").open("w")
    server = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=home.parent,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout_s
    while not _healthy(api_url):
        if server.poll() is not None or time.monotonic() > deadline:
            stop(server)
            sys.exit(f"the Prefect server did not start; see {home.parent / 'server.log'}")
        time.sleep(1)
    return server, api_url


def stop(process: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
            process.wait(20)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def run_example(api_url: str, work: Path) -> str:
    """Run examples/prompts.csv through generate-dataset against the server; returns the flow run id."""
    script = textwrap.dedent(f"""
        from prefect.blocks.system import Secret
        from reelbatch.config import RunConfig
        from reelbatch.flows.generate import generate_dataset

        Secret(value={f"sqlite:///{work / 'reelbatch.db'}"!r}).save({SECRET!r}, overwrite=True)
        config = RunConfig(output={str(work / "videos")!r}, db_secret={SECRET!r}, gpus_per_node=2)
        state = generate_dataset(manifest={str(REPO / "examples" / "prompts.csv")!r}, config=config, return_state=True)
        print("FLOW_RUN", state.state_details.flow_run_id, state.name)
    """)
    env = {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "PREFECT_LOGGING_LEVEL": "INFO",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=work, capture_output=True, text=True, timeout=900
    )
    marker = [line.split() for line in done.stdout.splitlines() if line.startswith("FLOW_RUN ")]
    if done.returncode != 0 or not marker:
        sys.exit(f"the example run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    _, flow_run_id, state = marker[-1]
    print(f"flow run {flow_run_id}: {state}")
    return flow_run_id


def screenshot(chromium: str, url: str, target: Path, size: str, profile: Path) -> None:
    command = [
        chromium,
        "--headless",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={profile}",
        f"--window-size={size}",
        f"--virtual-time-budget={RENDER_BUDGET_MS}",
        f"--screenshot={target}",
        url,
    ]
    if os.geteuid() == 0:
        command.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    if done.returncode != 0 or not target.is_file():
        sys.exit(f"chromium failed on {url}:\n{done.stderr[-2000:]}")


def deploy_generate_dataset(api_url: str, work: Path) -> str | None:
    """Register generate-dataset from prefect.yaml (as the README does) so its run form can be shown; its id."""
    env = {**os.environ, "PREFECT_API_URL": api_url, "PWD": str(REPO), "PREFECT_HOME": str(work / "home")}
    for command in (
        ["work-pool", "create", "reelbatch", "--type", "process", "--overwrite"],
        ["--no-prompt", "deploy", "--name", "generate-dataset"],
    ):
        done = subprocess.run([PREFECT, *command], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            print(
                f"skipping the run form: prefect {' '.join(command)} failed:\n"
                f"{done.stdout[-1500:]}{done.stderr[-1500:]}"
            )
            return None
    return _query(api_url, "deployment")


def _query(api_url: str, what: str, flow_run_id: str | None = None):
    """Ids from the API, in a child process: this script never imports Prefect, so it never picks up a profile."""
    script = textwrap.dedent(f"""
        from uuid import UUID
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        with get_client(sync_client=True) as client:
            if {what!r} == "deployment":
                print(client.read_deployment_by_name("generate-dataset/generate-dataset").id)
            else:
                flt = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[UUID({flow_run_id!r})]))
                for artifact in client.read_artifacts(artifact_filter=flt):
                    print(artifact.type, artifact.id)
    """)
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PREFECT_API_URL": api_url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        sys.exit(f"cannot read {what} from {api_url}:\n{done.stderr[-2000:]}")
    if what == "deployment":
        return done.stdout.strip()
    return dict(line.split() for line in done.stdout.splitlines() if line.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api-url", help="Use this Prefect server (http://host:port/api) instead of starting one.")
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="Folder for the PNG files.")
    parser.add_argument(
        "--chromium",
        default=shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome"),
        help="Chromium binary.",
    )
    args = parser.parse_args()
    if not args.chromium:
        sys.exit("no Chromium found: install it (apt-get install -y chromium) or pass --chromium PATH")

    with tempfile.TemporaryDirectory(prefix="reelbatch-ui-") as tmp:
        work = Path(tmp)
        (work / "home").mkdir()
        server = None
        api_url = args.api_url
        if api_url is None:
            server, api_url = start_server(work / "home")
            print(f"Prefect server at {api_url}")
        try:
            deployment_id = deploy_generate_dataset(api_url, work) if server is not None else None
            flow_run_id = run_example(api_url, work)
            artifacts = _query(api_url, "artifacts", flow_run_id)
            ui = api_url.rstrip("/").removesuffix("/api")
            # (file, page, window, what the reader sees). The classic UI resets ?tab= to Logs while the run
            # loads, so the Artifacts tab comes from the new UI under /v2, which keeps it.
            shots = [
                (
                    "ui-run.png",
                    f"{ui}/runs/flow-run/{flow_run_id}",
                    DEFAULT_SIZE,
                    "the finished run: state, duration, task graph, logs",
                ),
                (
                    "ui-artifacts.png",
                    f"{ui}/v2/runs/flow-run/{flow_run_id}?tab=Artifacts",
                    DEFAULT_SIZE,
                    "the run's artifacts: progress, job table, summary",
                ),
            ]
            if "table" in artifacts:
                shots.append(
                    (
                        "ui-artifact-jobs.png",
                        f"{ui}/artifacts/artifact/{artifacts['table']}",
                        DEFAULT_SIZE,
                        "the job table artifact: plan, samples, padding, status per job",
                    )
                )
            if "markdown" in artifacts:
                shots.append(
                    (
                        "ui-artifact-summary.png",
                        f"{ui}/artifacts/artifact/{artifacts['markdown']}",
                        DEFAULT_SIZE,
                        "the summary artifact: counts, dataset links, rejected rows",
                    )
                )
            if deployment_id:
                shots.append(
                    (
                        "ui-run-form.png",
                        f"{ui}/deployments/deployment/{deployment_id}/run",
                        FORM_SIZE,
                        "the run form of generate-dataset",
                    )
                )
            args.out.mkdir(parents=True, exist_ok=True)
            for name, url, size, what in shots:
                screenshot(args.chromium, url, args.out / name, size, work / "chromium")
                print(f"{args.out / name}: {what}")
        finally:
            if server is not None:
                stop(server)


if __name__ == "__main__":
    main()
