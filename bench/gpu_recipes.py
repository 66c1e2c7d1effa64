"""Seconds per video and peak GPU memory of the recipes a job can use: baseline, step cache, compile, LoRA.

    .venv/bin/python bench/gpu_recipes.py                      # CUDA: Wan 2.1 T2V 1.3B size; CPU: a dry check
    .venv/bin/python bench/gpu_recipes.py --steps 50 --frames 81 --height 480 --width 832 --videos 3
    .venv/bin/python bench/gpu_recipes.py --size tiny           # the dry check anywhere (tiny-wan, 2 steps)

On a CUDA machine it builds, offline and with random weights, a Wan 2.1 T2V pipeline with the 1.3B model's
transformer (30 blocks of 12 x 128 heads, FFN 8960) and the real Wan VAE; the text encoder is UMT5 at the real width
(4096) with 2 layers instead of 24 (random weights either way: text encoding is well under 1 % of a video's time, and
its size would only cost disk). The folder is written once and loaded with reelbatch's own loading code
(``engine/loading.load_pipeline``: bf16, local files only), then each recipe runs ``--videos`` videos through the
engine's sampler, the way a job does:

- ``baseline``: nothing on;
- ``fbc:T``: diffusers' First Block Cache (``engine/caching.enable_step_cache``), with the share of transformer
  passes it served;
- ``compile``: ``torch.compile`` of the transformer blocks (``engine/caching.compile_denoisers``); the first video
  pays the compile, the others show the steady speed;
- ``lora``: a rank-32 adapter on every attention projection, made with peft, loaded with the pipeline's own
  ``load_lora_weights`` and fused once (what ``engine/lora.apply_lora`` does): a fused adapter should cost nothing.

Random weights make the frames noise, and the cache's decisions depend on how the first block's output moves, which
trained weights decide: read the cached share as this run's, not the model's. The seconds and memory of the other
recipes are the real model size's. On CPU (or with ``--size tiny``) it runs every recipe on tiny-wan for 2 steps
(compile only with ``--compile-on-cpu``): a check that the script and the engine calls work, not figures.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from reelbatch.engine.adapters import adapter_for
from reelbatch.engine.caching import compile_denoisers, enable_step_cache
from reelbatch.engine.loading import load_pipeline
from reelbatch.engine.sampler import VideoSampler
from reelbatch.models.tiny import ensure_tiny_model
from reelbatch.schemas import BucketKey

PROMPT, NEGATIVE = "a red fox runs through fresh snow at dawn", "blurry, low quality"
# Wan 2.1 T2V 1.3B's transformer (its published config.json); the VAE is AutoencoderKLWan's default, the real one.
WAN_1_3B = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=12,
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=8960,
    num_layers=30,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
)


@dataclass
class Result:
    recipe: str
    seconds: list[float]
    peak_gib: float | None
    passes: int = 0
    cached: int = 0


def build_real_size_wan(folder: Path) -> Path:
    """A Wan 2.1 T2V pipeline of the 1.3B model's size with random weights, saved to ``folder`` (bf16)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from reelbatch.models.tiny_common import train_tokenizer

    torch.manual_seed(0)
    tokenizer = train_tokenizer()
    text_encoder = UMT5EncoderModel(
        UMT5Config(vocab_size=len(tokenizer), d_model=4096, d_kv=64, d_ff=10240, num_layers=2, num_heads=64,
                   dropout_rate=0.0, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    )  # fmt: skip
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        transformer=WanTransformer3DModel(**WAN_1_3B),
        vae=AutoencoderKLWan(),
        scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0),
    )
    pipe.to(torch.bfloat16).save_pretrained(folder)
    return folder


def make_lora(pipe, folder: Path, rank: int) -> Path:
    """A random rank-``rank`` adapter on every attention projection of the transformer, in diffusers' layout."""
    from diffusers import WanPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    transformer = pipe.transformer
    config = LoraConfig(
        r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False
    )
    transformer.add_adapter(config, adapter_name="bench")
    weights = get_peft_model_state_dict(transformer, adapter_name="bench")
    transformer.delete_adapters("bench")
    WanPipeline.save_lora_weights(folder, transformer_lora_layers=weights, weight_name="bench.safetensors")
    return folder / "bench.safetensors"


