"""Sample claims (one video, one maker) and run heartbeats (a run that died shows as interrupted).

``sample_claims`` holds one row per video being made under an output root: the run and job making it, the host,
and a lease (``heartbeat_at``, ``expires_at``) the maker renews while its ranks run. A second run that wants the
same video waits for it instead of making it again, and takes the claim over once the lease has expired.

``runs`` learns ``heartbeat_at`` (the orchestrator renews it while it runs) and the status ``interrupted`` (stopped
by a signal, or found with a stale heartbeat), which ``reelbatch resume`` continues.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_RUN_STATUSES = "status IN ('pending', 'running', 'done', 'failed', 'partial')"
NEW_RUN_STATUSES = "status IN ('pending', 'running', 'done', 'failed', 'partial', 'interrupted')"


def _run_statuses(old: str, new: str) -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint(op.f("ck_runs_status"), "runs", type_="check")
        op.create_check_constraint(op.f("ck_runs_status"), "runs", sa.text(new))
        return
    # SQLite cannot alter a constraint, and rebuilding `runs` (what a batch migration does) would delete every job and
    # sample with it: foreign keys are on and cascade. SQLite documents editing the stored CREATE TABLE text for a
    # change that leaves the file's format alone, as a CHECK constraint does ("ALTER TABLE", section 7).
    bind = op.get_bind()
    version = bind.exec_driver_sql("PRAGMA schema_version").scalar_one()
    bind.exec_driver_sql("PRAGMA writable_schema=ON")
    edited = bind.exec_driver_sql(
        "UPDATE sqlite_master SET sql = replace(sql, ?, ?) WHERE type = 'table' AND name = 'runs' AND instr(sql, ?) > 0",
        (old, new, old),
    )
    if edited.rowcount != 1:  # a schema not made by these migrations: refuse rather than leave the old check
        raise RuntimeError(f"runs: the status check is not the one revision 0005 made ({old!r}); not migrated")
    bind.exec_driver_sql(f"PRAGMA schema_version={int(version) + 1}")
    bind.exec_driver_sql("PRAGMA writable_schema=OFF")


def upgrade() -> None:
    with op.batch_alter_table("runs", recreate="never") as batch:
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
    _run_statuses(OLD_RUN_STATUSES, NEW_RUN_STATUSES)
    op.create_table(
        "sample_claims",
        sa.Column("output_root", sa.Text(), nullable=False),
        sa.Column("sample_id", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("job_id", sa.String(), nullable=True),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_sample_claims_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("output_root", "sample_id", name=op.f("pk_sample_claims")),
    )
    op.create_index(op.f("ix_sample_claims_run_id"), "sample_claims", ["run_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_sample_claims_run_id"), table_name="sample_claims")
    op.drop_table("sample_claims")
    op.execute("UPDATE runs SET status = 'failed' WHERE status = 'interrupted'")
    _run_statuses(NEW_RUN_STATUSES, OLD_RUN_STATUSES)
    with op.batch_alter_table("runs", recreate="never") as batch:
        batch.drop_column("heartbeat_at")
