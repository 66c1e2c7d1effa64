"""Model families and where their weights live.

Planning, validation and cost estimates only need the static facts of a family (heads, strides, patch, text
tokens, allowed sizes, which sequence-parallel backends exist, memory and speed estimates, which inputs a row may
give, what an empty cell means): one declarative ``ModelFamily`` entry per family, no weights. Running needs a
local diffusers folder. ``ModelCatalog`` joins the two: built-in tiny models are built on demand, any other name
maps to a folder through configuration (``--model-path NAME=DIR`` or a models file). A configured folder is read
once at planning (``models/folders.py``): a custom name takes its family from it, a registry name must agree with
it. A registry family without a configured folder can be planned but not run (``local_path`` raises
``UnknownModel``, which the dispatcher reports).

Sizes are ``(height, width)`` in pixels everywhere in reelbatch. Upstream documents disagree on the order:
Wan's ``--size 1280*720`` is width*height; HunyuanVideo's xDiT table ("--video-size 1280 720") is width x
height, while its ``--video-size 720 1280`` flag and its "720px1280px129f" table are height x width; SkyReels'
"544x960" is height 544, width 960. Every size below was converted to ``(height, width)``; most families list
both orientations, so only SkyReels-V2 (landscape only) depends on getting this right.

Numbers marked "estimate" are ours, derived as their comments say; they feed the planner's memory filter and
cost model (reelbatch/planning/chooser.py) and are meant to rank plans, not to promise seconds or bytes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from reelbatch.models.folders import FolderFacts, FolderProblem, UnsupportedPipeline, read_folder
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
    supported_classes,
)
from reelbatch.models.tiny_facts import TINY_FAMILIES
from reelbatch.schemas import Backend

__all__ = [
    "FAMILIES", "ModelCatalog", "ModelFamily", "SequenceParallelSupport", "UnknownModel", "family_from_folder",
]

# bf16 stores 2 bytes per parameter; memory is counted in GiB (2**30 bytes).
GIB_PER_BILLION_BF16_PARAMS = 2e9 / 2**30  # 1.8626


def _bf16_gib(billions: float) -> float:
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
UMT5_XXL_ENCODER_GIB = _bf16_gib(5.7)  # Wan's UMT5-XXL encoder: 11.4 GB checkpoint in bf16 -> ~5.7B params
WAN21_VAE_GIB = _bf16_gib(0.127)  # Wan2.1 VAE: ~127M params (508 MB fp32 checkpoint)
WAN22_VAE_GIB = _bf16_gib(0.705)  # Wan2.2 VAE (16x16 spatial): ~0.7B params (2.8 GB fp32 checkpoint)
CLIP_VIT_H_IMAGE_GIB = _bf16_gib(0.632)  # Wan I2V image encoder: CLIP ViT-H/14 vision tower, ~632M params
HUNYUAN_TEXT_ENCODERS_GIB = _bf16_gib(8.0 + 0.123)  # llava-llama-3-8b (~8B) + CLIP-L text (~123M)
HUNYUAN_VAE_GIB = _bf16_gib(0.246)  # HunyuanVideo causal 3D VAE, ~246M params
LLAVA_VISION_GIB = _bf16_gib(0.3)  # HunyuanVideo-I2V: llava's CLIP-L/336 vision tower + projector, ~0.3B

# Activation memory per 1000 tokens of one pass held by one rank, peak including VAE decode. Calibrated on
# HunyuanVideo's published single-GPU peaks (run with --use-cpu-offload, so weights beyond the transformer are
# not in them): 60 GB at 720x1280x129 (118,800 tokens) and 45 GB at 544x960x129 (67,320 tokens) -> slope
# 15 GB / 51.5k tokens = 0.29 GB = 0.27 GiB per 1000 tokens (intercept 25 GB = the 13B transformer: consistent).
# Other families: scaled by transformer width relative to HunyuanVideo's 3072 (estimate).
HUNYUAN_ACTIVATION_GIB_PER_KTOKEN = 0.27


def _activation_for_width(hidden: int) -> float:
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
SKYREELS_V1_NEGATIVE = ("Aerial view, aerial view, overexposed, low quality, deformation, a poor composition, "
                        "bad hands, bad teeth, bad eyes, bad limbs, distortion")
SKYREELS_V1_RECIPE = GenerationDefaults(6.0, 50, 24, embedded_guidance_scale=1.0, negative_prompt=SKYREELS_V1_NEGATIVE)


def _class(pipeline_class: str, **facts) -> dict:
    """A family's facts from its pipeline class, then ``facts`` (which win)."""
    spec = PIPELINES[pipeline_class]
    hunyuan = spec.kind == "hunyuan"
    base = dict(
        pipeline_class=pipeline_class, native=spec.native, xdit=spec.xdit, image_input=spec.image,
        last_image=spec.last_image, defaults=spec.defaults, guidance_embedding=hunyuan, true_cfg=hunyuan,
    )
    if hunyuan:
        base.update(text_tokens=256, loops_after_frames=192, xdit=HUNYUAN_XDIT, native=spec.native)
    return {**base, **facts}


