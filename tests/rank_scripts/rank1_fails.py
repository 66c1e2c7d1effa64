"""Rank 1 exits with code 3; rank 0 stays stuck, like a rank waiting in a collective forever."""

import sys
import time

import torch.distributed as dist
from rank_scripts.common import rank, write_pid

write_pid(f"rank{rank()}")
dist.init_process_group("gloo")
if rank() == 1:
    print("rank 1 giving up", flush=True)
    sys.exit(3)
# Not dist.barrier(): gloo notices the dead peer and fails rank 0 as well, which can make
# torchrun report rank 0 as the root cause (its failure timestamps have 1 s resolution).
time.sleep(600)
