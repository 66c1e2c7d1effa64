"""Adapters for the HunyuanVideo-family pipelines: HunyuanVideoPipeline (HunyuanVideo, SkyReels-V1 T2V),
HunyuanSkyreelsImageToVideoPipeline (SkyReels-V1 I2V) and HunyuanVideoImageToVideoPipeline (HunyuanVideo-I2V).
Each method follows the matching lines of the pipeline's ``__call__`` (diffusers 0.42).

The manifest's ``guidance_scale`` is the pipelines' ``true_cfg_scale``: classifier-free guidance against the
negative prompt, on when > 1 and the sample has a negative prompt (an empty one is the pipelines' None: no true
CFG, whatever the scale); the distilled ``embedded_guidance_scale`` is their ``guidance_scale``, given to
transformers with a guidance embedding as ``guidance * 1000``.

- SkyReels-V1 I2V: the first frame's VAE latents (sampled with the video's generator, before its noise is drawn:
  the order that keeps seed parity) are concatenated to the noisy latents on channels every step.
- HunyuanVideo-I2V: the Llava text encoder sees the image with the prompt (the negative prompt with a black
  image); ``latent_concat`` concatenates image latents and a first-frame mask on channels and drops the first
  4 decoded frames; ``token_replace`` keeps the clean first latent frame in place of the noisy one and steps
  the scheduler over the later frames only.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch

from reelbatch.engine.sampler import Conditioning, DenoiseState, PipelineAdapter, SampleInputs
from reelbatch.models.pipelines import PIPELINES


class HunyuanAdapter(PipelineAdapter):
    def __init__(self, pipe, bucket, device):
        super().__init__(pipe, bucket, device)
        embedded = bucket.embedded_guidance_scale
        if embedded is None:  # a spec written without planning: the pipeline's own default
            embedded = PIPELINES[type(pipe).__name__].defaults.embedded_guidance_scale
        self.embedded = embedded if pipe.transformer.config.guidance_embeds else None

    def _conditioning(self, embeds, pooled, mask) -> Conditioning:
        return {
            "encoder_hidden_states": embeds.to(self.dtype),
            "encoder_attention_mask": mask.to(self.dtype),
            "pooled_projections": pooled.to(self.dtype),
        }

    def _encode_text(self, prompts: list[str]) -> Conditioning:
        embeds, pooled, mask = self.pipe.encode_prompt(prompt=prompts, prompt_2=None, device=self.device)
        return self._conditioning(embeds, pooled, mask)

    def guided(self, batch: list[SampleInputs]) -> list[bool]:
        return [s.negative_prompt != "" for s in batch]

    def _runs_cfg(self, batch: list[SampleInputs]) -> bool:
        return self.uses_cfg and any(self.guided(batch))

    def encode(self, batch: list[SampleInputs]):
        cond = self._encode_text([s.prompt for s in batch])
        return cond, (self._encode_text([s.negative_prompt for s in batch]) if self._runs_cfg(batch) else None)

    def prepare(self, batch: list[SampleInputs]) -> DenoiseState:
        b = self.bucket
        latents = self.pipe.prepare_latents(
            len(batch),
            self.pipe.transformer.config.in_channels,
            b.height,
            b.width,
            b.num_frames,
            torch.float32,
            self.device,
            [self.generator(s.seed) for s in batch],
        )
        return DenoiseState(latents)

    def timesteps(self):
        from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import retrieve_timesteps

        steps = self.bucket.num_inference_steps
        sigmas = np.linspace(1.0, 0.0, steps + 1)[:-1].tolist()  # the scheduler turns them back into an array
        timesteps, _ = retrieve_timesteps(self.pipe.scheduler, steps, self.device, sigmas=sigmas)
        self.pipe.scheduler.set_begin_index(0)
        return timesteps

    def model_input(self, state: DenoiseState, t):
        latents = state.latents
        return latents.to(self.dtype), t.expand(latents.shape[0]).to(latents.dtype)

    def predict(self, model, hidden, timestep, cond):
        guidance = None
        if self.embedded is not None:
            # As the pipelines build it: the scale in the transformer's dtype, then x 1000.
            guidance = torch.tensor([self.embedded] * hidden.shape[0], dtype=self.dtype, device=self.device) * 1000.0
        return model(hidden_states=hidden, timestep=timestep, guidance=guidance, return_dict=False, **cond)[0]

    @torch.no_grad()
    def decode(self, latents):
        vae = self.pipe.vae
        video = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        return self.pipe.video_processor.postprocess_video(self._trim(video), output_type="np")

    def _trim(self, video: torch.Tensor) -> torch.Tensor:
        return video


class SkyreelsImageAdapter(HunyuanAdapter):
    """HunyuanSkyreelsImageToVideoPipeline: image latents concatenated on channels."""

    def prepare(self, batch: list[SampleInputs]) -> DenoiseState:
        b, pipe = self.bucket, self.pipe
        channels = pipe.transformer.config.in_channels // 2
        parts = []
        for s in batch:  # one at a time: each video's generator samples its image latents, then its noise
            image = pipe.video_processor.preprocess(s.image, height=b.height, width=b.width)
            image = image.to(self.device, pipe.vae.dtype)
            parts.append(
                pipe.prepare_latents(
                    image,
                    1,
                    channels,
                    b.height,
                    b.width,
                    b.num_frames,
                    torch.float32,
                    self.device,
                    [self.generator(s.seed)],
                )
            )
        latents = torch.cat([p[0] for p in parts])
        return DenoiseState(latents, {"image_latents": torch.cat([p[1] for p in parts]).to(self.dtype)})

    def model_input(self, state: DenoiseState, t):
        latents = state.latents
        hidden = torch.cat([latents.to(self.dtype), state.extra["image_latents"]], dim=1)
        return hidden, t.expand(latents.shape[0]).to(latents.dtype)


class HunyuanImageAdapter(HunyuanAdapter):
    """HunyuanVideoImageToVideoPipeline, both image condition types."""

    def __init__(self, pipe, bucket, device):
        super().__init__(pipe, bucket, device)
        self.condition = pipe.transformer.config.image_condition_type
        # __call__'s default for the prompt; the negative prompt is encoded with encode_prompt's own default (2).
        self.interleave = 2 if self.condition == "latent_concat" else 4 if self.condition == "token_replace" else 1

    def encode(self, batch: list[SampleInputs]):
        # One sample at a time: the text encoder sees each video's own image with its prompt.
        b = self.bucket
        cond = [
            self.pipe.encode_prompt(
                image=s.image,
                prompt=[s.prompt],
                prompt_2=None,
                device=self.device,
                image_embed_interleave=self.interleave,
            )
            for s in batch
        ]
        uncond = None
        if self._runs_cfg(batch):
            black = PIL.Image.new("RGB", (b.width, b.height), 0)
            uncond = [
                self.pipe.encode_prompt(image=black, prompt=[s.negative_prompt], prompt_2=None, device=self.device)
                for s in batch
            ]
        return self._joined(cond), (self._joined(uncond) if uncond is not None else None)

    def _joined(self, encoded) -> Conditioning:
        return self._conditioning(*(torch.cat([e[i] for e in encoded]) for i in range(3)))

    def prepare(self, batch: list[SampleInputs]) -> DenoiseState:
        b, pipe = self.bucket, self.pipe
        in_channels = pipe.transformer.config.in_channels
        channels = (in_channels - 1) // 2 if self.condition == "latent_concat" else in_channels
        parts = []
        for s in batch:
            image = pipe.video_processor.preprocess(s.image, b.height, b.width).to(self.device, pipe.vae.dtype)
            parts.append(
                pipe.prepare_latents(
                    image,
                    1,
                    channels,
                    b.height,
                    b.width,
                    b.num_frames,
                    torch.float32,
                    self.device,
                    [self.generator(s.seed)],
                    None,
                    self.condition,
                )
            )
        latents, image_latents = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        extra = {"image_latents": image_latents}
        if self.condition == "latent_concat":
            image_latents[:, :, 1:] = 0
            mask = image_latents.new_ones(image_latents.shape[0], 1, *image_latents.shape[2:])
            mask[:, :, 1:] = 0
            extra["mask"] = mask
        return DenoiseState(latents, extra)

    def model_input(self, state: DenoiseState, t):
        latents, extra = state.latents, state.extra
        if self.condition == "latent_concat":
            hidden = torch.cat([latents, extra["image_latents"], extra["mask"]], dim=1)
        else:  # token_replace
            hidden = torch.cat([extra["image_latents"], latents[:, :, 1:]], dim=2)
        return hidden.to(self.dtype), t.expand(latents.shape[0]).to(latents.dtype)

    def step(self, noise, t, state: DenoiseState) -> None:
        if self.condition != "token_replace":
            return super().step(noise, t, state)
        later = self.pipe.scheduler.step(noise[:, :, 1:], t, state.latents[:, :, 1:], return_dict=False)[0]
        state.latents = torch.cat([state.extra["image_latents"], later], dim=2)

    def _trim(self, video: torch.Tensor) -> torch.Tensor:
        return video[:, :, 4:] if self.condition == "latent_concat" else video


HUNYUAN_ADAPTERS = {
    "HunyuanVideoPipeline": HunyuanAdapter,
    "HunyuanSkyreelsImageToVideoPipeline": SkyreelsImageAdapter,
    "HunyuanVideoImageToVideoPipeline": HunyuanImageAdapter,
}
