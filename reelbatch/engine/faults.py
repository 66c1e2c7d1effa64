"""TEST-ONLY fault injection inside the ranks. Never set ``REELBATCH_FAULT`` in production.

The failure tests (``tests/test_failures.py``) make real torchrun jobs fail in each way a real job fails, so the
classification (``reelbatch.infra.failures``) and the orchestrator's retries are tested against real rank
processes, real torchrun reports and real gloo errors instead of canned text. Only the rank entry
(``reelbatch.engine.rank``) reads the variable; an unset or empty variable costs nothing.

Grammar (faults separated by ``,``; fields by ``:``)::

    REELBATCH_FAULT = FAULT ("," FAULT)*
    FAULT           = KIND (":" QUALIFIER)*
    KIND            = crash | hang | stubborn | oom | corrupt | collective | load
    QUALIFIER       = rank=R       global rank the fault fires on (default: every rank)
                    | sample=S     the rank's own S-th processed sample, 0-based (default 0); padding slots
                                   are never processed and do not count
                    | attempt=N    fire only when REELBATCH_ATTEMPT == N (default: on every attempt)

    e.g. crash:rank=1:sample=0    hang:rank=0:sample=1    oom:rank=1:sample=0:attempt=1    corrupt:rank=0

``REELBATCH_ATTEMPT`` (default 1) is the orchestrator's 1-based attempt number for the job, so ``attempt=1``
makes a job fail once and succeed when it is retried.

What each kind does, and where (hooks in ``engine/rank.py``):

* ``crash``      before generating the micro-batch holding sample S: raises ``RuntimeError`` (a Python traceback
                 on the rank's stderr, exit code 1), like any bug in the rank.
* ``hang``       same point: sleeps forever (never returns, ignores nothing: SIGTERM still ends it), like a
                 deadlocked rank; only the orchestrator's wall clock ends the job.
* ``stubborn``   same point: ignores SIGTERM, then sleeps forever: a rank only SIGKILL ends (what the grace
                 period before the launcher's SIGKILL is for).
* ``oom``        same point: raises ``torch.OutOfMemoryError("CUDA out of memory. Tried to allocate ...")``, the
                 exact type and text torch raises on a GPU (a RuntimeError with the same text on a torch too old
                 to have the class).
* ``collective`` same point: the rank stops taking part (it sleeps ``COLLECTIVE_STALL_S`` so that its peers
                 block in their next collective), then ends with ``os._exit(1)``: no traceback, no Python
                 clean-up, its sockets closed by the kernel, like a rank killed under its peers. The peers see
                 gloo's/NCCL's "connection closed by peer" unless torchrun's SIGTERM reaches them first.
* ``corrupt``    after the rank wrote sample S: replaces its mp4, through the normal atomic writer, with the first
                 third of its bytes, so a file exists under the final name but does not decode. The rank still
                 reports the sample done and exits 0: only a collector that decodes the file can catch it. It
                 fires only on a rank that writes outputs (the first rank of each data-parallel slice).
* ``load``       between the ``loading`` and ``loaded`` events: raises ``OSError`` shaped like diffusers' missing
                 weights error (``sample`` is ignored).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from reelbatch.contract import ATTEMPT_ENV, FAULT_ENV

KINDS = ("crash", "hang", "stubborn", "oom", "corrupt", "collective", "load")
COLLECTIVE_STALL_S = 2.0
OOM_TEXT = (
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.11 GiB of which "
    "1.06 GiB is free. (injected by REELBATCH_FAULT)"
)


class FaultSpecError(ValueError):
    """``REELBATCH_FAULT`` does not follow the grammar in this module's docstring."""


@dataclass(frozen=True)
class Fault:
    kind: str
    rank: int | None = None  # None: every rank
    sample: int = 0
    attempt: int | None = None  # None: every attempt

    def applies(self, rank: int, attempt: int) -> bool:
        return (self.rank is None or self.rank == rank) and (self.attempt is None or self.attempt == attempt)


