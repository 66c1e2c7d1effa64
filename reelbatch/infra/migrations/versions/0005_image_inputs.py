"""Image-to-video inputs and two-expert guidance.

``samples`` learns each video's input images (the path or URL as the manifest wrote it, and the content hash that
is part of the video's identity), the low-noise expert's guidance of two-expert models (``guidance_scale_2``)
and what the video is conditioned on besides its prompt (``conditioning``: text, first_frame,
first_last_frame). ``jobs`` learns the last two, and the resolved frame rate and scheduler shift the job ran with.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", recreate="never") as batch:
        batch.add_column(sa.Column("guidance_scale_2", sa.Double(), nullable=True))
        batch.add_column(sa.Column("conditioning", sa.String(length=32), server_default="text", nullable=False))
        batch.add_column(sa.Column("fps", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("flow_shift", sa.Double(), nullable=True))
    with op.batch_alter_table("samples", recreate="never") as batch:
        batch.add_column(sa.Column("guidance_scale_2", sa.Double(), nullable=True))
        batch.add_column(sa.Column("conditioning", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("image", sa.Text(), nullable=True))
        batch.add_column(sa.Column("image_sha256", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("last_image", sa.Text(), nullable=True))
        batch.add_column(sa.Column("last_image_sha256", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("samples", recreate="never") as batch:
        for column in ("last_image_sha256", "last_image", "image_sha256", "image", "conditioning",
                       "guidance_scale_2"):
            batch.drop_column(column)
    with op.batch_alter_table("jobs", recreate="never") as batch:
        for column in ("flow_shift", "fps", "conditioning", "guidance_scale_2"):
            batch.drop_column(column)
