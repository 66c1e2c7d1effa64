"""What a run does when nobody says otherwise.

One place for the defaults the command line, the generate-dataset flow and `reelbatch resume` share, so a
changed default cannot leave one of them behind. Plain values only: everything may import this module.
"""

from typing import Final, Literal

# Where a run writes when nothing is configured: one command works on a laptop.
DEFAULT_DB_URL = "sqlite:///reelbatch.db"
DEFAULT_OUTPUT = "outputs"
GPUS_PER_NODE = 2  # the flow's ranks per node when not given (the CLI asks the machine: visible GPUs, else 2)

# Planning
MAX_SAMPLES_PER_JOB = 32  # largest job, in samples
GPU_MEMORY_GIB = 80.0  # memory per GPU the planner may use
Objective = Literal["throughput", "latency"]
OBJECTIVES: Final[tuple[Objective, ...]] = ("throughput", "latency")
OBJECTIVE: Final[Objective] = "throughput"

# Packing: how samples are cut into jobs
JOB_MINUTES = 30.0  # target wall time of one job, model load included
PADDING: Final = "pad"
JOB_WIDTH: Final = "group"

# Fleet estimates of `plan` and `simulate`
FLEET_NODES = 1
FLEET_GPU = "h100"
WEIGHTS_STORAGE: Final = "local"
SIMULATE_GPUS_PER_NODE = 8

# Wall clock per job when not given: the cost model's estimate times a margin, never below a floor that covers
# starting the ranks and loading the pipeline.
JOB_TIMEOUT_MARGIN = 3.0
JOB_TIMEOUT_FLOOR_S = 900.0

# --- Recording a run (infra/db/jobs.py, tasks/dispatch.py) ---
# Jobs written per transaction when a run is recorded, longest first; each batch may start once committed. The
# first batch is small so the first jobs start after a fraction of a second; batches then double up to the most,
# which keeps every transaction (and SQLite's write lock, which running jobs wait for) well under a second.
RECORD_FIRST_BATCH_JOBS = 8
RECORD_BATCH_JOBS = 256
