"""The cells of rejected rows: kept as written for the database, and read back into its sample columns.

A rejected row never becomes a ManifestRow, yet the database shows what it asked for (model, sizes, seed, ...)
so a run's rejected rows can be filtered like its videos. ``rejected_row_values`` reads those cells leniently:
a cell that does not parse is simply left out (None), since the rejection already says what is wrong with it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from reelbatch.manifest.types import COLUMNS, RAW_CELL_CHARS, Header
from reelbatch.redact import redact_secrets
from reelbatch.schemas import ManifestRow
from reelbatch.stepcache import parse_cache


def raw_cells(header: Header, record: list[str]) -> dict[str, str]:
    """The cells of a rejected row as written (cut to RAW_CELL_CHARS), the secrets of URLs in them cut out."""
    return {c: redact_secrets(header.cell(record, c))[:RAW_CELL_CHARS] for c in header.positions}


def row_cells(row: ManifestRow) -> dict[str, str]:
    """A row's values as the text of its cells (for the database's view of a row rejected after reading)."""
    return {
        column: redact_secrets(str(value))[:RAW_CELL_CHARS]
        for column in COLUMNS
        if (value := getattr(row, column)) is not None
    }


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in {"1", "true", "yes", "y"}:
        return True
    if lowered in {"0", "false", "no", "n"}:
        return False
    raise ValueError(text)


# Columns read back as typed values (the others are text); the keys are sample columns of the same name.
_TYPED_CELLS: dict[str, Callable[[str], Any]] = {
    "model": str,
    "height": int,
    "width": int,
    "num_frames": int,
    "num_inference_steps": int,
    "guidance_scale": float,
    "embedded_guidance_scale": float,
    "guidance_scale_2": float,
    "seed": int,
    "sequence_batch": _parse_bool,
    "lora_scale": float,
}


def _parse_or_none(parse: Callable[[str], Any], text: Any) -> Any:
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        return parse(text.strip())
    except ValueError:
        return None


def _cache_as_recorded(cell: str) -> str | None:
    """A rejected row's cache: canonical when it parses (``none`` is no cache), else as written, cut to the
    column's 64 characters (PostgreSQL refuses a longer value)."""
    try:
        return parse_cache(cell)
    except ValueError:
        return cell[:64] or None


def rejected_row_values(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A rejected row's cells (``raw_cells`` / ``row_cells``) as the values of its ``samples`` columns: typed
    where a cell parses (None where it is empty or does not), prompts as written, ``id`` as ``row_id``."""

    def text(column: str) -> str:
        value = raw.get(column)
        return value if isinstance(value, str) else ""

    values = {column: _parse_or_none(parse, raw.get(column)) for column, parse in _TYPED_CELLS.items()}
    values["prompt"] = text("prompt")
    values["negative_prompt"] = text("negative_prompt")
    values["row_id"] = text("id") or None
    values["image"] = text("image") or None
    values["last_image"] = text("last_image") or None
    values["cache"] = _cache_as_recorded(text("cache"))
    values["lora"] = text("lora") or None
    return values
