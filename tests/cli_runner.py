"""The `reelbatch` command line as tests call it: in this process (fast), or as the installed console script.

Both give a CompletedProcess (returncode, stdout, stderr), so a test reads the same either way. In-process calls
suit commands that leave no process-wide state behind; `run`, `resume`, `serve` and `submit` (which start
Prefect's ephemeral server, set environment variables or get killed by the test) stay subprocesses.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

CONSOLE_SCRIPT = str(Path(sys.executable).with_name("reelbatch"))


def reelbatch(*args: str) -> subprocess.CompletedProcess:
    """`reelbatch ARGS` run in this process; an unexpected exception propagates (the test fails on it)."""
    from reelbatch.cli import app

    result = CliRunner().invoke(app, list(args), catch_exceptions=False, prog_name="reelbatch")
    return subprocess.CompletedProcess(["reelbatch", *args], result.exit_code, result.stdout, result.stderr)


def console_script(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`reelbatch ARGS` through the installed entry point (pyproject's `reelbatch.cli:main`), in a fresh process."""
    return subprocess.run([CONSOLE_SCRIPT, *args], capture_output=True, text=True, cwd=cwd, timeout=300, check=False)
