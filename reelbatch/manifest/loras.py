"""Intake of the rows' LoRA adapters, before any GPU time: read, check and stage every ``lora`` a row names.

Each distinct cell is read once from the places a manifest may read from (as images are: ``infra/images.py``),
checked to be a safetensors file of LoRA weights that fits the row's model (``infra/loras.py``) and copied into
the content-addressed store the ranks load from. A row gets the file's content hash (``lora_sha256``) and its
``lora_scale`` (1.0 when empty): both are part of its videos' identity and of its bucket, so rows with different
adapters or scales never share a job. A row whose adapter cannot be used, or that gives ``lora_scale`` without a
``lora``, becomes a rejection naming the column, the rule and a fix.

Plain Python (no Prefect): `reelbatch plan` checks adapters too; the flow's task is ``tasks.images.check_loras_task``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from reelbatch.manifest.rejected import row_cells
from reelbatch.manifest.types import ManifestLimits, ManifestReadResult
from reelbatch.models.catalog import ModelCatalog, UnknownModel
from reelbatch.rows import RowTable
from reelbatch.schemas import ManifestRow, RowRejection

DEFAULT_LORA_SCALE = 1.0


def _names_lora(row: ManifestRow) -> bool:
    return row.lora is not None or row.lora_scale is not None


def names_loras(read: ManifestReadResult) -> bool:
    """Whether any row gives a ``lora`` or ``lora_scale`` (when none does, ``check_loras`` has nothing to do)."""
    rows = read.rows
    if isinstance(rows, RowTable):  # both are repeating columns: their values are the shapes' (or overrides')
        return any(s.get("lora") is not None or s.get("lora_scale") is not None for s in rows.shapes) or any(
            _names_lora(row) for row in rows.overrides.values()
        )
    return any(_names_lora(row) for row in rows)


def _model_folder(catalog: ModelCatalog, model: str) -> Path | None:
    try:
        return catalog.local_path(model)
    except UnknownModel:
        return None  # a registry family without a folder (planning only), or unknown: planning says so


def check_loras(
    read: ManifestReadResult,
    catalog: ModelCatalog,
    store_dir: str | Path,
    roots: list[str] | tuple[str, ...] = (),
    limits: ManifestLimits = ManifestLimits(),
) -> ManifestReadResult:
    """``read`` with every named LoRA checked and staged under ``store_dir`` and its hash and scale on the row,
    and rows whose adapter cannot be used moved to the rejections. Without LoRA cells it comes back as it is."""
    if not names_loras(read):
        return read
    from reelbatch.infra.images import ImagePolicy  # fsspec, safetensors: only for manifests with adapters
    from reelbatch.infra.loras import LoraProblem, LoraStager

    stager = LoraStager(ImagePolicy.for_manifest(read.source, roots, max_bytes=limits.max_lora_bytes), store_dir)
    folders: dict[str, Path | None] = {}
    kept: list[ManifestRow] = []
    rejections = list(read.rejections)
    raw_rows = dict(read.raw_rows)

    def reject(row: ManifestRow, column: str, rule: str, message: str, fix: str) -> None:
        rejections.append(RowRejection(row=row.row, column=column, rule=rule, message=message, fix=fix))
        raw_rows[row.row] = row_cells(row)

    for row in read.rows:
        if row.lora is None:
            if row.lora_scale is None:
                kept.append(row)
            else:
                reject(
                    row,
                    "lora_scale",
                    "lora_scale_without_lora",
                    f"lora_scale {row.lora_scale:g} is given but the lora cell is empty",
                    "add the LoRA adapter's path or URL in the lora column, or leave lora_scale empty",
                )
            continue
        try:
            staged = stager.stage(row.lora)
            if row.model not in folders:
                folders[row.model] = _model_folder(catalog, row.model)
            stager.check_fits(staged, row.model, folders[row.model])
        except LoraProblem as problem:
            reject(row, "lora", problem.rule, problem.message, problem.fix)
            continue
        scale = DEFAULT_LORA_SCALE if row.lora_scale is None else row.lora_scale
        kept.append(row.model_copy(update={"lora": staged.url, "lora_sha256": staged.sha256, "lora_scale": scale}))
    return replace(read, rows=kept, rejections=rejections, raw_rows=raw_rows)
