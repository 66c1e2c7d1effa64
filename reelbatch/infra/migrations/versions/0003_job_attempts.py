"""Failures handled per attempt: the job_attempts table.

One row per launch of a job: the plan it ran with (an out-of-memory retry runs a lower-memory plan), its launch
tag, how it ended, and, when it failed, the failure class, the rank blamed, the message and the last log lines.
A new table only, so existing rows are untouched.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_attempts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("launch_id", sa.String(length=32), nullable=True),
        sa.Column("dp", sa.Integer(), nullable=False),
        sa.Column("cfg", sa.Integer(), nullable=False),
        sa.Column("ulysses", sa.Integer(), nullable=False),
        sa.Column("ring", sa.Integer(), nullable=False),
        sa.Column("sequence_batch", sa.Boolean(), nullable=False),
        sa.Column("samples_count", sa.Integer(), nullable=False),
        sa.Column("returncode", sa.Integer(), nullable=True),
        sa.Column("timed_out", sa.Boolean(), nullable=False),
        sa.Column("seconds", sa.Double(), nullable=True),
        sa.Column("failure_kind", sa.String(length=32), nullable=True),
        sa.Column("failed_rank", sa.Integer(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("tail", sa.Text(), nullable=True),
        sa.Column("retry_delay_s", sa.Double(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_attempts_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_attempts")),
        sa.UniqueConstraint("job_id", "attempt", name=op.f("uq_job_attempts_job_id_attempt")),
    )


def downgrade() -> None:
    op.drop_table("job_attempts")