def _family(name: str, pipeline_class: str, heads: int, **facts) -> ModelFamily:
    return ModelFamily(name, PIPELINES[pipeline_class].kind, heads, **_class(pipeline_class, **facts))


WAN_480P_720P_SIZES = _both_orientations((480, 832), (720, 1280))
# HunyuanVideo README "supported height/width/frame settings" (540p and 720p rows), as (height, width).
HUNYUAN_SIZES = _both_orientations((544, 960), (624, 832), (720, 720), (720, 1280), (1104, 832), (960, 960))

_WAN14B = dict(
    param_memory_gib=round(_bf16_gib(14.0) + UMT5_XXL_ENCODER_GIB + WAN21_VAE_GIB, 1),  # 36.9
    activation_gib_per_ktoken=_activation_for_width(5120),
    step_seconds_100k=26.4,
)
# Both experts stay resident (the engine keeps the pipeline for the whole job); Wan's own generate.py swaps them
# with --offload_model, which this estimate does not assume: 63 GiB before activations.
_WAN_A14B = {**_WAN14B, "step_seconds_100k": 18.7, "experts": 2,
             "param_memory_gib": round(2 * _bf16_gib(14.0) + UMT5_XXL_ENCODER_GIB + WAN21_VAE_GIB, 1)}
_WAN14B_I2V = {**_WAN14B, "param_memory_gib": round(_WAN14B["param_memory_gib"] + CLIP_VIT_H_IMAGE_GIB, 1)}  # 38.1
_HUNYUAN13B = dict(
    param_memory_gib=round(_bf16_gib(13.0) + HUNYUAN_TEXT_ENCODERS_GIB + HUNYUAN_VAE_GIB, 1),  # 39.8
    activation_gib_per_ktoken=HUNYUAN_ACTIVATION_GIB_PER_KTOKEN,
    step_seconds_100k=HUNYUAN_STEP_SECONDS_100K,
    allowed_sizes=HUNYUAN_SIZES,
)
_HUNYUAN_I2V = {**_HUNYUAN13B, "param_memory_gib": round(_HUNYUAN13B["param_memory_gib"] + LLAVA_VISION_GIB, 1)}

