"""Run one multi-rank ``torchrun`` job as an isolated, killable subprocess.

Command line (see :func:`torchrun_command`)::

    <python> -m torch.distributed.run --nnodes=1 --nproc-per-node=N
        --rdzv-backend=static --master-addr=127.0.0.1 --master-port=PORT
        --max-restarts=0 --tee=3 --log-dir=DIR -m ENTRY_MODULE ARGS...

Log format: torchrun's stdout and stderr are merged into one stream. Every line a rank
writes (stdout or stderr) is prefixed with its global rank, with no space after the colon::

    [rank0]:rank 0 sum 3
    [rank1]:[rank1]: Traceback (most recent call last):   <- torch adds its own "[rank1]: "

Lines from torchrun itself (its warnings and the final failure report) carry no prefix; the
prefixes and the report are read by ``reelbatch.contract`` (``split_output``, ``FailureReport``).
torchrun copies rank output by polling per-rank files every 0.1 s, so lines from different
ranks, and a rank's stdout against its stderr, are not strictly ordered. Because torchrun
runs ranks with ``python -u``, ``print()`` writes the text and its newline in two separate
system calls; on rare occasions the poller catches a line half written and that line
shows up split in two, each half with its own prefix.

Process hygiene: torchrun starts every rank in a session of its own, so killing torchrun's
process group does not reach the ranks. Each job therefore gets a unique
``REELBATCH_LAUNCH_ID`` in its environment, which every rank and rank child inherits. Once a
job is over, we kill every process that carries the tag, found through
``/proc/<pid>/environ``. That step only works on Linux; other systems get the process-group
kill alone.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from reelbatch.contract import (
    LAUNCH_ID_ENV,
    RANK_LINE_PREFIX_ENV,
    RANK_LINE_PREFIX_TEMPLATE,
    FailureReport,
    split_output,
)
from reelbatch.infra import shutdown

logger = logging.getLogger(__name__)

TAIL_LINES = 50
_POLL_S = 0.1
_WATCH_S = 0.25  # how soon a running launch notices a stop

# torchrun's pid of every launch running in this process, by launch id: a second stop signal kills them all.
_live: dict[str, int] = {}
_live_lock = threading.Lock()


class LaunchStopped(RuntimeError):
    """The orchestrator is stopping (SIGTERM/SIGINT): the job was ended, or never started."""


@dataclass
class LaunchResult:
    returncode: int  # torchrun's exit code; negative means killed by that signal
    timed_out: bool
    seconds: float
    log_path: Path  # combined output of torchrun and all ranks (appended to)
    first_failed_rank: int | None  # global rank from torchrun's "Root Cause" report, if any
    tail: list[str]  # last TAIL_LINES lines of this run's output, without newlines


def new_launch_id() -> str:
    """The tag every process of one launch carries; record it first to find a crashed orchestrator's orphans."""
    return uuid.uuid4().hex


def kill_launch(launch_id: str) -> int:
    """SIGKILL every live process of an earlier launch (e.g. ranks left running by a killed orchestrator).

    Returns how many processes were signalled. Linux only (it reads /proc); elsewhere it finds none.
    """
    victims = _tagged_pids(launch_id)
    _signal_pids(victims, signal.SIGKILL)
    return len(victims)


