"""Runs, jobs and samples in SQL (SQLite or PostgreSQL).

The schema is owned by the Alembic environment in ``reelbatch/infra/migrations``; the models below must stay in step
with its revisions (a test compares them). Every write is its own short transaction and every count is derived from
rows, so several collectors can write the results of different jobs of one run at the same time.

Nothing here imports torch or Prefect.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Connection,
    DateTime,
    Dialect,
    Engine,
    ForeignKey,
    Index,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    inspect,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.types import TypeDecorator

from reelbatch.contract import JobSpec, SampleResult
from reelbatch.schemas import BucketKey, RowRejection, Sample

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")

RUN_STATUSES = ("pending", "running", "done", "failed", "partial")
JOB_STATUSES = ("pending", "running", "done", "failed")
SAMPLE_STATUSES = ("pending", "running", "done", "failed", "rejected")
INBOX_STATUSES = ("running", "processed", "failed")

NO_RESULT_ERROR = "job ended without a result for this sample"

SQLITE_BUSY_TIMEOUT_MS = 30_000

# Ids per IN (...) list: SQLite builds before 3.32 allow only 999 bound parameters per statement.
QUERY_CHUNK = 500

# Longest launch tag jobs.launch_id holds (PostgreSQL enforces it; checked here so SQLite behaves the same).
LAUNCH_ID_MAX_LENGTH = 32

# Explicit names make the migrations deterministic and let later revisions drop or alter constraints by name.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Manifest columns a rejected row may still carry; parsed best effort so the rejection can be shown with its context.
_REJECTED_ROW_PARSERS: dict[str, Callable[[str], Any]] = {
    "model": str,
    "height": int,
    "width": int,
    "num_frames": int,
    "num_inference_steps": int,
    "guidance_scale": float,
    "embedded_guidance_scale": float,
    "guidance_scale_2": float,
    "seed": int,
}


class SchemaOutOfDate(RuntimeError):
    """The database is not at the schema revision this reelbatch needs."""


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite hands back naive values otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: reelbatch stores timezone-aware UTC datetimes only")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _status_check(statuses: tuple[str, ...]) -> CheckConstraint:
    allowed = ", ".join(f"'{status}'" for status in statuses)
    return CheckConstraint(f"status IN ({allowed})", name="status")


class Base(DeclarativeBase):
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


@dataclass(frozen=True)
class RunSummary:
    id: str
    created_at: datetime
    finished_at: datetime | None
    status: str
    manifest_source: str
    output_root: str
    counts: dict[str, int]
    jobs: int
    reused: int = 0  # sample rows (all done) that reuse the output of an earlier run; included in counts["done"]


@dataclass(frozen=True)
class DoneOutput:
    """Where a finished sample's video is, and which run's row says so."""

    output_path: str
    run_id: str


@dataclass(frozen=True)
class ReusedSample:
    """A sample of this run whose video an earlier run already made (``from_run``) under the same output root."""

    sample: Sample
    bucket: BucketKey
    output_path: str
    from_run: str


def alembic_config(url: str | URL | None = None) -> Config:
    """An Alembic config for the packaged migrations; no alembic.ini needed, so it works from any directory."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    if url is not None:
        rendered = make_url(url).render_as_string(hide_password=False)
        # The config is a ConfigParser: a literal '%' (URL-encoded password) must be doubled.
        config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


@functools.cache
def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, f"no migrations in {MIGRATIONS_DIR}"
    return head


def _known_revisions() -> set[str]:
    return {script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


def upgrade_database(url: str) -> None:
    database = Database(url)
    try:
        database.upgrade()
    finally:
        database.close()


def library_versions() -> dict[str, str]:
    versions = {}
    for name in ("torch", "diffusers", "transformers", "prefect", "reelbatch"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


_T = TypeVar("_T")


def _chunks(items: Sequence[_T]) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), QUERY_CHUNK):
        yield items[start : start + QUERY_CHUNK]


def _generation_params(bucket: BucketKey) -> dict[str, Any]:
    # Every bucket field has a column of the same name, except how it runs (plan and backend live on the job).
    return bucket.model_dump(exclude={"plan", "backend"})


