"""Embedded defaults: one command works on a laptop with nothing configured."""

DEFAULT_DB_URL = "sqlite:///reelbatch.db"
DEFAULT_OUTPUT = "outputs"
DEFAULT_JOB_TIMEOUT_S = 6 * 3600.0  # wall clock per job; generous until the cost model sizes it
