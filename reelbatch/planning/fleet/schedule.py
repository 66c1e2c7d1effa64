"""A fleet schedule: which node, which GPUs (``CUDA_VISIBLE_DEVICES``) and when, for every job of a plan.

Jobs wait in one queue, longest first; whenever GPUs free up, the longest waiting job that fits starts (shorter
jobs fill groups a long one cannot use). A job gets an aligned block of GPUs from ``reelbatch.gpus.GpuAllocator``
(buddy style: a 2-GPU job on GPUs 0-1, 2-3, ...), taken where it splits the smallest free block, so wide jobs
still find room later. GPU sets of jobs on a node are disjoint at every moment (``Schedule.check``). There are no
reservations: a wide job that is the longest waiting one but does not fit yet lets shorter narrow jobs start
before it.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise

from reelbatch.gpus import GpuAllocator
from reelbatch.planning.jobs import RunPlan


@dataclass(frozen=True)
class FleetJob:
    job_id: str
    gpus: int  # GPUs the job holds (its world size; a whole node for single-prompt scripts)
    seconds: float


@dataclass(frozen=True)
class Placement:
    job_id: str
    node: int
    gpus: tuple[int, ...]
    start: float
    end: float

    @property
    def cuda_visible_devices(self) -> str:
        return ",".join(map(str, self.gpus))


@dataclass
class Schedule:
    nodes: int
    gpus_per_node: int
    placements: list[Placement]

    @property
    def makespan(self) -> float:
        return max((p.end for p in self.placements), default=0.0)

    @property
    def busy_gpu_seconds(self) -> float:
        return sum((p.end - p.start) * len(p.gpus) for p in self.placements)

    def utilization(self) -> float:
        total = self.makespan * self.nodes * self.gpus_per_node
        return self.busy_gpu_seconds / total if total else 0.0

    def check(self) -> None:
        """Raise AssertionError unless every job's GPUs exist and no GPU runs two jobs at once."""
        by_gpu: dict[tuple[int, int], list[tuple[float, float, str]]] = {}
        for p in self.placements:
            assert 0 <= p.node < self.nodes and len(set(p.gpus)) == len(p.gpus), p
            for gpu in p.gpus:
                assert 0 <= gpu < self.gpus_per_node, p
                by_gpu.setdefault((p.node, gpu), []).append((p.start, p.end, p.job_id))
        for (node, gpu), spans in by_gpu.items():
            spans.sort()
            for (_, end, first), (start, _, second) in pairwise(spans):
                assert start >= end - 1e-9, f"node {node} GPU {gpu}: {first} and {second} overlap"


def schedule_jobs(
    jobs: Sequence[FleetJob], nodes: int, gpus_per_node: int, on_start: Callable[[Placement], None] | None = None
) -> Schedule:
    """Event simulation: longest waiting job that fits starts whenever GPUs are free; returns every placement."""
    allocator = GpuAllocator(nodes, gpus_per_node)
    queues: dict[int, deque[tuple[float, int, FleetJob]]] = {}
    for index, job in sorted(enumerate(jobs), key=lambda item: (-item[1].seconds, item[0])):
        if job.gpus > gpus_per_node:
            raise ValueError(f"job {job.job_id} needs {job.gpus} GPUs; a node has {gpus_per_node}")
        queues.setdefault(job.gpus, deque()).append((job.seconds, index, job))
    running: list[tuple[float, int, int, tuple[int, ...]]] = []
    placements: list[Placement] = []
    now = 0.0
    sequence = 0
    while queues or running:
        while queues:
            room = allocator.max_free()
            heads = [(q[0][0], -q[0][1], width) for width, q in queues.items() if width <= room]
            if not heads:
                break
            _, _, width = max(heads)
            got = allocator.allocate(width)
            if got is None:
                break
            seconds, _, job = queues[width].popleft()
            if not queues[width]:
                del queues[width]
            node, gpus = got
            placement = Placement(job.job_id, node, gpus, now, now + seconds)
            placements.append(placement)
            if on_start:
                on_start(placement)
            heapq.heappush(running, (placement.end, sequence, node, gpus))
            sequence += 1
        if not running:
            break
        now, _, node, gpus = heapq.heappop(running)
        allocator.release(node, gpus)
        while running and running[0][0] <= now:
            _, _, node, gpus = heapq.heappop(running)
            allocator.release(node, gpus)
    return Schedule(nodes, gpus_per_node, placements)


def makespan_seconds(run_plan: RunPlan, nodes: int, gpus_per_node: int) -> float:
    """Expected makespan of a packed plan's jobs (their ``estimated_seconds``) on the fleet."""
    jobs = [FleetJob(j.job_id, j.plan.world_size, j.estimated_seconds) for j in run_plan.jobs]
    return schedule_jobs(jobs, nodes, gpus_per_node).makespan
