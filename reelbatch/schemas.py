"""The data that crosses module boundaries: run defaults, manifest rows, samples, buckets and plans.

The job spec and the rank results, the orchestrator's contract with the torchrun ranks, are in
``reelbatch.contract``. Nothing here imports torch, diffusers, Prefect or the database, so every side can use it.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from reelbatch.stepcache import parse_cache

# What a video is conditioned on besides its prompt (models/pipelines.py says which models take which).
Conditioning = Literal["text", "first_frame", "first_last_frame"]
SampleStatus = Literal["pending", "running", "done", "failed", "rejected"]
# native: our own dp/CFG code plus diffusers context parallelism; xdit: xfuser (CUDA only, optional extra).
Backend = Literal["native", "xdit"]
PLAN_DEGREES = ("dp", "cfg", "ulysses", "ring")


class RunDefaults(BaseModel):
    """Run-level values for the manifest's optional columns (CLI flags / flow parameters).

    A field left at None takes the row's model's own default (``reelbatch models show NAME``): the value its
    pipeline's ``__call__`` uses, or the family's published recipe.
    """

    model_config = ConfigDict(extra="forbid")

    model: str = "tiny-wan"
    height: int = Field(32, description="Frame height in pixels (multiple of 16).")
    width: int = Field(32, description="Frame width in pixels (multiple of 16).")
    num_frames: int = Field(5, description="Frames per video (4k+1).")
    num_inference_steps: int | None = Field(None, description="Denoising steps; empty: the model's default.")
    guidance_scale: float | None = Field(
        None, description="Classifier-free guidance; <= 1 turns CFG off; empty: the model's default."
    )
    embedded_guidance_scale: float | None = Field(
        None,
        description="HunyuanVideo-family distilled guidance (the pipeline's own guidance_scale); empty: the "
        "model's default. Used only by models with a guidance embedding.",
    )
    guidance_scale_2: float | None = Field(
        None,
        description="Two-expert models (Wan 2.2 A14B): guidance of the low-noise expert; empty: the same as "
        "guidance_scale. Used only by two-expert models.",
    )
    negative_prompt: str | None = Field(None, description="Negative prompt; empty: the model's default (mostly none).")
    num_videos: int = Field(1, description="Videos per row, each with its own seed.")
    sequence_batch: bool = Field(False, description="Run the CFG passes one after another to save memory.")
    fps: int | None = Field(None, description="Frame rate written into the mp4 files; empty: the model's default.")
    plan: ParallelPlan | None = Field(None, description="Pin this parallel plan instead of choosing one.")
    backend: Backend = Field("native", description="Parallel backend: native (diffusers + ours) or xdit (xfuser).")
    cache: str | None = Field(
        None,
        description="Step cache for rows without a cache cell: none, fbc or fbc:THRESHOLD (diffusers' "
        "FirstBlockCache); part of each video's identity. Empty: none.",
    )

    @field_validator("cache", mode="before")
    @classmethod
    def _canonical_cache(cls, value: object) -> str | None:
        return parse_cache(value)


class ManifestRow(BaseModel):
    """One validated manifest row, with run defaults already applied."""

    model_config = ConfigDict(frozen=True)

    row: int = Field(description="1-based line number of the row in the file (the header is line 1).")
    id: str | None = None
    prompt: str
    negative_prompt: str = ""
    model: str
    height: int
    width: int
    num_frames: int
    num_inference_steps: int
    guidance_scale: float
    embedded_guidance_scale: float | None = None
    seed: int | None = None
    num_videos: int = 1
    sequence_batch: bool = False
    plan: ParallelPlan | None = None  # pinned plan for this row (validated, never changed)
    backend: Backend = "native"
    guidance_scale_2: float | None = None  # two-expert models: the low-noise expert's guidance (None: guidance_scale)
    image: str | None = None  # first frame: path or URL as written in the manifest
    last_image: str | None = None  # last frame (first-and-last-frame models)
    cache: str | None = None  # step cache, canonical (``fbc:0.05``; reelbatch/stepcache.py); None: no cache
    lora: str | None = None  # a LoRA adapter (.safetensors): path or URL as written in the manifest
    lora_scale: float | None = None  # its strength; None with a LoRA means 1.0 (intake resolves it)
    # Not manifest columns: the content hashes of the images, set once intake has read and checked them, and the
    # scheduler shift of the model's recipe for this size (None: the folder's own scheduler); the LoRA file's hash.
    image_sha256: str | None = None
    last_image_sha256: str | None = None
    flow_shift: float | None = None
    lora_sha256: str | None = None

    @property
    def conditioning(self) -> Conditioning:
        """What the video is conditioned on besides the prompt; rows differing in it never share a job."""
        if self.image is None:
            return "text"
        return "first_frame" if self.last_image is None else "first_last_frame"


class RowRejection(BaseModel):
    """Why a manifest row (or a whole bucket of rows) will not run, and what would make it run."""

    row: int
    column: str | None
    rule: str
    message: str
    fix: str


class ParallelPlan(BaseModel):
    model_config = ConfigDict(frozen=True)

    dp: int = Field(1, ge=1)
    cfg: int = Field(1, ge=1)
    ulysses: int = Field(1, ge=1)
    ring: int = Field(1, ge=1)

    @classmethod
    def parse(cls, text: str) -> ParallelPlan:
        """``dp=2,cfg=2,ulysses=1,ring=1`` (omitted degrees are 1). Raises ValueError with a usable message."""
        degrees: dict[str, int] = {}
        for part in filter(None, (p.strip() for p in text.replace(" ", ",").split(","))):
            name, sep, value = part.partition("=")
            name = name.strip().lower()
            if not sep or name not in PLAN_DEGREES:
                raise ValueError(f"plan {text!r}: expected NAME=N with NAME one of {', '.join(PLAN_DEGREES)}")
            if name in degrees:
                raise ValueError(f"plan {text!r}: {name} is given twice")
            if not value.strip().isdigit() or int(value) < 1:
                raise ValueError(f"plan {text!r}: {name} must be a whole number >= 1")
            degrees[name] = int(value)
        if not degrees:
            raise ValueError(f"plan {text!r} is empty: write e.g. dp=2,cfg=2,ulysses=1,ring=1")
        return cls(**degrees)

    @property
    def world_size(self) -> int:
        return self.dp * self.cfg * self.ulysses * self.ring

    def as_dict(self) -> dict[str, int]:
        return {**self.model_dump(), "world_size": self.world_size}

    def __str__(self) -> str:
        return f"dp={self.dp},cfg={self.cfg},ulysses={self.ulysses},ring={self.ring}"

    def short(self) -> str:
        """``dp2 cfg2``: the degrees above 1 (``dp1`` for a single rank)."""
        parts = [f"{name}{degree}" for name, degree in self.model_dump().items() if degree > 1]
        return " ".join(parts) or "dp1"


class Sample(BaseModel):
    """One video to generate. ``sample_id`` is the identity hash; the output key is derived from it."""

    model_config = ConfigDict(frozen=True)

    sample_id: str
    row: int
    row_id: str | None = None
    video_index: int = 0
    prompt: str
    negative_prompt: str = ""
    seed: int
    output_key: str = Field(description="Path of the mp4 relative to the output root; never contains prompt text.")
    image: str | None = None  # as written in the manifest (credentials never)
    image_sha256: str | None = None  # the image's identity; the ranks read it from JobSpec.images_dir
    last_image: str | None = None
    last_image_sha256: str | None = None
    lora: str | None = None  # the LoRA as written (its hash and scale are the bucket's: BucketKey.lora_sha256)


class BucketKey(BaseModel):
    """Everything that must be equal for samples to share one job (one pipeline call shape)."""

    model_config = ConfigDict(frozen=True)

    model: str
    height: int
    width: int
    num_frames: int
    num_inference_steps: int
    guidance_scale: float
    embedded_guidance_scale: float | None = None
    sequence_batch: bool = False
    plan: ParallelPlan | None = None  # pinned by the row or the run; None lets the planner choose
    backend: Backend = "native"
    guidance_scale_2: float | None = None
    conditioning: Conditioning = "text"
    cache: str | None = None  # step cache (reelbatch/stepcache.py): rows with different caches never share a job
    # A LoRA fused into the transformer for the whole job (its file's sha256) and its scale; None: no LoRA.
    lora_sha256: str | None = None
    lora_scale: float | None = None

    @property
    def uses_cfg(self) -> bool:
        return self.guidance_scale > 1.0


FrozenModel = TypeVar("FrozenModel", bound=BaseModel)


def trusted(model: type[FrozenModel], values: dict, fields_set: set[str]) -> FrozenModel:
    """An instance of the frozen ``model`` holding ``values``, which already meet its schema: no validation.

    Planning builds a row per manifest line and a ``Sample`` per video from values that were checked moments
    before; validating them again was a third of the planning time. This is what pydantic's ``model_construct``
    stores, without its per-field alias and default handling: ``values`` names every field, in field order
    (``repr`` follows it). Instances may share one ``fields_set``: a frozen model never changes it, and
    ``model_copy`` copies it first. Sharing it saves ~0.5 kB per sample, most of a big plan's memory.
    """
    instance = model.__new__(model)
    _set = object.__setattr__
    _set(instance, "__dict__", values)
    _set(instance, "__pydantic_fields_set__", fields_set)
    _set(instance, "__pydantic_extra__", None)
    _set(instance, "__pydantic_private__", None)
    return instance


@contextmanager
def many_models() -> Iterator[None]:
    """Pause the cyclic garbage collector while hundreds of thousands of models are built.

    Rows and samples hold no reference cycles, so the collector's passes over them (more and longer ones as the
    heap grows) find nothing: 20-25 % of reading and planning a big manifest. Reference counting still frees
    everything as usual. Nested and concurrent pauses are fine: whoever turned the collector off turns it on.
    Also a decorator: ``@many_models()``.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
