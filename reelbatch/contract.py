"""Everything the orchestrator and the torchrun ranks agree on, in one place.

The orchestrator (``reelbatch.tasks``, ``reelbatch.infra``) and the ranks (``reelbatch.engine.rank``) meet only
through what is written here:

* the job folder: ``job.json`` (a :class:`JobSpec`, the ranks' whole input), ``staging/`` (the videos the ranks
  write), ``results.jsonl`` (one :class:`SampleResult` per line, appended by rank 0) and ``ranks.log``;
* the command line: ``python -m reelbatch.engine.rank JOB.json [JOB.json ...]`` under torchrun;
* the environment variables the orchestrator sets for the ranks;
* the progress events the ranks print on stdout, and the way torchrun prefixes and reports their output.

Both sides import this module; it imports neither (only ``reelbatch.schemas`` and pydantic), and never torch.
"""

from __future__ import annotations

import json
import os
import re
import signal
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, Field, ValidationError

from reelbatch.schemas import Backend, BucketKey, ParallelPlan, Sample

# --- the job spec and the results ----------------------------------------------------------------------------

JOB_SPEC_VERSION: Final = 2


class JobSpec(BaseModel):
    """A job as the ranks see it: one model, one shape, one plan, a list of samples."""

    schema_version: Literal[2] = JOB_SPEC_VERSION
    job_id: str
    run_id: str = ""
    bucket: BucketKey
    model_path: str = Field(description="Local diffusers folder loaded with from_pretrained.")
    family: Literal["wan", "hunyuan"]
    plan: ParallelPlan
    backend: Backend = "native"
    samples: list[Sample]
    padded_slots: int = Field(0, description="Slots added so the sample count divides by dp; computed, never written.")
    tokens: int = Field(0, description="Video tokens per sample in the transformer (latent T*h*w / patch).")
    fps: int = 8
    output_dir: str = Field(description="Local folder the ranks write mp4 and sidecar files into.")
    results_path: str = Field(description="JSONL file rank 0 appends one SampleResult per sample to.")
    micro_batch: int = Field(1, ge=1, description="Samples one rank pushes through the transformer at once.")
    timeout_s: float | None = Field(None, description="The planner's wall-clock limit for the job (orchestrator side).")
    vae_tiling: bool = Field(False, description="Decode in tiles (less memory; set by the out-of-memory retry).")
    collective_timeout_s: float = Field(1800.0, description="Process-group timeout; outlasts single-rank phases.")
    keep_frames: bool = Field(False, description="Also save the float frames as .npy (verification only).")
    images_dir: str = Field("", description="Local folder of the staged input images, <sha[:2]>/<sha256>.")
    flow_shift: float | None = Field(None, description="Scheduler shift of the family's recipe; None: the folder's.")
    fp32_components: list[str] = Field(default_factory=list, description="Components loaded in fp32 on GPUs.")
    compile: bool = Field(False, description="torch.compile the transformer(s) once for the job (planning/cost.py).")


class SampleResult(BaseModel):
    sample_id: str
    status: Literal["done", "failed"]
    seconds: float = 0.0
    frames: int = 0
    height: int = 0
    width: int = 0
    file: str | None = Field(None, description="Output key of the mp4, relative to the job's output_dir.")
    error: str | None = None
    rank: int = 0
    # With a step cache (bucket.cache): the transformer passes of this video (all ranks of its CFG pair together)
    # and how many of them the cache served; None without a cache.
    transformer_forwards: int | None = None
    cached_forwards: int | None = None


# A sample the ranks failed because the job's LoRA adapter could not be applied: its error starts with this. Every
# sample of the job fails the same way, so the orchestrator records it as bad input and does not retry the job.
LORA_ERROR_PREFIX: Final = "lora: "


# --- the job folder ------------------------------------------------------------------------------------------

