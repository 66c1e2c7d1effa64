"""A real Prefect API server on a free loopback port, as tests start one: `prefect server start` in a session of
its own, waited for on /health, stopped with its whole process group."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

PREFECT = str(Path(sys.executable).with_name("prefect"))
# A 2-core machine running other tests beside this one is slow to start Python processes: be patient.
SERVER_START_S = 240
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class ServerDidNotStart(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _end_with_parent() -> None:
    """In the server's process: SIGTERM when the test process dies, also without its teardown (SIGKILL, a cancelled
    CI job); the server then ends its own workers."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start(home: Path, env: dict[str, str], *args: str) -> tuple[subprocess.Popen, str]:
    """Start a server with ``env`` (its PREFECT_HOME under ``home``) and wait until it answers; (process, API URL).

    Its output goes to ``home/server.log``; :class:`ServerDidNotStart` carries the end of it.
    """
    port = free_port()
    log_path = home / "server.log"
    env = {**env, "PREFECT_HOME": str(home / "home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), *args],
            cwd=home,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_end_with_parent,
        )
    api = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + SERVER_START_S
    while True:
        try:
            if httpx.get(f"{api}/health", timeout=5).status_code == 200:
                return process, api
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            raise ServerDidNotStart(f"Prefect server did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.5)


def stop(process: subprocess.Popen) -> None:
    """Terminate the process group (server workers, flow run subprocesses, torchrun ranks), then kill it."""
    if process.poll() is None:
        for sig, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(grace)
                break
            except subprocess.TimeoutExpired:
                continue
    # Children that outlived the leader are still in its group.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
