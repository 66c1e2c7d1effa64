"""What reading a manifest produces and works with: its columns, limits, header, result and file-level error.

Everything else in ``reelbatch.manifest`` builds on this module; it imports none of them.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from reelbatch.models.catalog import ModelCatalog
from reelbatch.schemas import ManifestRow, RowRejection

# The manifest's columns, in the order a row's problems are looked for (``cells.COLUMN_PARSERS`` has one parser
# per column). A new column is one name here, one parser there and a ManifestRow field of the same name.
COLUMNS = (
    "id",
    "prompt",
    "negative_prompt",
    "model",
    "height",
    "width",
    "num_frames",
    "num_inference_steps",
    "guidance_scale",
    "embedded_guidance_scale",
    "seed",
    "num_videos",
    "sequence_batch",
    "plan",
    "backend",
    "guidance_scale_2",
    "image",
    "last_image",
    "cache",
    "lora",
    "lora_scale",
)
# ManifestRow's fields that are not columns: the images' hashes (set by intake, tasks/images.py), the recipe's
# flow shift (resolved with the model's defaults) and the LoRA file's hash (set by intake, manifest/loras.py).
RESOLVED_FIELDS = ("image_sha256", "last_image_sha256", "flow_shift", "lora_sha256")
if list(ManifestRow.model_fields) != ["row", *COLUMNS, *RESOLVED_FIELDS]:
    raise ImportError("manifest: COLUMNS must list ManifestRow's fields after 'row', in the same order")
# Columns whose empty cells, with no run default, take the row's model's default: see checks.fill_model_defaults.
MODEL_DEFAULTED = ("negative_prompt", "num_inference_steps", "guidance_scale")
# Inputs only some models take: an empty cell takes the run's default only for a model that takes it.
MODEL_OPTIONAL = ("embedded_guidance_scale", "guidance_scale_2")

# The models a manifest may name: a catalog (its families say what empty cells become), or bare names (registry
# families then, a fallback for others).
Models = ModelCatalog | Collection[str]

MAX_SEED = 2**63 - 1
# Far beyond any real line or cell (prompts are limited to thousands of characters), yet small enough that a
# binary file without line breaks or a runaway quote cannot exhaust memory.
MAX_LINE_CHARS = 16 * 1024 * 1024
MAX_FIELD_CHARS = 16 * 1024 * 1024
# A rejected row's cells are kept for the database up to this many characters each.
RAW_CELL_CHARS = 4000


class ManifestError(Exception):
    """File-level problem: one clear sentence, no traceback for the user (the CLI prints str(e))."""


@dataclass(frozen=True)
class ManifestLimits:
    max_prompt_chars: int = 2000
    max_rows: int = 1_000_000
    max_num_videos: int = 64
    max_frames: int = 1025
    max_side: int = 2048  # pixels, height and width
    max_steps: int = 1000
    max_image_bytes: int = 32 * 1024 * 1024  # an image / last_image file
    max_image_side: int = 4096  # pixels, width and height of an input image
    max_lora_bytes: int = 2 * 1024**3  # a LoRA file (read once at intake, then staged)


@dataclass(frozen=True)
class Header:
    width: int
    positions: dict[str, int]  # known column -> cell index
    unknown: tuple[str, ...] = ()  # named columns that are not manifest columns (ignored, with a warning)

    def cell(self, record: list[str], column: str) -> str:
        position = self.positions.get(column)
        return record[position].strip() if position is not None and position < len(record) else ""


@dataclass(eq=False)
class ManifestReadResult:
    rows: Sequence[ManifestRow]  # valid rows, defaults applied: a list, or a rows.RowTable from the fast path
    rejections: list[RowRejection]  # exactly one per bad row, so total_rows == len(rows) + len(rejections)
    total_rows: int  # data rows seen (valid + rejected); blank lines are not rows
    digest: str | Sha256Of  # see ``sha256``
    source: str  # path, URL or "<inline>"
    # The cells of each rejected row as written (cut to RAW_CELL_CHARS), so the database can show them.
    raw_rows: dict[int, dict[str, str]] = field(default_factory=dict)
    unknown_columns: list[str] = field(default_factory=list)  # header names that are not manifest columns

    @property
    def warnings(self) -> list[str]:
        """One line per column reelbatch ignores, naming the closest known column."""
        return [unknown_column_warning(name) for name in self.unknown_columns]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ManifestReadResult):
            return NotImplemented
        return (list(self.rows), self.rejections, self.total_rows, self.sha256, self.source, self.raw_rows) == (
            list(other.rows),
            other.rejections,
            other.total_rows,
            other.sha256,
            other.source,
            other.raw_rows,
        )

    @property
    def sha256(self) -> str:
        """Hex digest of the raw bytes of the manifest: made when first asked for (recording a run needs it,
        validating and planning do not)."""
        if not isinstance(self.digest, str):
            self.digest = self.digest()
        return self.digest


class Sha256Of:
    """The SHA-256 hex digest of ``data``, computed when called."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __call__(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def unknown_column_warning(name: str) -> str:
    close = difflib.get_close_matches(name, list(COLUMNS), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else f"; manifest columns: {', '.join(COLUMNS)}"
    return f"column {name!r} is not a manifest column and is ignored{hint}"


def check_columns(result: ManifestReadResult, strict: bool) -> None:
    """Under --strict, a column reelbatch would ignore refuses the run (a misspelt column is a silent default)."""
    if strict and result.unknown_columns:
        raise ManifestError(f"--strict: {'; '.join(result.warnings)}")
