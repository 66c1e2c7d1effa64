"""What a run does when nobody says otherwise.

One place for the defaults the command line, the generate-dataset flow and `reelbatch resume` share, so a
changed default cannot leave one of them behind. Plain values only: everything may import this module.
"""

from typing import Final, Literal

# Planning
MAX_SAMPLES_PER_JOB = 32  # largest job, in samples
GPU_MEMORY_GIB = 80.0  # memory per GPU the planner may use
Objective = Literal["throughput", "latency"]
OBJECTIVES: Final = ("throughput", "latency")
OBJECTIVE: Final[Objective] = "throughput"

# Packing: how samples are cut into jobs
JOB_MINUTES = 30.0  # target wall time of one job, model load included
PADDING = "pad"
JOB_WIDTH = "group"

# Fleet estimates of `plan` and `simulate`
FLEET_NODES = 1
FLEET_GPU = "h100"
WEIGHTS_STORAGE = "local"
SIMULATE_GPUS_PER_NODE = 8
