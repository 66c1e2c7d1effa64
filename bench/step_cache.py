"""Step cache and compile on a tiny model, in one process: the transformer passes the cache serves per threshold,
how far the video moves from the uncached one, and the seconds per video (compiled: first video, compile included,
and the next one).

    .venv/bin/python bench/step_cache.py                          # tiny-wan, 8 steps, thresholds 0 .. 0.5
    .venv/bin/python bench/step_cache.py --model tiny-hunyuan --steps 12 --thresholds 0 0.1 0.3
    .venv/bin/python bench/step_cache.py --compile                # + the same with torch.compile (slow on CPU)

Tiny random-weight models compute almost nothing, so their seconds say little about a real model; the cached share
of the passes (what ``samples.cached_forwards / transformer_forwards`` records) and the frame difference are the
figures to read. docs/COST_MODEL.md has the published timings the cost model uses instead.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from reelbatch.engine.adapters import adapter_for
from reelbatch.engine.caching import compile_denoisers, enable_step_cache
from reelbatch.engine.loading import load_pipeline
from reelbatch.engine.sampler import VideoSampler
from reelbatch.models.tiny import ensure_tiny_model
from reelbatch.schemas import BucketKey


def videos(model: str, steps: int, cache: str | None, compiled: bool, count: int) -> tuple[list, list[float], tuple]:
    pipe = load_pipeline(str(ensure_tiny_model(model)), torch.device("cpu"))
    counter = enable_step_cache(pipe, cache)
    if compiled:
        compile_denoisers(pipe)
    bucket = BucketKey(model=model, height=32, width=48, num_frames=5, num_inference_steps=steps, guidance_scale=5.0,
                       sequence_batch=True, cache=cache)  # fmt: skip
    sampler = VideoSampler(adapter_for(pipe, bucket, torch.device("cpu")), cached=counter is not None)
    frames, seconds = [], []
    for seed in range(count):
        if counter is not None:
            counter.reset()
        started = time.perf_counter()
        frames.append(sampler(["a cat walks along a street"], ["blurry"], [seed])[0])
        seconds.append(time.perf_counter() - started)
    counts = (counter.passes, counter.cached) if counter is not None else (0, 0)
    return frames, seconds, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-wan")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.3, 0.5])
    parser.add_argument("--compile", action="store_true", help="also run each setting compiled")
    args = parser.parse_args()
    reference, plain_seconds, _ = videos(args.model, args.steps, None, False, 2)
    print(f"{args.model}, {args.steps} steps, CFG on: uncached {plain_seconds[1]:.3f} s/video")
    print("cache       compiled  passes  cached  max|frame diff|  s/video (1st, 2nd)")
    for compiled in (False, True) if args.compile else (False,):
        for threshold in args.thresholds:
            cache = f"fbc:{threshold}"
            frames, seconds, (passes, cached) = videos(args.model, args.steps, cache, compiled, 2)
            diff = max(float(np.abs(a - b).max()) for a, b in zip(frames, reference, strict=True))
            timing = f"{seconds[0]:.3f}, {seconds[1]:.3f}"
            print(f"{cache:<11} {compiled!s:<9} {passes:>6}  {cached:>6}  {diff:>15.5f}  {timing}")
        torch._dynamo.reset()


if __name__ == "__main__":
    main()
