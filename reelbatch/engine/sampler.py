"""One denoising loop for every pipeline class, built from the pipeline's own components.

diffusers' ``__call__`` runs the conditional and unconditional passes one after another in one process. A
batch orchestrator needs three ways to run them: batched in one forward (fast, more memory), one after another
(``sequence_batch``: least memory) or split over a CFG rank pair (CFG parallel). The adapters (``engine/wan.py``,
``engine/hunyuan.py``) follow their pipeline's ``__call__`` step by step and expose its pieces: text (and image)
encoding, latents, which expert denoises each step, the transformer input, one forward, the scheduler step,
decode. ``VideoSampler`` runs the loop; everything a pipeline does beyond the loop stays in its adapter, and
every piece the pipeline has a method for is that method. ``engine/adapters.py`` picks a pipeline's adapter.

Every sample gets its own ``torch.Generator`` seeded from the sample's seed, and its latents are prepared one
sample at a time, so its video does not depend on the batch it lands in, the world size or the padding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from reelbatch.engine.caching import pass_context, start_sample
from reelbatch.engine.parallel import ParallelContext
from reelbatch.schemas import BucketKey

Conditioning = dict[str, torch.Tensor]


def concat_conditioning(a: Conditioning, b: Conditioning) -> Conditioning | None:
    """Both conditionings as one batch, or None when they cannot share one: HunyuanVideo-I2V (token_replace)
    encodes the negative prompt with fewer image tokens interleaved, so its text is longer."""
    if any(a[key].shape[1:] != b[key].shape[1:] for key in a):
        return None
    return {key: torch.cat([a[key], b[key]]) for key in a}


@dataclass
class SampleInputs:
    """What one video is made from, besides the bucket's shared parameters."""

    prompt: str
    negative_prompt: str
    seed: int
    image: object | None = None  # PIL image of the first frame
    last_image: object | None = None


@dataclass
class DenoiseState:
    """The latents being denoised and whatever else the pipeline's loop carries along (image latents, masks)."""

    latents: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


class PipelineAdapter:
    """The pipeline-specific pieces of a video pipeline's ``__call__``. Subclasses follow one family."""

    def __init__(self, pipe, bucket: BucketKey, device: torch.device):
        self.pipe = pipe
        self.bucket = bucket
        self.device = device
        denoiser = pipe.transformer if pipe.transformer is not None else pipe.transformer_2
        self.dtype = denoiser.dtype

    @property
    def uses_cfg(self) -> bool:
        return self.bucket.guidance_scale > 1.0

    def generator(self, seed: int) -> torch.Generator:
        # Drawn on the CPU so a seed gives the same video on every device type.
        return torch.Generator("cpu").manual_seed(seed)

    def encode(self, batch: list[SampleInputs]) -> tuple[Conditioning, Conditioning | None]:
        raise NotImplementedError

    def guided(self, batch: list[SampleInputs]) -> list[bool]:
        """Which samples the guidance applies to (all, where CFG is on): see HunyuanAdapter."""
        return [True] * len(batch)

    def prepare(self, batch: list[SampleInputs]) -> DenoiseState:
        raise NotImplementedError

    def timesteps(self) -> torch.Tensor:
        raise NotImplementedError

    def expert(self, t: torch.Tensor) -> tuple[torch.nn.Module, float]:
        """The transformer that denoises step ``t`` and its guidance scale."""
        return self.pipe.transformer, self.bucket.guidance_scale

    def model_input(self, state: DenoiseState, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden states, timestep) for the transformer at step ``t``."""
        raise NotImplementedError

    def predict(self, model, hidden: torch.Tensor, timestep: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        raise NotImplementedError

    def step(self, noise: torch.Tensor, t: torch.Tensor, state: DenoiseState) -> None:
        state.latents = self.pipe.scheduler.step(noise, t, state.latents, return_dict=False)[0]

    def final_latents(self, state: DenoiseState) -> torch.Tensor:
        return state.latents

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Latents -> float frames in [0, 1], shape (batch, frames, height, width, 3)."""
        raise NotImplementedError


@dataclass
class VideoSampler:
    adapter: PipelineAdapter
    ctx: ParallelContext | None = None
    # A step cache is on (engine/caching.py): one sample per call, each pass in its own forward and cache context.
    cached: bool = False

    @property
    def cfg_parallel(self) -> bool:
        return self.ctx is not None and self.ctx.plan.cfg == 2

    @torch.no_grad()
    def __call__(
        self,
        prompts: list[str],
        negatives: list[str],
        seeds: list[int],
        images=None,
        last_images=None,
        decode: bool = True,
    ):
        """One video per (prompt, negative, seed[, image, last image]); float frames, or latents if not decode."""
        count = len(prompts)
        images, last_images = images or [None] * count, last_images or [None] * count
        batch = [SampleInputs(*fields) for fields in zip(prompts, negatives, seeds, images, last_images, strict=False)]
        return self.generate(batch, decode)

    @torch.no_grad()
    def generate(self, batch: list[SampleInputs], decode: bool = True):
        adapter = self.adapter
        if self.cached:
            if len(batch) != 1:
                raise ValueError("a step cache decides per sample: generate one sample per call")
            start_sample(adapter.pipe)
        cond, uncond = adapter.encode(batch)
        guided = adapter.guided(batch)
        # Samples the guidance does not apply to keep their conditional prediction, as their pipeline call would.
        unguided = None if all(guided) else torch.tensor(guided, device=adapter.device).view(-1, 1, 1, 1, 1)
        state = adapter.prepare(batch)
        for t in adapter.timesteps():
            model, scale = adapter.expert(t)
            hidden, timestep = adapter.model_input(state, t)
            if uncond is None:
                noise = self._predict(model, hidden, timestep, cond, "cond")
            else:
                noise_cond, noise_uncond = self._guided_pair(model, hidden, timestep, cond, uncond)
                noise = noise_uncond + scale * (noise_cond - noise_uncond)
                if unguided is not None:
                    noise = torch.where(unguided, noise, noise_cond)
            adapter.step(noise, t, state)
        latents = adapter.final_latents(state)
        return adapter.decode(latents) if decode else latents

    def _predict(self, model, hidden, timestep, cond: Conditioning, name: str) -> torch.Tensor:
        """One pass (``cond`` or ``uncond``); under a step cache, in that pass's own cache context."""
        with pass_context(model, name, self.cached):
            return self.adapter.predict(model, hidden, timestep, cond)

    def _guided_pair(self, model, hidden, timestep, cond, uncond):
        adapter = self.adapter
        if self.cfg_parallel:
            ctx = self.ctx
            assert ctx is not None  # cfg_parallel needs a parallel context
            # Each rank of the pair runs one branch; all_gather hands both to both, so their latents stay equal.
            name, branch = ("cond", cond) if ctx.cfg_rank == 0 else ("uncond", uncond)
            mine = self._predict(model, hidden, timestep, branch, name).contiguous()
            gathered = [torch.empty_like(mine) for _ in range(2)]
            dist.all_gather(gathered, mine, group=ctx.cfg_group)
            return gathered[0], gathered[1]
        # A step cache decides per pass: the two passes never share a forward then.
        both = None if adapter.bucket.sequence_batch or self.cached else concat_conditioning(cond, uncond)
        if both is None:
            return (
                self._predict(model, hidden, timestep, cond, "cond"),
                self._predict(model, hidden, timestep, uncond, "uncond"),
            )
        doubled = adapter.predict(model, torch.cat([hidden, hidden]), torch.cat([timestep, timestep]), both)
        return doubled.chunk(2)
