"""Model names a manifest may use: the registry's families and operator-configured local folders.

A configured folder is read once per catalog (``models/folders.py``): a custom name takes its family from the
folder's own config, a registry name must agree with it (an I2V checkpoint under a T2V name is refused at planning,
naming both). A registry family without a folder can be planned but not run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from reelbatch.models.folders import FolderFacts, FolderProblem, UnsupportedPipeline, read_folder
from reelbatch.models.pipelines import GenerationDefaults, supported_classes
from reelbatch.models.registry import (
    FAMILIES,
    HUNYUAN_STEP_SECONDS_100K,
    ModelFamily,
    activation_for_width,
    bf16_gib,
    declare_family,
)

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
            "own (--model-path my-model=DIR) so its own config decides what it is",
        )


def family_from_facts(name: str, facts: FolderFacts) -> ModelFamily:
    """The family of a checkpoint known only by its folder (a custom name)."""
    spec = facts.spec
    hidden = facts.heads * facts.head_dim
    defaults = spec.defaults
    if spec.kind == "hunyuan" and not facts.guidance_embeds:
        defaults = defaults.with_(embedded_guidance_scale=None)
    return declare_family(
        name,
        facts.class_name,
        facts.heads,
        vae_stride_t=facts.vae_stride_t,
        vae_stride_s=facts.vae_stride_s,
        patch_t=facts.patch_t,
        patch_s=facts.patch_s,
        size_multiple=max(16, facts.vae_stride_s * facts.patch_s),
        experts=facts.experts,
        expand_timesteps=facts.expand_timesteps,
        image_condition_type=facts.image_condition_type,
        image_input=facts.image,
        last_image=facts.last_image,
        native=facts.native,
        guidance_embedding=spec.kind == "hunyuan" and facts.guidance_embeds,
        defaults=defaults,
        # Estimates for an unknown checkpoint: weights as stored, activations by width, speed by transformer size
        # relative to HunyuanVideo's 13B (24.2 GiB in bf16).
        param_memory_gib=round(facts.weights_gib, 2),
        activation_gib_per_ktoken=activation_for_width(hidden),
        step_seconds_100k=round(HUNYUAN_STEP_SECONDS_100K * facts.transformer_gib / bf16_gib(13.0), 3),
    )


def _read(name: str, folder: Path) -> FolderFacts:
    try:
        return read_folder(name, folder)
    except UnsupportedPipeline as exc:
        raise PipelineNotSupported(
            str(exc), f"use a folder of a class the engine runs: {supported_classes()}"
        ) from None
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
