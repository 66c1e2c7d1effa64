"""Tiny random-weight pipelines of the Wan family: Wan 2.1 / 2.2 (T2V, I2V, FLF2V, TI2V, two-expert A14B) and
SkyReels-V2, which runs Wan's transformer layout, VAE and UMT5 text encoder.

All share one recipe (UMT5 text encoder, transformer of 4 heads x 8 channels and 2 blocks, 16-channel VAE with
strides 4 x 8) and depart from it only where the real checkpoints do; ``tiny.py`` lists them. Each builder seeds
torch itself, so a build is deterministic.
"""

from __future__ import annotations

from reelbatch.models.tiny_common import clip_image_processor, clip_vision_config, train_tokenizer

# The image conditioning of the Wan 2.1 / SkyReels-V2 I2V models: a CLIP tower on 16x16 crops with 4x4 patches,
# i.e. 16 patch tokens + 1 class token = 17 image tokens of width 16: odd like the real 257, so sequence-parallel
# code cannot get away with assuming the image context splits evenly over ranks.
CLIP_SIZE, CLIP_PATCH, CLIP_WIDTH = 16, 4, 16
IMAGE_TOKENS = (CLIP_SIZE // CLIP_PATCH) ** 2 + 1

# Timesteps of the tiny-wan scheduler (UniPC, flow shift 3) at 4 steps are 999, 900, 750, 500. Expert 1 runs the
# steps with t >= ratio * 1000: 0.875 splits them 2 + 2 (the real T2V-A14B value), 0.7 splits the I2V model 3 + 1,
# so a hard-coded split fails one of the two parity tests. Neither sits on a timestep, where rounding could flip it.
T2V_BOUNDARY_RATIO = 0.875
I2V_BOUNDARY_RATIO = 0.7


def _text(tokenizer):
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            dropout_rate=0.0,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )


def _transformer(cls=None, **layout):
    from diffusers import WanTransformer3DModel

    config = dict(
        patch_size=(1, 2, 2),
        num_attention_heads=4,
        attention_head_dim=8,
        in_channels=16,
        out_channels=16,
        text_dim=32,
        freq_dim=32,
        ffn_dim=64,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=64,
    )
    return (cls or WanTransformer3DModel)(**{**config, **layout})


def _i2v_transformer(cls=None, **layout):
    # Input: noisy latent (16) + the 4 frames of each latent frame's "is conditioning" mask + the condition video's
    # latent (16). Image tokens enter every block through their own key/value projections, sized like the real
    # models': the transformer width (4 heads x 8).
    return _transformer(cls, in_channels=16 + 4 + 16, image_dim=CLIP_WIDTH, added_kv_proj_dim=32, **layout)


def _vae():
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(
        base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )


def _scheduler(flow_shift: float = 3.0):
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift)


def _image_encoder(cls=None):
    from transformers import CLIPVisionModel

    return (cls or CLIPVisionModel)(clip_vision_config(CLIP_WIDTH, CLIP_SIZE, CLIP_PATCH))


def build_tiny_wan():
    import torch
    from diffusers import WanPipeline

    torch.manual_seed(0)
    tokenizer = train_tokenizer()
    text_encoder = _text(tokenizer)
    transformer = _transformer()
    vae = _vae()
    return WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae, scheduler=_scheduler()
    )


def build_wan22_a14b():
    import torch
    from diffusers import WanPipeline

    torch.manual_seed(0)
    tokenizer = train_tokenizer()
    text_encoder = _text(tokenizer)
    transformer, transformer_2 = _transformer(), _transformer()  # drawn one after the other: different experts
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        transformer=transformer,
        transformer_2=transformer_2,
        vae=_vae(),
        scheduler=_scheduler(),
        boundary_ratio=T2V_BOUNDARY_RATIO,
    )


