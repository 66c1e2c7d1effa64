"""A context-parallel plan for ``HunyuanVideoTransformer3DModel``, which diffusers does not ship one for.

HunyuanVideo's attention is joint: every block attends over ``[video tokens; text tokens]`` with a key mask that
hides the text padding (the mask is built inside the model's forward, text last). The plan splits only the video
tokens (and their rotary embeddings, which are per video token and in the same (T, H, W) order); the text stream
stays whole on every rank of the sequence group and is computed there redundantly (a few hundred tokens against
tens of thousands of video tokens).

With Ulysses, each rank's local sequence is ``[video_i; text]``; the all-to-all concatenates them over the group to
``[video_0; text; video_1; text; ...]``, so every text key would appear ``ulysses`` times and take that much more
softmax weight. :class:`UlyssesJointAttnProcessor` therefore masks the text keys on every rank but the group's
first: diffusers all-gathers the local key mask along with the keys, so after the exchange each text key is valid
exactly once. Attention does not depend on the order of its keys, so the result equals the single-rank one up to
the order of floating-point sums. Text queries are complete on every rank (they see all keys), which keeps the
replicated text stream identical across the group.

Ulysses only: ring attention would have to carry the mask around the ring (diffusers' ring kernels take no mask).
"""

from __future__ import annotations

import torch
from diffusers.models._modeling_parallel import (
    ContextParallelInput,
    ContextParallelOutput,
)
from diffusers.models.transformers.transformer_hunyuan_video import (
    HunyuanVideoAttnProcessor2_0,
)

HUNYUAN_VIDEO_CP_PLAN = {
    # Patch embedding output (B, N_video, C): split the video tokens after they are made.
    "x_embedder": {0: ContextParallelInput(split_dim=1, expected_dims=3, split_output=True)},
    # RoPE returns (cos, sin), each (N_video, D), in the same token order as the patch embedding.
    "rope": {
        0: ContextParallelInput(split_dim=0, expected_dims=2, split_output=True),
        1: ContextParallelInput(split_dim=0, expected_dims=2, split_output=True),
    },
    # Final projection (B, N_video, C): gather the whole sequence before the model un-patches it.
    "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
}


class UlyssesJointAttnProcessor(HunyuanVideoAttnProcessor2_0):
    """HunyuanVideo's processor, with the replicated text keys valid on the first rank of the Ulysses group only."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        config = self._parallel_config
        cp = config.context_parallel_config if config is not None else None
        if cp is not None and cp.ulysses_degree > 1 and encoder_hidden_states is not None:
            if cp.ring_degree > 1:
                raise RuntimeError("HunyuanVideo-family native sequence parallel supports ulysses only")
            text = encoder_hidden_states.shape[1]
            local = hidden_states.shape[1] + text  # both block types pass the text apart; it goes last
            if attention_mask is None:
                attention_mask = torch.ones(
                    hidden_states.shape[0], 1, 1, local, dtype=torch.bool, device=hidden_states.device
                )
            if attention_mask.shape[-1] != local:
                raise RuntimeError(
                    f"HunyuanVideo sequence parallel: key mask of length {attention_mask.shape[-1]} for a local "
                    f"sequence of {local} tokens"
                )
            if cp._ulysses_local_rank != 0:
                attention_mask = attention_mask.clone()
                attention_mask[..., -text:] = False
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)


def prepare_hunyuan_video(transformer) -> dict:
    """Swap in the mask-aware processor on the joint-attention blocks; return the plan for ``enable_parallelism``."""
    if getattr(transformer.config, "image_condition_type", None) == "token_replace":
        raise RuntimeError("HunyuanVideo-I2V (token_replace) cannot run with a split sequence")
    swapped = 0
    for module in transformer.modules():
        processor = getattr(module, "processor", None)
        if type(processor) is HunyuanVideoAttnProcessor2_0:  # not the token refiner's plain processor
            replacement = UlyssesJointAttnProcessor()
            replacement._attention_backend = processor._attention_backend
            module.set_processor(replacement)
            swapped += 1
    if not swapped:
        raise RuntimeError(f"{type(transformer).__name__}: found no HunyuanVideo joint-attention processor to adapt")
    return HUNYUAN_VIDEO_CP_PLAN
