"""Model families and where their weights live.

Planning and validation only need the static facts of a family (heads, strides, patch, text tokens); running
needs a local diffusers folder. ``ModelCatalog`` joins the two: built-in tiny models are built on demand, any
other name maps to a folder through configuration (``--model-path NAME=DIR`` or a models file).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

PipelineKind = Literal["wan", "hunyuan"]

# diffusers pipeline class (model_index.json "_class_name") -> how the engine drives it
PIPELINE_KINDS: dict[str, PipelineKind] = {
    "WanPipeline": "wan",
    "HunyuanVideoPipeline": "hunyuan",
    "SkyReelsV2Pipeline": "wan",
}


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
    # HunyuanVideo-family pipelines call classifier-free guidance "true CFG"; their guidance_scale is distilled.
    true_cfg: bool = False
    builtin_tiny: bool = False

    @property
    def pixels_per_token(self) -> int:
        return self.vae_stride_s * self.patch_s

    def latent_frames(self, num_frames: int) -> int:
        return (num_frames - 1) // self.vae_stride_t + 1

    def tokens(self, height: int, width: int, num_frames: int) -> int:
        """Video tokens the transformer attends over for one sample."""
        t = self.latent_frames(num_frames) // self.patch_t
        return t * (height // self.pixels_per_token) * (width // self.pixels_per_token)


FAMILIES: dict[str, ModelFamily] = {
    f.name: f
    for f in (
        ModelFamily("tiny-wan", "wan", heads=4, builtin_tiny=True),
        ModelFamily("tiny-hunyuan", "hunyuan", heads=4, text_tokens=256, true_cfg=True, builtin_tiny=True),
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
        if name in FAMILIES:
            return FAMILIES[name]
        if name in self.paths:
            return _family_from_folder(name, Path(self.paths[name]))
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


def _family_from_folder(name: str, folder: Path) -> ModelFamily:
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
    patch = transformer.get("patch_size", 2)
    patch_s = patch[-1] if isinstance(patch, list) else patch
    patch_t = patch[0] if isinstance(patch, list) else transformer.get("patch_size_t", 1)
    return ModelFamily(
        name=name,
        kind=kind,
        heads=int(transformer["num_attention_heads"]),
        patch_t=int(patch_t),
        patch_s=int(patch_s),
        text_tokens=256 if kind == "hunyuan" else 512,
        true_cfg=kind == "hunyuan",
    )
