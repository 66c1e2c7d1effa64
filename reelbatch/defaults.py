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

# Fleet estimates of `plan` and `simulate` (`plan` then plans for that fleet's GPUs, whatever machine plans)
FLEET_NODES = 1
FLEET_GPU = "h100"
WEIGHTS_STORAGE: Final = "local"
FLEET_GPUS_PER_NODE = 8

# Wall clock per job when not given: the cost model's estimate times a margin, never below a floor that covers
# starting the ranks and loading the pipeline.
JOB_TIMEOUT_MARGIN = 3.0
JOB_TIMEOUT_FLOOR_S = 900.0

# --- Output for logs and big outputs (`reelbatch run` away from a terminal; dataset exports) ---
# Away from a terminal, `run` prints a progress line per finished job and at least this often in between.
PROGRESS_LOG_INTERVAL_S = 30.0
LogFormat = Literal["text", "json"]  # json: each progress line and the final report as one JSON object
LOG_FORMAT: Final[LogFormat] = "text"
# Sample rows read from the database, and written, per chunk by the exports: memory stays flat with the run's size.
EXPORT_CHUNK_ROWS = 10_000
# Cards per gallery page: the page of a 1M-video run would not open in a browser.
GALLERY_PAGE_SIZE = 500

# Claims on videos being made (one video, one maker across concurrent runs into one output and database): the
# lease a job holds on the samples it makes, renewed every third of it while its ranks run, so a maker that was
# killed frees its videos within one lease; and how often a run waiting for another run's videos looks again.
CLAIM_LEASE_S = 120.0
CLAIM_RENEWALS_PER_LEASE = 3
CLAIM_POLL_S = 5.0
CLAIM_LEASE_ENV = "REELBATCH_CLAIM_LEASE_S"  # overrides the lease of every run of the process (tests, operators)

# --- Stopping and heartbeats (infra/shutdown.py, infra/db/runs.py) ---
# A running run renews runs.heartbeat_at this often (seconds; REELBATCH_HEARTBEAT_S overrides it, for the orchestrator
# and for whoever reads the run). A `running` run whose heartbeat is older than RUN_STALE_AFTER_BEATS intervals is
# shown as `interrupted`: its orchestrator died without a word (SIGKILL, power loss).
RUN_HEARTBEAT_S = 30.0
RUN_STALE_AFTER_BEATS = 4
HEARTBEAT_ENV = "REELBATCH_HEARTBEAT_S"

# --- Recording a run (infra/db/jobs.py, tasks/dispatch.py) ---
# Jobs written per transaction when a run is recorded, longest first; each batch may start once committed. The
# first batch is small so the first jobs start after a fraction of a second; batches then double up to the most,
# which keeps every transaction (and SQLite's write lock, which running jobs wait for) well under a second.
RECORD_FIRST_BATCH_JOBS = 8
RECORD_BATCH_JOBS = 256

# --- Speed-ups (reelbatch/stepcache.py, engine/caching.py, planning/cost.py) ---
# A step cache named without its threshold (`fbc`) takes diffusers' own FirstBlockCacheConfig default.
FBC_THRESHOLD = 0.05
CompileMode = Literal["auto", "on", "off"]
COMPILE_MODES: Final[tuple[CompileMode, ...]] = ("auto", "on", "off")
# auto: a job's transformer is compiled only where the cost model says the compile time pays back (planning/cost.py).
COMPILE: Final[CompileMode] = "auto"
