"""The cost model: seconds and GPU-seconds of a sample and of a job, per GPU type, calibrated on published timings.

One sample of a bucket on one GPU takes

    single = base(family) * (tokens / 100k) ** tokens_exponent * steps * passes * gpu_factor(gpu)

seconds (passes = 2 with classifier-free guidance, 1 without; ``sequence_batch`` runs the same two passes one after
the other). A parallel plan runs it on ``group = cfg * ulysses * ring`` GPUs with efficiency

    efficiency = exp(-comm_factor(gpu) * (cfg_loss * (cfg - 1) + sp_loss * (ulysses * ring - 1)))
                 * (ring_penalty if ring > 1 else 1)

so one sample's wall time is ``single / (efficiency * group)`` and it costs ``single / efficiency`` GPU-seconds
(data parallel costs nothing: dp replicas are independent). Ulysses and ring cut the same sequence, so their loss
grows with the sequence-parallel degree sp = ulysses * ring; ``ring_penalty`` is the fixed price of ring
attention's chunked kernels and log-sum-exp merge, paid once and not scaled by the interconnect. (No published row
mixes Ulysses and ring, so the data cannot tell this from other laws; this one keeps ulysses 8 ahead of
ulysses 2 x ring 4, as the field reports on one NVLink node.) A job also loads the model
once (every rank at the same time): ``load_seconds(family, storage)``, a constant per family and storage kind.

Every constant is fitted on published timings by ``planning.calibration.fit_timings`` (the data is
``planning/timings.csv``); docs/COST_MODEL.md has the fit, the per-row error table and how to regenerate both.
Users override any factor with ``CostModel.from_overrides(path_or_dict)`` (JSON or TOML; keys in
``OVERRIDE_KEYS``). Pure Python.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from reelbatch.models.registry import ModelFamily
from reelbatch.schemas import BucketKey, ParallelPlan
from reelbatch.stepcache import cache_spec

StorageKind = Literal["local", "s3"]
STORAGE_KINDS: tuple[StorageKind, ...] = ("local", "s3")
REFERENCE_TOKENS = 100_000
REFERENCE_GPU = "h100"

# --- The calibration (output of calibration.fit_timings(); a test refits and compares) ------------------------------

TOKENS_EXPONENT = 1.2885
# Seconds per denoising step of one pass at 100k video tokens on one H100, per speed class. A class is one
# transformer run by one implementation; registry families map onto classes below.
CLASS_BASE_SECONDS: dict[str, float] = {
    "hunyuan-13b": 29.402,
    "wan2.1-14b": 25.686,
    "wan2.1-1.3b": 4.751,
    "wan2.2-a14b": 17.953,
    # Calibration-only classes (other implementations of a family's transformer; they inform the parallel
    # efficiencies and GPU factors, the planner never uses them).
    "hunyuanvideo-xdit-skyreels-readme": 70.988,
    "skyreels-v1-fp8-offload": 12.746,
}
GPU_FACTORS: dict[str, float] = {"h100": 1.0, "a800": 1.025, "rtx4090": 2.657}  # time multiplier vs one H100
COMM_FACTORS: dict[str, float] = {"h100": 1.0, "a800": 1.04, "rtx4090": 3.61}  # multiplier of the parallel losses
CFG_LOSS = 0.0233  # log-efficiency lost by CFG parallel (cfg=2)
SP_LOSS = 0.0395  # log-efficiency lost per extra Ulysses or ring rank
RING_PENALTY = 0.906  # once, when ring > 1
GPU_MEMORY_GIB: dict[str, float] = {"h100": 80.0, "a800": 80.0, "rtx4090": 24.0}

# Registry family -> speed class. Families without one use their registry estimate (``step_seconds_100k``):
# the tiny models, wan2.2-ti2v-5b (no published timing) and folders configured with --model-path.
FAMILY_CLASSES: dict[str, str] = {
    "hunyuanvideo": "hunyuan-13b",
    "skyreels-v1-t2v": "hunyuan-13b",  # a HunyuanVideo fine-tune: same transformer
    "skyreels-v1-i2v": "hunyuan-13b",
    "wan2.1-t2v-14b": "wan2.1-14b",
    "wan2.1-i2v-14b": "wan2.1-14b",
    "wan2.1-t2v-14b-4step": "wan2.1-14b",  # step-distilled checkpoints: the same transformer, fewer steps
    "wan2.1-i2v-14b-4step": "wan2.1-14b",
    "skyreels-v2-t2v-14b": "wan2.1-14b",  # Wan2.1 14B architecture
    "wan2.1-t2v-1.3b": "wan2.1-1.3b",
    "wan2.2-t2v-a14b": "wan2.2-a14b",
}

# --- Model load time ----------------------------------------------------------------------------------------------
# Every rank of a job builds the pipeline once: process start, CUDA and process-group init, then the weights.
# local: safetensors from a node-local NVMe (or the page cache after the first job), ~2 GiB/s per rank.
# s3: the weights are downloaded per job; a node's 8 ranks share a 25 Gbit/s NIC (~3 GiB/s), ~0.4 GiB/s per rank.
# Estimates (no published numbers): override them per family in the config. 36.9 GiB Wan2.1 14B -> 38 s local,
# 122 s from S3. Shared network file systems can be far worse (SkyReels-V2: 15-20 min, parallel-facts rule 12).
LOAD_FIXED_SECONDS: dict[str, float] = {"local": 20.0, "s3": 30.0}

# --- Speed-ups: step caches and torch.compile (docs/COST_MODEL.md, /work/shared/design/speedups.md) ---------------
# First Block Cache, HunyuanVideo on an L20 (ParaAttention's README): 3676 s -> 2271 s at threshold 0.06, a time
# factor of 0.618. The only published point for this cache: the factor is taken linear in the threshold from 1.0 at
# threshold 0 (nothing reused) to 0.618 at 0.06, and flat above (an estimate; a measured factor replaces it).
FBC_TIME_FACTOR = 2271 / 3676
FBC_REFERENCE_THRESHOLD = 0.06
# torch.compile, Wan 2.1 1.3B on an A100: 259.7 s -> 198.1 s, a factor of 0.763 on the denoising time.
COMPILE_TIME_FACTOR = 198.1 / 259.7
# What compiling a job's transformer costs once, at its first forward (estimate: diffusers' regional compilation
# compiles one block class; no published figure for these models): paid per job, so compiling pays back only on
# jobs whose denoising saves more than this.
COMPILE_SECONDS = 90.0
LOAD_GIB_PER_SECOND: dict[str, float] = {"local": 2.0, "s3": 0.4}


def gpu_name(gpu: str) -> str:
    """``H100``, ``h100``, ``RTX 4090``, ``rtx-4090``, ``4090`` -> the key of the factor tables."""
    key = "".join(ch for ch in gpu.lower() if ch.isalnum())
    return {"4090": "rtx4090", "nvidiah100": "h100", "nvidiaa800": "a800"}.get(key, key)


def _positive(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"cost overrides: {where} must be a positive number, not {value!r}")
    return float(value)


def _table(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"cost overrides: {where} must be a table of name -> value, not {type(value).__name__}")
    return value


OVERRIDE_KEYS = {
    "gpu": "default GPU type for estimates (h100, a800, rtx4090 or one added under gpu_factors)",
    "tokens_exponent": "exponent of the token count",
    "base_seconds": "{family or class: seconds per pass-step at 100k tokens on one H100}",
    "gpu_factors": "{gpu: time multiplier against one H100}",
    "comm_factors": "{gpu: multiplier of the parallel losses against H100 (NVLink)}",
    "gpu_memory_gib": "{gpu: memory per GPU}",
    "cfg_loss": "log-efficiency lost by CFG parallel",
    "sp_loss": "log-efficiency lost per extra Ulysses or ring rank",
    "ring_penalty": "efficiency factor paid once when ring > 1",
    "efficiency": "{cfg|ulysses|ring: {degree: efficiency factor}}, replacing the law for that degree "
    "(ulysses: plans without ring; ring: plans without ulysses)",
    "load": "{local|s3: {fixed_seconds, gib_per_second, families: {family: seconds}}}",
    "fbc_time_factor": "time factor of First Block Cache at fbc_reference_threshold and above",
    "fbc_reference_threshold": "the threshold fbc_time_factor was measured at",
    "compile_time_factor": "time factor of torch.compile on the denoising steps",
    "compile_seconds": "seconds compiling a job's transformer costs (once per job)",
}


@dataclass(frozen=True)
class CostModel:
    """Seconds and GPU-seconds per sample and per job (see the module docstring for the formulas)."""

    tokens_exponent: float = TOKENS_EXPONENT
    base_seconds: Mapping[str, float] = field(default_factory=lambda: dict(CLASS_BASE_SECONDS))
    gpu_factors: Mapping[str, float] = field(default_factory=lambda: dict(GPU_FACTORS))
    comm_factors: Mapping[str, float] = field(default_factory=lambda: dict(COMM_FACTORS))
    gpu_memory: Mapping[str, float] = field(default_factory=lambda: dict(GPU_MEMORY_GIB))
    cfg_loss: float = CFG_LOSS
    sp_loss: float = SP_LOSS
    ring_penalty: float = RING_PENALTY
    # {"cfg"|"ulysses"|"ring": {degree: efficiency}}: measured factors that replace the law for those degrees
    degree_efficiency: Mapping[str, Mapping[int, float]] = field(default_factory=dict)
    load_fixed_seconds: Mapping[str, float] = field(default_factory=lambda: dict(LOAD_FIXED_SECONDS))
    load_gib_per_second: Mapping[str, float] = field(default_factory=lambda: dict(LOAD_GIB_PER_SECOND))
    load_family_seconds: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # storage -> family -> s
    gpu: str = REFERENCE_GPU
    family_classes: Mapping[str, str] = field(default_factory=lambda: dict(FAMILY_CLASSES))
    fbc_time_factor: float = FBC_TIME_FACTOR
    fbc_reference_threshold: float = FBC_REFERENCE_THRESHOLD
    compile_time_factor: float = COMPILE_TIME_FACTOR
    compile_seconds: float = COMPILE_SECONDS

    # --- construction ---------------------------------------------------------------------------------------------

    @classmethod
    def from_overrides(cls, source: str | os.PathLike[str] | Mapping[str, Any] | None = None) -> CostModel:
        """The calibrated model with the factors of ``source`` (a JSON/TOML file path or a dict) replaced.

        Tables merge key by key (``{"gpu_factors": {"l40s": 1.6}}`` adds a GPU, keeps the others). Unknown keys,
        unknown storage kinds or degrees, and non-positive numbers raise ValueError naming the key.
        """
        if source is None:
            return cls()
        if not isinstance(source, Mapping):
            path = Path(source)
            text = path.read_text(encoding="utf-8")
            if path.suffix.lower() == ".toml":
                import tomllib

                data: Mapping[str, Any] = tomllib.loads(text)
            else:
                data = json.loads(text)
            if not isinstance(data, Mapping):
                raise ValueError(f"{path}: expected a table of cost-model overrides at the top level")
        else:
            data = source
        unknown = sorted(set(data) - set(OVERRIDE_KEYS))
        if unknown:
            raise ValueError(f"cost overrides: unknown key(s) {', '.join(unknown)}; known: {', '.join(OVERRIDE_KEYS)}")
        model = cls()
        changes: dict[str, Any] = {}
        if "tokens_exponent" in data:
            changes["tokens_exponent"] = _positive(data["tokens_exponent"], "tokens_exponent")
        for key in ("cfg_loss", "sp_loss"):
            if key in data:
                value = data[key]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                    raise ValueError(f"cost overrides: {key} must be a number >= 0, not {value!r}")
                changes[key] = float(value)
        if "ring_penalty" in data:
            changes["ring_penalty"] = min(1.0, _positive(data["ring_penalty"], "ring_penalty"))
        for key in ("fbc_time_factor", "compile_time_factor"):
            if key in data:
                changes[key] = min(1.0, _positive(data[key], key))
        if "fbc_reference_threshold" in data:
            changes["fbc_reference_threshold"] = _positive(data["fbc_reference_threshold"], "fbc_reference_threshold")
        if "compile_seconds" in data:
            value = data["compile_seconds"]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"cost overrides: compile_seconds must be a number >= 0, not {value!r}")
            changes["compile_seconds"] = float(value)
        for key, attr, normalise in (
            ("base_seconds", "base_seconds", str),
            ("gpu_factors", "gpu_factors", gpu_name),
            ("comm_factors", "comm_factors", gpu_name),
            ("gpu_memory_gib", "gpu_memory", gpu_name),
        ):
            if key in data:
                merged = dict(getattr(model, attr))
                for name, value in _table(data[key], key).items():
                    merged[normalise(name)] = _positive(value, f"{key}.{name}")
                changes[attr] = merged
        if "efficiency" in data:
            table: dict[str, dict[int, float]] = {}
            for kind, degrees in _table(data["efficiency"], "efficiency").items():
                if kind not in ("cfg", "ulysses", "ring"):
                    raise ValueError(f"cost overrides: efficiency.{kind}: use cfg, ulysses or ring")
                table[kind] = {}
                for degree, value in _table(degrees, f"efficiency.{kind}").items():
                    if not str(degree).isdigit() or int(degree) < 2:
                        raise ValueError(f"cost overrides: efficiency.{kind}.{degree}: degrees are whole numbers >= 2")
                    table[kind][int(degree)] = min(1.0, _positive(value, f"efficiency.{kind}.{degree}"))
            changes["degree_efficiency"] = table
        if "load" in data:
            fixed, speed = dict(model.load_fixed_seconds), dict(model.load_gib_per_second)
            families: dict[str, dict[str, float]] = {k: dict(v) for k, v in model.load_family_seconds.items()}
            for storage, settings in _table(data["load"], "load").items():
                if storage not in STORAGE_KINDS:
                    raise ValueError(f"cost overrides: load.{storage}: storage kinds are {', '.join(STORAGE_KINDS)}")
                for key, value in _table(settings, f"load.{storage}").items():
                    if key == "fixed_seconds":
                        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                            raise ValueError(f"cost overrides: load.{storage}.fixed_seconds must be >= 0")
                        fixed[storage] = float(value)
                    elif key == "gib_per_second":
                        speed[storage] = _positive(value, f"load.{storage}.gib_per_second")
                    elif key == "families":
                        for name, seconds in _table(value, f"load.{storage}.families").items():
                            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
                                raise ValueError(f"cost overrides: load.{storage}.families.{name} must be >= 0")
                            families.setdefault(storage, {})[name] = float(seconds)
                    else:
                        raise ValueError(
                            f"cost overrides: load.{storage}.{key}: use fixed_seconds, gib_per_second or families"
                        )
            changes.update(load_fixed_seconds=fixed, load_gib_per_second=speed, load_family_seconds=families)
        model = replace(model, **changes)
        if "gpu" in data:
            model = model.on(str(data["gpu"]))
        return model

    def on(self, gpu: str) -> CostModel:
        """The same model with ``gpu`` as its default GPU type (checked)."""
        return replace(self, gpu=self._gpu(gpu))

    def _gpu(self, gpu: str | None) -> str:
        name = gpu_name(gpu or self.gpu)
        if name not in self.gpu_factors:
            raise ValueError(
                f"unknown GPU type {gpu!r}: known {', '.join(sorted(self.gpu_factors))} "
                "(add one with gpu_factors in the cost overrides)"
            )
        return name

    def memory_gib(self, gpu: str | None = None) -> float | None:
        """Memory of one GPU of this type, when known."""
        return self.gpu_memory.get(self._gpu(gpu))

    def to_dict(self) -> dict[str, Any]:
        """Every factor, in the shape ``from_overrides`` reads."""
        return {
            "gpu": self.gpu,
            "tokens_exponent": self.tokens_exponent,
            "base_seconds": dict(self.base_seconds),
            "gpu_factors": dict(self.gpu_factors),
            "comm_factors": dict(self.comm_factors),
            "gpu_memory_gib": dict(self.gpu_memory),
            "cfg_loss": self.cfg_loss,
            "sp_loss": self.sp_loss,
            "ring_penalty": self.ring_penalty,
            "efficiency": {k: {str(d): v for d, v in t.items()} for k, t in self.degree_efficiency.items()},
            "fbc_time_factor": self.fbc_time_factor,
            "fbc_reference_threshold": self.fbc_reference_threshold,
            "compile_time_factor": self.compile_time_factor,
            "compile_seconds": self.compile_seconds,
            "load": {
                s: {
                    "fixed_seconds": self.load_fixed_seconds[s],
                    "gib_per_second": self.load_gib_per_second[s],
                    "families": dict(self.load_family_seconds.get(s, {})),
                }
                for s in STORAGE_KINDS
            },
        }

    # --- per sample -----------------------------------------------------------------------------------------------

    def base(self, family: ModelFamily) -> float:
        """Seconds per pass-step at 100k tokens on one H100 for ``family``."""
        if family.name in self.base_seconds:
            return self.base_seconds[family.name]
        speed_class = self.family_classes.get(family.name)
        if speed_class is not None and speed_class in self.base_seconds:
            return self.base_seconds[speed_class]
        return family.step_seconds_100k

    def single_gpu_seconds(self, bucket: BucketKey, family: ModelFamily, gpu: str | None = None) -> float:
        """One sample on one GPU (the whole pipeline call, as the published end-to-end timings measure it)."""
        tokens = family.tokens(bucket.height, bucket.width, bucket.num_frames)
        passes = 2 if bucket.uses_cfg else 1
        per_step = self.base(family) * (tokens / REFERENCE_TOKENS) ** self.tokens_exponent
        speed = self.gpu_factors[self._gpu(gpu)] * self.cache_time_factor(bucket.cache)
        return per_step * bucket.num_inference_steps * passes * speed

    def cache_time_factor(self, cache: str | None) -> float:
        """Time multiplier of a step cache (1.0 without one): linear in the threshold up to the published point."""
        spec = cache_spec(cache)
        if spec is None:
            return 1.0
        reach = min(1.0, spec.threshold / self.fbc_reference_threshold)
        return 1.0 - (1.0 - self.fbc_time_factor) * reach

    def compile_pays(self, compute_seconds: float) -> bool:
        """Whether compiling a job's transformer pays back: the denoising time it saves (``compute_seconds`` is
        the job's wall time past its model load, uncompiled) exceeds the compile time."""
        return compute_seconds * (1.0 - self.compile_time_factor) > self.compile_seconds

    def compiled_seconds(self, compute_seconds: float) -> float:
        """The job's wall time past its model load when compiled: the compile, then faster steps."""
        return self.compile_seconds + compute_seconds * self.compile_time_factor

    def efficiency(self, plan: ParallelPlan, gpu: str | None = None) -> float:
        """Speed-up of one sample's GPU group over one GPU, divided by the group's size (dp costs nothing)."""
        comm = self.comm_factors.get(self._gpu(gpu), 1.0)
        table = self.degree_efficiency
        factor = 1.0
        if plan.cfg > 1:
            factor *= table.get("cfg", {}).get(plan.cfg) or math.exp(-comm * self.cfg_loss * (plan.cfg - 1))
        sp = plan.ulysses * plan.ring
        if sp > 1:
            measured = None
            if plan.ring == 1:
                measured = table.get("ulysses", {}).get(plan.ulysses)
            elif plan.ulysses == 1:
                measured = table.get("ring", {}).get(plan.ring)
            law = math.exp(-comm * self.sp_loss * (sp - 1)) * (self.ring_penalty if plan.ring > 1 else 1.0)
            factor *= measured or law
        return factor

    def sample_gpu_seconds(
        self, bucket: BucketKey, family: ModelFamily, plan: ParallelPlan, gpu: str | None = None
    ) -> float:
        """GPU-seconds one sample costs under ``plan`` (all GPUs of its group together)."""
        return self.single_gpu_seconds(bucket, family, gpu) / self.efficiency(plan, gpu)

    def sample_seconds(
        self, bucket: BucketKey, family: ModelFamily, plan: ParallelPlan, gpu: str | None = None
    ) -> float:
        """Wall time of one sample on its group of ``cfg * ulysses * ring`` GPUs."""
        group = plan.cfg * plan.ulysses * plan.ring
        return self.sample_gpu_seconds(bucket, family, plan, gpu) / group

    # --- per job --------------------------------------------------------------------------------------------------

    def load_seconds(self, family: ModelFamily, storage: str = "local") -> float:
        """Seconds from launch until the pipeline is ready on every rank (all ranks load at once)."""
        if storage not in STORAGE_KINDS:
            raise ValueError(f"storage {storage!r}: use one of {', '.join(STORAGE_KINDS)}")
        fixed = self.load_family_seconds.get(storage, {})
        if family.name in fixed:
            return fixed[family.name]
        return self.load_fixed_seconds[storage] + family.param_memory_gib / self.load_gib_per_second[storage]

    def job_seconds(
        self,
        bucket: BucketKey,
        family: ModelFamily,
        plan: ParallelPlan,
        slots: int,
        storage: str = "local",
        gpu: str | None = None,
    ) -> float:
        """Wall time of a job of ``slots`` samples (padded slots included): load, then slots/dp samples per rank."""
        rounds = math.ceil(slots / plan.dp) if slots else 0
        return self.load_seconds(family, storage) + rounds * self.sample_seconds(bucket, family, plan, gpu)


DEFAULT_COST_MODEL = CostModel()
