"""Model families and where their weights live.

Planning, validation and cost estimates only need the static facts of a family (heads, strides, patch, text
tokens, allowed sizes, which sequence-parallel backends exist, memory and speed estimates, which inputs a row may
give, what an empty cell means): one declarative ``ModelFamily`` entry per family, no weights. Running needs a
local diffusers folder: ``models/catalog.py`` joins names to folders (built-in tiny models are built on demand),
reads each configured folder once and checks a registry name against its folder.

Sizes are ``(height, width)`` in pixels everywhere in reelbatch. Upstream documents disagree on the order:
Wan's ``--size 1280*720`` is width*height; HunyuanVideo's xDiT table ("--video-size 1280 720") is width x
height, while its ``--video-size 720 1280`` flag and its "720px1280px129f" table are height x width; SkyReels'
"544x960" is height 544, width 960. Every size below was converted to ``(height, width)``; most families list
both orientations, so only SkyReels-V2 (landscape only) depends on getting this right.

Numbers marked "estimate" are ours, derived as their comments say; they feed the planner's memory filter and
cost model (reelbatch/planning/chooser.py) and are meant to rank plans, not to promise seconds or bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from reelbatch.models.pipelines import (
    HUNYUAN_NATIVE,
    HUNYUAN_XDIT,
    NO_SEQUENCE_PARALLEL,
    PIPELINES,
    WAN_NATIVE,
    WAN_XDIT,
    GenerationDefaults,
    InputUse,
    PipelineKind,
    SequenceParallelSupport,
)
from reelbatch.models.tiny_facts import TINY_FAMILIES
from reelbatch.schemas import Backend

__all__ = ["FAMILIES", "ModelFamily", "SequenceParallelSupport", "declare_family"]

# bf16 stores 2 bytes per parameter; memory is counted in GiB (2**30 bytes).
GIB_PER_BILLION_BF16_PARAMS = 2e9 / 2**30  # 1.8626


def bf16_gib(billions: float) -> float:
    return round(billions * GIB_PER_BILLION_BF16_PARAMS, 2)


@dataclass(frozen=True)
class ModelFamily:
    name: str
    kind: PipelineKind
    heads: int
    pipeline_class: str = ""
    vae_stride_t: int = 4
    vae_stride_s: int = 8
    patch_t: int = 1
    patch_s: int = 2
    text_tokens: int = 512
    image_tokens: int = 0  # image-conditioned families add CLIP image tokens to the cross-attention context
    size_multiple: int = 16  # height and width must be multiples of this (pixels per token)
    allowed_sizes: frozenset[tuple[int, int]] | None = None  # (height, width); None: any multiple of size_multiple
    # HunyuanVideo-family pipelines call classifier-free guidance "true CFG"; their guidance_scale is distilled.
    true_cfg: bool = False
    loops_after_frames: int | None = None  # videos longer than this loop unless RIFLEx is used (rule 9)
    native: SequenceParallelSupport = WAN_NATIVE
    xdit: SequenceParallelSupport = WAN_XDIT
    experts: int = 1  # Wan2.2 A14B: two 14B experts (high / low noise), one active per step
    expand_timesteps: bool = False  # Wan2.2 TI2V-5B: a timestep per latent token
    image_condition_type: str | None = None  # HunyuanVideo-I2V: latent_concat or token_replace
    image_input: InputUse = "none"  # the manifest's ``image`` column (a first frame)
    last_image: InputUse = "none"  # the manifest's ``last_image`` column
    guidance_embedding: bool = False  # takes embedded_guidance_scale (HunyuanVideo family)
    defaults: GenerationDefaults = field(default_factory=GenerationDefaults)
    # Estimates for the planner (see the module docstring): bf16 weights resident on every rank, the extra
    # memory one forward pass needs per 1000 tokens held by a rank, and seconds one denoising step of one pass
    # takes on one H100 at 100k tokens.
    param_memory_gib: float = 0.0
    activation_gib_per_ktoken: float = 0.0
    step_seconds_100k: float = 0.0
    builtin_tiny: bool = False
    # A step-distilled checkpoint: the defaults of the checkpoint it was distilled from (what the same rows would
    # cost without it: the plan's GPU-hours "without few-step weights").
    undistilled: GenerationDefaults | None = None

    @property
    def pixels_per_token(self) -> int:
        return self.vae_stride_s * self.patch_s

    @property
    def context_tokens(self) -> int:
        return self.text_tokens + self.image_tokens

    def latent_frames(self, num_frames: int) -> int:
        return (num_frames - 1) // self.vae_stride_t + 1

    def latent_grid(self, height: int, width: int) -> tuple[int, int]:
        """Tokens along height and along width (what HunyuanVideo's xDiT path splits)."""
        return height // self.pixels_per_token, width // self.pixels_per_token

    def tokens(self, height: int, width: int, num_frames: int) -> int:
        """Video tokens the transformer attends over for one sample."""
        t = self.latent_frames(num_frames) // self.patch_t
        h, w = self.latent_grid(height, width)
        return t * h * w

    def sequence_parallel(self, backend: Backend) -> SequenceParallelSupport:
        return self.xdit if backend == "xdit" else self.native

    def inputs(self) -> str:
        """``text``, ``text + image`` ... as the README's table writes it."""
        parts = ["text"]
        for name, use in (("image", self.image_input), ("last image", self.last_image)):
            if use != "none":
                parts.append(name if use == "required" else f"{name} (optional)")
        return " + ".join(parts)


def _both_orientations(*sizes: tuple[int, int]) -> frozenset[tuple[int, int]]:
    return frozenset(sizes) | frozenset((w, h) for h, w in sizes)


# --- Memory estimates (GiB, bf16 weights from parameter counts) -----------------------------------------------
# Text / image encoders and VAEs, shared by several families.
UMT5_XXL_ENCODER_GIB = bf16_gib(5.7)  # Wan's UMT5-XXL encoder: 11.4 GB checkpoint in bf16 -> ~5.7B params
WAN21_VAE_GIB = bf16_gib(0.127)  # Wan2.1 VAE: ~127M params (508 MB fp32 checkpoint)
WAN22_VAE_GIB = bf16_gib(0.705)  # Wan2.2 VAE (16x16 spatial): ~0.7B params (2.8 GB fp32 checkpoint)
CLIP_VIT_H_IMAGE_GIB = bf16_gib(0.632)  # Wan I2V image encoder: CLIP ViT-H/14 vision tower, ~632M params
HUNYUAN_TEXT_ENCODERS_GIB = bf16_gib(8.0 + 0.123)  # llava-llama-3-8b (~8B) + CLIP-L text (~123M)
HUNYUAN_VAE_GIB = bf16_gib(0.246)  # HunyuanVideo causal 3D VAE, ~246M params
LLAVA_VISION_GIB = bf16_gib(0.3)  # HunyuanVideo-I2V: llava's CLIP-L/336 vision tower + projector, ~0.3B

# Activation memory per 1000 tokens of one pass held by one rank, peak including VAE decode. Calibrated on
# HunyuanVideo's published single-GPU peaks (run with --use-cpu-offload, so weights beyond the transformer are
# not in them): 60 GB at 720x1280x129 (118,800 tokens) and 45 GB at 544x960x129 (67,320 tokens) -> slope
# 15 GB / 51.5k tokens = 0.29 GB = 0.27 GiB per 1000 tokens (intercept 25 GB = the 13B transformer: consistent).
# Other families: scaled by transformer width relative to HunyuanVideo's 3072 (estimate).
HUNYUAN_ACTIVATION_GIB_PER_KTOKEN = 0.27


def activation_for_width(hidden: int) -> float:
    return round(HUNYUAN_ACTIVATION_GIB_PER_KTOKEN * hidden / 3072, 3)


# --- Speed estimates (seconds per denoising step of one pass, one H100, 100k tokens) ----------------------------
# From timings.csv single-GPU rows, rescaled to 100k tokens with the chooser's tokens**1.3 law:
#   HunyuanVideo 720x1280x129, 50 steps, no true CFG: 1904 s -> 38.1 s/step at 118.8k -> 30.4 s at 100k;
#   xDiT 960x960x129 (118.8k) 1735 s -> 27.7 s; mean 29.
#   Wan2.1 14B 720x1280x81 (75.6k), 50 steps x 2 CFG passes: 1838 s -> 18.4 s -> 26.4 s at 100k.
#   Wan2.2 A14B same video, 40 steps x 2 passes: 1041.5 s -> 13.0 s -> 18.7 s at 100k (one expert per step).
#   Wan2.1 1.3B 480x832x81 (32.8k), RTX 4090, 50 x 2: 261.4 s -> 2.61 s, / 2.5 (H100 vs 4090, assumed) -> 4.5 s.
#   Wan2.2 TI2V-5B: no published timing; Wan 14B scaled by parameters (5/14) -> 9.4 s (estimate).
HUNYUAN_STEP_SECONDS_100K = 29.0

# --- Reference recipes that differ from a folder's scheduler (/work/shared/design/pipelines.md) ----------------
# Wan 2.1 (Wan's generate.py and the diffusers docs): flow shift 3.0 at 480P, 5.0 at 720P, VAE kept in fp32 (and
# the I2V CLIP image encoder, as diffusers' Wan I2V example loads it).
WAN21_SHIFT = ((480 * 832, 3.0), (10**9, 5.0))
WAN21_RECIPE = GenerationDefaults(5.0, 50, 16, flow_shift=WAN21_SHIFT, fp32_components=("vae",))
WAN21_I2V_RECIPE = WAN21_RECIPE.with_(fp32_components=("vae", "image_encoder"))
SKYREELS_V2_RECIPE = GenerationDefaults(6.0, 50, 24, flow_shift=((10**9, 8.0),), fp32_components=("vae",))
# SkyReels-V1 (its README and gradio demo): true CFG 6.0 against this negative prompt, embedded guidance 1.0.
SKYREELS_V1_NEGATIVE = (
    "Aerial view, aerial view, overexposed, low quality, deformation, a poor composition, "
    "bad hands, bad teeth, bad eyes, bad limbs, distortion"
)
SKYREELS_V1_RECIPE = GenerationDefaults(6.0, 50, 24, embedded_guidance_scale=1.0, negative_prompt=SKYREELS_V1_NEGATIVE)


def _class(pipeline_class: str, **facts) -> dict:
    """A family's facts from its pipeline class, then ``facts`` (which win)."""
    spec = PIPELINES[pipeline_class]
    hunyuan = spec.kind == "hunyuan"
    base = dict(
        pipeline_class=pipeline_class,
        native=spec.native,
        xdit=spec.xdit,
        image_input=spec.image,
        last_image=spec.last_image,
        defaults=spec.defaults,
        guidance_embedding=hunyuan,
        true_cfg=hunyuan,
    )
    if hunyuan:
        base.update(text_tokens=256, loops_after_frames=192, xdit=HUNYUAN_XDIT, native=spec.native)
    return {**base, **facts}


def declare_family(name: str, pipeline_class: str, heads: int, **facts) -> ModelFamily:
    return ModelFamily(name, PIPELINES[pipeline_class].kind, heads, **_class(pipeline_class, **facts))


WAN_480P_720P_SIZES = _both_orientations((480, 832), (720, 1280))
# HunyuanVideo README "supported height/width/frame settings" (540p and 720p rows), as (height, width).
HUNYUAN_SIZES = _both_orientations((544, 960), (624, 832), (720, 720), (720, 1280), (1104, 832), (960, 960))

_WAN14B = dict(
    param_memory_gib=round(bf16_gib(14.0) + UMT5_XXL_ENCODER_GIB + WAN21_VAE_GIB, 1),  # 36.9
    activation_gib_per_ktoken=activation_for_width(5120),
    step_seconds_100k=26.4,
)
# Both experts stay resident (the engine keeps the pipeline for the whole job); Wan's own generate.py swaps them
# with --offload_model, which this estimate does not assume: 63 GiB before activations.
_WAN_A14B = {
    **_WAN14B,
    "step_seconds_100k": 18.7,
    "experts": 2,
    "param_memory_gib": round(2 * bf16_gib(14.0) + UMT5_XXL_ENCODER_GIB + WAN21_VAE_GIB, 1),
}
_WAN14B_I2V = {**_WAN14B, "param_memory_gib": round(_WAN14B["param_memory_gib"] + CLIP_VIT_H_IMAGE_GIB, 1)}  # 38.1
_HUNYUAN13B_MEMORY_GIB = round(bf16_gib(13.0) + HUNYUAN_TEXT_ENCODERS_GIB + HUNYUAN_VAE_GIB, 1)  # 39.8
_HUNYUAN13B = dict(
    param_memory_gib=_HUNYUAN13B_MEMORY_GIB,
    activation_gib_per_ktoken=HUNYUAN_ACTIVATION_GIB_PER_KTOKEN,
    step_seconds_100k=HUNYUAN_STEP_SECONDS_100K,
    allowed_sizes=HUNYUAN_SIZES,
)
_HUNYUAN_I2V = {**_HUNYUAN13B, "param_memory_gib": round(_HUNYUAN13B_MEMORY_GIB + LLAVA_VISION_GIB, 1)}

FAMILIES: dict[str, ModelFamily] = {
    f.name: f
    for f in (
        # Built-in random-weight pipelines (models/tiny.py): any size, tiny memory, 4 heads (ulysses 2 and 4 legal).
        *(
            declare_family(
                name,
                facts["pipeline_class"],
                4,
                builtin_tiny=True,
                param_memory_gib=0.01,
                activation_gib_per_ktoken=0.001,
                step_seconds_100k=0.5,
                **facts["family"],
            )
            for name, facts in TINY_FAMILIES.items()
        ),
        declare_family(
            "wan2.1-t2v-1.3b",
            "WanPipeline",
            12,
            allowed_sizes=_both_orientations((480, 832)),
            defaults=WAN21_RECIPE,
            param_memory_gib=round(bf16_gib(1.3) + UMT5_XXL_ENCODER_GIB + WAN21_VAE_GIB, 1),  # 13.3
            activation_gib_per_ktoken=activation_for_width(1536),
            step_seconds_100k=4.5,
        ),
        declare_family(
            "wan2.1-t2v-14b", "WanPipeline", 40, allowed_sizes=WAN_480P_720P_SIZES, defaults=WAN21_RECIPE, **_WAN14B
        ),
        declare_family(
            "wan2.1-i2v-14b",
            "WanImageToVideoPipeline",
            40,
            image_tokens=257,
            last_image="none",
            allowed_sizes=WAN_480P_720P_SIZES,
            defaults=WAN21_I2V_RECIPE,
            **_WAN14B_I2V,
        ),
        # First-and-last-frame: CLIP embeddings of both frames (2 x 257 tokens), 720P; the folder's scheduler.
        declare_family(
            "wan2.1-flf2v-14b",
            "WanImageToVideoPipeline",
            40,
            image_tokens=514,
            last_image="required",
            allowed_sizes=_both_orientations((720, 1280)),
            defaults=GenerationDefaults(5.0, 50, 16, fp32_components=("vae", "image_encoder")),
            **_WAN14B_I2V,
        ),
        declare_family("wan2.2-t2v-a14b", "WanPipeline", 40, allowed_sizes=WAN_480P_720P_SIZES, **_WAN_A14B),
        declare_family(
            "wan2.2-i2v-a14b", "WanImageToVideoPipeline", 40, allowed_sizes=WAN_480P_720P_SIZES, **_WAN_A14B
        ),
        # VAE stride 4 x 16 x 16 and patch 2: 32 px per token; 121 frames at 24 fps is its default.
        declare_family(
            "wan2.2-ti2v-5b",
            "WanPipeline",
            24,
            vae_stride_s=16,
            size_multiple=32,
            expand_timesteps=True,
            image_input="optional",
            allowed_sizes=_both_orientations((704, 1280)),
            defaults=GenerationDefaults(5.0, 50, 24),
            param_memory_gib=round(bf16_gib(5.0) + UMT5_XXL_ENCODER_GIB + WAN22_VAE_GIB, 1),  # 21.2
            activation_gib_per_ktoken=activation_for_width(3072),
            step_seconds_100k=9.4,
        ),
        # SkyReels-V2 generates landscape only: 540P = height 544 x width 960, 720P = 720 x 1280.
        declare_family(
            "skyreels-v2-t2v-14b",
            "SkyReelsV2Pipeline",
            40,
            allowed_sizes=frozenset({(544, 960), (720, 1280)}),
            defaults=SKYREELS_V2_RECIPE,
            **_WAN14B,
        ),
        declare_family(
            "skyreels-v2-i2v-14b",
            "SkyReelsV2ImageToVideoPipeline",
            40,
            image_tokens=257,
            last_image="none",
            allowed_sizes=frozenset({(544, 960), (720, 1280)}),
            defaults=GenerationDefaults(5.0, 50, 24, fp32_components=("vae", "image_encoder")),
            **_WAN14B_I2V,
        ),
        declare_family("hunyuanvideo", "HunyuanVideoPipeline", 24, **_HUNYUAN13B),
        # SkyReels-V1 is a HunyuanVideo fine-tune (same transformer, text encoders and VAE); its README uses
        # 544x960x97 (SKYREELS_V1_RECIPE); published runs also used 720x720 and 960x960.
        declare_family("skyreels-v1-t2v", "HunyuanVideoPipeline", 24, defaults=SKYREELS_V1_RECIPE, **_HUNYUAN13B),
        declare_family(
            "skyreels-v1-i2v", "HunyuanSkyreelsImageToVideoPipeline", 24, defaults=SKYREELS_V1_RECIPE, **_HUNYUAN13B
        ),
        # diffusers' HunyuanVideo-I2V examples: embedded guidance 6.0 (token_replace); the 33-channel checkpoint
        # (latent_concat) has no guidance embedding and runs at guidance 1.0.
        declare_family(
            "hunyuanvideo-i2v",
            "HunyuanVideoImageToVideoPipeline",
            24,
            image_condition_type="token_replace",
            native=NO_SEQUENCE_PARALLEL,
            defaults=GenerationDefaults(1.0, 50, 24, embedded_guidance_scale=6.0),
            **_HUNYUAN_I2V,
        ),
        declare_family(
            "hunyuanvideo-i2v-33ch",
            "HunyuanVideoImageToVideoPipeline",
            24,
            image_condition_type="latent_concat",
            native=HUNYUAN_NATIVE,
            guidance_embedding=False,
            defaults=GenerationDefaults(1.0, 50, 24),
            **_HUNYUAN_I2V,
        ),
    )
}


def few_step_variant(family: ModelFamily, name: str, steps: int) -> ModelFamily:
    """A step- and CFG-distilled checkpoint of ``family`` (same architecture, sizes and recipe otherwise): rows left
    empty run ``steps`` steps at guidance 1.0, so one pass per step and never CFG parallel. A row may still give
    its own steps or guidance. A distilled *LoRA* on the base checkpoint is a row instead: ``lora=...``,
    ``num_inference_steps=4``, ``guidance_scale=1``."""
    defaults = family.defaults.with_(guidance_scale=1.0, num_inference_steps=steps, guidance_scale_2=None)
    return replace(family, name=name, defaults=defaults, undistilled=family.defaults)


# LightX2V's StepDistill-CfgDistill Wan 2.1 14B checkpoints: 4 steps without CFG (/work/shared/design/speedups.md:
# 4-step distilled I2V 480P in 14 s against 366 s for 40 steps with CFG).
for _base, _name in (("wan2.1-t2v-14b", "wan2.1-t2v-14b-4step"), ("wan2.1-i2v-14b", "wan2.1-i2v-14b-4step")):
    FAMILIES[_name] = few_step_variant(FAMILIES[_base], _name, 4)
