"""Embedded defaults: one command works on a laptop with nothing configured."""

DEFAULT_DB_URL = "sqlite:///reelbatch.db"
DEFAULT_OUTPUT = "outputs"
