"""Adapters for the Wan-style pipelines: WanPipeline, WanImageToVideoPipeline, SkyReelsV2Pipeline and its
image-to-video pipeline. Each method follows the matching lines of the pipeline's ``__call__`` (diffusers 0.42).

What differs between them, all from the folder's own config:
- two experts (Wan 2.2 A14B: ``transformer_2`` + ``boundary_ratio``): a step at or above the boundary timestep runs
  ``transformer`` with ``guidance_scale``, a later one ``transformer_2`` with ``guidance_scale_2`` (empty: the
  same as ``guidance_scale``); CFG is on when ``guidance_scale`` > 1, whatever ``guidance_scale_2`` says;
- ``expand_timesteps`` (Wan 2.2 TI2V-5B): a timestep per latent token, 0 on the tokens of a given first frame,
  whose latents are pasted over the noise every step (its image rows follow WanImageToVideoPipeline);
- image-to-video (Wan 2.1 / 2.2 I2V, SkyReels-V2 I2V): condition latents of the first (and last) frame with a
  frame mask, concatenated to the noisy latents on channels every step; where the transformer has an image
  embedding (``image_dim``), CLIP embeddings of the frame(s) join the text in cross-attention.
Noise channels are the VAE's (``z_dim``), not the transformer's input channels.
"""

from __future__ import annotations

import torch
from diffusers import WanImageToVideoPipeline

from reelbatch.engine.sampler import Conditioning, DenoiseState, PipelineAdapter, SampleInputs


