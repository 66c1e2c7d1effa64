"""Where a rank sits in its job's (dp, cfg, ulysses, ring) grid, and the process groups it talks over.

Rank order is dp-major: ``rank = ((dp_i * cfg + cfg_i) * ulysses + u_i) * ring + r_i``, so the ranks that
exchange activations every step (a CFG pair, a sequence group) are neighbours, which keeps them on one node.

All groups come from one ``DeviceMesh`` over that layout. Its dimensions are named ``dp, cfg, ring, ulysses``
(ring before ulysses) although ring is the innermost degree of the rank order: diffusers' context parallelism
slices ``mesh["ring", "ulysses"]``, and torch only slices dimensions in the mesh's own order. The mesh tensor is
the rank grid with its last two axes swapped, so the layout (who is grouped with whom) is exactly the rank order
above; only the order of the dimension names differs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from reelbatch.schemas import ParallelPlan

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

MESH_DIM_NAMES = ("dp", "cfg", "ring", "ulysses")


@dataclass
class ParallelContext:
    plan: ParallelPlan
    rank: int
    world_size: int
    device: torch.device
    dp_rank: int
    cfg_rank: int
    sp_rank: int  # position in the sequence group: u_i * ring + r_i
    cfg_group: object | None  # torch ProcessGroup of this rank's CFG pair (None when cfg == 1)
    mesh: DeviceMesh | None = None  # torch DeviceMesh over the whole job (None for a single process)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def sequence_parallel(self) -> bool:
        return self.plan.ulysses * self.plan.ring > 1

    @property
    def writes_outputs(self) -> bool:
        """One rank per data-parallel slice decodes and writes; its CFG/sequence partners hold the same latents."""
        return self.cfg_rank == 0 and self.sp_rank == 0

    def sequence_mesh(self):
        """The 2-D ``(ring, ulysses)`` mesh of this rank's sequence group, as diffusers' ContextParallelConfig wants."""
        if self.mesh is None:
            raise RuntimeError("sequence parallel needs a process group: the job runs as a single process")
        return self.mesh["ring", "ulysses"]


def device_for_rank() -> torch.device:
    """CUDA device of this rank when there is a GPU, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _coordinates(rank: int, plan: ParallelPlan) -> tuple[int, int, int]:
    sp = plan.ulysses * plan.ring
    return rank // (plan.cfg * sp), (rank // sp) % plan.cfg, rank % sp


def mesh_layout(plan: ParallelPlan) -> torch.Tensor:
    """Global ranks laid out as ``(dp, cfg, ring, ulysses)``; entry [d, c, r, u] is the rank of that coordinate."""
    grid = torch.arange(plan.world_size, dtype=torch.int).view(plan.dp, plan.cfg, plan.ulysses, plan.ring)
    return grid.permute(0, 1, 3, 2).contiguous()


def join_process_group(collective_timeout_s: float) -> None:
    """Join torchrun's process group (gloo on CPU, NCCL on CUDA) once per launch; a no-op for a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 or dist.is_initialized():
        return
    device = device_for_rank()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # The timeout must outlast the longest phase one rank spends alone (VAE decode, writing files).
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=collective_timeout_s)
    )


def context_for(plan: ParallelPlan) -> ParallelContext:
    """This rank's place in ``plan`` and the groups it talks over, in the process group already joined."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if plan.world_size != world_size:
        raise RuntimeError(f"plan {plan} needs {plan.world_size} ranks but the job was launched with {world_size}")
    device = device_for_rank()
    cfg_group = mesh = None
    if world_size > 1:
        from torch.distributed.device_mesh import DeviceMesh

        # Every rank builds the same mesh (its groups are created collectively, in the same order everywhere).
        mesh = DeviceMesh(device.type, mesh_layout(plan), mesh_dim_names=MESH_DIM_NAMES)
        if plan.cfg > 1:
            cfg_group = mesh.get_group("cfg")
    dp_i, cfg_i, sp_i = _coordinates(rank, plan)
    return ParallelContext(plan, rank, world_size, device, dp_i, cfg_i, sp_i, cfg_group, mesh)


def init_parallel(plan: ParallelPlan, collective_timeout_s: float) -> ParallelContext:
    """Join the job's process group (torchrun's environment) or run as a single process without one."""
    join_process_group(collective_timeout_s)
    return context_for(plan)


def _rank_of(dp_i: int, cfg_i: int, sp_i: int, plan: ParallelPlan) -> int:
    return (dp_i * plan.cfg + cfg_i) * plan.ulysses * plan.ring + sp_i


def shutdown(ctx: ParallelContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
