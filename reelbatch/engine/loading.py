"""Load a diffusers pipeline from a local folder, once per job, ready for deterministic inference."""

from __future__ import annotations

import os

import torch


def load_pipeline(model_path: str, device: torch.device):
    # Weights come from a local folder only: a rank must never reach for a hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from diffusers import DiffusionPipeline

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    pipe = DiffusionPipeline.from_pretrained(model_path, torch_dtype=dtype, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    for component in pipe.components.values():
        # Dropout left in training mode (UMT5's is on by default) makes two runs of one seed differ.
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipe.to(device)
