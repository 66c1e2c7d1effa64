import os

import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank = dist.get_rank()
total = torch.tensor([float(rank + 1)])
dist.all_reduce(total)
print(f"rank {rank} sum {total.item():g}")
print(f"rank {rank} master_port {os.environ['MASTER_PORT']}")
dist.destroy_process_group()