def _sample_identity_values(sample: Sample) -> dict[str, Any]:
    # Every Sample field has a samples column of the same name, except the output key (the path replaces it).
    return sample.model_dump(exclude={"output_key"})


def _insert(session: Session, table: Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT that can take ``ON CONFLICT`` (both supported backends have it, with the same construct)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"reelbatch supports SQLite and PostgreSQL, not {dialect}")


def _new_run_id() -> str:
    return uuid.uuid4().hex


def _parse_or_none(parse: Callable[[str], Any], text: Any) -> Any:
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        return parse(text.strip())
    except ValueError:
        return None


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in {"1", "true", "yes", "y"}:
        return True
    if lowered in {"0", "false", "no", "n"}:
        return False
    raise ValueError(text)


def _rejected_row_values(raw: Mapping[str, Any]) -> dict[str, Any]:
    def text(column: str) -> str:
        value = raw.get(column)
        return value if isinstance(value, str) else ""

    values = {column: _parse_or_none(parse, raw.get(column)) for column, parse in _REJECTED_ROW_PARSERS.items()}
    values["sequence_batch"] = _parse_or_none(_parse_bool, raw.get("sequence_batch"))
    values["prompt"] = text("prompt")
    values["negative_prompt"] = text("negative_prompt")
    values["row_id"] = text("id") or None
    values["image"] = text("image") or None
    values["last_image"] = text("last_image") or None
    return values


def _sqlite_database_path(url: URL) -> Path | None:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def set_pragmas(dbapi_connection: Any, _connection_record: Any) -> None:
        # Take BEGIN away from the sqlite3 module so that `begin_transaction` below decides how to begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def begin_transaction(connection: Connection) -> None:
        # A write transaction takes the write lock up front: a deferred one that reads first and then writes cannot
        # wait for a concurrent writer (SQLite returns SQLITE_BUSY at once instead of honouring busy_timeout).
        if connection.get_execution_options().get("reelbatch_write"):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.exec_driver_sql("BEGIN")