def free_port(host: str = "") -> int:
    """Return a TCP port that is free right now on ``host`` (default: all interfaces).

    torchrun's store listens on the wildcard address, so a port checked only on 127.0.0.1
    could still be taken on another interface. Another process can still grab the port
    before torchrun binds it; with the static rendezvous that fails fast with EADDRINUSE.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def torchrun_command(
    entry_module: str,
    args: Sequence[str],
    *,
    nproc_per_node: int,
    master_port: int,
    rank_log_dir: Path,
) -> list[str]:
    """Build the torchrun argument list; ranks run ``python -u -m entry_module *args``."""
    # Static rendezvous rather than c10d or --standalone, for a single node:
    # - ranks get MASTER_PORT == master_port; c10d moves them onto another port it picks itself;
    # - if the port is taken, static fails within about a second with EADDRINUSE. c10d then
    #   quietly joins whatever store holds the port as a client: it hung when a stranger held
    #   the port, and could join a neighbouring job's rendezvous, since every job's default
    #   rendezvous id is "none".
    # --tee=3 copies each rank's stdout+stderr to files under --log-dir and echoes them to
    # torchrun's own stdout/stderr with the rank prefix. Without --log-dir torchrun leaves a
    # /tmp/torchelastic_* directory behind on every run.
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes=1",
        f"--nproc-per-node={nproc_per_node}",
        "--rdzv-backend=static",
        "--master-addr=127.0.0.1",
        f"--master-port={master_port}",
        "--max-restarts=0",
        "--tee=3",
        f"--log-dir={rank_log_dir}",
        "-m", entry_module,
        *args,
    ]  # fmt: skip


def launch(
    entry_module: str,
    args: Sequence[str],
    *,
    nproc_per_node: int,
    log_path: Path,
    timeout_s: float | None,
    env: Mapping[str, str] | None = None,
    on_line: Callable[[str], None] | None = None,
    grace_s: float = 10.0,
    master_port: int | None = None,
    launch_id: str | None = None,
) -> LaunchResult:
    """Run ``entry_module`` on ``nproc_per_node`` ranks and wait for it, at most ``timeout_s``.

    Output is appended to ``log_path`` line by line, flushed after each line. Each line, without
    its newline, also goes to ``on_line``, which runs on the reader thread. A slow callback
    stalls the job's output, and exceptions it raises are logged and swallowed.

    On timeout the job gets SIGTERM (torchrun's process group and every rank), then
    ``grace_s`` seconds to exit, then SIGKILL. Whatever happens, including KeyboardInterrupt
    in the caller, every process of the job is SIGKILLed before this function returns or raises.

    Once the orchestrator is stopping (``shutdown.stopping``), the job ends the same way and this raises
    :class:`LaunchStopped`; it raises that too, starting nothing, when called while stopping.
    """
    if shutdown.stopping.is_set():
        raise LaunchStopped(f"not launched: stopping ({shutdown.signal_name(shutdown.stop_signal() or 0)})")
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    launch_id = launch_id or new_launch_id()
    output = _OutputCollector(log_path, on_line)
    with tempfile.TemporaryDirectory(
        prefix=".torchrun-", dir=log_path.parent, ignore_cleanup_errors=True
    ) as rank_log_dir:
        command = torchrun_command(
            entry_module,
            args,
            nproc_per_node=nproc_per_node,
            master_port=master_port if master_port is not None else free_port(),
            rank_log_dir=Path(rank_log_dir),
        )
        logger.info("launching %s: %s", launch_id, command)
        started = time.monotonic()
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=_job_environment(env, launch_id),
            start_new_session=True,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        reader = threading.Thread(
            target=output.consume, args=(proc.stdout,), name=f"torchrun-log-{proc.pid}", daemon=True
        )
        reader.start()
        with _live_lock:
            _live[launch_id] = proc.pid
        timed_out = stopped = False
        try:
            timed_out, stopped = _watch(proc, None if timeout_s is None else started + timeout_s)
            if timed_out:
                logger.warning("job %s timed out after %ss; terminating", launch_id, timeout_s)
            elif stopped:
                logger.warning("job %s: the orchestrator is stopping; terminating", launch_id)
            if timed_out or stopped:
                # A stopped job's report is of no use: torchrun is killed as soon as its ranks are gone (it was
                # seen busy for over 10 s after them, under load).
                _terminate(proc, launch_id, grace_s, ranks_only=stopped)
        finally:
            _kill(proc.pid, launch_id)
            proc.wait()
            with _live_lock:
                _live.pop(launch_id, None)
            # Ranks never hold our pipe (torchrun points their stdout/stderr at files), so EOF
            # follows torchrun's exit; the timeout only guards against surprises.
            reader.join(timeout=10)
        seconds = time.monotonic() - started
    if stopped:
        raise LaunchStopped(
            f"job {launch_id} was stopped after {seconds:.0f} s: the orchestrator got "
            f"{shutdown.signal_name(shutdown.stop_signal() or 0)}"
        )
    return LaunchResult(
        returncode=proc.returncode,
        timed_out=timed_out,
        seconds=seconds,
        log_path=log_path,
        first_failed_rank=output.first_failed_rank,
        tail=list(output.tail),
    )


def _watch(proc: subprocess.Popen, deadline: float | None) -> tuple[bool, bool]:
    """Wait for torchrun to exit; (timed out, stopping) when it has to be ended instead."""
    while True:
        if shutdown.stopping.is_set():
            return False, True
        wait_s = _WATCH_S if deadline is None else min(_WATCH_S, deadline - time.monotonic())
        if wait_s <= 0:
            return True, False
        try:
            proc.wait(timeout=wait_s)
            return False, False
        except subprocess.TimeoutExpired:
            continue


def kill_live_launches() -> None:
    """SIGKILL every launch of this process that is still running (a second stop signal: no grace)."""
    with _live_lock:
        live = list(_live.items())
    for launch_id, torchrun_pid in live:
        _signal_job(torchrun_pid, launch_id, signal.SIGKILL)


shutdown.at_once(kill_live_launches)


def _job_environment(overrides: Mapping[str, str] | None, launch_id: str) -> dict[str, str]:
    job_env = dict(os.environ)
    # One OpenMP thread per rank by default: several ranks share a few cores.
    job_env["PYTHONUNBUFFERED"] = "1"
    job_env.setdefault("OMP_NUM_THREADS", "1")  # a value the user set wins
    job_env.update(overrides or {})
    job_env[RANK_LINE_PREFIX_ENV] = RANK_LINE_PREFIX_TEMPLATE
    job_env[LAUNCH_ID_ENV] = launch_id
    return job_env


class _OutputCollector:
    """Drains torchrun's merged output: log file, callback, tail and root-cause rank."""

    def __init__(self, log_path: Path, on_line: Callable[[str], None] | None):
        self._log_path = log_path
        self._on_line = on_line
        self._report = FailureReport()
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)

    @property
    def first_failed_rank(self) -> int | None:
        return self._report.root_cause

    def consume(self, stream: TextIO) -> None:
        try:
            with open(self._log_path, "a", encoding="utf-8") as log:
                for line in stream:
                    log.write(line)
                    log.flush()
                    self._handle(line.rstrip("\n"))
        except Exception:
            logger.exception("writing %s failed; discarding the rest of the output", self._log_path)
            # Keep draining: torchrun blocks forever once the pipe fills up.
            for _ in stream:
                pass

    def _handle(self, line: str) -> None:
        self.tail.append(line)
        for piece in split_output(line):
            self._report.read(piece)  # torchrun's closing report names the first rank that failed
        if self._on_line is not None:
            try:
                self._on_line(line)
            except Exception:
                logger.exception("on_line callback failed")


