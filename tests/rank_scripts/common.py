"""Helpers shared by the rank entry scripts that tests/test_launcher.py runs under torchrun."""

import os
import sys
from pathlib import Path


def rank() -> int:
    return int(os.environ["RANK"])


def write_pid(name: str, pid: int | None = None) -> None:
    """Record a pid in the directory given as argv[1], for the test to check afterwards."""
    pid_dir = Path(sys.argv[1])
    (pid_dir / f"{name}.pid").write_text(str(pid if pid is not None else os.getpid()))
