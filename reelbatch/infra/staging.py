"""What the stagers of manifest inputs (images: ``infra/images.py``, LoRA adapters: ``infra/loras.py``) share: the
problem a cell can have, each distinct cell staged once, and the content-addressed store they copy into
(``<store>/<sha256[:2]>/<sha256>``, which the ranks read)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from reelbatch.engine.inputs import staged_path

Staged = TypeVar("Staged")


class StagingProblem(Exception):
    """A cell that cannot be used: ``rule`` (short id), ``message`` (one sentence naming the cell, credentials
    redacted) and ``fix`` (what to do)."""

    def __init__(self, rule: str, message: str, fix: str):
        super().__init__(message)
        self.rule = rule
        self.message = message
        self.fix = fix

    def __reduce__(self):  # keep all three fields across pickling (Prefect / Dask move exceptions between processes)
        return type(self), (self.rule, self.message, self.fix)


class Outcomes(Generic[Staged]):
    """Each distinct cell staged once: its staged file, or its problem raised again for every row that names it (a
    manifest repeating a missing remote file asks the store once, not once per row)."""

    def __init__(self, stage: Callable[[str], Staged]):
        self._stage = stage
        self._seen: dict[str, Staged | StagingProblem] = {}

    def __call__(self, cell: str) -> Staged:
        outcome = self._seen.get(cell)
        if outcome is None:
            try:
                outcome = self._stage(cell)
            except StagingProblem as problem:
                outcome = problem
            self._seen[cell] = outcome
        if isinstance(outcome, StagingProblem):
            raise type(outcome)(outcome.rule, outcome.message, outcome.fix)  # a fresh traceback for each row
        return outcome


def store_once(
    store_dir: str | Path, data: bytes, digest: str, check: Callable[[Path], None] | None = None, suffix: str = ""
) -> Path:
    """``data`` (whose sha256 is ``digest``) in the store, written only when no intact copy is there already.

    A new file is written under a temporary name, synced, given to ``check`` (which raises to refuse it), then
    renamed: a reader (another rank, a crash) never sees half a file, or one that failed its check, under the final
    name. ``check`` also sees an intact copy found there.
    """
    target = staged_path(store_dir, digest)
    try:
        if hashlib.sha256(target.read_bytes()).hexdigest() == digest:
            if check is not None:
                check(target)
            return target
    except FileNotFoundError:
        pass
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{digest}.", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if check is not None:
            check(Path(temp))
        os.replace(temp, target)
    finally:
        Path(temp).unlink(missing_ok=True)
    return target
