"""Intake of the rows' images, before any GPU time: read, check and stage every image a row names.

Each ``image`` / ``last_image`` cell is checked against the places this manifest may read from (its own folder or
prefix and the operator's ``--image-root`` places: ``infra/images.py``), read once, decoded once and copied into a
content-addressed store that the ranks read from. A row gets its images' content hashes (part of its videos'
identity: the same picture under another name is the same video); a row whose image cannot be used becomes a
rejection naming the column, the rule and a fix. Rows of models that take no image are left to planning, which
rejects them without reading anything.

Plain Python (no Prefect): `reelbatch plan` checks images too; the flow's task is ``tasks.images.check_images_task``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from reelbatch.manifest.rejected import row_cells
from reelbatch.manifest.types import ManifestLimits, ManifestReadResult
from reelbatch.models.catalog import ModelCatalog, UnknownModel
from reelbatch.rows import IMAGE_COLUMNS, RowTable
from reelbatch.schemas import ManifestRow, RowRejection


def _names_images(row: ManifestRow) -> bool:
    return row.image is not None or row.last_image is not None


def _takes_images(row: ManifestRow, catalog: ModelCatalog) -> bool:
    try:
        family = catalog.family(row.model)
    except UnknownModel:
        return False  # planning rejects the row (the model), nothing needs reading
    return family.image_input != "none" or family.last_image != "none"


def names_images(read: ManifestReadResult) -> bool:
    """Whether any row names an image (when none does, ``check_images`` has nothing to read)."""
    rows = read.rows
    if isinstance(rows, RowTable) and not rows.has_images():
        return False  # (without reading a row)
    return any(_names_images(row) for row in rows)


def check_images(
    read: ManifestReadResult,
    catalog: ModelCatalog,
    store_dir: str | Path,
    roots: list[str] | tuple[str, ...] = (),
    limits: ManifestLimits = ManifestLimits(),
) -> ManifestReadResult:
    """``read`` with every named image checked and staged under ``store_dir``, and rows whose image cannot be
    used moved to the rejections. A manifest without images comes back as it is (and nothing is read)."""
    if not names_images(read):
        return read
    from reelbatch.infra.images import ImagePolicy, ImageProblem, ImageStager  # fsspec: only for images

    rows = read.rows
    policy = ImagePolicy.for_manifest(
        read.source, roots, max_bytes=limits.max_image_bytes, max_side=limits.max_image_side
    )
    stager = ImageStager(policy, store_dir)
    kept: list[ManifestRow] = []
    rejections = list(read.rejections)
    raw_rows = dict(read.raw_rows)
    for row in rows:
        if not _names_images(row) or not _takes_images(row, catalog):
            kept.append(row)
            continue
        update: dict[str, str] = {}
        for column in IMAGE_COLUMNS:
            cell = getattr(row, column)
            if cell is None:
                continue
            try:
                staged = stager.stage(cell)
            except ImageProblem as problem:
                rejections.append(
                    RowRejection(
                        row=row.row, column=column, rule=problem.rule, message=problem.message, fix=problem.fix
                    )
                )
                raw_rows[row.row] = row_cells(row)
                break
            update[column] = staged.url
            update[f"{column}_sha256"] = staged.sha256
        else:
            kept.append(row.model_copy(update=update))
    return replace(read, rows=kept, rejections=rejections, raw_rows=raw_rows)
