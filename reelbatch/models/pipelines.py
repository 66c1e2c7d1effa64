"""The diffusers pipeline classes the engine runs, what each takes, and the defaults of its ``__call__``.

A model folder's ``model_index.json`` names its pipeline class; that class decides which engine adapter drives it
(``kind``), which inputs a manifest row may give (text only, a first frame, a last frame), what sequence
parallelism the native backend really runs for it, and what a row left at defaults means: the values the
class's own ``__call__`` uses, so that an empty cell gives the video ``pipe(prompt)`` gives. Registry families
(``models/registry.py``) may override the defaults with their published reference recipe.

Nothing here imports torch or diffusers: planning reads it on a laptop.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal

PipelineKind = Literal["wan", "hunyuan"]
InputUse = Literal["none", "optional", "required"]


@dataclass(frozen=True)
class SequenceParallelSupport:
    """What one backend can do to split one sample's sequence for one family.

    ``split`` says which sequence rule applies (docs: /work/shared/design/parallel-facts.md):
      ``exact``           the flattened sequence is cut into equal parts without padding: tokens % sp == 0 (rule 3)
      ``padded``          the backend pads the sequence (xfuser's Wan wrapper): any token count works (rule 3 off)
      ``height_or_width`` HunyuanVideo's own xDiT path cuts along latent height, else width, never time (rule 4)
    """

    ulysses: bool
    ring: bool
    split: Literal["exact", "padded", "height_or_width"]


# diffusers context parallelism (ContextParallelConfig) without the "*_anything" modes: no padding. diffusers
# (0.42) ships a context-parallel plan for WanTransformer3DModel (T2V, I2V, per-token timesteps of TI2V).
WAN_NATIVE = SequenceParallelSupport(ulysses=True, ring=True, split="exact")
WAN_XDIT = SequenceParallelSupport(ulysses=True, ring=True, split="padded")
# reelbatch's own plan for HunyuanVideoTransformer3DModel (engine/hunyuan_cp.py): Ulysses over the video tokens,
# text whole on every rank; no ring (its text-key masking relies on the all-to-all). Image latents concatenated
# on channels (SkyReels-V1 I2V, HunyuanVideo-I2V latent_concat) do not change the token sequence, so it applies.
HUNYUAN_NATIVE = SequenceParallelSupport(ulysses=True, ring=False, split="exact")
HUNYUAN_XDIT = SequenceParallelSupport(ulysses=True, ring=True, split="height_or_width")
# SkyReelsV2Transformer3DModel has no context-parallel plan; HunyuanVideo-I2V's token_replace gives the first
# frame's tokens a timestep of their own, which a split sequence would cut apart.
NO_SEQUENCE_PARALLEL = SequenceParallelSupport(ulysses=False, ring=False, split="exact")


@dataclass(frozen=True)
class GenerationDefaults:
    """What an empty manifest cell (with no run-level default) becomes for a model.

    ``guidance_scale`` is classifier-free guidance (``true_cfg_scale`` for HunyuanVideo-family pipelines);
    ``embedded_guidance_scale`` is the distilled guidance input of transformers with a guidance embedding (their
    pipelines call it ``guidance_scale``), None where there is none; ``guidance_scale_2`` the low-noise expert's
    scale of two-expert models, None meaning the pipeline's rule (the same as ``guidance_scale``). ``flow_shift``
    replaces the folder scheduler's shift when the family's reference recipe differs from it, by frame size:
    pairs (largest height*width, shift), the first that fits wins. ``fp32_components`` are loaded in fp32 on GPUs
    where the rest runs in bf16 (Wan's VAE and CLIP image encoder). ``negative_prompt`` is the recipe's.
    """

    guidance_scale: float = 5.0
    num_inference_steps: int = 50
    fps: int = 16
    embedded_guidance_scale: float | None = None
    guidance_scale_2: float | None = None
    flow_shift: tuple[tuple[int, float], ...] = ()
    fp32_components: tuple[str, ...] = ()
    negative_prompt: str = ""

    def flow_shift_for(self, height: int, width: int) -> float | None:
        for largest, shift in self.flow_shift:
            if height * width <= largest:
                return shift
        return None

    def with_(self, **changes) -> GenerationDefaults:
        return replace(self, **changes)

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class PipelineSpec:
    class_name: str
    kind: PipelineKind
    image: InputUse  # a first frame (manifest column ``image``)
    last_image: InputUse  # a last frame; refined by the folder (an image encoder without position embedding: none)
    native: SequenceParallelSupport
    xdit: SequenceParallelSupport
    defaults: GenerationDefaults
    description: str
    # Step caches (reelbatch/stepcache.py) diffusers' hooks apply to this class's transformer: FirstBlockCache
    # needs its block class in diffusers' TransformerBlockRegistry (WanTransformerBlock, HunyuanVideo's four
    # block classes have it; SkyReelsV2TransformerBlock has not). tests/test_step_cache.py checks this against
    # diffusers itself on the tiny models.
    caches: tuple[str, ...] = ("fbc",)


def _spec(class_name, kind, image, last_image, native, defaults, description, caches=("fbc",)) -> PipelineSpec:
    xdit = HUNYUAN_XDIT if kind == "hunyuan" else WAN_XDIT
    return PipelineSpec(class_name, kind, image, last_image, native, xdit, defaults, description, caches)


# Defaults below are each class's ``__call__`` signature defaults in diffusers 0.42 (fps: the frame rate the
# models were trained at: Wan 16, SkyReels-V2 24, HunyuanVideo 24).
PIPELINES: dict[str, PipelineSpec] = {
    spec.class_name: spec
    for spec in (
        _spec(
            "WanPipeline",
            "wan",
            "none",
            "none",
            WAN_NATIVE,
            GenerationDefaults(5.0, 50, 16),
            "Wan 2.1 / 2.2 text-to-video (2.2 A14B: two experts; 2.2 TI2V-5B: also a first frame)",
        ),
        _spec(
            "WanImageToVideoPipeline",
            "wan",
            "required",
            "optional",
            WAN_NATIVE,
            GenerationDefaults(5.0, 50, 16),
            "Wan 2.1 / 2.2 image-to-video (2.1: CLIP image embeddings; 2.2 A14B: two experts, no image encoder)",
        ),
        _spec(
            "SkyReelsV2Pipeline",
            "wan",
            "none",
            "none",
            NO_SEQUENCE_PARALLEL,
            GenerationDefaults(6.0, 50, 24),
            "SkyReels-V2 text-to-video",
            caches=(),
        ),
        _spec(
            "SkyReelsV2ImageToVideoPipeline",
            "wan",
            "required",
            "optional",
            NO_SEQUENCE_PARALLEL,
            GenerationDefaults(5.0, 50, 24),
            "SkyReels-V2 image-to-video",
            caches=(),
        ),
        _spec(
            "HunyuanVideoPipeline",
            "hunyuan",
            "none",
            "none",
            HUNYUAN_NATIVE,
            GenerationDefaults(1.0, 50, 24, embedded_guidance_scale=6.0),
            "HunyuanVideo / SkyReels-V1 text-to-video",
        ),
        _spec(
            "HunyuanSkyreelsImageToVideoPipeline",
            "hunyuan",
            "required",
            "none",
            HUNYUAN_NATIVE,
            GenerationDefaults(6.0, 50, 24, embedded_guidance_scale=1.0),
            "SkyReels-V1 image-to-video",
        ),
        _spec(
            "HunyuanVideoImageToVideoPipeline",
            "hunyuan",
            "required",
            "none",
            HUNYUAN_NATIVE,
            GenerationDefaults(1.0, 50, 24, embedded_guidance_scale=1.0),
            "HunyuanVideo-I2V (token_replace, or latent_concat for the 33-channel checkpoint)",
        ),
    )
}

# Pipelines the engine does not drive, and why (shown when a folder holds one).
NOT_SUPPORTED = {
    "HunyuanVideo15Pipeline": "classifier-free guidance runs through the folder's `guider` component, whose split "
    "over a CFG rank pair reelbatch does not implement, and its transformer has no context-parallel plan",
}


def step_caches(pipeline_class: str) -> tuple[str, ...]:
    """The step caches the engine can turn on for this pipeline class's transformer (none for an unknown class)."""
    spec = PIPELINES.get(pipeline_class)
    return spec.caches if spec is not None else ()


def cache_classes(kind: str) -> list[str]:
    """The pipeline classes whose transformer takes the step cache ``kind``."""
    return sorted(name for name, spec in PIPELINES.items() if kind in spec.caches)


def supported_classes() -> str:
    return ", ".join(sorted(PIPELINES))