FAMILIES: dict[str, ModelFamily] = {
    f.name: f
    for f in (
        # Built-in random-weight pipelines (models/tiny.py): any size, tiny memory, 4 heads (ulysses 2 and 4 legal).
        *(_family(name, facts["pipeline_class"], 4, builtin_tiny=True, param_memory_gib=0.01,
                  activation_gib_per_ktoken=0.001, step_seconds_100k=0.5, **facts["family"])
          for name, facts in TINY_FAMILIES.items()),
        _family(
            "wan2.1-t2v-1.3b", "WanPipeline", 12, allowed_sizes=_both_orientations((480, 832)),
            defaults=WAN21_RECIPE,
            param_memory_gib=round(_bf16_gib(1.3) + UMT5_XXL_ENCODER_GIB + WAN21_VAE_GIB, 1),  # 13.3
            activation_gib_per_ktoken=_activation_for_width(1536), step_seconds_100k=4.5,
        ),
        _family("wan2.1-t2v-14b", "WanPipeline", 40, allowed_sizes=WAN_480P_720P_SIZES, defaults=WAN21_RECIPE,
                **_WAN14B),
        _family("wan2.1-i2v-14b", "WanImageToVideoPipeline", 40, image_tokens=257, last_image="none",
                allowed_sizes=WAN_480P_720P_SIZES, defaults=WAN21_I2V_RECIPE, **_WAN14B_I2V),
        # First-and-last-frame: CLIP embeddings of both frames (2 x 257 tokens), 720P; the folder's scheduler.
        _family("wan2.1-flf2v-14b", "WanImageToVideoPipeline", 40, image_tokens=514, last_image="required",
                allowed_sizes=_both_orientations((720, 1280)),
                defaults=GenerationDefaults(5.0, 50, 16, fp32_components=("vae", "image_encoder")), **_WAN14B_I2V),
        _family("wan2.2-t2v-a14b", "WanPipeline", 40, allowed_sizes=WAN_480P_720P_SIZES, **_WAN_A14B),
        _family("wan2.2-i2v-a14b", "WanImageToVideoPipeline", 40, allowed_sizes=WAN_480P_720P_SIZES, **_WAN_A14B),
        # VAE stride 4 x 16 x 16 and patch 2: 32 px per token; 121 frames at 24 fps is its default.
        _family(
            "wan2.2-ti2v-5b", "WanPipeline", 24, vae_stride_s=16, size_multiple=32, expand_timesteps=True,
            image_input="optional", allowed_sizes=_both_orientations((704, 1280)),
            defaults=GenerationDefaults(5.0, 50, 24),
            param_memory_gib=round(_bf16_gib(5.0) + UMT5_XXL_ENCODER_GIB + WAN22_VAE_GIB, 1),  # 21.2
            activation_gib_per_ktoken=_activation_for_width(3072), step_seconds_100k=9.4,
        ),
        # SkyReels-V2 generates landscape only: 540P = height 544 x width 960, 720P = 720 x 1280.
        _family("skyreels-v2-t2v-14b", "SkyReelsV2Pipeline", 40, allowed_sizes=frozenset({(544, 960), (720, 1280)}),
                defaults=SKYREELS_V2_RECIPE, **_WAN14B),
        _family("skyreels-v2-i2v-14b", "SkyReelsV2ImageToVideoPipeline", 40, image_tokens=257, last_image="none",
                allowed_sizes=frozenset({(544, 960), (720, 1280)}),
                defaults=GenerationDefaults(5.0, 50, 24, fp32_components=("vae", "image_encoder")), **_WAN14B_I2V),
        _family("hunyuanvideo", "HunyuanVideoPipeline", 24, **_HUNYUAN13B),
        # SkyReels-V1 is a HunyuanVideo fine-tune (same transformer, text encoders and VAE); its README uses
        # 544x960x97 (SKYREELS_V1_RECIPE); published runs also used 720x720 and 960x960.
        _family("skyreels-v1-t2v", "HunyuanVideoPipeline", 24, defaults=SKYREELS_V1_RECIPE, **_HUNYUAN13B),
        _family("skyreels-v1-i2v", "HunyuanSkyreelsImageToVideoPipeline", 24, defaults=SKYREELS_V1_RECIPE,
                **_HUNYUAN13B),
        # diffusers' HunyuanVideo-I2V examples: embedded guidance 6.0 (token_replace); the 33-channel checkpoint
        # (latent_concat) has no guidance embedding and runs at guidance 1.0.
        _family("hunyuanvideo-i2v", "HunyuanVideoImageToVideoPipeline", 24, image_condition_type="token_replace",
                native=NO_SEQUENCE_PARALLEL,
                defaults=GenerationDefaults(1.0, 50, 24, embedded_guidance_scale=6.0), **_HUNYUAN_I2V),
        _family("hunyuanvideo-i2v-33ch", "HunyuanVideoImageToVideoPipeline", 24, image_condition_type="latent_concat",
                native=HUNYUAN_NATIVE, guidance_embedding=False, defaults=GenerationDefaults(1.0, 50, 24),
                **_HUNYUAN_I2V),
    )
}