def _wan22_vae():
    from diffusers import AutoencoderKLWan

    # Wan 2.2's VAE: pixels are folded 2x2 into 12 channels before a residual encoder (3 halvings), so the
    # spatial stride is 16; 48 latent channels. Its per-channel statistics are uneven on purpose: an engine that
    # skips the (latent - mean) / std normalisation then differs visibly from the pipeline.
    z_dim = 48
    return AutoencoderKLWan(
        base_dim=8,
        z_dim=z_dim,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        is_residual=True,
        in_channels=12,
        out_channels=12,
        patch_size=2,
        scale_factor_spatial=16,
        scale_factor_temporal=4,
        latents_mean=[round(0.1 * ((7 * i) % 11 - 5), 2) for i in range(z_dim)],
        latents_std=[round(0.8 + 0.1 * (i % 7), 2) for i in range(z_dim)],
    )


def build_wan22_ti2v():
    import torch
    from diffusers import WanPipeline

    torch.manual_seed(0)
    tokenizer = train_tokenizer()
    text_encoder = _text(tokenizer)
    transformer = _transformer(in_channels=48, out_channels=48)
    # expand_timesteps: every latent token carries its own timestep (0 on a conditioning first frame), which is
    # how the same folder also does image-to-video when loaded as WanImageToVideoPipeline.
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        transformer=transformer,
        vae=_wan22_vae(),
        scheduler=_scheduler(),
        expand_timesteps=True,
    )


def _build_wan21_image(pos_embed_seq_len: int | None):
    import torch
    from diffusers import WanImageToVideoPipeline

    torch.manual_seed(0)
    tokenizer = train_tokenizer()
    text_encoder = _text(tokenizer)
    image_encoder = _image_encoder()
    transformer = _i2v_transformer(pos_embed_seq_len=pos_embed_seq_len)
    if pos_embed_seq_len is not None:
        # diffusers starts this position table at zero; random values make "forgot to add it" detectable.
        with torch.no_grad():
            transformer.condition_embedder.image_embedder.pos_embed.normal_(std=0.5)
    return WanImageToVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        image_encoder=image_encoder,
        image_processor=clip_image_processor(CLIP_SIZE),
        transformer=transformer,
        vae=_vae(),
        scheduler=_scheduler(),
    )


def build_wan21_i2v():
    return _build_wan21_image(pos_embed_seq_len=None)


def build_wan21_flf2v():
    # First and last frame are encoded separately and their image tokens concatenated: twice the table.
    return _build_wan21_image(pos_embed_seq_len=2 * IMAGE_TOKENS)


def build_wan22_i2v_a14b():
    import torch
    from diffusers import WanImageToVideoPipeline

    torch.manual_seed(0)
    tokenizer = train_tokenizer()
    text_encoder = _text(tokenizer)
    # No CLIP: Wan 2.2 conditions on the image only through the 36-channel latent input.
    transformer, transformer_2 = _transformer(in_channels=36), _transformer(in_channels=36)
    return WanImageToVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        transformer=transformer,
        transformer_2=transformer_2,
        vae=_vae(),
        scheduler=_scheduler(),
        boundary_ratio=I2V_BOUNDARY_RATIO,
    )


def build_skyreels_v2():
    import torch
    from diffusers import SkyReelsV2Pipeline, SkyReelsV2Transformer3DModel

    torch.manual_seed(0)
    tokenizer = train_tokenizer()
    text_encoder = _text(tokenizer)
    transformer = _transformer(SkyReelsV2Transformer3DModel)
    return SkyReelsV2Pipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=_vae(), scheduler=_scheduler(8.0)
    )


def build_skyreels_v2_i2v():
    import torch
    from diffusers import SkyReelsV2ImageToVideoPipeline, SkyReelsV2Transformer3DModel
    from transformers import CLIPProcessor, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    tokenizer = train_tokenizer()
    text_encoder = _text(tokenizer)
    image_encoder = _image_encoder(CLIPVisionModelWithProjection)
    transformer = _i2v_transformer(SkyReelsV2Transformer3DModel)
    # SkyReels-V2 checkpoints ship a full CLIP processor (the pipeline only uses its image half).
    image_processor = CLIPProcessor(image_processor=clip_image_processor(CLIP_SIZE), tokenizer=train_tokenizer())
    return SkyReelsV2ImageToVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        image_encoder=image_encoder,
        image_processor=image_processor,
        transformer=transformer,
        vae=_vae(),
        scheduler=_scheduler(5.0),
    )