def parse_faults(text: str) -> list[Fault]:
    """Parse ``REELBATCH_FAULT``; raise :class:`FaultSpecError` naming the bad part."""
    faults = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, *qualifiers = (field.strip() for field in item.split(":"))
        if kind not in KINDS:
            raise FaultSpecError(f"{FAULT_ENV}={text!r}: unknown fault {kind!r} (known: {', '.join(KINDS)})")
        values: dict[str, int] = {}
        for qualifier in qualifiers:
            name, sep, value = qualifier.partition("=")
            if not sep or name not in ("rank", "sample", "attempt") or name in values:
                raise FaultSpecError(f"{FAULT_ENV}={text!r}: {qualifier!r} is not rank=R, sample=S or attempt=N")
            if not value.isdigit():
                raise FaultSpecError(f"{FAULT_ENV}={text!r}: {name} must be a whole number >= 0, not {value!r}")
            values[name] = int(value)
        faults.append(Fault(kind, values.get("rank"), values.get("sample", 0), values.get("attempt")))
    return faults


class FaultInjector:
    """The faults that apply to one rank on one attempt, fired at the rank entry's hook points."""

    def __init__(self, faults: Sequence[Fault], rank: int, attempt: int = 1):
        self.faults = [f for f in faults if f.applies(rank, attempt)]
        self.rank = rank
        self.attempt = attempt

    @classmethod
    def from_env(cls, rank: int, environ: Mapping[str, str] | None = None) -> FaultInjector:
        environ = os.environ if environ is None else environ
        text = environ.get(FAULT_ENV, "")
        attempt = environ.get(ATTEMPT_ENV, "1")
        if not attempt.isdigit():
            raise FaultSpecError(f"{ATTEMPT_ENV}={attempt!r} must be a whole number")
        return cls(parse_faults(text) if text.strip() else [], rank, int(attempt))

    def __bool__(self) -> bool:
        return bool(self.faults)

    def _due(self, kinds: tuple[str, ...], first: int, count: int):
        return [f for f in self.faults if f.kind in kinds and first <= f.sample < first + count]

    def _announce(self, fault: Fault) -> None:
        # On stdout, not stderr: a crash's traceback must remain the rank's only error text.
        # The wall-clock time lets a test measure how long the other ranks outlive the fault.
        print(
            f"REELBATCH_FAULT injecting {fault.kind} on rank {self.rank} at sample {fault.sample} "
            f"attempt {self.attempt} at {time.time():.3f}",
            flush=True,
        )

    def on_load(self) -> None:
        """Between the ``loading`` and ``loaded`` events."""
        for fault in self.faults:
            if fault.kind == "load":
                self._announce(fault)
                raise OSError(
                    "Error no file named diffusion_pytorch_model.safetensors found in directory "
                    "<model>/transformer (injected by REELBATCH_FAULT)"
                )

    def before_batch(self, first: int, count: int) -> None:
        """Before the rank generates its samples ``first .. first+count-1`` (its own 0-based count)."""
        for fault in self._due(("crash", "hang", "stubborn", "oom", "collective"), first, count):
            if fault.kind == "stubborn":  # ignoring SIGTERM before the announcement, which tests wait for
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            self._announce(fault)
            if fault.kind == "crash":
                raise RuntimeError(f"injected crash on rank {self.rank} at sample {fault.sample} (REELBATCH_FAULT)")
            if fault.kind == "oom":
                raise _oom_error()
            if fault.kind == "collective":
                time.sleep(COLLECTIVE_STALL_S)
                os._exit(1)  # no traceback, no atexit, no flush: the peers only see the sockets close
            while True:  # hang, stubborn
                time.sleep(3600)

    def after_write(self, first: int, videos: Sequence[Path | None]) -> None:
        """After the rank wrote its samples ``first ..``; ``videos[i]`` is sample ``first + i``'s mp4, if written."""
        for fault in self._due(("corrupt",), first, len(videos)):
            video = videos[fault.sample - first]
            if video is None or not video.is_file():
                continue
            from reelbatch.engine.video import _atomic_write

            self._announce(fault)
            data = video.read_bytes()
            cut = data[: max(1, len(data) // 3)]
            _atomic_write(video, lambda tmp, cut=cut: tmp.write_bytes(cut))


def _oom_error() -> Exception:
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if oom is not None:
        try:
            return oom(OOM_TEXT)
        except TypeError:
            pass
    return RuntimeError(OOM_TEXT)