MODEL_FIX = "point --model-path NAME=DIR (or the models file) at a local diffusers pipeline folder"


class UnknownModel(KeyError):
    """A model name that cannot be planned or run; ``rule`` and ``fix`` are what its rows' rejection says."""

    rule = "model_unavailable"

    def __init__(self, message: str, fix: str = MODEL_FIX):
        super().__init__(message)
        self.fix = fix

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ModelFolderMismatch(UnknownModel):
    rule = "model_folder_mismatch"


class PipelineNotSupported(UnknownModel):
    rule = "pipeline_not_supported"


# What a registry family and a folder must agree on, and how to say it.
_AGREEMENT = (
    ("pipeline_class", "class_name", "pipeline class"),
    ("experts", "experts", "experts"),
    ("expand_timesteps", "expand_timesteps", "expand_timesteps"),
    ("image_condition_type", "image_condition_type", "image_condition_type"),
    ("image_input", "image", "image input"),
    ("last_image", "last_image", "last image input"),
    ("guidance_embedding", "guidance_embeds", "guidance embedding"),
    ("heads", "heads", "attention heads"),
)


def check_agreement(family: ModelFamily, facts: FolderFacts) -> None:
    """Refuse a registry name whose folder holds another kind of checkpoint, naming both."""
    differ = [
        f"{label} {getattr(family, ours)!r} vs {getattr(facts, theirs)!r}"
        for ours, theirs, label in _AGREEMENT
        if getattr(family, ours) != getattr(facts, theirs)
    ]
    if differ:
        raise ModelFolderMismatch(
            f"{family.name} is a {family.pipeline_class} ({family.inputs()}) but {facts.folder} holds a "
            f"{facts.describe()}: {'; '.join(differ)}",
            f"point --model-path {family.name}=DIR at a {family.name} checkpoint, or give the folder a name of its "
            "own (--model-path my-model=DIR) so its own config decides what it is")


def family_from_facts(name: str, facts: FolderFacts) -> ModelFamily:
    """The family of a checkpoint known only by its folder (a custom name)."""
    spec = facts.spec
    hidden = facts.heads * facts.head_dim
    defaults = spec.defaults
    if spec.kind == "hunyuan" and not facts.guidance_embeds:
        defaults = defaults.with_(embedded_guidance_scale=None)
    return _family(
        name, facts.class_name, facts.heads,
        vae_stride_t=facts.vae_stride_t, vae_stride_s=facts.vae_stride_s, patch_t=facts.patch_t,
        patch_s=facts.patch_s, size_multiple=max(16, facts.vae_stride_s * facts.patch_s),
        experts=facts.experts, expand_timesteps=facts.expand_timesteps,
        image_condition_type=facts.image_condition_type, image_input=facts.image, last_image=facts.last_image,
        native=facts.native, guidance_embedding=spec.kind == "hunyuan" and facts.guidance_embeds, defaults=defaults,
        # Estimates for an unknown checkpoint: weights as stored, activations by width, speed by transformer size
        # relative to HunyuanVideo's 13B (24.2 GiB in bf16).
        param_memory_gib=round(facts.weights_gib, 2),
        activation_gib_per_ktoken=_activation_for_width(hidden),
        step_seconds_100k=round(HUNYUAN_STEP_SECONDS_100K * facts.transformer_gib / _bf16_gib(13.0), 3),
    )