def _terminate(proc: subprocess.Popen, launch_id: str, grace_s: float, ranks_only: bool = False) -> None:
    """SIGTERM the whole job, then wait up to ``grace_s`` for all of it (``ranks_only``: all but torchrun) to exit."""
    # torchrun would forward SIGTERM to the ranks as well, but we signal them directly,
    # in case torchrun itself is stuck.
    _signal_job(proc.pid, launch_id, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if (ranks_only or proc.poll() is not None) and not set(_tagged_pids(launch_id)) - {proc.pid}:
            return
        time.sleep(_POLL_S)


def _kill(torchrun_pid: int, launch_id: str) -> None:
    """SIGKILL torchrun's process group and every process tagged with ``launch_id``."""
    killed = set(_tagged_pids(launch_id))
    _signal_job(torchrun_pid, launch_id, signal.SIGKILL)
    # A process can fork while we scan; a few rounds catch such late children too.
    for _ in range(5):
        survivors = _tagged_pids(launch_id)
        if not survivors:
            _wait_until_dead(killed)
            return
        killed.update(survivors)
        _signal_pids(survivors, signal.SIGKILL)
        time.sleep(_POLL_S)
    logger.error("job %s: processes %s survived SIGKILL", launch_id, _tagged_pids(launch_id))


def _wait_until_dead(pids: Iterable[int], timeout_s: float = 5.0) -> None:
    """Wait (briefly) until the SIGKILLed ``pids`` are gone or zombies: a process whose memory is already released
    no longer shows its tag, yet runs its exit for a moment, and the caller is promised none of it is left."""
    deadline = time.monotonic() + timeout_s
    pending = set(pids)
    while pending and time.monotonic() < deadline:
        pending = {pid for pid in pending if _is_alive(pid)}
        if pending:
            time.sleep(_POLL_S)


def _is_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            state = stat_file.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def _signal_job(torchrun_pid: int, launch_id: str, sig: signal.Signals) -> None:
    try:
        os.killpg(torchrun_pid, sig)  # torchrun is its group's leader (start_new_session)
    except ProcessLookupError:
        pass
    _signal_pids(_tagged_pids(launch_id), sig)


def _signal_pids(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _tagged_pids(launch_id: str) -> list[int]:
    """Live processes whose environment has ``REELBATCH_LAUNCH_ID=launch_id`` (Linux only)."""
    tag = f"{LAUNCH_ID_ENV}={launch_id}".encode()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    pids = []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as environ_file:
                environ = environ_file.read()
        except OSError:  # gone already, or not ours to read
            continue
        # A zombie's environ reads empty, so processes that are dead but not yet reaped never count.
        if tag in environ.split(b"\0"):
            pids.append(int(entry))
    return pids
