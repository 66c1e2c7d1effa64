"""What the generate-dataset flow does when its process is told to stop (SIGTERM, SIGINT), and its run's heartbeat.

Inside :func:`stop_handling` the signals are ``infra.shutdown``'s: the first one unwinds the flow (the launcher ends
the running jobs, no job starts any more), and on the way out the run is recorded ``interrupted`` with its
unfinished samples ``pending``, its summary published, and the signal handed on to Prefect as what it would have
raised itself: ``TerminationSignal`` for SIGTERM (so a cancellation from a Prefect worker ends ``Cancelled``),
``KeyboardInterrupt`` for SIGINT. A run the block watches also renews its heartbeat while the block runs.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator

from prefect.exceptions import TerminationSignal

from reelbatch.infra import shutdown
from reelbatch.infra.db import Database
from reelbatch.planning.jobs import RunPlan
from reelbatch.tasks.record import interrupt_run
from reelbatch.tasks.report import publish_run_report

logger = logging.getLogger(__name__)


class RunWatch:
    """The run a flow is running, once it has one: its heartbeat, and what to record if the flow is stopped."""

    def __init__(self, db: Database, stack: contextlib.ExitStack) -> None:
        self._db = db
        self._stack = stack
        self._run: tuple[str, RunPlan, str] | None = None

    def watch(self, run_id: str, plan: RunPlan, output: str) -> None:
        """From now on the run's heartbeat is renewed, and a stop records it ``interrupted``."""
        self._stack.enter_context(self._db.run_heartbeat(run_id))
        self._run = (run_id, plan, output)

    def record_interrupt(self) -> None:
        if self._run is None:  # stopped before the run was recorded: nothing to resume
            return
        run_id, plan, output = self._run
        name = shutdown.signal_name(shutdown.stop_signal() or signal.SIGTERM)
        report = interrupt_run(self._db, run_id, plan, output, name)
        if report.status == "interrupted":  # a run that had finished before the signal keeps its status
            shutdown.note_interrupted_run(run_id)
        if shutdown.prefect_server_gone():
            return
        try:
            publish_run_report(self._db, report)
        except Exception:  # the Prefect API may be gone already (Ctrl-C reaches its server too)
            logger.warning("run %s: publishing the interrupted run's report failed", run_id, exc_info=True)


@contextlib.contextmanager
def stop_handling(db: Database) -> Iterator[RunWatch]:
    """Run the flow's body under ``infra.shutdown``'s signal handlers (see the module docstring)."""
    previous = shutdown.install()
    stack = contextlib.ExitStack()
    run = RunWatch(db, stack)
    try:
        with stack:
            yield run
    except BaseException as exc:
        if not shutdown.stopping.is_set():
            raise
        try:
            run.record_interrupt()
        except Exception:  # the database may be what failed; the heartbeat going stale shows the run interrupted
            logger.exception("recording the stopped run as interrupted failed")
        if shutdown.prefect_server_gone():
            # The signal reached Prefect's ephemeral server too (Ctrl-C in a terminal, a kill of the process group):
            # each call Prefect's engine makes from here on would retry for about a minute. The run is recorded.
            shutdown.exit_now(shutdown.exit_code(), shutdown.stop_message())
        handed_on = _as_prefect_expects(exc)
        if handed_on is exc:
            raise
        raise handed_on from exc
    finally:
        shutdown.restore(previous)


def _as_prefect_expects(exc: BaseException) -> BaseException:
    if isinstance(exc, TerminationSignal | KeyboardInterrupt):
        return exc
    if shutdown.stop_signal() == signal.SIGINT:
        return KeyboardInterrupt()
    # Prefect's engine passes a TerminationSignal on to the handler that was there before it, with os.kill.
    shutdown.expect_echo()
    return TerminationSignal(signal=signal.SIGTERM)
