"""Stopping cleanly on SIGTERM or SIGINT: one process-wide "stopping" state, and the signal handler that sets it.

What systemd, Kubernetes, Prefect cancellation and Ctrl-C send is SIGTERM or SIGINT. The first one:

- sets :data:`stopping` (so the launcher ends the running jobs' ranks: SIGTERM, a grace period, SIGKILL, and no
  job starts any more) and remembers the signal;
- raises :class:`Stopped` in the main thread, which unwinds whatever it was doing, the way ``KeyboardInterrupt``
  does; the flow then records the run as ``interrupted`` (``tasks/stop.py``) and the command exits
  with 128 + the signal number (143, 130), after Prefect's ``atexit`` hooks stopped its ephemeral server.

A second signal ends the process at once: every registered ``at_once`` hook runs (the launcher SIGKILLs its live
launches), the ephemeral Prefect server is killed, and the process leaves with ``os._exit``.

Prefect's flow engine has a SIGTERM handler of its own while a flow runs (it raises ``TerminationSignal``). Once
that exception has gone through the engine, the engine sends the signal to the process again, to run the handler
that was there before it: ours, in the command line. :func:`expect_echo` tells the handler that this echo is not a
second signal. Nothing here imports Prefect (the launcher uses this module and stays light).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

stopping = threading.Event()  # set by the first SIGTERM/SIGINT: start nothing new, end what runs

_lock = threading.Lock()
_signal: int | None = None
_echo_expected = False
_interrupted_run: str | None = None
_at_once: list[Callable[[], None]] = []


class Stopped(BaseException):
    """Raised in the main thread by the first stop signal. A BaseException, like KeyboardInterrupt, so that no
    ``except Exception`` in the way swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal_name(signum)}")
        self.signum = signum


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def stop_signal() -> int | None:
    """The signal that asked this process to stop, or None."""
    return _signal


def exit_code() -> int:
    """What a stopped command exits with: 128 + the signal (143 for SIGTERM, 130 for SIGINT), like a shell."""
    return 128 + (_signal or signal.SIGTERM)


def request_stop(signum: int) -> bool:
    """Ask this process to stop as ``signum`` would; False when a stop was already asked for."""
    global _signal
    with _lock:
        if stopping.is_set():
            return False
        _signal = signum
        stopping.set()
    return True


def at_once(hook: Callable[[], None]) -> None:
    """Run ``hook`` when a second signal ends the process at once (it must be quick and must not raise)."""
    _at_once.append(hook)


def expect_echo() -> None:
    """The next stop signal is Prefect's engine passing ours on (see the module's docstring), not a second one."""
    global _echo_expected
    _echo_expected = True


def clear_echo() -> None:
    """The stop has reached the command: any signal from now on is a second one."""
    global _echo_expected
    _echo_expected = False


def note_interrupted_run(run_id: str) -> None:
    """The run this stop recorded as interrupted: what the user is told to resume."""
    global _interrupted_run
    _interrupted_run = run_id


def stop_message() -> str:
    name = signal_name(_signal or signal.SIGTERM)
    if _interrupted_run is None:
        return f"stopped by {name}"
    return (
        f"stopped by {name}: run {_interrupted_run} is interrupted; continue it with "
        f"`reelbatch resume {_interrupted_run}`"
    )


def exit_now(code: int, message: str) -> None:
    """Leave the process at once: ``message`` on stderr, no exit hooks, no waiting for anything."""
    try:
        sys.stderr.write(f"\n{message}\n")
        sys.stderr.flush()
    except Exception:
        pass
    os._exit(code)


def _handle(signum: int, frame: FrameType | None) -> None:
    global _echo_expected
    if request_stop(signum):
        raise Stopped(signum)
    if _echo_expected:
        _echo_expected = False
        raise Stopped(signum)
    end_now(signum)


def end_now(signum: int) -> None:
    """Kill what this process started (launches, the ephemeral Prefect server) and exit without clean-up."""
    for hook in _at_once:
        try:
            hook()
        except Exception:  # nothing may keep the process from ending
            pass
    kill_prefect_server()
    exit_now(128 + signum, f"{signal_name(signum)} again: stopped at once")


def _prefect_server_process() -> Any:
    server_module = sys.modules.get("prefect.server.api.server")
    if server_module is None:  # Prefect never started a server here (and importing it costs seconds)
        return None
    # SubprocessASGIServer() is the instance ephemeral mode started (one per process, without a port).
    return server_module.SubprocessASGIServer().server_process


def prefect_server_gone() -> bool:
    """True when Prefect started an ephemeral API server in this process and it has exited (a Ctrl-C in a terminal
    or a signal to the whole process group reaches it too): Prefect's calls would now retry for about a minute."""
    process = _prefect_server_process()
    return process is not None and process.poll() is not None


def kill_prefect_server() -> None:
    """SIGKILL the ephemeral API server Prefect started in this process, if it started one."""
    process = _prefect_server_process()
    if process is not None and process.poll() is None:
        process.kill()


def install() -> dict[int, Any]:
    """Handle SIGTERM and SIGINT as this module says; the handlers they had. Only the main thread can install
    handlers: elsewhere (a flow called from a thread) this does nothing and returns {}."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous: dict[int, Any] = {}
    for signum in STOP_SIGNALS:
        previous[signum] = signal.signal(signum, _handle)
    return previous


def restore(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


@contextlib.contextmanager
def handling_signals(restore_after_stop: bool = True) -> Iterator[None]:
    """SIGTERM/SIGINT stop cleanly inside the block. The previous handlers come back when it ends, but after a stop
    only with ``restore_after_stop``: a process on its way out keeps ours, so a second signal still ends it at once."""
    previous = install()
    try:
        yield
    finally:
        if restore_after_stop or not stopping.is_set():
            restore(previous)


def reset() -> None:
    """Forget a stop (tests that stop several flows in one process)."""
    global _signal, _echo_expected, _interrupted_run
    with _lock:
        stopping.clear()
        _signal = None
        _echo_expected = False
        _interrupted_run = None
