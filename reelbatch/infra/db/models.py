"""The tables: runs, their jobs, samples, job attempts and inbox manifests.

The schema is owned by the Alembic environment in ``reelbatch/infra/migrations``; these models must stay in step
with its revisions (a test compares them).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# interrupted: stopped by a signal, or found running with a stale heartbeat (its orchestrator died); resumable.
RUN_STATUSES = ("pending", "running", "done", "failed", "partial", "interrupted")
JOB_STATUSES = ("pending", "running", "done", "failed")
SAMPLE_STATUSES = ("pending", "running", "done", "failed", "rejected")
INBOX_STATUSES = ("running", "processed", "failed")

# Explicit names make the migrations deterministic and let later revisions drop or alter constraints by name.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite hands back naive values otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: reelbatch stores timezone-aware UTC datetimes only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _status_check(statuses: tuple[str, ...]) -> CheckConstraint:
    allowed = ", ".join(f"'{status}'" for status in statuses)
    return CheckConstraint(f"status IN ({allowed})", name="status")


class Base(DeclarativeBase):
    # Every model here maps one Table made from its __tablename__ (DeclarativeBase types it as any FromClause).
    __table__: ClassVar[Table]
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class RunRecord(Base):
    __tablename__ = "runs"
    __table_args__ = (_status_check(RUN_STATUSES),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(String(16))
    manifest_source: Mapped[str] = mapped_column(Text)
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    output_root: Mapped[str] = mapped_column(Text)
    gpus_per_node: Mapped[int]
    params: Mapped[dict[str, Any]]
    library_versions: Mapped[dict[str, Any]]
    rows_total: Mapped[int]
    rows_accepted: Mapped[int]
    rows_rejected: Mapped[int]
    # Revision 0006: renewed by the orchestrator while it runs; a running run with a stale one has died.
    heartbeat_at: Mapped[datetime | None]


class JobRecord(Base):
    __tablename__ = "jobs"
    __table_args__ = (_status_check(JOB_STATUSES), Index("ix_jobs_run_id", "run_id"))

    id: Mapped[str] = mapped_column(String, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    model: Mapped[str]
    height: Mapped[int]
    width: Mapped[int]
    num_frames: Mapped[int]
    num_inference_steps: Mapped[int]
    guidance_scale: Mapped[float]
    embedded_guidance_scale: Mapped[float | None]
    sequence_batch: Mapped[bool]
    dp: Mapped[int]
    cfg: Mapped[int]
    ulysses: Mapped[int]
    ring: Mapped[int]
    world_size: Mapped[int]
    backend: Mapped[str] = mapped_column(String(32), default="native", server_default="native")
    samples_count: Mapped[int]
    padded_slots: Mapped[int]
    tokens: Mapped[int]
    status: Mapped[str] = mapped_column(String(16))
    returncode: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(Text)
    log_path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    seconds: Mapped[float | None]
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    # Tag of the torchrun launch running (or that last ran) this job; revision 0002.
    launch_id: Mapped[str | None] = mapped_column(String(32))
    # Revision 0005: two-expert guidance, image conditioning, and the resolved recipe the job ran with.
    guidance_scale_2: Mapped[float | None]
    conditioning: Mapped[str] = mapped_column(String(32), default="text", server_default="text")
    fps: Mapped[int | None]
    flow_shift: Mapped[float | None]
    # Revision 0007_step_cache: the step cache of the job's bucket (NULL: none), whether its transformer was compiled.
    cache: Mapped[str | None] = mapped_column(String(64))
    compiled: Mapped[bool] = mapped_column(default=False, server_default=false())
    # Revision 0008_lora: the LoRA adapter fused for the whole job (content hash) and its scale.
    lora_sha256: Mapped[str | None] = mapped_column(String(64))
    lora_scale: Mapped[float | None]


class SampleRecord(Base):
    __tablename__ = "samples"
    __table_args__ = (
        _status_check(SAMPLE_STATUSES),
        # Rejected rows have no sample_id; NULLs are distinct in unique constraints on both backends.
        UniqueConstraint("run_id", "sample_id"),
        Index("ix_samples_run_id_row_video_index", "run_id", "row", "video_index"),
        Index("ix_samples_job_id", "job_id"),
        Index("ix_samples_sample_id", "sample_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    sample_id: Mapped[str | None]
    row: Mapped[int]
    row_id: Mapped[str | None]
    video_index: Mapped[int] = mapped_column(default=0)
    prompt: Mapped[str] = mapped_column(Text)
    negative_prompt: Mapped[str] = mapped_column(Text, default="")
    # Generation parameters are nullable because a rejected row may have had no valid value for them.
    model: Mapped[str | None]
    height: Mapped[int | None]
    width: Mapped[int | None]
    num_frames: Mapped[int | None]
    num_inference_steps: Mapped[int | None]
    guidance_scale: Mapped[float | None]
    embedded_guidance_scale: Mapped[float | None]
    sequence_batch: Mapped[bool | None]
    seed: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    reject_rule: Mapped[str | None]
    reject_column: Mapped[str | None]
    reject_fix: Mapped[str | None] = mapped_column(Text)
    output_path: Mapped[str | None] = mapped_column(Text)
    seconds: Mapped[float | None]
    frames: Mapped[int | None]
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # The run whose finished output this done sample reuses (no job, nothing generated in this run); revision 0002.
    reused_from_run: Mapped[str | None] = mapped_column(String(32))
    # Revision 0005: the input images as the manifest named them and their content hashes (part of the identity).
    guidance_scale_2: Mapped[float | None]
    conditioning: Mapped[str | None] = mapped_column(String(32))
    image: Mapped[str | None] = mapped_column(Text)
    image_sha256: Mapped[str | None] = mapped_column(String(64))
    last_image: Mapped[str | None] = mapped_column(Text)
    last_image_sha256: Mapped[str | None] = mapped_column(String(64))
    # Revision 0007_step_cache: the step cache (part of the identity; NULL: none), the transformer passes that made
    # the video and how many of them the cache served (NULL without a cache).
    cache: Mapped[str | None] = mapped_column(String(64))
    transformer_forwards: Mapped[int | None]
    cached_forwards: Mapped[int | None]
    # Revision 0008_lora: the LoRA adapter as the manifest named it, its content hash and scale (part of the identity).
    lora: Mapped[str | None] = mapped_column(Text)
    lora_sha256: Mapped[str | None] = mapped_column(String(64))
    lora_scale: Mapped[float | None]


class JobAttemptRecord(Base):
    """One launch of a job (revision 0003): the plan it ran with and how it ended."""

    __tablename__ = "job_attempts"
    __table_args__ = (UniqueConstraint("job_id", "attempt"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int]
    launch_id: Mapped[str | None] = mapped_column(String(32))
    dp: Mapped[int]
    cfg: Mapped[int]
    ulysses: Mapped[int]
    ring: Mapped[int]
    sequence_batch: Mapped[bool]
    samples_count: Mapped[int]
    returncode: Mapped[int | None]
    timed_out: Mapped[bool]
    seconds: Mapped[float | None]
    failure_kind: Mapped[str | None] = mapped_column(String(32))
    failed_rank: Mapped[int | None]
    message: Mapped[str | None] = mapped_column(Text)
    tail: Mapped[str | None] = mapped_column(Text)
    retry_delay_s: Mapped[float | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Where the attempt ran (revision 0004): host or Dask worker address, devices given, ranks, start time.
    host: Mapped[str | None] = mapped_column(Text)
    devices: Mapped[str | None] = mapped_column(String(255))
    world_size: Mapped[int | None]
    started_at: Mapped[datetime | None]


class SampleClaimRecord(Base):
    """A video being made under an output root, and by whom (revision 0006): one video, one maker.

    The maker renews its lease (``heartbeat_at``, ``expires_at``) while its ranks run; another run that wants the same
    video waits for it, or takes the claim over once the lease has expired (its maker was killed).
    """

    __tablename__ = "sample_claims"
    __table_args__ = (Index("ix_sample_claims_run_id", "run_id"),)

    output_root: Mapped[str] = mapped_column(Text, primary_key=True)
    sample_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(32), ForeignKey("runs.id", ondelete="CASCADE"))
    job_id: Mapped[str | None]
    host: Mapped[str] = mapped_column(Text)
    claimed_at: Mapped[datetime]
    heartbeat_at: Mapped[datetime]
    expires_at: Mapped[datetime]


class InboxManifestRecord(Base):
    """A manifest found in an inbox prefix and the run that processed it (revision 0004).

    Keyed by the file's URI and a fingerprint of its content (size, mtime or ETag), so a file replaced under the same
    name is a new manifest; the uploader's files are never moved or modified.
    """

    __tablename__ = "inbox_manifests"
    __table_args__ = (_status_check(INBOX_STATUSES), UniqueConstraint("uri", "fingerprint"))

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    inbox: Mapped[str] = mapped_column(Text)
    uri: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
