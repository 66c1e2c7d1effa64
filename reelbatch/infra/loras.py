"""Reading the ``lora`` cells of a manifest: LoRA adapters checked and staged before any GPU time.

A cell is read from the same places as an image cell (the manifest's own folder or prefix and the operator's
``--image-root`` places, ``infra/images.py``: a manifest pasted into the UI must not read the server's files),
at most ``max_lora_bytes``, once per distinct cell. The bytes must be a safetensors file holding LoRA weights;
adapters in diffusers' own layout (``transformer.<module>.lora_A.weight``, what ``save_lora_weights`` writes)
are also checked against the model's transformer, by the names and shapes in the safetensors headers of both
(nothing is loaded): every module the adapter adapts must exist there with matching dimensions. Other layouts
(original Wan / kohya keys) are converted by diffusers when the ranks load them and cannot be checked cheaply
here; if they still fail, the job's samples fail with the loader's message. An accepted file is copied into the
content-addressed store the staged images live in (``<store>/<sha[:2]>/<sha256>``), which the ranks load from.
"""

from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from reelbatch.infra.images import ImagePolicy, ImageProblem, _Reader, _redact
from reelbatch.infra.staging import Outcomes, store_once

# The markers of LoRA weights in a key: peft / diffusers (lora_A, lora_B), kohya and original Wan (lora_down,
# lora_up), and their dotted variants.
_LORA_MARKERS = (".lora_A.", ".lora_B.", ".lora_down.", ".lora_up.", ".lora.down.", ".lora.up.")
_DIFFUSERS_PREFIX = "transformer."


class LoraProblem(ImageProblem):
    """A LoRA cell that cannot be used: ``rule``, ``message`` (naming the cell, credentials redacted), ``fix``."""


@dataclass(frozen=True)
class StagedLora:
    url: str  # the cell as written, credentials redacted
    sha256: str  # the adapter's identity
    path: str  # <store_dir>/<sha256[:2]>/<sha256>


class _LoraReader(_Reader):
    """The image reader's checks (allowed places, no credentials, size limit), worded for a LoRA file."""

    def problem(self, rule: str, what: str, fix: str) -> ImageProblem:
        what = what.replace("images may only", "LoRA files may only")
        return LoraProblem(
            rule.replace("image_", "lora_", 1), f"LoRA {self.shown!r} {what}.", fix.replace("the image", "the LoRA")
        )

    def too_large(self, size: int) -> ImageProblem:
        return self.problem(
            "image_too_large",
            f"has {size} bytes, more than the limit of {self.policy.max_bytes}",
            f"raise the limit with --limit max_lora_bytes={size}",
        )


def _tensor_shapes(path: str | Path) -> dict[str, list[int]]:
    """Every tensor's name and shape in a safetensors file, from its header (no tensor is read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        return {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}


def transformer_shapes(model_folder: str | Path) -> dict[str, list[int]] | None:
    """The weights of a diffusers folder's transformer by name (``blocks.0.attn1.to_q.weight``) with their shapes,
    or None when it has no safetensors weights to compare against."""
    files = sorted(glob.glob(os.path.join(model_folder, "transformer", "*.safetensors")))
    if not files:
        return None
    shapes: dict[str, list[int]] = {}
    for file in files:
        shapes.update(_tensor_shapes(file))
    return shapes


def lora_modules(keys: dict[str, list[int]]) -> dict[str, dict[str, list[int]]]:
    """The modules an adapter adapts: module key as written (up to the LoRA marker) -> {"A"|"B": shape}."""
    modules: dict[str, dict[str, list[int]]] = {}
    for key, shape in keys.items():
        for marker in _LORA_MARKERS:
            if marker in key:
                module, _, rest = key.partition(marker)
                if rest == "weight":
                    part = "A" if marker in (".lora_A.", ".lora_down.", ".lora.down.") else "B"
                    modules.setdefault(module, {})[part] = shape
                break
    return modules


def mismatch(modules: dict[str, dict[str, list[int]]], model: dict[str, list[int]]) -> str | None:
    """Why an adapter in diffusers' layout does not fit a transformer (first module that does not), or None.

    Modules are named ``transformer.<module>``; the transformer must have ``<module>.weight``, and a linear
    layer's LoRA factors must match it: A is (rank, in features), B is (out features, rank)."""
    missing = [m for m in modules if f"{m.removeprefix(_DIFFUSERS_PREFIX)}.weight" not in model]
    if missing:
        first = missing[0].removeprefix(_DIFFUSERS_PREFIX)
        return f"{len(missing)} of its {len(modules)} adapted modules are not in it (first: {first})"
    for module, parts in modules.items():
        weight = model[f"{module.removeprefix(_DIFFUSERS_PREFIX)}.weight"]
        a, b = parts.get("A"), parts.get("B")
        if len(weight) != 2 or a is None or b is None or len(a) != 2 or len(b) != 2:
            continue
        if a[1] != weight[1] or b[0] != weight[0]:
            return (
                f"module {module.removeprefix(_DIFFUSERS_PREFIX)} is {weight[0]}x{weight[1]} in the model but the "
                f"adapter's factors are {b[0]}x{b[1]} and {a[0]}x{a[1]}"
            )
    return None