RANK_ENTRY = "reelbatch.engine.rank"  # torchrun runs ``python -m RANK_ENTRY JOB.json ...``
JOB_SPEC_FILE = "job.json"
RESULTS_FILE = "results.jsonl"
STAGING_DIR = "staging"
RANK_LOG_FILE = "ranks.log"


def new_attempt_folder(job_root: Path) -> Path:
    """A fresh folder for one attempt of a job: ranks of a crashed attempt may still be writing the previous one."""
    folder = Path(job_root) / uuid.uuid4().hex[:8]
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def folder_fields(folder: Path) -> dict[str, str]:
    """The spec fields that point into an attempt folder."""
    return {"output_dir": str(Path(folder) / STAGING_DIR), "results_path": str(Path(folder) / RESULTS_FILE)}


def attempt_folder(spec: JobSpec) -> Path:
    return Path(spec.results_path).parent


def spec_path(spec: JobSpec) -> Path:
    return attempt_folder(spec) / JOB_SPEC_FILE


def rank_log_path(spec: JobSpec) -> Path:
    return attempt_folder(spec) / RANK_LOG_FILE


def write_job_spec(spec: JobSpec) -> Path:
    """Write ``job.json`` into the spec's own attempt folder; its path."""
    path = spec_path(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(spec.model_dump_json(indent=2), encoding="utf-8")
    return path


def read_job_spec(path: str | Path) -> JobSpec:
    return JobSpec.model_validate_json(Path(path).read_text(encoding="utf-8"))


class ResultsFile:
    """Append-only JSONL, flushed and fsynced per line: the collector may read it while the job runs."""

    def __init__(self, path: str | Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "a", encoding="utf-8")

    def append(self, result: SampleResult) -> None:
        self._fh.write(result.model_dump_json() + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


def read_results(path: str | Path) -> list[SampleResult]:
    """Every complete line of a results file; a line cut short by a crash is ignored."""
    results = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            results.append(SampleResult.model_validate(json.loads(line)))
        except (ValueError, ValidationError):
            continue
    return results


# --- environment ---------------------------------------------------------------------------------------------

# Set by the launcher on every process of one launch, so they can all be found and killed (infra/launcher.py).
LAUNCH_ID_ENV = "REELBATCH_LAUNCH_ID"
# The orchestrator's 1-based attempt number for the job (default 1); only fault injection reads it.
ATTEMPT_ENV = "REELBATCH_ATTEMPT"
# TEST ONLY: faults the ranks inject into themselves (grammar in engine/faults.py). Never set in production.
FAULT_ENV = "REELBATCH_FAULT"
# TEST ONLY: the orchestrator SIGKILLs itself at this point of a run, exactly as ``kill -9`` would, so the crash
# tests exercise the real recovery path (orphaned ranks, half-collected jobs). Never set in production.
CRASH_ENV = "REELBATCH_TEST_CRASH_AT"
CRASH_POINTS = ("before_launch", "mid_job", "collect")


def crash_point(name: str) -> None:
    """The orchestrator's crash hook: dies here when ``REELBATCH_TEST_CRASH_AT`` names this point."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


# --- progress events -----------------------------------------------------------------------------------------

# One JSON object per stdout line after this prefix: {"event": "loading" | "loaded" | "sample" | ..., ...}.
EVENT_PREFIX = "REELBATCH_EVENT "


def format_event(event: str, **fields) -> str:
    return EVENT_PREFIX + json.dumps({"event": event, **fields})


def emit(event: str, **fields) -> None:
    """Print one event (rank side); flushed at once, so the orchestrator sees progress as it happens."""
    print(format_event(event, **fields), flush=True)


def parse_event(text: str) -> dict | None:
    """The event a rank's line carries (prefix stripped); None for any other line.

    An event cut short (a rank killed mid-print) parses as ``{}``: an event line, but of no known kind.
    """
    if not text.startswith(EVENT_PREFIX):
        return None
    try:
        event = json.loads(text[len(EVENT_PREFIX) :])
    except ValueError:
        return {}
    return event if isinstance(event, dict) else {}


# --- torchrun's output ---------------------------------------------------------------------------------------
#
# torchrun merges every rank's stdout and stderr into its own, each line prefixed with the rank's global rank and
# no space after the colon ("[rank1]:text"); torch adds its own "[rank1]: " to lines a rank logs on stderr. Lines
# of torchrun itself (its warnings and the failure report) carry no prefix, so rank output cannot fake them.

# torchrun substitutes ${rank} (global), ${local_rank} and ${role_name}; its default is "[${role_name}${local_rank}]:".
RANK_LINE_PREFIX_ENV = "TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE"
RANK_LINE_PREFIX_TEMPLATE = "[rank${rank}]:"

_RANK_LINE = re.compile(r"^\[rank(\d+)\]:(?:\[rank\d+\]: ?)?(.*)$")
# A progress bar ends its text with "\r", not "\n": torchrun's copy then glues the next line of any rank onto it
# ("[rank0]:Loading ...it/s][rank1]:REELBATCH_EVENT ..."). Such a line is cut again before each glued prefix.
_GLUED_PREFIX = re.compile(r"(?<=.)(?<!\]:)(?=\[rank\d+\]:)")
_REPORT_START = ("Failures:", "Root Cause (first observed failure):")
_REPORT_RANK = re.compile(r"^\s+rank\s+:\s+(\d+)")
_REPORT_EXIT = re.compile(r"^\s+exitcode\s+:\s+(-?\d+)\s+\(pid:\s+(\d+)\)")
_AGENT_SIGTERM = re.compile(r"Sending process (\d+) closing signal (SIG\w+)")


@dataclass(frozen=True)
class OutputLine:
    rank: int | None  # the global rank that wrote it; None: torchrun's own line
    text: str  # without the rank prefixes


def split_output(raw: str) -> list[OutputLine]:
    """One line as torchrun printed it: the lines it holds (several when glued after a progress bar)."""
    lines = []
    for piece in _GLUED_PREFIX.split(raw.rstrip("\r\n")):
        match = _RANK_LINE.match(piece)
        lines.append(OutputLine(int(match.group(1)), match.group(2)) if match else OutputLine(None, piece))
    return lines


@dataclass
class FailureReport:
    """What torchrun says about a failed launch: its closing report and the agent's SIGTERMs to the survivors.

    The report ends a failed launch::

        Failures:                               (or <NO_OTHER_FAILURES>)
        [1]:
          rank      : 1 (local_rank: 1)
          exitcode  : -15 (pid: 101)
        Root Cause (first observed failure):
        [0]:
          rank      : 0 (local_rank: 0)
          exitcode  : 1 (pid: 100)
        ============================================================
    """

    root_cause: int | None = None  # the rank torchrun names as the first failure
    exits: dict[int, tuple[int, int]] = field(default_factory=dict)  # rank -> (exit code, pid)
    sigtermed_pids: set[int] = field(default_factory=set)  # ranks the agent SIGTERMed after another one failed
    _section: str | None = None  # None, "failures" or "root"
    _rank: int | None = None

    def read(self, line: OutputLine) -> bool:
        """Note ``line``; True when it is torchrun's report or SIGTERM notice (so no evidence of anything else)."""
        if sigterm := _AGENT_SIGTERM.search(line.text):  # wherever it landed, even glued onto a rank's line
            self.sigtermed_pids.add(int(sigterm.group(1)))
        if line.rank is not None:
            return False
        if sigterm:
            return True
        text = line.text
        if text.startswith(_REPORT_START):
            self._section = "root" if text.startswith("Root Cause") else "failures"
            return True
        if self._section is None:
            return False
        if text.startswith("====="):
            self._section = None
        elif match := _REPORT_RANK.match(text):
            self._rank = int(match.group(1))
            if self._section == "root" and self.root_cause is None:
                self.root_cause = self._rank
        elif (match := _REPORT_EXIT.match(text)) and self._rank is not None:
            self.exits[self._rank] = (int(match.group(1)), int(match.group(2)))
        return True
