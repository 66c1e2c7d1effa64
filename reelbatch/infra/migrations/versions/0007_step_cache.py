"""Step caches and compiled transformers.

``samples`` and ``jobs`` learn the step cache a video was made with (``cache``: ``fbc:0.05``; NULL for none; part
of the video's identity), ``samples`` how many transformer passes made it and how many of them the cache served
(``transformer_forwards``, ``cached_forwards``; NULL without a cache), and ``jobs`` whether its transformer ran
compiled (``compiled``).

Revision ID: 0007_step_cache
Revises: 0006
Create Date: 2026-12-03

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_step_cache"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", recreate="never") as batch:
        batch.add_column(sa.Column("cache", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("compiled", sa.Boolean(), server_default=sa.false(), nullable=False))
    with op.batch_alter_table("samples", recreate="never") as batch:
        batch.add_column(sa.Column("cache", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("transformer_forwards", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("cached_forwards", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("samples", recreate="never") as batch:
        for column in ("cached_forwards", "transformer_forwards", "cache"):
            batch.drop_column(column)
    with op.batch_alter_table("jobs", recreate="never") as batch:
        for column in ("compiled", "cache"):
            batch.drop_column(column)
