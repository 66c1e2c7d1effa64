"""Runs, jobs and samples in SQL (SQLite or PostgreSQL).

Every write is its own short transaction and every count is derived from rows, so several collectors can write the
results of different jobs of one run at the same time. Nothing here imports torch or Prefect.

- ``models``: the tables. ``schema``: the Alembic migrations' revisions and the schema checks.
- ``engine``: the SQLAlchemy engine and its SQLite settings. ``database``: ``Database``, the engine and sessions of one
  URL, with every read and write below as a method.
- Writes: ``runs``, ``jobs``, ``samples``. Reads: ``queries``. The manifest inbox: ``inbox``. Videos being made,
  one maker each: ``claims``.
"""

from reelbatch.infra.db.claims import Claim
from reelbatch.infra.db.database import Database, upgrade_database
from reelbatch.infra.db.engine import SQLITE_BUSY_TIMEOUT_MS
from reelbatch.infra.db.jobs import LAUNCH_ID_MAX_LENGTH, NO_RESULT_ERROR
from reelbatch.infra.db.models import (
    INBOX_STATUSES,
    JOB_STATUSES,
    NAMING_CONVENTION,
    RUN_STATUSES,
    SAMPLE_STATUSES,
    Base,
    InboxManifestRecord,
    JobAttemptRecord,
    JobRecord,
    RunRecord,
    SampleRecord,
    UTCDateTime,
    utcnow,
)
from reelbatch.infra.db.queries import DoneOutput, RunSummary
from reelbatch.infra.db.runs import library_versions
from reelbatch.infra.db.samples import ReusedSample
from reelbatch.infra.db.schema import MIGRATIONS_DIR, SchemaOutOfDate, alembic_config, head_revision

__all__ = [
    "INBOX_STATUSES",
    "JOB_STATUSES",
    "LAUNCH_ID_MAX_LENGTH",
    "MIGRATIONS_DIR",
    "NAMING_CONVENTION",
    "NO_RESULT_ERROR",
    "RUN_STATUSES",
    "SAMPLE_STATUSES",
    "SQLITE_BUSY_TIMEOUT_MS",
    "Base",
    "Claim",
    "Database",
    "DoneOutput",
    "InboxManifestRecord",
    "JobAttemptRecord",
    "JobRecord",
    "ReusedSample",
    "RunRecord",
    "RunSummary",
    "SampleRecord",
    "SchemaOutOfDate",
    "UTCDateTime",
    "alembic_config",
    "head_revision",
    "library_versions",
    "upgrade_database",
    "utcnow",
]