def _read(name: str, folder: Path) -> FolderFacts:
    try:
        return read_folder(name, folder)
    except UnsupportedPipeline as exc:
        raise PipelineNotSupported(str(exc), f"use a folder of a class the engine runs: {supported_classes()}") from None
    except FolderProblem as exc:
        raise UnknownModel(str(exc)) from None


def family_from_folder(name: str, folder: Path) -> ModelFamily:
    """Read the facts of a configured checkpoint from its own config files (no weights loaded)."""
    return family_from_facts(name, _read(name, folder))


@dataclass
class ModelCatalog:
    """Known model names: the built-in families plus operator-configured local folders."""

    paths: Mapping[str, str]
    cache_dir: Path | None = None
    _families: dict[str, ModelFamily | UnknownModel] = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def from_config(cls, model_paths: Iterable[str] = (), models_file: str | None = None, cache_dir=None):
        """``model_paths`` entries look like ``NAME=DIR``; ``models_file`` is JSON ``{"NAME": "DIR"}``.

        ``REELBATCH_MODELS_FILE`` is read when no file is given, so a deployment can configure it once.
        """
        paths: dict[str, str] = {}
        models_file = models_file or os.environ.get("REELBATCH_MODELS_FILE")
        if models_file:
            with open(models_file, encoding="utf-8") as fh:
                loaded = json.load(fh)
            if not isinstance(loaded, dict) or not all(isinstance(v, str) for v in loaded.values()):
                raise ValueError(f"{models_file}: expected a JSON object of model name -> local folder")
            paths.update(loaded)
        for entry in model_paths:
            name, sep, folder = entry.partition("=")
            if not sep or not name.strip() or not folder.strip():
                raise ValueError(f"--model-path {entry!r}: expected NAME=DIR, e.g. my-wan=/models/wan-1.3b")
            paths[name.strip()] = folder.strip()
        return cls(paths=paths, cache_dir=Path(cache_dir) if cache_dir else None)

    def names(self) -> set[str]:
        return set(FAMILIES) | set(self.paths)

    def family(self, name: str) -> ModelFamily:
        """A registry family (checked against its folder when one is configured) or a folder's own family.

        Registry facts win over a folder's config (``--model-path hunyuanvideo=DIR`` keeps the registry's
        estimates and recipe), but the folder must hold that kind of checkpoint. Each folder is read once.
        """
        known = self._families.get(name)
        if known is None:
            try:
                known = self._resolve(name)
            except UnknownModel as exc:
                known = exc
            self._families[name] = known
        if isinstance(known, UnknownModel):
            raise known
        return known

    def _resolve(self, name: str) -> ModelFamily:
        if name in self.paths:
            facts = _read(name, Path(self.paths[name]))
            if name not in FAMILIES:
                return family_from_facts(name, facts)
            check_agreement(FAMILIES[name], facts)
            return FAMILIES[name]
        if name in FAMILIES:
            return FAMILIES[name]
        raise UnknownModel(name)

    def defaults(self) -> dict[str, GenerationDefaults]:
        """What empty cells become, per model name a manifest may use (names that cannot be read keep their
        class-free fallback here; planning rejects their rows)."""
        found = {}
        for name in self.names():
            try:
                found[name] = self.family(name).defaults
            except UnknownModel:
                found[name] = GenerationDefaults()
        return found

    def local_path(self, name: str) -> Path:
        """The diffusers folder for ``name``; builds a tiny model on first use."""
        if name in self.paths:
            return Path(self.paths[name])
        family = self.family(name)
        if family.builtin_tiny:
            from reelbatch.models.tiny import ensure_tiny_model

            return ensure_tiny_model(name, self.cache_dir)
        raise UnknownModel(f"{name}: no local folder configured (use --model-path {name}=DIR)")
