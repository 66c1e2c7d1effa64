"""Where a rank sits in its job's (dp, cfg, ulysses, ring) grid, and the process groups it talks over.

Rank order is dp-major: ``rank = ((dp_i * cfg + cfg_i) * ulysses + u_i) * ring + r_i``, so the ranks that
exchange activations every step (a CFG pair, a sequence group) are neighbours, which keeps them on one node.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from reelbatch.schemas import ParallelPlan


@dataclass
class ParallelContext:
    plan: ParallelPlan
    rank: int
    world_size: int
    device: torch.device
    dp_rank: int
    cfg_rank: int
    sp_rank: int
    cfg_group: object | None  # torch ProcessGroup of this rank's CFG pair (None when cfg == 1)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def writes_outputs(self) -> bool:
        """One rank per data-parallel slice decodes and writes; its CFG/sequence partners hold the same latents."""
        return self.cfg_rank == 0 and self.sp_rank == 0


def _coordinates(rank: int, plan: ParallelPlan) -> tuple[int, int, int]:
    sp = plan.ulysses * plan.ring
    return rank // (plan.cfg * sp), (rank // sp) % plan.cfg, rank % sp


def init_parallel(plan: ParallelPlan, collective_timeout_s: float) -> ParallelContext:
    """Join the job's process group (torchrun's environment) or run as a single process without one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if plan.world_size != world_size:
        raise RuntimeError(f"plan {plan} needs {plan.world_size} ranks but the job was launched with {world_size}")

    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"

    cfg_group = None
    if world_size > 1:
        # The timeout must outlast the longest phase one rank spends alone (VAE decode, writing files).
        dist.init_process_group(backend, timeout=timedelta(seconds=collective_timeout_s))
        # Every rank must take part in creating every group, in the same order.
        for dp_i in range(plan.dp):
            for sp_i in range(plan.ulysses * plan.ring):
                members = [_rank_of(dp_i, c, sp_i, plan) for c in range(plan.cfg)]
                group = dist.new_group(members) if plan.cfg > 1 else None
                if rank in members:
                    cfg_group = group
    dp_i, cfg_i, sp_i = _coordinates(rank, plan)
    return ParallelContext(plan, rank, world_size, device, dp_i, cfg_i, sp_i, cfg_group)


def _rank_of(dp_i: int, cfg_i: int, sp_i: int, plan: ParallelPlan) -> int:
    return (dp_i * plan.cfg + cfg_i) * plan.ulysses * plan.ring + sp_i


def shutdown(ctx: ParallelContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
