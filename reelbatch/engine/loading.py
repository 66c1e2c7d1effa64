"""Load a diffusers pipeline from a local folder, once per job, ready for deterministic inference."""

from __future__ import annotations

import os

import torch


def load_pipeline(
    model_path: str,
    device: torch.device,
    flow_shift: float | None = None,
    fp32_components: tuple[str, ...] | list[str] = (),
):
    """The folder's pipeline on ``device`` (bf16 on GPUs, fp32 on CPU), every module in eval mode.

    ``flow_shift``: the family's reference recipe when it differs from the folder's scheduler (UniPC calls it
    ``flow_shift``, FlowMatchEuler ``shift``); ``fp32_components`` are read from the checkpoint in fp32 even on
    GPUs (Wan's recipe keeps its VAE and CLIP image encoder in fp32), not rounded to bf16 and cast back.
    """
    # Weights come from a local folder only: a rank must never reach for a hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from diffusers import DiffusionPipeline

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    dtypes = {"default": dtype, **dict.fromkeys(fp32_components, torch.float32)}
    pipe = DiffusionPipeline.from_pretrained(model_path, torch_dtype=dtypes, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    for component in pipe.components.values():
        # Dropout left in training mode (UMT5's is on by default) makes two runs of one seed differ.
        if isinstance(component, torch.nn.Module):
            component.eval()
    if flow_shift is not None:
        pipe.scheduler = with_flow_shift(pipe.scheduler, flow_shift)
    return pipe.to(device)


def with_flow_shift(scheduler, shift: float):
    """The same scheduler with another shift (the parameter's name depends on the scheduler class)."""
    name = "flow_shift" if "flow_shift" in scheduler.config else "shift"
    return type(scheduler).from_config(scheduler.config, **{name: shift})
