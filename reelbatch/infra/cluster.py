"""Facts about the machine the orchestrator runs on."""

from __future__ import annotations

from reelbatch.gpus import visible_gpus

CPU_DEFAULT_RANKS = 2  # without CUDA, ranks run on the CPU with gloo: two exercise every parallel path


def default_ranks_per_node() -> int:
    return visible_gpus() or CPU_DEFAULT_RANKS
