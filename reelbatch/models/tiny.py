"""Tiny random-weight video pipelines that reelbatch builds itself.

They exist so the whole path (tokenizer, text encoder, transformer, scheduler, VAE, mp4) runs on a laptop and in
CI without a hub download. They are real diffusers pipelines: saved with ``save_pretrained`` and loaded back with
``from_pretrained`` from a local folder, exactly like a production checkpoint.

The shapes are chosen to keep the parallel rules meaningful: 4 attention heads (so ulysses 2 and 4 are legal,
3 is not), the production VAE strides (4 in time, 8 in space) and patch (1, 2, 2).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

TINY_MODEL_VERSION = 1  # bump when the recipe changes so cached builds are rebuilt

# A fixed corpus keeps the tokenizer identical on every machine (training is deterministic given the input).
_CORPUS = """
a cat walks on a sunny street, a dog runs through a green park at dawn, waves crash on a rocky shore
a red car drives through the neon city at night, snow falls over a quiet mountain village
a timelapse of clouds over the desert, an astronaut floats inside a space station, slow motion rain
close up of a flower opening, aerial view of a river delta, a robot paints a portrait in a studio
blurry, low quality, distorted, watermark, text, static, jpeg artifacts, worst quality, ugly
describe the video by detailing the following aspects: the main content and theme of the video,
the color, shape, size, texture, quantity, text, and spatial relationships of the objects,
actions, events, behaviors temporal relationships, physical movement changes of the objects,
background environment, light, style and atmosphere, camera angles, movements, and transitions
"""


def _train_tokenizer(vocab_size: int = 384):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    # Byte-level BPE never produces an unknown token: any prompt, in any script, encodes.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "</s>", "<unk>", "<s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.split("\n"), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", bos_token="<s>"
    )
    return fast


def _build_tiny_wan():
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    tokenizer = _train_tokenizer()
    text_encoder = UMT5EncoderModel(
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
    transformer = WanTransformer3DModel(
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
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    return WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae, scheduler=scheduler
    )


def _build_tiny_hunyuan():
    import torch
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    torch.manual_seed(0)
    tokenizer = _train_tokenizer()
    tokenizer_2 = _train_tokenizer()
    text_encoder = LlamaModel(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=3,  # the pipeline reads hidden_states[-3]
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    text_encoder_2 = CLIPTextModel(
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
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
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
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
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
    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    return HunyuanVideoPipeline(
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        vae=vae,
        scheduler=scheduler,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
    )


TINY_BUILDERS = {"tiny-wan": _build_tiny_wan, "tiny-hunyuan": _build_tiny_hunyuan}


def _quiet_libraries() -> None:
    # Building takes a fraction of a second; per-shard progress bars would only clutter the run's output.
    import diffusers
    import transformers

    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()


def default_cache_dir() -> Path:
    root = os.environ.get("REELBATCH_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "reelbatch"
    )
    return Path(root) / "models"


def ensure_tiny_model(name: str, cache_dir: Path | None = None) -> Path:
    """Return the local diffusers folder of tiny model ``name``, building it once if needed.

    The folder is built in a temporary directory and renamed into place, so concurrent ranks or runs never
    see a half-written model; a stamp file records the recipe version.
    """
    if name not in TINY_BUILDERS:
        raise KeyError(f"{name!r} is not a built-in tiny model (known: {', '.join(sorted(TINY_BUILDERS))})")
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    target = cache_dir / f"{name}-v{TINY_MODEL_VERSION}"
    if (target / "reelbatch-tiny.json").exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir))
    try:
        _quiet_libraries()
        pipe = TINY_BUILDERS[name]()
        pipe.save_pretrained(staging)
        (staging / "reelbatch-tiny.json").write_text(json.dumps({"name": name, "version": TINY_MODEL_VERSION}))
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "reelbatch-tiny.json").exists():  # lost a race to a complete build: fine
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
