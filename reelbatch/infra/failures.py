"""Why a torchrun job failed, which rank to blame, whether to try again, and whether an output video is sound.

Pure Python: no torch, no Prefect, no database. Everything is read from the launch's result and its log.

:func:`classify` reads a finished launch (its ``LaunchResult`` and its whole log, streamed) and returns one
:class:`Failure` (``None`` for a success). Kinds, most specific first:

``bad_input``           the engine refused the job (``engine/checks.py``'s ``PlanNotRunnable``, a job spec that does
                        not validate, a rank count that does not match the plan, xfuser missing): never retried.
``oom``                 a rank ran out of device (or host allocator) memory: ``torch.OutOfMemoryError``, "CUDA out of
                        memory", cuBLAS/NCCL allocation failures. Retried with a lower-memory plan.
``model_load``          a rank failed after its ``loading`` event and before its ``loaded`` event.
``rank_crash``          a rank raised an exception that is not one of the above, or died (exit code, or a signal
                        other than the agent's own SIGTERM) without any error text.
``collective_timeout``  the only error text is the communication layer's: NCCL/gloo watchdog timeouts, connection
                        closed/reset by peer, store and rendezvous failures, EADDRINUSE on the master port.
``timeout``             our own wall clock ran out (``result.timed_out``); the ranks were killed from outside.
``unknown``             torchrun failed and nothing above explains it.

Blame: when one rank fails, torchrun SIGTERMs the others within ~0.1 s, and peers waiting in a collective often
raise a gloo/NCCL "connection closed by peer" error of their own first. Those are consequences. A rank with a
more specific cause (above) wins over them; among ranks with the same kind of evidence the root cause that
torchrun reports wins, then the rank whose error came first in the log. Ranks the agent SIGTERMed
("Sending process P closing signal SIGTERM", then "exitcode: -15" in the report) are never blamed for dying.

The log must hold one launch only: give every attempt its own log file (the launcher appends).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from reelbatch.contract import FailureReport, parse_event, split_output
from reelbatch.infra.launcher import LaunchResult

KINDS = ("bad_input", "oom", "model_load", "rank_crash", "collective_timeout", "timeout", "unknown")
TAIL_LINES = 20
_MAX_MESSAGE = 600

_OOM = re.compile(
    r"OutOfMemoryError|(?:CUDA|HIP|XPU|MPS backend) out of memory|CUDA error: out of memory"
    r"|Cuda failure \d* ?'out of memory'|DefaultCPUAllocator: can't allocate memory|CUBLAS_STATUS_ALLOC_FAILED"
)
_BAD_INPUT = re.compile(
    r"\bPlanNotRunnable\b|\bFaultSpecError\b|validation errors? for JobSpec"
    r"|needs \d+ ranks but the job was launched with \d+|backend xdit: cannot import xfuser"
)
_COLLECTIVE = re.compile(
    r"Connection closed by peer|Connection reset by peer|Connection refused|ECONNREFUSED|EADDRINUSE"
    r"|[Aa]ddress already in use|Watchdog caught collective operation timeout|[Cc]ollective operation timeout"
    r"|NCCL error|NCCL communicator was aborted|nccl(?:System|Internal|Remote|UnhandledCuda)Error"
    r"|DistBackendError|DistNetworkError|DistStoreError|Rendezvous\w*Error|Timed out waiting \d+ ?ms"
    r"|Socket Timeout|[Hh]eartbeat monitor timed out|watchdog got stuck|gloo.*(?:[Tt]imed out|Broken pipe)"
)
# The last line of a Python traceback: "RuntimeError: ...", "torch.OutOfMemoryError: ...", "KeyboardInterrupt".
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?::\s|:$|$)")
_SIGNALS = {1: "SIGHUP", 2: "SIGINT", 4: "SIGILL", 6: "SIGABRT", 7: "SIGBUS", 8: "SIGFPE", 9: "SIGKILL",
            11: "SIGSEGV", 13: "SIGPIPE", 15: "SIGTERM"}  # fmt: skip


@dataclass(frozen=True)
class Failure:
    kind: str  # one of KINDS
    rank: int | None  # global rank to blame; None when no rank is (torchrun itself, our wall clock)
    message: str  # one paragraph for people: what happened, on which rank, the decisive log line
    tail: list[str]  # the blamed rank's last lines (prefix stripped), or the launch's last lines


@dataclass
class _Rank:
    tail: deque = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    first_seen: int = 0  # line number of its first error evidence (for ordering)
    oom: str | None = None
    bad_input: str | None = None
    collective: str | None = None
    exception: str | None = None  # last exception line of a traceback
    in_traceback: bool = False
    loading: bool = False
    loaded: bool = False

    def note(self, attr: str, text: str, line_no: int) -> None:
        if getattr(self, attr) is None:
            setattr(self, attr, text.strip()[:_MAX_MESSAGE])
        if not self.first_seen:
            self.first_seen = line_no


class _LogReader:
    """One pass over the launch's output: per-rank evidence and torchrun's report."""

    def __init__(self) -> None:
        self.ranks: dict[int, _Rank] = {}
        self.report = FailureReport()
        self.agent_tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.agent_collective: str | None = None
        self.agent_signalled: str | None = None

    def rank(self, number: int) -> _Rank:
        return self.ranks.setdefault(number, _Rank())

    def exitcode(self, number: int) -> int | None:
        """The rank's exit code in torchrun's report."""
        return self.report.exits.get(number, (None, None))[0]

    def feed(self, lines: Iterable[str]) -> None:
        line_no = 0
        for raw in lines:
            for line in split_output(raw):
                line_no += 1
                reported = self.report.read(line)
                if line.rank is not None:
                    self._rank_line(self.rank(line.rank), line.text, line_no)
                else:
                    self._agent_line(line.text, reported)
        for number in self.report.exits:  # a rank that died without printing a line is known from the report only
            self.rank(number)

    def _rank_line(self, rank: _Rank, text: str, line_no: int) -> None:
        rank.tail.append(text)
        parsed = parse_event(text)
        if parsed is not None:
            event = parsed.get("event")
            rank.loading |= event == "loading"
            rank.loaded |= event not in ("loading", None)  # any later event means the weights were loaded
            return
        if not (rank.in_traceback and text[:1].isspace()):  # a traceback's source lines are no evidence
            if _OOM.search(text):
                rank.note("oom", text, line_no)
            if _BAD_INPUT.search(text):
                rank.note("bad_input", text, line_no)
            if _COLLECTIVE.search(text):
                rank.note("collective", text, line_no)
        if text.startswith("Traceback (most recent call last)"):
            rank.in_traceback = True
        elif rank.in_traceback and text and not text[0].isspace() and _EXCEPTION_LINE.match(text):
            rank.exception = text.strip()[:_MAX_MESSAGE]  # the last one: a chained traceback ends with the cause
            rank.in_traceback = False
            if not rank.first_seen:
                rank.first_seen = line_no

    def _agent_line(self, line: str, reported: bool) -> None:
        if line.strip():
            self.agent_tail.append(line)
        if reported:  # torchrun's report and SIGTERM notices (read by FailureReport) are no evidence of their own
            return
        if "SignalException" in line and "got signal" in line:
            self.agent_signalled = line.strip()
        elif self.agent_collective is None and _COLLECTIVE.search(line):
            self.agent_collective = line.strip()[:_MAX_MESSAGE]

    def victim(self, number: int) -> bool:
        """SIGTERMed by the agent because another rank failed first."""
        code, pid = self.report.exits.get(number, (None, None))
        return pid is not None and pid in self.report.sigtermed_pids and code == -15


def _read_lines(result: LaunchResult) -> Iterator[str]:
    try:
        with open(result.log_path, encoding="utf-8", errors="replace") as log:
            yield from log
    except OSError:  # no log file (never created, or removed): the tail is all there is
        yield from result.tail


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "died"
    if code < 0:
        return f"was killed by {_SIGNALS.get(-code, f'signal {-code}')}" + (
            " (often the kernel's out-of-memory killer)" if code == -9 else ""
        )
    return f"exited with code {code}"


def classify(result: LaunchResult, log_lines: Iterable[str] | None = None) -> Failure | None:
    """Classify a finished launch; ``None`` when it succeeded.

    ``log_lines``: the launch's output lines (e.g. kept by an ``on_line`` callback). Without them the whole of
    ``result.log_path`` is streamed (``result.tail`` if it cannot be read).
    """
    if result.returncode == 0 and not result.timed_out:
        return None
    log = _LogReader()
    log.feed(log_lines if log_lines is not None else _read_lines(result))
    root = result.first_failed_rank if result.first_failed_rank is not None else log.report.root_cause

    def tail_of(rank: int | None) -> list[str]:
        if rank is not None and rank in log.ranks and log.ranks[rank].tail:
            return list(log.ranks[rank].tail)
        return list(log.agent_tail) or list(result.tail)[-TAIL_LINES:]

    def failure(kind: str, rank: int | None, message: str) -> Failure:
        return Failure(kind, rank, message, tail_of(rank))

    if result.timed_out:
        return failure(
            "timeout", None,
            f"the job ran past its wall-clock limit: killed after {result.seconds:.0f} s (exit code "
            f"{result.returncode}); a rank was stuck or the job is too slow for the limit",
        )  # fmt: skip

    # Each rank's most specific evidence. Sorted by: priority (lower is more specific), torchrun's root cause
    # first, then the rank whose error came first in the log. Rank -1 stands for torchrun itself.
    candidates: list[tuple[int, bool, int, int, str, str]] = []  # (priority, not root, first_seen, rank, kind, message)
    for number, rank in log.ranks.items():
        exitcode = log.exitcode(number)
        silent_death = (
            exitcode not in (None, 0) and not log.victim(number) and rank.exception is None and not rank.collective
        )
        own_error = rank.exception if rank.exception and not _COLLECTIVE.search(rank.exception) else None
        loading = rank.loading and not rank.loaded
        if rank.bad_input:
            found = (0, "bad_input", f"rank {number} refused the job: {rank.bad_input}")
        elif rank.oom:
            found = (1, "oom", f"rank {number} ran out of memory: {rank.oom}")
        elif loading and (own_error or silent_death):
            what = own_error or f"it {_describe_exit(exitcode)} without an error message"
            found = (2, "model_load", f"rank {number} failed while loading the pipeline: {what}")
        elif own_error:
            found = (3, "rank_crash", f"rank {number} crashed: {own_error}")
        elif silent_death:
            found = (3, "rank_crash", f"rank {number} {_describe_exit(exitcode)} without an error message")
        elif rank.collective:
            found = (4, "collective_timeout", f"rank {number} failed in a collective: {rank.collective}")
        else:
            continue
        candidates.append((found[0], number != root, rank.first_seen or 1 << 62, number, found[1], found[2]))
    if log.agent_collective:
        candidates.append((4, True, 1 << 63, -1, "collective_timeout", f"torchrun failed: {log.agent_collective}"))

    if candidates:
        _, _, _, number, kind, message = min(candidates)
        rank_number = None if number < 0 else number
        if kind == "rank_crash":
            peers = sorted(n for n, r in log.ranks.items() if n != rank_number and r.collective)
            if peers:
                message += f" (then rank {', '.join(map(str, peers))} lost the connection to it in a collective)"
        return failure(kind, rank_number, message)
    if root is not None:
        code = log.exitcode(root)
        return failure("rank_crash", root, f"rank {root} {_describe_exit(code)} (torchrun's root cause)")
    if log.agent_signalled:
        return failure("unknown", None, f"torchrun was stopped from outside: {log.agent_signalled}")
    return failure("unknown", None, f"torchrun exited with code {result.returncode} and no rank reported an error")


# --- retries -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryRule:
    """How often one kind of failure is tried again. ``max_attempts`` counts the first attempt."""

    max_attempts: int = 1
    backoff_s: float = 0.0  # delay before the second attempt
    factor: float = 2.0  # each later delay is this many times the one before
    max_delay_s: float = 600.0
    lower_memory: bool = False  # retry with a plan that needs less memory (sequence_batch, cfg=1)

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.backoff_s < 0 or self.factor < 1 or self.max_delay_s < 0:
            raise ValueError(f"retry rule {self}: needs max_attempts >= 1, backoff_s >= 0, factor >= 1")


DEFAULT_RULES: dict[str, RetryRule] = {
    "bad_input": RetryRule(max_attempts=1),  # the same input fails the same way
    "oom": RetryRule(max_attempts=2, lower_memory=True),
    "model_load": RetryRule(max_attempts=2, backoff_s=10.0),
    "rank_crash": RetryRule(max_attempts=3, backoff_s=5.0, factor=2.0),
    "collective_timeout": RetryRule(max_attempts=3, backoff_s=5.0, factor=2.0),
    "timeout": RetryRule(max_attempts=2),
    "unknown": RetryRule(max_attempts=2, backoff_s=5.0),
}


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    delay_s: float = 0.0
    lower_memory: bool = False
    reason: str = ""


@dataclass(frozen=True)
class RetryPolicy:
    """Per-kind retry rules; :meth:`from_dict` overrides the defaults kind by kind."""

    rules: Mapping[str, RetryRule] = field(default_factory=lambda: dict(DEFAULT_RULES))

    @classmethod
    def from_dict(cls, config: Mapping[str, Mapping[str, Any] | int] | None) -> RetryPolicy:
        """``{"rank_crash": {"max_attempts": 5, "backoff_s": 1}, "timeout": 1}`` (an int is ``max_attempts``)."""
        rules = dict(DEFAULT_RULES)
        names = {f.name for f in fields(RetryRule)}
        for kind, value in (config or {}).items():
            if kind not in KINDS:
                raise ValueError(f"retry policy: unknown failure kind {kind!r} (known: {', '.join(KINDS)})")
            if isinstance(value, bool) or not isinstance(value, (int, Mapping)):
                raise TypeError(f"retry policy for {kind}: give max_attempts or a mapping of {sorted(names)}")
            # Settings come from JSON (a flow parameter): their values are not typed here.
            settings: dict[str, Any] = {"max_attempts": value} if isinstance(value, int) else dict(value)
            if unknown := set(settings) - names:
                raise ValueError(f"retry policy for {kind}: unknown setting(s) {sorted(unknown)}")
            rules[kind] = replace(rules[kind], **settings)
        return cls(rules)

    def decide(self, failure: Failure | None, attempt: int) -> RetryDecision:
        """Whether to run the job again after ``attempt`` (1-based) ended with ``failure``, when and how."""
        if failure is None:
            return RetryDecision(False, reason="the job succeeded")
        rule = self.rules.get(failure.kind, self.rules.get("unknown", RetryRule()))
        if attempt >= rule.max_attempts:
            return RetryDecision(
                False, reason=f"{failure.kind}: attempt {attempt} of at most {rule.max_attempts}; giving up"
            )
        delay = min(rule.max_delay_s, rule.backoff_s * rule.factor ** (attempt - 1))
        return RetryDecision(
            True, delay, rule.lower_memory,
            f"{failure.kind}: attempt {attempt + 1} of at most {rule.max_attempts} in {delay:g} s"
            + (" with a lower-memory plan" if rule.lower_memory else ""),
        )  # fmt: skip


# --- outputs -------------------------------------------------------------------------------------------------


def verify_video(
    path: str | Path, *, frames: int | None = None, height: int | None = None, width: int | None = None
) -> bool:
    """True when ``path`` decodes to the end as a video (with these frames / size, when given).

    A truncated or garbage mp4 can exist under its final name with a plausible size; only decoding tells. Uses
    PyAV (imported here, so this module stays free of heavy imports). Local paths only: check staged files
    before publishing them.
    """
    try:
        import av

        with av.open(str(path), mode="r") as container:
            stream = next(iter(container.streams.video), None)
            if stream is None:
                return False
            decoded = 0
            for frame in container.decode(stream):
                if (height is not None and frame.height != height) or (width is not None and frame.width != width):
                    return False
                decoded += 1
    except Exception:  # noqa: BLE001 - any failure to open or decode means "not a sound video"
        return False
    return decoded > 0 and (frames is None or decoded == frames)
