"""Embedded defaults: one command works on a laptop with nothing configured."""

DEFAULT_DB_URL = "sqlite:///reelbatch.db"
DEFAULT_OUTPUT = "outputs"
# Wall clock per job when not given: the cost model's estimate times a margin, never below a floor that covers
# starting the ranks and loading the pipeline.
JOB_TIMEOUT_MARGIN = 3.0
JOB_TIMEOUT_FLOOR_S = 900.0
