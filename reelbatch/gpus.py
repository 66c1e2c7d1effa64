"""This machine's GPUs, seen without torch, and how GPUs are lent in disjoint, aligned groups.

The bottom of the house: the planner (``planning.fleet``: where jobs would run on a fleet) and the orchestrator
(``infra.devices``: which devices a job gets now) both carve GPUs with ``GpuAllocator``, so a plan and a run agree.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path


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


class GpuAllocator:
    """Free GPUs of ``nodes`` nodes of ``gpus_per_node``; hands out disjoint groups (buddy-aligned when possible)."""

    def __init__(self, nodes: int, gpus_per_node: int) -> None:
        if nodes < 1 or gpus_per_node < 1:
            raise ValueError("nodes and gpus_per_node must be at least 1")
        self.nodes = nodes
        self.gpus_per_node = gpus_per_node
        self.free = [[True] * gpus_per_node for _ in range(nodes)]
        self.free_count = [gpus_per_node] * nodes

    def max_free(self) -> int:
        return max(self.free_count)

    def _enclosing_free(self, node: int, start: int, width: int) -> int:
        """Size of the largest fully free aligned block holding [start, start + width): what taking it would split."""
        size, g, free = width, self.gpus_per_node, self.free[node]
        while size * 2 <= g and g % (size * 2) == 0:
            parent = start - start % (size * 2)
            if not all(free[parent : parent + size * 2]):
                break
            size, start = size * 2, parent
        return size

    def allocate(self, width: int) -> tuple[int, tuple[int, ...]] | None:
        """A node and ``width`` free GPUs on it, or None when no node has that many free."""
        g = self.gpus_per_node
        if width < 1 or width > g:
            raise ValueError(f"a job of {width} GPUs does not fit a node of {g}")
        best: tuple | None = None
        for node in range(self.nodes):
            if self.free_count[node] < width:
                continue
            free = self.free[node]
            for start in range(0, g - width + 1, width):  # aligned blocks
                if all(free[start : start + width]):
                    key = (0, self._enclosing_free(node, start, width), self.free_count[node], node, start)
                    if best is None or key < best[0]:
                        best = (key, node, tuple(range(start, start + width)))
            if best is not None and best[1] == node:
                continue
            run = 0
            for index in range(g):  # any contiguous run, then any free GPUs
                run = run + 1 if free[index] else 0
                if run == width:
                    key = (1, 0, self.free_count[node], node, index)
                    if best is None or key < best[0]:
                        best = (key, node, tuple(range(index - width + 1, index + 1)))
                    break
            else:
                gpus = tuple(i for i in range(g) if free[i])[:width]
                key = (2, 0, self.free_count[node], node, 0)
                if best is None or key < best[0]:
                    best = (key, node, gpus)
        if best is None:
            return None
        _, node, gpus = best
        for index in gpus:
            self.free[node][index] = False
        self.free_count[node] -= width
        return node, gpus

    def release(self, node: int, gpus: Iterable[int]) -> None:
        for index in gpus:
            if self.free[node][index]:
                raise ValueError(f"GPU {index} of node {node} is already free")
            self.free[node][index] = True
            self.free_count[node] += 1


def partition_node(widths: Sequence[int], gpus_per_node: int) -> list[tuple[int, ...]]:
    """Disjoint GPU groups of one node for jobs of ``widths`` GPUs that run side by side (e.g. 4 x 2 on 8).

    Raises ValueError when they do not fit together. Widest first, buddy-aligned, in the order of ``widths``.
    """
    if sum(widths) > gpus_per_node:
        raise ValueError(f"jobs of {sum(widths)} GPUs in all do not fit a node of {gpus_per_node}")
    allocator = GpuAllocator(1, gpus_per_node)
    groups: dict[int, tuple[int, ...]] = {}
    for index in sorted(range(len(widths)), key=lambda i: -widths[i]):
        got = allocator.allocate(widths[index])
        if got is None:  # cannot happen when the sum fits: the fallback takes any free GPUs
            raise ValueError("no room")
        groups[index] = got[1]
    return [groups[i] for i in range(len(widths))]
