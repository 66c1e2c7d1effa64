"""Sequence parallel for the native backend: diffusers context parallelism on this job's sequence group.

Each rank of a sequence group (ulysses x ring ranks sharing dp and cfg coordinates) holds the same latents and
text conditioning; the transformer's context-parallel plan splits the video tokens over the group at the model's
entry and gathers them at its exit, so every rank gets the whole noise prediction back, and the rest of the loop
(CFG exchange, scheduler step) is unchanged.

- Wan family: diffusers' own ``WanTransformer3DModel._cp_plan`` (RoPE and the first block's input split, ``proj_out``
  gathered; cross-attention to the text is local).
- HunyuanVideo family: our plan and processor in :mod:`reelbatch.engine.hunyuan_cp` (ulysses only).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch

from reelbatch.contract import emit
from reelbatch.engine.parallel import ParallelContext

if TYPE_CHECKING:
    from diffusers.models.modeling_utils import ModelMixin

# diffusers' ring attention needs a kernel that returns the log-sum-exp; torch's SDPA ("native") does not.
RING_ATTENTION_BACKEND = "_native_cudnn"


@contextlib.contextmanager
def cpu_accelerator_count(device: torch.device):
    """On CPU only: make ``torch.accelerator.device_count()`` say 1 while diffusers sets up context parallelism.

    ``ModelMixin._resolve_parallel_config`` computes ``torch.device(device_type, rank % device_count())``, a
    division by zero on a machine without accelerators. With 1 it yields ``cpu:0``, only recorded in the config.
    Nothing else is patched, and only for the duration of the call.
    """
    if device.type != "cpu":
        yield
        return
    original = torch.accelerator.device_count
    torch.accelerator.device_count = lambda *args, **kwargs: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = original


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def _transformers(pipe) -> list[ModelMixin]:
    """Every denoiser of the pipeline (Wan2.2 A14B has two experts: transformer and transformer_2)."""
    return [m for name in ("transformer", "transformer_2") if (m := getattr(pipe, name, None)) is not None]


def enable_sequence_parallel(pipe, family: str, ctx: ParallelContext) -> None:
    """Split each transformer's sequence over this rank's (ring, ulysses) group; a no-op without sequence parallel."""
    if not ctx.sequence_parallel:
        return
    from diffusers.models import ContextParallelConfig

    plan = ctx.plan
    if plan.ring > 1 and ctx.device.type != "cuda":
        raise RuntimeError(f"ring={plan.ring}: ring attention needs CUDA; use ring=1 on CPU")
    mesh = ctx.sequence_mesh()
    for transformer in _transformers(pipe):
        cp_plan = None  # the model's own _cp_plan
        if family == "hunyuan" and type(transformer).__name__ == "HunyuanVideoTransformer3DModel":
            from reelbatch.engine.hunyuan_cp import prepare_hunyuan_video

            cp_plan = prepare_hunyuan_video(transformer)
        elif getattr(transformer, "_cp_plan", None) is None:
            raise RuntimeError(
                f"{type(transformer).__name__} has no context-parallel plan in diffusers "
                f"{_diffusers_version()}; use ulysses=1, ring=1 (dp/cfg) for this model"
            )
        if plan.ring > 1:
            transformer.set_attention_backend(RING_ATTENTION_BACKEND)
        config = ContextParallelConfig(ulysses_degree=plan.ulysses, ring_degree=plan.ring, mesh=mesh)
        with cpu_accelerator_count(ctx.device):
            transformer.enable_parallelism(config=config, cp_plan=cp_plan)
        _report_first_split(transformer, ctx)
    emit("sequence_parallel", rank=ctx.rank, ulysses=plan.ulysses, ring=plan.ring, group=mesh.mesh.flatten().tolist())


def _report_first_split(transformer: torch.nn.Module, ctx: ParallelContext) -> None:
    """Emit, once, how many video tokens this rank's first context-parallel attention really receives."""
    attention = next(
        (m for m in transformer.modules() if getattr(getattr(m, "processor", None), "_parallel_config", None)), None
    )
    if attention is None:
        raise RuntimeError(f"{type(transformer).__name__}: enable_parallelism left no attention context-parallel")

    def hook(module, args, kwargs):
        hidden_states = args[0] if args else kwargs["hidden_states"]
        emit("sequence_split", rank=ctx.rank, model=type(transformer).__name__, local_tokens=hidden_states.shape[1])
        handle.remove()

    handle = attention.register_forward_pre_hook(hook, with_kwargs=True)
