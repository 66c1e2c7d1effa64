"""Model families and where their weights live.

Planning, validation and cost estimates only need the static facts of a family (heads, strides, patch, text
tokens, allowed sizes, which sequence-parallel backends exist, memory and speed estimates): one declarative
``ModelFamily`` entry per family, no weights. Running needs a local diffusers folder. ``ModelCatalog`` joins the
two: built-in tiny models are built on demand, any other name maps to a folder through configuration
(``--model-path NAME=DIR`` or a models file). A registry family without a configured folder can be planned but
not run (``local_path`` raises ``UnknownModel``, which the dispatcher reports).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from reelbatch.schemas import Backend

PipelineKind = Literal["wan", "hunyuan"]

# diffusers pipeline class (model_index.json "_class_name") -> how the engine drives it
PIPELINE_KINDS: dict[str, PipelineKind] = {
    "WanPipeline": "wan",
    "HunyuanVideoPipeline": "hunyuan",
    "SkyReelsV2Pipeline": "wan",
}

# bf16 stores 2 bytes per parameter; memory is counted in GiB (2**30 bytes).
GIB_PER_BILLION_BF16_PARAMS = 2e9 / 2**30  # 1.8626


def _bf16_gib(billions: float) -> float:
    return round(billions * GIB_PER_BILLION_BF16_PARAMS, 2)


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


# diffusers context parallelism (ContextParallelConfig) without the "*_anything" modes: no padding.
WAN_NATIVE = SequenceParallelSupport(ulysses=True, ring=True, split="exact")
WAN_XDIT = SequenceParallelSupport(ulysses=True, ring=True, split="padded")
# diffusers (0.42) ships a context-parallel plan for WanTransformer3DModel only; reelbatch provides one for
# HunyuanVideoTransformer3DModel (engine/hunyuan_cp.py): Ulysses over the video tokens, text tokens whole on
# every rank. It has no ring path (its text-key masking relies on the all-to-all), and it does not cover the
# I2V transformer's first-frame token replacement, so SkyReels-V1 I2V gets no native sequence parallel.
HUNYUAN_NATIVE = SequenceParallelSupport(ulysses=True, ring=False, split="exact")
HUNYUAN_I2V_NATIVE = SequenceParallelSupport(ulysses=False, ring=False, split="exact")
HUNYUAN_XDIT = SequenceParallelSupport(ulysses=True, ring=True, split="height_or_width")


@dataclass(frozen=True)
class ModelFamily:
    name: str
    kind: PipelineKind
    heads: int
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


def _wan(name: str, heads: int, **facts) -> ModelFamily:
    return ModelFamily(name, "wan", heads, native=WAN_NATIVE, xdit=WAN_XDIT, **facts)


def _hunyuan(name: str, heads: int, **facts) -> ModelFamily:
    facts = {"text_tokens": 256, "true_cfg": True, "loops_after_frames": 192, "native": HUNYUAN_NATIVE, **facts}
    return ModelFamily(name, "hunyuan", heads, xdit=HUNYUAN_XDIT, **facts)


_TINY = dict(builtin_tiny=True, param_memory_gib=0.01, activation_gib_per_ktoken=0.001, step_seconds_100k=0.5)

WAN_480P_720P_SIZES = _both_orientations((480, 832), (720, 1280))
# HunyuanVideo README "supported height/width/frame settings" (540p and 720p rows), as (height, width).
HUNYUAN_SIZES = _both_orientations((544, 960), (624, 832), (720, 720), (720, 1280), (1104, 832), (960, 960))

_WAN14B = dict(
    param_memory_gib=round(_bf16_gib(14.0) + UMT5_XXL_ENCODER_GIB + WAN21_VAE_GIB, 1),  # 36.9
    activation_gib_per_ktoken=_activation_for_width(5120),
    step_seconds_100k=26.4,
)
_HUNYUAN13B = dict(
    param_memory_gib=round(_bf16_gib(13.0) + HUNYUAN_TEXT_ENCODERS_GIB + HUNYUAN_VAE_GIB, 1),  # 39.8
    activation_gib_per_ktoken=HUNYUAN_ACTIVATION_GIB_PER_KTOKEN,
    step_seconds_100k=HUNYUAN_STEP_SECONDS_100K,
    allowed_sizes=HUNYUAN_SIZES,
)

FAMILIES: dict[str, ModelFamily] = {
    f.name: f
    for f in (
        # Built-in random-weight pipelines: any size, tiny memory, 4 heads (ulysses 2 and 4 legal, 3 not).
        _wan("tiny-wan", heads=4, **_TINY),
        _hunyuan("tiny-hunyuan", heads=4, **_TINY),
        _wan(
            "wan2.1-t2v-1.3b", heads=12, allowed_sizes=_both_orientations((480, 832)),
            param_memory_gib=round(_bf16_gib(1.3) + UMT5_XXL_ENCODER_GIB + WAN21_VAE_GIB, 1),  # 13.3
            activation_gib_per_ktoken=_activation_for_width(1536), step_seconds_100k=4.5,
        ),
        _wan("wan2.1-t2v-14b", heads=40, allowed_sizes=WAN_480P_720P_SIZES, **_WAN14B),
        _wan(
            "wan2.1-i2v-14b", heads=40, image_tokens=257, allowed_sizes=WAN_480P_720P_SIZES,
            **{**_WAN14B, "param_memory_gib": round(_WAN14B["param_memory_gib"] + CLIP_VIT_H_IMAGE_GIB, 1)},  # 38.1
        ),
        # Both experts stay resident (the engine keeps the pipeline for the whole job); Wan's own generate.py
        # swaps them with --offload_model, which this estimate does not assume: 63 GiB before activations.
        _wan(
            "wan2.2-t2v-a14b", heads=40, experts=2, allowed_sizes=WAN_480P_720P_SIZES,
            **{**_WAN14B, "step_seconds_100k": 18.7,
               "param_memory_gib": round(2 * _bf16_gib(14.0) + UMT5_XXL_ENCODER_GIB + WAN21_VAE_GIB, 1)},
        ),
        # VAE stride 4 x 16 x 16 and patch 2: 32 px per token; 121 frames at 24 fps is its default.
        _wan(
            "wan2.2-ti2v-5b", heads=24, vae_stride_s=16, size_multiple=32,
            allowed_sizes=_both_orientations((704, 1280)),
            param_memory_gib=round(_bf16_gib(5.0) + UMT5_XXL_ENCODER_GIB + WAN22_VAE_GIB, 1),  # 21.2
            activation_gib_per_ktoken=_activation_for_width(3072), step_seconds_100k=9.4,
        ),
        # SkyReels-V2 generates landscape only: 540P = height 544 x width 960, 720P = 720 x 1280.
        _wan("skyreels-v2-t2v-14b", heads=40, allowed_sizes=frozenset({(544, 960), (720, 1280)}), **_WAN14B),
        _hunyuan("hunyuanvideo", heads=24, **_HUNYUAN13B),
        # SkyReels-V1 is a HunyuanVideo fine-tune (same transformer, text encoders and VAE); its README uses
        # 544x960x97, published runs also used 720x720 and 960x960, so it keeps HunyuanVideo's size list.
        _hunyuan("skyreels-v1-t2v", heads=24, **_HUNYUAN13B),
        _hunyuan("skyreels-v1-i2v", heads=24, native=HUNYUAN_I2V_NATIVE, **_HUNYUAN13B),
    )
}


class UnknownModel(KeyError):
    pass


@dataclass
class ModelCatalog:
    """Known model names: the built-in families plus operator-configured local folders."""

    paths: Mapping[str, str]
    cache_dir: Path | None = None

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
        """Registry facts win over a folder's config, so ``--model-path hunyuanvideo=DIR`` keeps the registry's."""
        if name in FAMILIES:
            return FAMILIES[name]
        if name in self.paths:
            return family_from_folder(name, Path(self.paths[name]))
        raise UnknownModel(name)

    def local_path(self, name: str) -> Path:
        """The diffusers folder for ``name``; builds a tiny model on first use."""
        if name in self.paths:
            return Path(self.paths[name])
        family = self.family(name)
        if family.builtin_tiny:
            from reelbatch.models.tiny import ensure_tiny_model

            return ensure_tiny_model(name, self.cache_dir)
        raise UnknownModel(f"{name}: no local folder configured (use --model-path {name}=DIR)")


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def _weights_gib(folder: Path) -> float:
    """Size of the weight files on disk: a stand-in for parameter memory (exact for bf16, 2x high for fp32)."""
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.suffix in _WEIGHT_SUFFIXES and p.is_file())
    return total / 2**30


def family_from_folder(name: str, folder: Path) -> ModelFamily:
    """Read the facts of a configured checkpoint from its own config files (no weights loaded)."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
        transformer = json.loads((folder / "transformer" / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise UnknownModel(f"{name}: {folder} is not a diffusers pipeline folder ({exc})") from None
    kind = PIPELINE_KINDS.get(index.get("_class_name", ""))
    if kind is None:
        supported = ", ".join(sorted(PIPELINE_KINDS))
        raise UnknownModel(f"{name}: pipeline {index.get('_class_name')!r} is not supported (supported: {supported})")
    try:
        vae = json.loads((folder / "vae" / "config.json").read_text())
    except (OSError, ValueError):
        vae = {}
    # AutoencoderKLWan names its strides scale_factor_*, AutoencoderKLHunyuanVideo *_compression_ratio.
    stride_s = int(vae.get("scale_factor_spatial") or vae.get("spatial_compression_ratio") or 8)
    stride_t = int(vae.get("scale_factor_temporal") or vae.get("temporal_compression_ratio") or 4)
    patch = transformer.get("patch_size", 2)
    patch_s = patch[-1] if isinstance(patch, list) else patch
    patch_t = patch[0] if isinstance(patch, list) else transformer.get("patch_size_t", 1)
    heads = int(transformer["num_attention_heads"])
    hidden = heads * int(transformer.get("attention_head_dim", 128))
    transformer_gib = _weights_gib(folder / "transformer")
    make = _hunyuan if kind == "hunyuan" else _wan
    return make(
        name,
        heads=heads,
        vae_stride_t=stride_t,
        vae_stride_s=stride_s,
        patch_t=int(patch_t),
        patch_s=int(patch_s),
        size_multiple=max(16, stride_s * int(patch_s)),
        # Estimates for an unknown checkpoint: weights as stored, activations by width, speed by transformer size
        # relative to HunyuanVideo's 13B (24.2 GiB in bf16).
        param_memory_gib=round(_weights_gib(folder), 2),
        activation_gib_per_ktoken=_activation_for_width(hidden),
        step_seconds_100k=round(HUNYUAN_STEP_SECONDS_100K * transformer_gib / _bf16_gib(13.0), 3),
    )
