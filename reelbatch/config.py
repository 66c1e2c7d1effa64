"""A run's configuration: everything a run is run with except its manifest.

One model for every entry point: `reelbatch run` builds it from its options, the generate-dataset flow takes it as
its parameter (a typed, described sub-form in the Prefect UI), nightly-dataset hands it to each manifest's run, the
database keeps what `reelbatch resume` needs of it (``resumable``) and ``resumed`` builds it again from that.
Defaults come from ``reelbatch.defaults``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from reelbatch import defaults as default
from reelbatch.defaults import CompileMode, Objective
from reelbatch.planning.packing_options import Packing
from reelbatch.schemas import RunDefaults

# What the database keeps for `resume`; where the run writes, and to which database, are kept apart (the run row
# has its output root, and the database is the one `resume` reads).
RESUMABLE_FIELDS = (
    "defaults", "strict", "model_paths", "max_samples_per_job", "job_timeout_s", "gpu_memory_gib", "objective",
    "retry_policy", "limits", "packing", "claim_lease_s", "compile",
)  # fmt: skip


class RunConfig(BaseModel):
    """How a run runs: where it writes, on how many GPUs per machine, how rows become jobs and how jobs are retried."""

    model_config = ConfigDict(extra="forbid")

    output: str = Field(
        default.DEFAULT_OUTPUT,
        description="Folder or URL (s3://bucket/prefix) the videos, metadata.csv and gallery are written to.",
    )
    db_url: str = Field(
        default.DEFAULT_DB_URL,
        description="Database URL for local use (SQLite file or PostgreSQL). Deployments use db_secret instead.",
    )
    db_secret: str | None = Field(
        None, description="Name of a Prefect Secret block holding the database URL; wins over db_url."
    )
    gpus_per_node: int = Field(
        default.GPUS_PER_NODE,
        ge=1,
        description="GPUs (CPU rank slots without CUDA) of each machine; no job is planned wider.",
    )
    defaults: RunDefaults = Field(
        default_factory=RunDefaults,
        description="Values for the manifest's optional columns, and a parallel plan or backend to pin.",
    )
    packing: Packing = Field(
        default_factory=Packing,
        description="How samples are cut into jobs: target job length, padding policy (pad or fill), job width.",
    )
    strict: bool = Field(
        False, description="Refuse the whole run if any row is bad (otherwise bad rows are reported and skipped)."
    )
    force: bool = Field(False, description="Regenerate videos an earlier run already made into `output`.")
    model_paths: list[str] = Field(
        default_factory=list,
        description="NAME=DIR entries: local diffusers folders usable as model names in the manifest.",
    )
    max_samples_per_job: int = Field(default.MAX_SAMPLES_PER_JOB, ge=1, description="Largest job, in samples.")
    job_timeout_s: float | None = Field(
        None,
        gt=0,
        description="Wall-clock limit per job attempt in seconds (default: the cost estimate x 3, at least 15 min).",
    )
    gpu_memory_gib: float = Field(default.GPU_MEMORY_GIB, gt=0, description="Memory per GPU the planner may use.")
    objective: Objective = Field(
        default.OBJECTIVE,
        description="throughput (most videos per GPU-hour) or latency (each video as fast as possible).",
    )
    retry_policy: dict | None = Field(
        None,
        description='Retries per failure class, e.g. {"rank_crash": {"max_attempts": 5, "backoff_s": 10}}.',
    )
    limits: dict | None = Field(
        None,
        description='Manifest limits (ManifestLimits fields), e.g. {"max_rows": 100000, "max_prompt_chars": 1000}.',
    )
    dask_address: str | None = Field(
        None, description="Run the jobs on this Dask cluster (tcp://host:8786); workers need GPU resources."
    )
    dask_local_workers: int = Field(
        0, ge=0, description="Run the jobs on a local Dask cluster of this many workers (0: no Dask)."
    )
    compile: CompileMode = Field(
        default.COMPILE,
        description="torch.compile each job's transformer once: auto (where the cost model says the compile time "
        "pays back), on or off.",
    )
    claim_lease_s: float | None = Field(
        None,
        gt=0,
        description=(
            "Lease in seconds on each video a job is making, renewed every third of it: another run into the same "
            f"output waits for the video, or makes it once the lease ran out (default: ${default.CLAIM_LEASE_ENV}, "
            f"else {default.CLAIM_LEASE_S:g})."
        ),
    )

    @field_validator("model_paths", mode="before")
    @classmethod
    def _no_model_paths(cls, value: Any) -> Any:
        return [] if value is None else value  # the flow parameter used to take null for none

    @field_validator("job_timeout_s", mode="before")
    @classmethod
    def _zero_timeout_is_the_default(cls, value: Any) -> Any:
        return None if value == 0 else value  # 0 used to mean "the estimate with a margin", as empty does

    def claim_lease(self) -> float:
        """The lease this run's jobs hold on the videos they make: the field, else the environment, else the default."""
        if self.claim_lease_s is not None:
            return self.claim_lease_s
        configured = os.environ.get(default.CLAIM_LEASE_ENV, "").strip()
        if not configured:
            return default.CLAIM_LEASE_S
        try:
            lease = float(configured)
        except ValueError:
            lease = 0.0
        if not lease > 0:
            raise ValueError(f"{default.CLAIM_LEASE_ENV}={configured!r}: give a lease in seconds above 0, e.g. 120")
        return lease

    def over(self, base: Mapping[str, Any]) -> RunConfig:
        """The fields this configuration was given, over ``base`` (the config a deployment was registered with).

        Prefect replaces a deployment's parameter whole when a run gives its own, so a run started with
        ``config={"gpus_per_node": 8}`` would lose the deployment's ``db_secret`` and write to a stray SQLite file.
        """
        if not base:
            return self
        return RunConfig.model_validate({**base, **self.model_dump(exclude_unset=True)})

    def resumable(self) -> dict[str, Any]:
        """What the database keeps so `reelbatch resume` runs this again (JSON; no output, database or cluster)."""
        return self.model_dump(mode="json", include=set(RESUMABLE_FIELDS))

    @classmethod
    def resumed(cls, params: dict[str, Any], *, output: str, db_url: str, gpus_per_node: int) -> RunConfig:
        """The configuration of a recorded run (``params`` as ``resumable`` stored it), to run it again.

        Runs recorded before packing existed ran unpacked, so they resume unpacked; keys a newer version stores
        and this one does not know are left out (image roots come from the environment, never from here).
        """
        kept = {key: value for key, value in params.items() if key in RESUMABLE_FIELDS and value is not None}
        kept.setdefault("packing", {"enabled": False})
        return cls(output=output, db_url=db_url, gpus_per_node=gpus_per_node, **kept)
