"""LoRA adapters per row.

``samples`` learns each video's LoRA adapter: the path or URL as the manifest wrote it (``lora``), the content
hash of the file (``lora_sha256``) and the scale it was fused with (``lora_scale``); hash and scale are part of
the video's identity. ``jobs`` learns the hash and scale (one adapter per job, fused once).

Revision ID: 0008_lora
Revises: 0007_step_cache
Create Date: 2026-12-03

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_lora"
down_revision: str | None = "0007_step_cache"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", recreate="never") as batch:
        batch.add_column(sa.Column("lora_sha256", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("lora_scale", sa.Double(), nullable=True))
    with op.batch_alter_table("samples", recreate="never") as batch:
        batch.add_column(sa.Column("lora", sa.Text(), nullable=True))
        batch.add_column(sa.Column("lora_sha256", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("lora_scale", sa.Double(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("samples", recreate="never") as batch:
        for column in ("lora_scale", "lora_sha256", "lora"):
            batch.drop_column(column)
    with op.batch_alter_table("jobs", recreate="never") as batch:
        for column in ("lora_scale", "lora_sha256"):
            batch.drop_column(column)
