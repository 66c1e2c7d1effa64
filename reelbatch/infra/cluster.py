"""Facts about the machine the orchestrator runs on."""

from __future__ import annotations

import os
from pathlib import Path

CPU_DEFAULT_RANKS = 2  # without CUDA, ranks run on the CPU with gloo: two exercise every parallel path


def visible_gpu_names() -> list[str]:
    """The CUDA devices this process may use, as CUDA_VISIBLE_DEVICES names them (indices by default), without
    importing torch (planning must stay light)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    return [str(index) for index in range(machine_gpus())]


def machine_gpus() -> int:
    """Every NVIDIA GPU of the machine, whatever this process's CUDA_VISIBLE_DEVICES says."""
    gpus = Path("/proc/driver/nvidia/gpus")
    return len(list(gpus.iterdir())) if gpus.is_dir() else 0


def visible_gpus() -> int:
    """How many CUDA GPUs this process may use."""
    return len(visible_gpu_names())


def default_ranks_per_node() -> int:
    return visible_gpus() or CPU_DEFAULT_RANKS