class WanAdapter(PipelineAdapter):
    TEXT_TOKENS = 512  # what the pipelines' __call__ uses; encode_prompt's own default (226) differs

    def __init__(self, pipe, bucket, device):
        super().__init__(pipe, bucket, device)
        config = pipe.config
        self.expand_timesteps = bool(getattr(config, "expand_timesteps", False))
        boundary = getattr(config, "boundary_ratio", None)
        self.boundary = None if boundary is None else boundary * pipe.scheduler.config.num_train_timesteps
        self.guidance_scale_2 = bucket.guidance_scale if bucket.guidance_scale_2 is None else bucket.guidance_scale_2
        self.with_image = bucket.conditioning != "text"
        # WanImageToVideoPipeline gives CLIP embeddings only to a transformer that has an image embedding;
        # SkyReels-V2's always encodes the image.
        has_image_embedding = pipe.transformer is not None and pipe.transformer.config.image_dim is not None
        skyreels = type(pipe).__name__ == "SkyReelsV2ImageToVideoPipeline"
        self.clip = self.with_image and (skyreels or has_image_embedding)

    # --- conditioning ------------------------------------------------------------------------------------------

    def encode(self, batch: list[SampleInputs]) -> tuple[Conditioning, Conditioning | None]:
        cond, uncond = self.pipe.encode_prompt(
            prompt=[s.prompt for s in batch],
            negative_prompt=[s.negative_prompt for s in batch],
            do_classifier_free_guidance=self.uses_cfg,
            max_sequence_length=self.TEXT_TOKENS,
            device=self.device,
        )
        extra = {}
        if self.clip:
            # One sample at a time: the pipeline encodes [image] or [image, last_image] per video, and a
            # first-and-last-frame transformer regroups consecutive pairs of embeddings per sample.
            embeds = [
                self.pipe.encode_image([s.image] if s.last_image is None else [s.image, s.last_image], self.device)
                for s in batch
            ]
            extra["encoder_hidden_states_image"] = torch.cat(embeds).to(self.dtype)
        return (
            {"encoder_hidden_states": cond.to(self.dtype), **extra},
            {"encoder_hidden_states": uncond.to(self.dtype), **extra} if uncond is not None else None,
        )

    # --- latents -----------------------------------------------------------------------------------------------

    def prepare(self, batch: list[SampleInputs]) -> DenoiseState:
        parts = [self._prepare_one(s) for s in batch]
        latents = torch.cat([p[0] for p in parts]).to(self.device)
        extra = {}
        if self.with_image:
            extra["condition"] = torch.cat([p[1] for p in parts]).to(self.device)
            if self.expand_timesteps:
                extra["first_frame_mask"] = parts[0][2].to(self.device)  # the same for every sample
        elif self.expand_timesteps:
            extra["first_frame_mask"] = torch.ones(latents.shape, dtype=torch.float32, device=self.device)
        return DenoiseState(latents, extra)

    def _prepare_one(self, sample: SampleInputs):
        """The pipeline's own prepare_latents for one sample: its CPU generator draws the noise, whatever the
        device, and a batch of one keeps WanImageToVideoPipeline from encoding a batch's images once per video."""
        b, pipe, device = self.bucket, self.pipe, self.device
        channels = pipe.vae.config.z_dim
        generator = [self.generator(sample.seed)]
        if not self.with_image:
            return (
                pipe.prepare_latents(1, channels, b.height, b.width, b.num_frames, torch.float32, device, generator),
            )
        image = pipe.video_processor.preprocess(sample.image, height=b.height, width=b.width)
        image = image.to(device, dtype=torch.float32)
        last = None
        if sample.last_image is not None:
            last = pipe.video_processor.preprocess(sample.last_image, height=b.height, width=b.width)
            last = last.to(device, dtype=torch.float32)
        # A TI2V-5B folder is a WanPipeline; diffusers makes its image rows with WanImageToVideoPipeline's latents.
        prepare = pipe.prepare_latents if "ImageToVideo" in type(pipe).__name__ else self._i2v_latents
        return prepare(
            image, 1, channels, b.height, b.width, b.num_frames, torch.float32, device, generator, None, last
        )

    def _i2v_latents(self, *args):
        return WanImageToVideoPipeline.prepare_latents(self.pipe, *args)

    def timesteps(self) -> torch.Tensor:
        self.pipe.scheduler.set_timesteps(self.bucket.num_inference_steps, device=self.device)
        self.pipe.scheduler.set_begin_index(0)
        return self.pipe.scheduler.timesteps

    # --- one step ----------------------------------------------------------------------------------------------

    def expert(self, t):
        if self.boundary is None or t >= self.boundary:
            return self.pipe.transformer, self.bucket.guidance_scale
        return self.pipe.transformer_2, self.guidance_scale_2

    def model_input(self, state: DenoiseState, t):
        latents, extra = state.latents, state.extra
        batch = latents.shape[0]
        if self.expand_timesteps:
            mask = extra["first_frame_mask"]
            hidden = (1 - mask) * extra["condition"] + mask * latents if self.with_image else latents
            # One timestep per latent token (patch 2 x 2), 0 where the given first frame is.
            timestep = (mask[0][0][:, ::2, ::2] * t).flatten().unsqueeze(0).expand(batch, -1)
            return hidden.to(self.dtype), timestep
        if self.with_image:
            return torch.cat([latents, extra["condition"]], dim=1).to(self.dtype), t.expand(batch)
        return latents.to(self.dtype), t.expand(batch)

    def predict(self, model, hidden, timestep, cond):
        return model(hidden_states=hidden, timestep=timestep, return_dict=False, **cond)[0]

    def final_latents(self, state: DenoiseState) -> torch.Tensor:
        if self.expand_timesteps and self.with_image:
            mask = state.extra["first_frame_mask"]
            return (1 - mask) * state.extra["condition"] + mask * state.latents
        return state.latents

    @torch.no_grad()
    def decode(self, latents):
        vae = self.pipe.vae
        latents = latents.to(vae.dtype)
        mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(latents)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(latents)
        video = vae.decode(latents / inv_std + mean, return_dict=False)[0]
        return self.pipe.video_processor.postprocess_video(video, output_type="np")


WAN_ADAPTERS = {
    name: WanAdapter
    for name in ("WanPipeline", "WanImageToVideoPipeline", "SkyReelsV2Pipeline", "SkyReelsV2ImageToVideoPipeline")
}