def run_recipe(
    recipe: str, model: Path, device: torch.device, bucket: BucketKey, videos: int, lora_rank: int
) -> Result:
    pipe = load_pipeline(str(model), device)
    cache = recipe if recipe.startswith("fbc") else None
    if recipe == "lora":
        with tempfile.TemporaryDirectory() as adapters:
            path = make_lora(pipe, Path(adapters), lora_rank)
            before = pipe.transformer.blocks[0].attn1.to_q.weight.detach().clone()
            pipe.load_lora_weights(str(path), adapter_name="bench", use_safetensors=True, local_files_only=True)
            pipe.fuse_lora(lora_scale=1.0, adapter_names=["bench"])
            pipe.unload_lora_weights()
            if torch.equal(before, pipe.transformer.blocks[0].attn1.to_q.weight):
                raise RuntimeError("the fused LoRA left the transformer's weights as they were")
    counter = enable_step_cache(pipe, cache)
    if recipe == "compile":
        compile_denoisers(pipe)
    sampler = VideoSampler(
        adapter_for(pipe, bucket.model_copy(update={"cache": cache}), device), cached=cache is not None
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for seed in range(videos):
        if counter is not None:
            counter.reset()
        started = time.perf_counter()
        sampler([PROMPT], [NEGATIVE], [seed])
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    result = Result(recipe, seconds, peak, *((counter.passes, counter.cached) if counter is not None else (0, 0)))
    del sampler, pipe
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def print_table(results: list[Result], title: str) -> None:
    print(title)
    header = ("recipe", "first video s", "next videos s", "vs baseline", "peak GiB", "cached passes")
    print(f"{header[0]:<10} {header[1]:>14} {header[2]:>14} {header[3]:>12} {header[4]:>9} {header[5]:>14}")
    baseline = None
    for r in results:
        steady = sum(r.seconds[1:]) / len(r.seconds[1:]) if len(r.seconds) > 1 else r.seconds[0]
        baseline = baseline or steady
        cached = f"{r.cached}/{r.passes}" if r.passes else "-"
        peak = f"{r.peak_gib:.1f}" if r.peak_gib is not None else "-"
        print(
            f"{r.recipe:<10} {r.seconds[0]:>14.2f} {steady:>14.2f} {steady / baseline:>11.2f}x {peak:>9} {cached:>14}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["real", "tiny"], help="default: real on CUDA, tiny elsewhere")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--videos", type=int, default=2, help="per recipe; the first one pays the compile")
    parser.add_argument("--cache-threshold", type=float, default=0.05)
    parser.add_argument("--lora-rank", type=int, default=32)
    parser.add_argument("--compile-on-cpu", action="store_true", help="the dry check compiles too (minutes)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = args.size or ("real" if device.type == "cuda" else "tiny")
    recipes = ["baseline", f"fbc:{args.cache_threshold:g}", "compile", "lora"]
    if size == "tiny" and device.type == "cpu" and not args.compile_on_cpu:
        recipes.remove("compile")

    with tempfile.TemporaryDirectory() as scratch:
        if size == "real":
            started = time.perf_counter()
            model = build_real_size_wan(Path(scratch) / "wan-1.3b-random")
            print(f"built a random-weight Wan 2.1 1.3B-size pipeline in {time.perf_counter() - started:.0f} s")
            height, width, frames, steps = args.height, args.width, args.frames, args.steps
            name = "wan2.1-t2v-1.3b (random weights)"
        else:
            model = ensure_tiny_model("tiny-wan")
            height, width, frames, steps = 32, 32, 5, 2
            name = "tiny-wan"
        bucket = BucketKey(model=name, height=height, width=width, num_frames=frames, num_inference_steps=steps,
                           guidance_scale=5.0)  # fmt: skip
        results = [run_recipe(r, model, device, bucket, max(1, args.videos), args.lora_rank) for r in recipes]
    where = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    title = f"{name}, {height}x{width}x{frames}, {steps} steps, CFG 5.0, {where}"
    if size == "tiny" or device.type == "cpu":
        title += " -- dry check: the script and engine calls work; these seconds are not figures"
    print_table(results, title)


if __name__ == "__main__":
    main()