class LoraStager:
    """Stages LoRA cells into ``store_dir`` and checks them against models' transformers; both cached."""

    def __init__(self, policy: ImagePolicy, store_dir: str | Path):
        self.policy = policy
        self.store_dir = Path(store_dir)
        self._outcomes = Outcomes(self._stage)
        self._fits: dict[tuple[str, str], LoraProblem | None] = {}
        self._modules: dict[str, dict[str, dict[str, list[int]]]] = {}

    def stage(self, cell: str) -> StagedLora:
        """Read ``cell`` (policy and size checked), check it is a safetensors file of LoRA weights, hash it and
        copy it into the store; once per distinct cell. Raises LoraProblem."""
        return self._outcomes(cell)

    def _stage(self, cell: str) -> StagedLora:
        shown = _redact(cell.strip())
        data = _LoraReader(self.policy, cell.strip(), shown).read()
        digest = hashlib.sha256(data).hexdigest()

        def adapter_modules(path: Path) -> None:  # the store never holds a file that is not an adapter
            if digest not in self._modules:
                self._modules[digest] = self._adapter_modules(path, shown)

        target = store_once(self.store_dir, data, digest, check=adapter_modules, suffix=".safetensors")
        return StagedLora(url=shown, sha256=digest, path=str(target))

    def _adapter_modules(self, path: str | Path, shown: str) -> dict[str, dict[str, list[int]]]:
        try:
            keys = _tensor_shapes(path)
        except Exception as error:  # noqa: BLE001 - safetensors' errors for a file that is not one vary
            raise LoraProblem(
                "lora_not_safetensors",
                f"LoRA {shown!r} is not a safetensors file ({str(error)[:120]}).",
                "give a .safetensors LoRA adapter (convert .bin / .pt checkpoints with safetensors first)",
            ) from None
        modules = lora_modules(keys)
        if not modules:
            raise LoraProblem(
                "lora_no_adapter_weights",
                f"LoRA {shown!r} holds no LoRA weights (no lora_A / lora_B or lora_down / lora_up keys in its "
                f"{len(keys)} tensors).",
                "give the adapter file (what save_lora_weights writes), not a full checkpoint",
            )
        return modules

    def check_fits(self, staged: StagedLora, model: str, model_folder: str | Path | None) -> None:
        """Refuse an adapter in diffusers' layout whose modules or shapes are not ``model``'s transformer's.
        Without a folder (planning a registry model) or for other layouts, nothing is checked here."""
        if model_folder is None:
            return
        key = (staged.sha256, model)
        if key not in self._fits:
            self._fits[key] = self._fit_problem(staged, model, model_folder)
        problem = self._fits[key]
        if problem is not None:
            raise LoraProblem(problem.rule, problem.message, problem.fix)

    def _fit_problem(self, staged: StagedLora, model: str, model_folder: str | Path) -> LoraProblem | None:
        modules = self._modules.get(staged.sha256) or self._adapter_modules(staged.path, staged.url)
        if not all(m.startswith(_DIFFUSERS_PREFIX) for m in modules):
            return None  # another layout: diffusers converts it while loading
        shapes = transformer_shapes(model_folder)
        if shapes is None:
            return None
        why = mismatch(modules, shapes)
        if why is None:
            return None
        return LoraProblem(
            "lora_model_mismatch",
            f"LoRA {staged.url!r} does not fit the transformer of {model}: {why}.",
            f"use a LoRA trained for {model} (same architecture and size), or set the row's model to the one it "
            "was trained for",
        )
