"""Step caching and compilation of a job's transformer(s), with diffusers' and torch's own machinery.

Step cache (``JobSpec.bucket.cache``, syntax in ``reelbatch/stepcache.py``): diffusers' cache hooks, turned on with
``transformer.enable_cache(FirstBlockCacheConfig(threshold=...))`` on every denoiser of the pipeline (Wan 2.2
A14B's two experts each get their own). First Block Cache keeps its state per *cache context*: the pipelines run
each pass in ``transformer.cache_context("cond")`` / ``("uncond")`` and so does the sampler (``pass_context``), one
sample at a time and one pass per forward, so every decision is taken on one sample's one pass:

* a video does not depend on the batch it lands in, nor on data parallelism (each rank caches its own samples);
* CFG parallel runs the conditional pass on one rank and the unconditional on the other: each decides exactly
  as one rank running both passes one after another does;
* sequence parallelism (Ulysses, ring) would give each rank a slice of the sequence and a decision of its own:
  the planner refuses it (rule ``cache_needs_whole_sequence``) and so does ``engine/checks.py``.

``ForwardCounter`` counts, per sample, the transformer passes and those the cache served (its remaining blocks
skipped); they come back in ``SampleResult`` and are recorded on the video. The counting hooks are diffusers
``ModelHook``s registered before the cache's, so the cache's hook wraps them: the tail block's counter runs only
when the block really computes.

Compile (``JobSpec.compile``): ``torch.compile`` once per job, after the cache hooks, on the transformer's repeated
blocks (diffusers' regional compilation: one block class compiled once, used by all its blocks), so every sample of
the job reuses the compiled code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from reelbatch.stepcache import cache_spec


@dataclass
class ForwardCounter:
    """Transformer passes of the current sample, and how many of them the step cache served."""

    passes: int = 0
    computed: int = 0

    def reset(self) -> None:
        self.passes = self.computed = 0

    @property
    def cached(self) -> int:
        return self.passes - self.computed


def denoisers(pipe) -> list[Any]:
    """The pipeline's transformer(s): ``transformer`` and, for two-expert models, ``transformer_2`` (diffusers
    models: ``Any``, since their cache and compile methods are not in torch's stubs)."""
    return [m for m in (getattr(pipe, "transformer", None), getattr(pipe, "transformer_2", None)) if m is not None]


def _tail_block(transformer: torch.nn.Module) -> torch.nn.Module:
    """The last transformer block, the one FirstBlockCache's tail hook guards: the last element of the last block
    list among the transformer's direct children (Wan: ``blocks``; HunyuanVideo: ``single_transformer_blocks``)."""
    lists = [child for child in transformer.children() if isinstance(child, torch.nn.ModuleList) and len(child)]
    if not lists:
        raise RuntimeError(f"{type(transformer).__name__}: no transformer block list to count the cache's work on")
    return lists[-1][-1]


def _counting_hooks(transformer: torch.nn.Module, counter: ForwardCounter) -> None:
    from diffusers.hooks import HookRegistry, ModelHook

    class _Count(ModelHook):
        def __init__(self, attribute: str) -> None:
            super().__init__()
            self.attribute = attribute

        @torch.compiler.disable
        def pre_forward(self, module, *args, **kwargs):
            setattr(counter, self.attribute, getattr(counter, self.attribute) + 1)
            return args, kwargs

    HookRegistry.check_if_exists_or_initialize(transformer).register_hook(_Count("passes"), "reelbatch_passes")
    HookRegistry.check_if_exists_or_initialize(_tail_block(transformer)).register_hook(
        _Count("computed"), "reelbatch_computed"
    )


def enable_step_cache(pipe, setting: str | None) -> ForwardCounter | None:
    """Turn the step cache ``setting`` on for every denoiser of ``pipe``; its counter, or None without a cache."""
    spec = cache_spec(setting)
    if spec is None:
        return None
    from diffusers.hooks import FirstBlockCacheConfig

    if spec.kind != "fbc":  # stepcache.CACHE_KINDS and this function grow together
        raise ValueError(f"step cache {setting!r}: the engine does not know {spec.kind!r}")
    counter = ForwardCounter()
    for transformer in denoisers(pipe):
        if not hasattr(transformer, "enable_cache"):
            raise ValueError(f"{type(transformer).__name__} has no diffusers cache support (CacheMixin)")
        _counting_hooks(transformer, counter)  # first: the cache's hooks then wrap them
        transformer.enable_cache(FirstBlockCacheConfig(threshold=spec.threshold))
    return counter


def start_sample(pipe) -> None:
    """Forget every cache state of the previous sample (what the pipeline's ``__call__`` does when it ends)."""
    pipe.maybe_free_model_hooks()


@contextlib.contextmanager
def pass_context(model: Any, name: str, cached: bool) -> Iterator[None]:
    """Run one pass (``cond`` / ``uncond``) of ``model`` in its own cache context when a step cache is on."""
    if not cached:
        yield
        return
    with model.cache_context(name):
        yield


def compile_denoisers(pipe) -> None:
    """``torch.compile`` each denoiser once (its repeated blocks where diffusers names them, else the whole module);
    the first forward pays the compile, every later one in the job reuses it."""
    for transformer in denoisers(pipe):
        if getattr(transformer, "_repeated_blocks", None):
            transformer.compile_repeated_blocks(fullgraph=False, dynamic=False)
        else:
            transformer.compile(dynamic=False)
