"""One denoising loop for every pipeline family, built from the pipeline's own components.

diffusers' ``__call__`` runs the conditional and unconditional passes one after another in one process. A
batch orchestrator needs three ways to run them: batched in one forward (fast, more memory), one after another
(``sequence_batch``: least memory) or split over a CFG rank pair (CFG parallel). The family adapters below
expose the pieces (text encoding, latents, one transformer forward, decode) and ``VideoSampler`` runs the loop.

Every sample gets its own ``torch.Generator`` seeded from the sample's seed, so its video does not depend on
the batch it lands in, the world size or the padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from reelbatch.engine.parallel import ParallelContext
from reelbatch.schemas import BucketKey

Conditioning = dict[str, torch.Tensor]


def _concat(a: Conditioning, b: Conditioning) -> Conditioning:
    return {key: torch.cat([a[key], b[key]]) for key in a}


class FamilyAdapter:
    """The family-specific pieces of a text-to-video pipeline."""

    def __init__(self, pipe, bucket: BucketKey, device: torch.device):
        self.pipe = pipe
        self.bucket = bucket
        self.device = device
        self.dtype = pipe.transformer.dtype

    @property
    def uses_cfg(self) -> bool:
        return self.bucket.guidance_scale > 1.0

    def encode(self, prompts: list[str], negatives: list[str]) -> tuple[Conditioning, Conditioning | None]:
        raise NotImplementedError

    def timesteps(self) -> torch.Tensor:
        raise NotImplementedError

    def prepare_latents(self, seeds: list[int]) -> torch.Tensor:
        b = self.bucket
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        # Noise is drawn on the CPU so a seed gives the same video on every device type.
        latents = self.pipe.prepare_latents(
            len(seeds), self.pipe.transformer.config.in_channels, b.height, b.width, b.num_frames,
            torch.float32, torch.device("cpu"), generators,
        )
        return latents.to(self.device)

    def predict(self, latents: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Latents -> float frames in [0, 1], shape (batch, frames, height, width, 3)."""
        raise NotImplementedError


class WanAdapter(FamilyAdapter):
    TEXT_TOKENS = 512  # what WanPipeline.__call__ uses; encode_prompt's own default (226) differs

    def encode(self, prompts, negatives):
        cond, uncond = self.pipe.encode_prompt(
            prompt=prompts,
            negative_prompt=negatives,
            do_classifier_free_guidance=self.uses_cfg,
            max_sequence_length=self.TEXT_TOKENS,
            device=self.device,
        )
        return (
            {"encoder_hidden_states": cond.to(self.dtype)},
            {"encoder_hidden_states": uncond.to(self.dtype)} if uncond is not None else None,
        )

    def timesteps(self):
        self.pipe.scheduler.set_timesteps(self.bucket.num_inference_steps, device=self.device)
        self.pipe.scheduler.set_begin_index(0)
        return self.pipe.scheduler.timesteps

    def predict(self, latents, t, cond):
        return self.pipe.transformer(
            hidden_states=latents.to(self.dtype), timestep=t.expand(latents.shape[0]), return_dict=False, **cond
        )[0]

    @torch.no_grad()
    def decode(self, latents):
        vae = self.pipe.vae
        latents = latents.to(vae.dtype)
        mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(latents)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(latents)
        video = vae.decode(latents / inv_std + mean, return_dict=False)[0]
        return self.pipe.video_processor.postprocess_video(video, output_type="np")


class HunyuanAdapter(FamilyAdapter):
    """HunyuanVideo / SkyReels-V1: manifest ``guidance_scale`` is true CFG (``true_cfg_scale``)."""

    DEFAULT_EMBEDDED_GUIDANCE = 6.0  # diffusers' default for the distilled guidance input

    def _encode_one(self, prompts):
        embeds, pooled, mask = self.pipe.encode_prompt(prompt=prompts, prompt_2=None, device=self.device)
        return {
            "encoder_hidden_states": embeds.to(self.dtype),
            "encoder_attention_mask": mask.to(self.dtype),
            "pooled_projections": pooled.to(self.dtype),
        }

    def encode(self, prompts, negatives):
        return self._encode_one(prompts), (self._encode_one(negatives) if self.uses_cfg else None)

    def timesteps(self):
        from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import retrieve_timesteps

        steps = self.bucket.num_inference_steps
        sigmas = np.linspace(1.0, 0.0, steps + 1)[:-1]
        timesteps, _ = retrieve_timesteps(self.pipe.scheduler, steps, self.device, sigmas=sigmas)
        self.pipe.scheduler.set_begin_index(0)
        return timesteps

    def predict(self, latents, t, cond):
        embedded = self.bucket.embedded_guidance_scale
        embedded = self.DEFAULT_EMBEDDED_GUIDANCE if embedded is None else embedded
        batch = latents.shape[0]
        guidance = torch.full((batch,), embedded * 1000.0, dtype=self.dtype, device=self.device)
        return self.pipe.transformer(
            hidden_states=latents.to(self.dtype),
            timestep=t.expand(batch).to(latents.dtype),
            guidance=guidance,
            return_dict=False,
            **cond,
        )[0]

    @torch.no_grad()
    def decode(self, latents):
        vae = self.pipe.vae
        video = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        return self.pipe.video_processor.postprocess_video(video, output_type="np")


ADAPTERS = {"wan": WanAdapter, "hunyuan": HunyuanAdapter}


@dataclass
class VideoSampler:
    adapter: FamilyAdapter
    ctx: ParallelContext | None = None

    @property
    def cfg_parallel(self) -> bool:
        return self.ctx is not None and self.ctx.plan.cfg == 2

    @torch.no_grad()
    def __call__(self, prompts: list[str], negatives: list[str], seeds: list[int], decode: bool = True):
        """Generate one video per (prompt, negative, seed); returns float frames (or latents if not decode)."""
        adapter, bucket = self.adapter, self.adapter.bucket
        cond, uncond = adapter.encode(prompts, negatives)
        latents = adapter.prepare_latents(seeds)
        scheduler = adapter.pipe.scheduler
        for t in adapter.timesteps():
            if uncond is None:
                noise = adapter.predict(latents, t, cond)
            else:
                noise_cond, noise_uncond = self._guided_pair(latents, t, cond, uncond)
                noise = noise_uncond + bucket.guidance_scale * (noise_cond - noise_uncond)
            latents = scheduler.step(noise, t, latents, return_dict=False)[0]
        return adapter.decode(latents) if decode else latents

    def _guided_pair(self, latents, t, cond, uncond):
        adapter = self.adapter
        if self.cfg_parallel:
            # Each rank of the pair runs one branch; all_gather hands both to both, so their latents stay equal.
            mine = adapter.predict(latents, t, cond if self.ctx.cfg_rank == 0 else uncond).contiguous()
            both = [torch.empty_like(mine) for _ in range(2)]
            dist.all_gather(both, mine, group=self.ctx.cfg_group)
            return both[0], both[1]
        if adapter.bucket.sequence_batch:
            return adapter.predict(latents, t, cond), adapter.predict(latents, t, uncond)
        doubled = adapter.predict(torch.cat([latents, latents]), t, _concat(cond, uncond))
        return doubled.chunk(2)