class Database:
    def __init__(self, url: str | URL):
        self._url = make_url(url)
        self.url_for_display = self._url.render_as_string(hide_password=True)
        if self._url.get_backend_name() == "sqlite":
            path = _sqlite_database_path(self._url)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(self._url)
            _configure_sqlite(self.engine)
        else:
            # Runs last hours; connections idle that long may have been dropped by the server or a proxy.
            self.engine = create_engine(self._url, pool_pre_ping=True)
        self._write_engine = self.engine.execution_options(reelbatch_write=True)

    def __repr__(self) -> str:
        return f"Database({self.url_for_display!r})"

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.engine.dispose()

    # --- schema ---

    @contextmanager
    def write_connection(self) -> Iterator[Connection]:
        """A connection inside a write transaction, committed on success (what migrations run in)."""
        with self._write_engine.begin() as connection:
            yield connection

    def run_alembic(self, alembic_command: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run an ``alembic.command`` function (upgrade, stamp, downgrade, ...) against this database."""
        config = alembic_config(self._url)
        with self.write_connection() as connection:
            config.attributes["connection"] = connection
            return alembic_command(config, *args, **kwargs)

    def upgrade(self) -> None:
        self.run_alembic(command.upgrade, "head")

    def current_revision(self) -> str | None:
        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def ensure_schema(self, auto_upgrade: bool = False) -> None:
        """Check the schema is at head. ``auto_upgrade`` only ever creates the schema in a database with no tables;
        an existing schema at another revision always raises, so data is never migrated without being asked."""
        head = head_revision()
        with self.engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
            has_tables = bool(inspect(connection).get_table_names())
        if current == head:
            return
        if auto_upgrade and not has_tables:
            self.upgrade()
            return
        message = (
            f"database schema at revision {current or 'none'}, reelbatch needs {head}: "
            f"run `reelbatch db upgrade --db {self.url_for_display}`"
        )
        if current is not None and current not in _known_revisions():
            message += f" (revision {current} is unknown to this reelbatch; a newer version may have written it)"
        raise SchemaOutOfDate(message)

    # --- writes ---

    @contextmanager
    def _writing(self) -> Iterator[Session]:
        with Session(self._write_engine, expire_on_commit=False) as session, session.begin():
            yield session

    @contextmanager
    def _reading(self) -> Iterator[Session]:
        with Session(self.engine) as session, session.begin():
            yield session

    def create_run(
        self,
        *,
        manifest_source: str,
        manifest_sha256: str,
        output_root: str,
        gpus_per_node: int,
        params: dict[str, Any],
        library_versions: dict[str, Any],
        rows_total: int,
        rows_accepted: int,
        rows_rejected: int,
    ) -> str:
        """Record a run that is starting now (status ``running``) and return its id."""
        run = RunRecord(
            id=_new_run_id(),
            status="running",
            manifest_source=manifest_source,
            manifest_sha256=manifest_sha256,
            output_root=output_root,
            gpus_per_node=gpus_per_node,
            params=params,
            library_versions=library_versions,
            rows_total=rows_total,
            rows_accepted=rows_accepted,
            rows_rejected=rows_rejected,
        )
        with self._writing() as session:
            session.add(run)
        return run.id

    def add_rejections(
        self,
        run_id: str,
        rejections: list[RowRejection],
        raw_rows: Mapping[int, Mapping[str, Any]] | None = None,
    ) -> None:
        """One ``rejected`` sample row per rejection, with whatever of the raw manifest row could be parsed."""
        raw_rows = raw_rows or {}
        records = [
            SampleRecord(
                run_id=run_id,
                row=rejection.row,
                status="rejected",
                error=rejection.message,
                reject_rule=rejection.rule,
                reject_column=rejection.column,
                reject_fix=rejection.fix,
                **_rejected_row_values(raw_rows.get(rejection.row, {})),
            )
            for rejection in rejections
        ]
        with self._writing() as session:
            session.add_all(records)

    def add_job(self, run_id: str, job: JobSpec, backend: str = "native", log_path: str = "") -> None:
        """Record a job and one ``pending`` sample row per sample it will generate.

        Idempotent within a run, for resume (job ids are deterministic, so re-planning a run brings the same ids
        again). An existing job row takes this plan, shape and counts and becomes ``pending`` again, keeping its
        attempts. An existing sample row of the run that is not ``done`` moves to this job as ``pending``, keeping
        its attempts and losing its last result; a ``done`` one is left alone. A (run, sample) never gets a second
        row, also when two writers add the same job at once (``INSERT ... ON CONFLICT``)."""
        if job.run_id and job.run_id != run_id:
            raise ValueError(f"job {job.job_id} belongs to run {job.run_id}, not {run_id}")
        bucket, plan = job.bucket, job.plan
        generation_params = _generation_params(bucket)
        job_values = {
            **generation_params,
            "dp": plan.dp,
            "cfg": plan.cfg,
            "ulysses": plan.ulysses,
            "ring": plan.ring,
            "world_size": plan.world_size,
            "backend": backend,
            "samples_count": len(job.samples),
            "padded_slots": job.padded_slots,
            "tokens": job.tokens,
            "fps": job.fps,
            "flow_shift": job.flow_shift,
            "log_path": log_path,
            "status": "pending",
            "returncode": None,
            "error": None,
            "finished_at": None,
            "seconds": None,
        }
        sample_rows = [
            {
                "run_id": run_id,
                "job_id": job.job_id,
                **_sample_identity_values(sample),
                **generation_params,
                "status": "pending",
            }
            for sample in job.samples
        ]
        jobs, samples = JobRecord.__table__, SampleRecord.__table__
        with self._writing() as session:
            owner = session.scalar(select(JobRecord.run_id).where(JobRecord.id == job.job_id))
            if owner is not None and owner != run_id:
                raise ValueError(f"job id {job.job_id} is already used by run {owner}")
            insert_job = _insert(session, jobs).values(id=job.job_id, run_id=run_id, **job_values)
            # The job row must exist before the samples that reference it.
            session.execute(
                insert_job.on_conflict_do_update(
                    index_elements=[jobs.c.id], set_=job_values, where=jobs.c.run_id == run_id
                )
            )
            if not sample_rows:
                return
            insert_samples = _insert(session, samples)
            replanned = {column: insert_samples.excluded[column] for column in sample_rows[0] if column != "run_id"}
            session.execute(
                insert_samples.on_conflict_do_update(
                    index_elements=[samples.c.run_id, samples.c.sample_id],
                    set_={
                        **replanned,
                        "error": None,
                        "output_path": None,
                        "seconds": None,
                        "frames": None,
                        "finished_at": None,
                        "reused_from_run": None,
                        "updated_at": utcnow(),
                    },
                    where=samples.c.status != "done",
                ),
                sample_rows,
            )

    def add_reused_samples(self, run_id: str, reused: list[ReusedSample]) -> None:
        """Record samples whose video an earlier run made as ``done`` without a job (``reused_from_run`` says which
        run). A sample row of this run already ``done`` is left alone; one not done becomes this reused done row
        (attempts kept). Idempotent."""
        if not reused:
            return
        now = utcnow()
        rows = [
            {
                "run_id": run_id,
                "job_id": None,
                **_sample_identity_values(item.sample),
                **_generation_params(item.bucket),
                "status": "done",
                "error": None,
                "output_path": item.output_path,
                "reused_from_run": item.from_run,
                "seconds": None,
                "frames": None,
                "finished_at": now,
            }
            for item in reused
        ]
        samples = SampleRecord.__table__
        with self._writing() as session:
            insert_samples = _insert(session, samples)
            session.execute(
                insert_samples.on_conflict_do_update(
                    index_elements=[samples.c.run_id, samples.c.sample_id],
                    set_={
                        **{column: insert_samples.excluded[column] for column in rows[0] if column != "run_id"},
                        "updated_at": now,
                    },
                    where=samples.c.status != "done",
                ),
                rows,
            )

    def reopen_run(self, run_id: str) -> None:
        """Make a finished (or crashed) run ``running`` again, to resume it."""
        with self._writing() as session:
            reopened = session.execute(
                update(RunRecord).where(RunRecord.id == run_id).values(status="running", finished_at=None)
            )
            if reopened.rowcount == 0:
                raise KeyError(f"no run {run_id!r}")

    def set_job_launch(self, job_id: str, launch_id: str) -> None:
        """Remember the tag of the torchrun launch that runs this job."""
        if not launch_id or len(launch_id) > LAUNCH_ID_MAX_LENGTH:
            raise ValueError(f"launch id {launch_id!r}: 1 to {LAUNCH_ID_MAX_LENGTH} characters")
        with self._writing() as session:
            tagged = session.execute(update(JobRecord).where(JobRecord.id == job_id).values(launch_id=launch_id))
            if tagged.rowcount == 0:
                raise KeyError(f"no job {job_id!r}")

    def interrupt_running_jobs(self, run_id: str, error: str) -> int:
        """Fail the jobs of a run still ``running`` (their orchestrator is gone) and their ``running`` samples, all
        with ``error``; ``done`` samples stay done. Returns how many jobs it failed."""
        now = utcnow()
        with self._writing() as session:
            job_ids = session.scalars(
                select(JobRecord.id).where(JobRecord.run_id == run_id, JobRecord.status == "running")
            ).all()
            interrupted = 0
            for chunk in _chunks(job_ids):
                interrupted += session.execute(
                    update(JobRecord)
                    .where(JobRecord.id.in_(chunk), JobRecord.status == "running")
                    .values(status="failed", error=error, finished_at=now)
                ).rowcount
                session.execute(
                    update(SampleRecord)
                    .where(SampleRecord.job_id.in_(chunk), SampleRecord.status == "running")
                    .values(status="failed", error=error, finished_at=now)
                )
        return interrupted

    def mark_job_running(self, job_id: str) -> None:
        """Start an attempt of a job: the job and its samples not done yet become ``running``."""
        now = utcnow()
        with self._writing() as session:
            started = session.execute(
                update(JobRecord)
                .where(JobRecord.id == job_id)
                .values(
                    status="running",
                    attempts=JobRecord.attempts + 1,
                    started_at=now,
                    finished_at=None,
                    returncode=None,
                    error=None,
                    seconds=None,
                )
            )
            if started.rowcount == 0:
                raise KeyError(f"no job {job_id!r}")
            session.execute(
                update(SampleRecord)
                .where(SampleRecord.job_id == job_id, SampleRecord.status != "done")
                .values(
                    status="running",
                    attempts=SampleRecord.attempts + 1,
                    started_at=now,
                    finished_at=None,
                    error=None,
                )
            )

    def record_sample_results(
        self, job_id: str, results: list[SampleResult], output_paths: Mapping[str, str]
    ) -> None:
        """Store the results of samples of this job. Idempotent: a result already stored changes nothing, not even
        timestamps. A ``done`` sample stays done (its mp4 exists), whatever a later result says."""
        if not results:
            return
        results_by_sample_id = {result.sample_id: result for result in results}
        now = utcnow()
        with self._writing() as session:
            records = session.scalars(
                select(SampleRecord).where(
                    SampleRecord.job_id == job_id, SampleRecord.sample_id.in_(list(results_by_sample_id))
                )
            ).all()
            for record in records:
                result = results_by_sample_id[record.sample_id]
                if record.status == "done" and result.status != "done":
                    log.warning(
                        "job %s: ignoring %s result for sample %s, already done",
                        job_id,
                        result.status,
                        record.sample_id,
                    )
                    continue
                new_values = {
                    "status": result.status,
                    "seconds": result.seconds,
                    "frames": result.frames,
                    "error": result.error,
                    "output_path": output_paths.get(result.sample_id),
                }
                if all(getattr(record, column) == value for column, value in new_values.items()):
                    continue
                for column, value in new_values.items():
                    setattr(record, column, value)
                record.finished_at = now
            unknown = set(results_by_sample_id) - {record.sample_id for record in records}
            if unknown:
                log.warning(
                    "job %s: ignoring results for %d samples not in this job: %s",
                    job_id,
                    len(unknown),
                    sorted(unknown)[:5],
                )

    def finish_job(
        self, job_id: str, *, status: str, returncode: int | None, seconds: float, error: str | None = None
    ) -> None:
        """End a job attempt; its samples still without a result fail with the job's error."""
        if status not in ("done", "failed"):
            raise ValueError(f"a job finishes as done or failed, not {status!r}")
        now = utcnow()
        with self._writing() as session:
            finished = session.execute(
                update(JobRecord)
                .where(JobRecord.id == job_id)
                .values(status=status, returncode=returncode, seconds=seconds, error=error, finished_at=now)
            )
            if finished.rowcount == 0:
                raise KeyError(f"no job {job_id!r}")
            session.execute(
                update(SampleRecord)
                .where(SampleRecord.job_id == job_id, SampleRecord.status.in_(("pending", "running")))
                .values(status="failed", error=error or NO_RESULT_ERROR, finished_at=now)
            )

    def finish_run(self, run_id: str) -> str:
        """Derive the run's final status from its accepted samples: all done → ``done``, none done → ``failed``,
        otherwise ``partial``. A run whose rows were all rejected has ``failed``."""
        with self._writing() as session:
            counts = self._status_counts(session, [run_id])[run_id]
            accepted = sum(count for status, count in counts.items() if status != "rejected")
            if accepted == 0:
                status = "failed" if counts["rejected"] else "done"
            elif counts["done"] == accepted:
                status = "done"
            elif counts["done"] == 0:
                status = "failed"
            else:
                status = "partial"
            finished = session.execute(
                update(RunRecord).where(RunRecord.id == run_id).values(status=status, finished_at=utcnow())
            )
            if finished.rowcount == 0:
                raise KeyError(f"no run {run_id!r}")
        return status

    # --- reads ---

    @staticmethod
    def _status_counts(session: Session, run_ids: list[str]) -> dict[str, dict[str, int]]:
        counts = {run_id: dict.fromkeys(SAMPLE_STATUSES, 0) for run_id in run_ids}
        rows = session.execute(
            select(SampleRecord.run_id, SampleRecord.status, func.count())
            .where(SampleRecord.run_id.in_(run_ids))
            .group_by(SampleRecord.run_id, SampleRecord.status)
        )
        for run_id, status, count in rows:
            counts[run_id][status] = count
        return counts

    @staticmethod
    def _resolve_run_id(session: Session, run_id_or_prefix: str) -> str:
        if not run_id_or_prefix:
            raise KeyError("empty run id")
        matches = session.scalars(
            select(RunRecord.id).where(RunRecord.id.startswith(run_id_or_prefix, autoescape=True)).limit(2)
        ).all()
        if not matches:
            raise KeyError(f"no run {run_id_or_prefix!r}")
        if len(matches) > 1:
            raise KeyError(f"run id prefix {run_id_or_prefix!r} is ambiguous")
        return matches[0]

    def _summaries(self, session: Session, runs: list[RunRecord]) -> list[RunSummary]:
        run_ids = [run.id for run in runs]
        counts = self._status_counts(session, run_ids)
        job_counts = dict(
            session.execute(
                select(JobRecord.run_id, func.count()).where(JobRecord.run_id.in_(run_ids)).group_by(JobRecord.run_id)
            ).all()
        )
        reused_counts = dict(
            session.execute(
                select(SampleRecord.run_id, func.count())
                .where(SampleRecord.run_id.in_(run_ids), SampleRecord.reused_from_run.is_not(None))
                .group_by(SampleRecord.run_id)
            ).all()
        )
        return [
            RunSummary(
                id=run.id,
                created_at=run.created_at,
                finished_at=run.finished_at,
                status=run.status,
                manifest_source=run.manifest_source,
                output_root=run.output_root,
                counts=counts[run.id],
                jobs=job_counts.get(run.id, 0),
                reused=reused_counts.get(run.id, 0),
            )
            for run in runs
        ]

    def list_runs(self, limit: int = 20) -> list[RunSummary]:
        """The newest runs first."""
        with self._reading() as session:
            runs = session.scalars(
                select(RunRecord).order_by(RunRecord.created_at.desc(), RunRecord.id).limit(limit)
            ).all()
            return self._summaries(session, list(runs))

    def run_summary(self, run_id: str) -> RunSummary:
        """Summary of a run given its id or a unique prefix of it; ``KeyError`` if none or several match."""
        with self._reading() as session:
            run = session.get_one(RunRecord, self._resolve_run_id(session, run_id))
            return self._summaries(session, [run])[0]

    def run_record(self, run_id: str) -> dict[str, Any]:
        """Every column of a run's row given its id or a unique prefix of it; ``KeyError`` if none or several match."""
        table = RunRecord.__table__
        with self._reading() as session:
            resolved = self._resolve_run_id(session, run_id)
            return dict(session.execute(select(table).where(table.c.id == resolved)).mappings().one())

    def done_outputs(self, output_root: str, sample_ids: Collection[str]) -> dict[str, DoneOutput]:
        """For each of these sample ids (identity hashes) with a ``done`` row that has an output path in any run
        written to exactly this ``output_root``: where the video is, from the newest such row."""
        wanted = sorted(set(sample_ids))
        newest_first = func.coalesce(SampleRecord.finished_at, SampleRecord.created_at).desc()
        found: dict[str, DoneOutput] = {}
        with self._reading() as session:
            for chunk in _chunks(wanted):
                rows = session.execute(
                    select(SampleRecord.sample_id, SampleRecord.output_path, SampleRecord.run_id)
                    .join(RunRecord, RunRecord.id == SampleRecord.run_id)
                    .where(
                        RunRecord.output_root == output_root,
                        SampleRecord.sample_id.in_(chunk),
                        SampleRecord.status == "done",
                        SampleRecord.output_path.is_not(None),
                    )
                    .order_by(newest_first, SampleRecord.id.desc())
                )
                for sample_id, output_path, run_id in rows:
                    found.setdefault(sample_id, DoneOutput(output_path=output_path, run_id=run_id))
        return found

    def running_launches(self) -> list[tuple[str, str]]:
        """(job id, launch id) of every job, of any run, recorded as ``running`` under a launch."""
        with self._reading() as session:
            rows = session.execute(
                select(JobRecord.id, JobRecord.launch_id)
                .where(JobRecord.status == "running", JobRecord.launch_id.is_not(None))
                .order_by(JobRecord.id)
            )
            return [(job_id, launch_id) for job_id, launch_id in rows]

    def samples(self, run_id: str) -> list[dict[str, Any]]:
        """Every column of every sample row of a run (id or unique prefix), in manifest order."""
        table = SampleRecord.__table__
        with self._reading() as session:
            resolved = self._resolve_run_id(session, run_id)
            rows = session.execute(
                select(table)
                .where(table.c.run_id == resolved)
                .order_by(table.c.row, table.c.video_index, table.c.id)
            )
            return [dict(row) for row in rows.mappings()]

    def record_attempt(self, job: JobSpec, attempt: int, **outcome: Any) -> None:
        """One launch of ``job`` and how it ended (``outcome``: launch_id, returncode, timed_out, seconds,
        failure_kind, failed_rank, message, tail, retry_delay_s)."""
        record = JobAttemptRecord(
            job_id=job.job_id,
            attempt=attempt,
            dp=job.plan.dp,
            cfg=job.plan.cfg,
            ulysses=job.plan.ulysses,
            ring=job.plan.ring,
            sequence_batch=job.bucket.sequence_batch,
            samples_count=len(job.samples),
            **{"timed_out": False, **outcome},
        )
        with self._writing() as session:
            session.add(record)

    def attempts(self, job_id: str) -> list[dict[str, Any]]:
        table = JobAttemptRecord.__table__
        with self._reading() as session:
            rows = session.execute(select(table).where(table.c.job_id == job_id).order_by(table.c.attempt))
            return [dict(row) for row in rows.mappings()]

    def jobs(self, run_id: str) -> list[dict[str, Any]]:
        """Every column of every job of a run (id or unique prefix), in the order they were added."""
        table = JobRecord.__table__
        with self._reading() as session:
            resolved = self._resolve_run_id(session, run_id)
            rows = session.execute(
                select(table).where(table.c.run_id == resolved).order_by(table.c.created_at, table.c.id)
            )
            return [dict(row) for row in rows.mappings()]

    # --- manifest inbox ---

    def claim_inbox_manifest(self, inbox: str, uri: str, fingerprint: str) -> bool:
        """Take ``uri`` (at ``fingerprint``) for processing; False when it was processed or is being processed.

        A manifest whose earlier run failed is claimed again, so a scheduled run retries it. Two passes racing for
        one manifest: exactly one gets True (the unique key and a status-guarded update decide).
        """
        table = InboxManifestRecord.__table__
        with self._writing() as session:
            row = session.execute(
                select(table.c.id, table.c.status).where(table.c.uri == uri, table.c.fingerprint == fingerprint)
            ).first()
            if row is None:
                try:
                    with session.begin_nested():
                        session.add(InboxManifestRecord(inbox=inbox, uri=uri, fingerprint=fingerprint,
                                                        status="running"))
                except IntegrityError:  # another pass inserted it first
                    return False
                return True
            if row.status != "failed":
                return False
            taken = session.execute(
                update(table)
                .where(table.c.id == row.id, table.c.status == "failed")
                .values(status="running", error=None, updated_at=utcnow())
            )
            return taken.rowcount == 1

    def release_stale_inbox_claims(self, inbox: str, before: datetime, error: str) -> list[str]:
        """Mark claims of ``inbox`` still ``running`` since before ``before`` failed (their pass died); their URIs."""
        table = InboxManifestRecord.__table__
        released = []
        with self._writing() as session:
            stale = session.execute(
                select(table.c.id, table.c.uri)
                .where(table.c.inbox == inbox, table.c.status == "running", table.c.updated_at < before)
            ).all()
            for row in stale:
                changed = session.execute(
                    update(table)
                    .where(table.c.id == row.id, table.c.status == "running", table.c.updated_at < before)
                    .values(status="failed", error=error, updated_at=utcnow())
                )
                if changed.rowcount == 1:
                    released.append(row.uri)
        return released

    def finish_inbox_manifest(
        self, uri: str, fingerprint: str, status: str, run_id: str | None = None, error: str | None = None
    ) -> None:
        if status not in INBOX_STATUSES:
            raise ValueError(f"inbox status {status!r}: use one of {INBOX_STATUSES}")
        table = InboxManifestRecord.__table__
        with self._writing() as session:
            session.execute(
                update(table)
                .where(table.c.uri == uri, table.c.fingerprint == fingerprint)
                .values(status=status, run_id=run_id, error=error, updated_at=utcnow())
            )

    def inbox_manifests(self, inbox: str | None = None) -> list[dict[str, Any]]:
        table = InboxManifestRecord.__table__
        query = select(table).order_by(table.c.created_at, table.c.id)
        if inbox is not None:
            query = query.where(table.c.inbox == inbox)
        with self._reading() as session:
            return [dict(row) for row in session.execute(query).mappings()]
