"""Jobs side by side and the manifest inbox.

``job_attempts`` learns where each attempt ran and when it started: the host (or Dask worker address), the
devices it was given (CUDA ids, or CPU rank slots) and its world size. With jobs running side by side, these say
which job had which GPUs, and let anyone check that no machine ran more ranks than it has.

``inbox_manifests`` remembers which manifests dropped into an inbox prefix were run, so the scheduled flow runs
each one once without moving or touching files the uploader owns.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("job_attempts") as batch:
        batch.add_column(sa.Column("host", sa.Text(), nullable=True))
        batch.add_column(sa.Column("devices", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("world_size", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("started_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "inbox_manifests",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("inbox", sa.Text(), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_inbox_manifests_run_id_runs"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbox_manifests")),
        sa.UniqueConstraint("uri", "fingerprint", name=op.f("uq_inbox_manifests_uri_fingerprint")),
        sa.CheckConstraint(
            "status IN ('running', 'processed', 'failed')", name=op.f("ck_inbox_manifests_status")
        ),
    )


def downgrade() -> None:
    op.drop_table("inbox_manifests")
    with op.batch_alter_table("job_attempts") as batch:
        for column in ("started_at", "world_size", "devices", "host"):
            batch.drop_column(column)
