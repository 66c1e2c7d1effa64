"""How a run asks for its work to be cut into jobs: ``Packing`` (the flow's parameter, a sub-form in the Prefect UI)
and the ``PackingOptions`` it becomes for the cutting pass (``planning.packing``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from reelbatch.defaults import COMPILE, JOB_MINUTES, JOB_WIDTH, PADDING, WEIGHTS_STORAGE, CompileMode
from reelbatch.planning.cost import DEFAULT_COST_MODEL, CostModel, StorageKind

PaddingPolicy = Literal["pad", "fill"]
JobWidth = Literal["group", "node"]
PADDING_POLICIES: tuple[PaddingPolicy, ...] = ("pad", "fill")
DEFAULT_TARGET_SECONDS = JOB_MINUTES * 60


@dataclass(frozen=True)
class PackingOptions:
    target_seconds: float = DEFAULT_TARGET_SECONDS  # wall time per job, model load included
    padding: PaddingPolicy = PADDING
    width: JobWidth = JOB_WIDTH
    storage: StorageKind = WEIGHTS_STORAGE  # where the weights are loaded from (load time per job)
    nodes: int = 1  # the fleet the jobs are sized for
    gpus_per_node: int | None = None  # default: the ranks per node plan_run planned for
    gpu: str | None = None  # GPU type for the estimates; default: the cost model's
    max_samples_per_job: int | None = None
    fit_to_fleet: bool = True  # lower the target for small manifests (see the module docstring)
    tail_split: bool = True  # split each bucket's last job in halves: short jobs to fill the end of the run
    cost_model: CostModel | None = None
    # Jobs are cut by their compiled length where they will compile (plan_run sets the run's --compile here).
    compile: CompileMode = COMPILE

    def __post_init__(self) -> None:
        if self.padding not in PADDING_POLICIES:
            raise ValueError(f"padding {self.padding!r}: use pad or fill")
        if self.width not in ("group", "node"):
            raise ValueError(f"width {self.width!r}: use group or node")
        if self.target_seconds <= 0 or self.nodes < 1 or (self.gpus_per_node is not None and self.gpus_per_node < 1):
            raise ValueError("target_seconds, nodes and gpus_per_node must be positive")
        if self.max_samples_per_job is not None and self.max_samples_per_job < 1:
            raise ValueError("max_samples_per_job must be at least 1")

    @property
    def cost(self) -> CostModel:
        model = self.cost_model or DEFAULT_COST_MODEL
        return model.on(self.gpu) if self.gpu else model


class Packing(BaseModel):
    """How a run cuts its work into jobs; the flow's parameter (a sub-form in the Prefect UI)."""

    enabled: bool = Field(
        True,
        description="Re-cut buckets into jobs of about job_minutes, longest first. Off: "
        "one plan per bucket, jobs of at most max_samples_per_job, the plan's dp on every job.",
    )
    job_minutes: float = Field(
        DEFAULT_TARGET_SECONDS / 60,
        gt=0,
        description="Target wall time of one job, model "
        "load included; small manifests get shorter jobs so every GPU has work.",
    )
    padding: PaddingPolicy = Field(
        PADDING,
        description="pad: padded slots are computed and thrown away; fill: they "
        "generate extra seeds of the bucket's own prompts (free videos).",
    )
    width: JobWidth = Field(
        JOB_WIDTH,
        description="group: one sample's GPU group per job, several jobs side by side "
        "on a node; node: the chosen plan's data parallel degree, one job spans the node.",
    )

    def options(self, gpus_per_node: int, max_samples_per_job: int | None = None, **extra) -> PackingOptions | None:
        if not self.enabled:
            return None
        return PackingOptions(
            target_seconds=self.job_minutes * 60,
            padding=self.padding,
            width=self.width,
            gpus_per_node=gpus_per_node,
            max_samples_per_job=max_samples_per_job,
            **extra,
        )
