"""What a diffusers model folder is, read from its config files (no weights loaded).

``model_index.json`` names the pipeline class and, for Wan 2.2, the second expert (``transformer_2``), the step at
which it takes over (``boundary_ratio``) and per-token timesteps (``expand_timesteps``, TI2V-5B). The
transformer's and VAE's ``config.json`` give heads, patch, channels, image inputs (``image_dim``,
``pos_embed_seq_len``), the guidance embedding and HunyuanVideo-I2V's ``image_condition_type``. Planning reads a
folder once (``ModelCatalog`` caches it), so a checkpoint of the wrong kind is refused before any GPU time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from reelbatch.models.pipelines import (
    NO_SEQUENCE_PARALLEL,
    NOT_SUPPORTED,
    PIPELINES,
    InputUse,
    PipelineSpec,
    SequenceParallelSupport,
    supported_classes,
)

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


class FolderProblem(KeyError):
    """The folder is not a pipeline folder; one sentence."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnsupportedPipeline(FolderProblem):
    """The folder holds a pipeline class the engine does not run."""


@dataclass(frozen=True)
class FolderFacts:
    folder: str
    class_name: str
    experts: int  # 2 when a second expert (transformer_2) is present
    boundary_ratio: float | None
    expand_timesteps: bool
    heads: int
    head_dim: int
    patch_t: int
    patch_s: int
    in_channels: int
    latent_channels: int  # the VAE's: noise channels come from it, not from the transformer's input
    vae_stride_t: int
    vae_stride_s: int
    image_encoder: bool  # CLIP image embeddings (Wan 2.1 I2V, SkyReels-V2 I2V)
    image_dim: int | None
    pos_embed_seq_len: int | None  # image position embedding of first-and-last-frame checkpoints
    guidance_embeds: bool  # HunyuanVideo family: a distilled (embedded) guidance input
    image_condition_type: str | None  # HunyuanVideo-I2V: latent_concat or token_replace
    weights_gib: float
    transformer_gib: float

    @property
    def spec(self) -> PipelineSpec:
        return PIPELINES[self.class_name]

    @property
    def image(self) -> InputUse:
        # Wan 2.2 TI2V-5B is saved as a WanPipeline; diffusers runs its image rows with WanImageToVideoPipeline.
        if self.class_name == "WanPipeline" and self.expand_timesteps:
            return "optional"
        return self.spec.image

    @property
    def last_image(self) -> InputUse:
        if self.spec.last_image == "none" or self.expand_timesteps:
            return "none"  # TI2V conditions on the first frame only
        if self.image_encoder or self.image_dim is not None:
            # CLIP embeddings of two frames only fit a transformer whose image embedding has positions for both.
            return "required" if self.pos_embed_seq_len else "none"
        return "optional"

    @property
    def native(self) -> SequenceParallelSupport:
        if self.image_condition_type == "token_replace":
            return NO_SEQUENCE_PARALLEL
        return self.spec.native

    def describe(self) -> str:
        """One phrase for messages: the class and what makes it that kind of checkpoint."""
        parts = [self.class_name]
        if self.experts == 2:
            parts.append("two experts")
        if self.expand_timesteps:
            parts.append("expand_timesteps")
        if self.image_condition_type:
            parts.append(self.image_condition_type)
        if self.image_encoder:
            parts.append("image encoder")
        return parts[0] + (f" ({', '.join(parts[1:])})" if len(parts) > 1 else "")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _present(entry: object) -> bool:
    """A model_index.json component entry is ["library", "Class"], or [null, null] when the component is absent."""
    return isinstance(entry, list) and len(entry) == 2 and entry[0] is not None


def _weights_gib(folder: Path) -> float:
    """Size of the weight files on disk: a stand-in for parameter memory (exact for bf16, 2x high for fp32)."""
    if not folder.is_dir():
        return 0.0
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.suffix in _WEIGHT_SUFFIXES and p.is_file())
    return total / 2**30


def read_folder(name: str, folder: Path) -> FolderFacts:
    """The facts of the pipeline saved in ``folder``; ``FolderProblem`` names what is wrong."""
    try:
        index = _read_json(folder / "model_index.json")
    except (OSError, ValueError) as exc:
        raise FolderProblem(f"{name}: {folder} is not a diffusers pipeline folder ({exc})") from None
    class_name = str(index.get("_class_name", ""))
    if class_name not in PIPELINES:
        why = NOT_SUPPORTED.get(class_name)
        reason = f" ({why})" if why else ""
        raise UnsupportedPipeline(
            f"{name}: {folder} holds a {class_name or 'pipeline of no class'}{reason}, which the engine does not "
            f"run; it runs: {supported_classes()}"
        )
    expert = "transformer" if _present(index.get("transformer")) else "transformer_2"
    try:
        transformer = _read_json(folder / expert / "config.json")
    except (OSError, ValueError) as exc:
        raise FolderProblem(f"{name}: {folder} has no readable {expert}/config.json ({exc})") from None
    try:
        vae = _read_json(folder / "vae" / "config.json")
    except (OSError, ValueError):
        vae = {}
    try:
        return _facts(folder, class_name, index, expert, transformer, vae)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise FolderProblem(
            f"{name}: {folder}/{expert}/config.json is not a config the engine can read ({exc!r})"
        ) from exc


def _facts(folder: Path, class_name: str, index: dict, expert: str, transformer: dict, vae: dict) -> FolderFacts:
    patch = transformer.get("patch_size", 2)
    patch_s = patch[-1] if isinstance(patch, list) else patch
    patch_t = patch[0] if isinstance(patch, list) else transformer.get("patch_size_t", 1)
    two_experts = _present(index.get("transformer")) and _present(index.get("transformer_2"))
    return FolderFacts(
        folder=str(folder),
        class_name=class_name,
        experts=2 if two_experts else 1,
        boundary_ratio=index.get("boundary_ratio"),
        expand_timesteps=bool(index.get("expand_timesteps", False)),
        heads=int(transformer["num_attention_heads"]),
        head_dim=int(transformer.get("attention_head_dim", 128)),
        patch_t=int(patch_t),
        patch_s=int(patch_s),
        in_channels=int(transformer.get("in_channels", 16)),
        # AutoencoderKLWan calls its latent channels z_dim, AutoencoderKLHunyuanVideo latent_channels.
        latent_channels=int(vae.get("z_dim") or vae.get("latent_channels") or 16),
        # ... and its strides scale_factor_*, where HunyuanVideo's VAE says *_compression_ratio.
        vae_stride_t=int(vae.get("scale_factor_temporal") or vae.get("temporal_compression_ratio") or 4),
        vae_stride_s=int(vae.get("scale_factor_spatial") or vae.get("spatial_compression_ratio") or 8),
        image_encoder=_present(index.get("image_encoder")),
        image_dim=transformer.get("image_dim"),
        pos_embed_seq_len=transformer.get("pos_embed_seq_len"),
        guidance_embeds=bool(transformer.get("guidance_embeds", False)),
        image_condition_type=transformer.get("image_condition_type"),
        weights_gib=round(_weights_gib(folder), 3),
        transformer_gib=_weights_gib(folder / expert),
    )
