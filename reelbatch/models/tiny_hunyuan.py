"""Tiny random-weight pipelines of the HunyuanVideo family: text-to-video, its two image-to-video layouts
(first-frame token replacement, and latent concatenation with a mask channel) and SkyReels-V1 image-to-video.

All share the tiny-hunyuan recipe (4 heads of 8 channels, one double and one single block, a 4-channel VAE with
strides 4 x 8, patch (1, 2, 2)); ``tiny.py`` lists them. Each builder seeds torch itself.
"""

from __future__ import annotations

from reelbatch.models.tiny_common import (
    check_template,
    clip_image_processor,
    clip_vision_config,
    train_chat_tokenizer,
    train_tokenizer,
)

LATENT = 4  # VAE latent channels

# The image-to-video template expands its one <image> token into this many Llava image features; a CLIP tower on
# 24x24 images with 1x1 patches yields 576 patch features once Llava drops the class token.
LLAVA_IMAGE_SIZE = 24


def _llama_config(vocab_size: int, pad_token_id: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=3,  # the pipelines read hidden_states[-3]
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=pad_token_id,
    )


def _clip_text(tokenizer_2):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer_2),
            hidden_size=8,
            intermediate_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=80,
            projection_dim=8,
            pad_token_id=tokenizer_2.pad_token_id,
            eos_token_id=tokenizer_2.eos_token_id,
            bos_token_id=tokenizer_2.bos_token_id,
        )
    )


def _transformer(**layout):
    from diffusers import HunyuanVideoTransformer3DModel

    config = dict(
        in_channels=LATENT,
        out_channels=LATENT,
        num_attention_heads=4,
        attention_head_dim=8,
        num_layers=1,
        num_single_layers=1,
        num_refiner_layers=1,
        patch_size=2,
        patch_size_t=1,
        guidance_embeds=True,
        text_embed_dim=16,
        pooled_projection_dim=8,
        rope_axes_dim=(2, 2, 4),
    )
    return HunyuanVideoTransformer3DModel(**{**config, **layout})


def _vae():
    from diffusers import AutoencoderKLHunyuanVideo

    return AutoencoderKLHunyuanVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=LATENT,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        act_fn="silu",
        norm_num_groups=4,
        scaling_factor=0.476986,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
        mid_block_add_attention=True,
    )


def _scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(shift=7.0)


def build_tiny_hunyuan():
    import torch
    from diffusers import HunyuanVideoPipeline
    from transformers import LlamaModel

    torch.manual_seed(0)
    tokenizer = train_tokenizer()
    tokenizer_2 = train_tokenizer()
    text_encoder = LlamaModel(_llama_config(len(tokenizer), tokenizer.pad_token_id))
    text_encoder_2 = _clip_text(tokenizer_2)
    transformer = _transformer()
    vae = _vae()
    return HunyuanVideoPipeline(
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        vae=vae,
        scheduler=_scheduler(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
    )


def _chat_tokenizer(template_module):
    from diffusers.pipelines.hunyuan_video import (
        pipeline_hunyuan_skyreels_image2video,
        pipeline_hunyuan_video,
        pipeline_hunyuan_video_image2video,
    )

    # One tokenizer recipe for every Hunyuan-family template, checked against the template this pipeline uses.
    templates = [
        m.DEFAULT_PROMPT_TEMPLATE
        for m in (pipeline_hunyuan_video, pipeline_hunyuan_video_image2video, pipeline_hunyuan_skyreels_image2video)
    ]
    tokenizer = train_chat_tokenizer(templates)
    check_template(tokenizer, template_module.DEFAULT_PROMPT_TEMPLATE)
    return tokenizer


def build_skyreels_v1_i2v():
    import torch
    from diffusers import HunyuanSkyreelsImageToVideoPipeline
    from diffusers.pipelines.hunyuan_video import pipeline_hunyuan_skyreels_image2video
    from transformers import LlamaModel

    torch.manual_seed(0)
    tokenizer = _chat_tokenizer(pipeline_hunyuan_skyreels_image2video)
    tokenizer_2 = train_tokenizer()
    text_encoder = LlamaModel(_llama_config(len(tokenizer), tokenizer.pad_token_id))
    text_encoder_2 = _clip_text(tokenizer_2)
    # The image's latent is concatenated to the noisy latent along channels.
    transformer = _transformer(in_channels=2 * LATENT)
    return HunyuanSkyreelsImageToVideoPipeline(
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        vae=_vae(),
        scheduler=_scheduler(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
    )


def _llava(tokenizer):
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    text = _llama_config(len(tokenizer), tokenizer.pad_token_id)
    # 256 prompt tokens + the template + 575 extra image positions: the text encoder sees about 940 tokens.
    text.max_position_embeddings = 1024
    return LlavaForConditionalGeneration(
        LlavaConfig(
            vision_config=clip_vision_config(8, LLAVA_IMAGE_SIZE, 1),
            text_config=text,
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
            projector_hidden_act="gelu",
            # The pipeline reads the pad id from the Llava config itself to find the padding it added. Configs
            # keep extra keyword arguments as attributes; transformers' typed signature does not list them.
            pad_token_id=tokenizer.pad_token_id,  # type: ignore[call-arg]
        )
    )


def _build_hunyuan_i2v(image_condition_type: str, in_channels: int, guidance_embeds: bool):
    import torch
    from diffusers import HunyuanVideoImageToVideoPipeline
    from diffusers.pipelines.hunyuan_video import pipeline_hunyuan_video_image2video

    torch.manual_seed(0)
    tokenizer = _chat_tokenizer(pipeline_hunyuan_video_image2video)
    tokenizer_2 = train_tokenizer()
    text_encoder = _llava(tokenizer)
    text_encoder_2 = _clip_text(tokenizer_2)
    transformer = _transformer(
        in_channels=in_channels, guidance_embeds=guidance_embeds, image_condition_type=image_condition_type
    )
    return HunyuanVideoImageToVideoPipeline(
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        vae=_vae(),
        scheduler=_scheduler(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        image_processor=clip_image_processor(LLAVA_IMAGE_SIZE),
    )


def build_hunyuan_i2v():
    # The first latent frame is the clean image latent, denoised with its own (t = 0) modulation.
    return _build_hunyuan_i2v("token_replace", LATENT, guidance_embeds=True)


def build_hunyuan_i2v_33ch():
    # Noisy latent + image latent (first frame only) + a first-frame mask channel.
    return _build_hunyuan_i2v("latent_concat", 2 * LATENT + 1, guidance_embeds=False)
