"""Resume and idempotency: samples.reused_from_run, jobs.launch_id.

``samples.reused_from_run``: the run whose finished output a ``done`` sample reuses instead of generating it again.
``jobs.launch_id``: the tag of the torchrun launch running a job, so that a later orchestrator can find and end the
orphan ranks of a crashed one.

Both columns are nullable and have no default, so existing rows stay as they are (NULL). On SQLite, batch mode adds
them with ``ALTER TABLE ... ADD COLUMN`` (no table rebuild). The downgrade drops them in place as well
(``recreate="never"``, SQLite >= 3.35): rebuilding ``jobs`` would drop the old table, and with foreign keys on that
deletes every ``samples`` row through ``ON DELETE CASCADE``.

Revision ID: 0002
Revises: 0001
Create Date: 2025-12-02

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("samples", recreate="never") as batch_op:
        batch_op.add_column(sa.Column("reused_from_run", sa.String(length=32), nullable=True))
    with op.batch_alter_table("jobs", recreate="never") as batch_op:
        batch_op.add_column(sa.Column("launch_id", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", recreate="never") as batch_op:
        batch_op.drop_column("launch_id")
    with op.batch_alter_table("samples", recreate="never") as batch_op:
        batch_op.drop_column("reused_from_run")
