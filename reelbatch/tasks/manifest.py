"""Read a CSV manifest of video prompts and validate every row.

File-level problems (not UTF-8, no header, no ``prompt`` column, ...) raise ``ManifestError`` carrying one
sentence for the user. Row-level problems never raise: each bad row becomes one ``RowRejection`` naming the
line, the column, a rule id and a concrete fix, and the good rows still run.

A CSV file of up to ``COLUMNAR_MAX_BYTES`` is read whole and, when it is regular, checked column by column
(``tasks.manifest_columnar``: same results, far faster). Any other file is streamed: bytes are hashed and decoded
chunk by chunk and only the current line is held, so memory stays bounded however large the manifest is (apart
from the returned rows themselves).
"""

from __future__ import annotations

import codecs
import csv
import difflib
import hashlib
import io
import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, get_args

import fsspec
from pydantic import BaseModel, TypeAdapter, ValidationError, ValidationInfo, create_model, field_validator

from reelbatch.infra.storage import INLINE_SOURCE, redact_secrets, redact_text, redact_url
from reelbatch.models.pipelines import GenerationDefaults
from reelbatch.models.catalog import ModelCatalog, UnknownModel
from reelbatch.models.registry import FAMILIES, ModelFamily
from reelbatch.schemas import Backend, ManifestRow, ParallelPlan, RowRejection, RunDefaults, many_models, trusted

MAX_SEED = 2**63 - 1

# Far beyond any real line or cell (prompts are limited to thousands of characters), yet small enough that a
# binary file without line breaks or a runaway quote cannot exhaust memory.
_MAX_LINE_CHARS = 16 * 1024 * 1024
_MAX_FIELD_CHARS = 16 * 1024 * 1024
_READ_CHUNK_BYTES = 64 * 1024
_QUOTED_VALUE_CHARS = 40


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
            list(other.rows), other.rejections, other.total_rows, other.sha256, other.source, other.raw_rows)

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


RAW_CELL_CHARS = 4000


# --------------------------------------------------------------------------------------------------------------
# Cells: one parser per column
# --------------------------------------------------------------------------------------------------------------


class _CellProblem(ValueError):
    """Raised by a column parser; pydantic collects it and keeps the instance in the error's ``ctx``."""

    def __init__(self, rule: str, message: str, fix: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message
        self.fix = fix


@dataclass(frozen=True)
class _RowContext:
    defaults: RunDefaults
    limits: ManifestLimits
    known_models: frozenset[str]
    families: Mapping[str, ModelFamily] = field(default_factory=dict)  # what empty cells become, per model

    @classmethod
    def of(cls, defaults: RunDefaults, limits: ManifestLimits, models: Models) -> _RowContext:
        if isinstance(models, ModelCatalog):
            families = {}
            for name in models.names():
                try:
                    families[name] = models.family(name)
                except UnknownModel:
                    pass  # planning rejects its rows; their cells take the fallback defaults meanwhile
            return cls(defaults, limits, frozenset(models.names()), families)
        known = frozenset(models)
        return cls(defaults, limits, known, {name: FAMILIES[name] for name in known if name in FAMILIES})


# The models a manifest may name: a catalog (its families say what empty cells become), or bare names (registry
# families then, the fallback below for others).
Models = ModelCatalog | Collection[str]
_FALLBACK_DEFAULTS = GenerationDefaults()


_WHOLE_NUMBER = re.compile(r"(?P<sign>[+-]?)(?P<digits>[0-9]+)(?:\.0*)?")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# Longer numbers are outside every limit anyway, and int() refuses strings of more than 4300 digits.
_MAX_DIGITS = 40
_TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
_FALSE_WORDS = frozenset({"false", "0", "no", "off"})
# Examples for fixes of columns whose run default is None.
_FALLBACK_EXAMPLES: dict[str, object] = {"seed": 42, "embedded_guidance_scale": 6.0}


def _quote(value: object) -> str:
    """The value as the user wrote it (but the secrets of URLs in it), shortened and kept on one line, quoted."""
    text = redact_secrets(str(value))
    if len(text) > _QUOTED_VALUE_CHARS:
        text = text[: _QUOTED_VALUE_CHARS - 3] + "..."
    text = "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)
    return f'"{text}"'


def _example(column: str, context: _RowContext) -> object:
    default = getattr(context.defaults, column, None)
    return default if default is not None else _FALLBACK_EXAMPLES.get(column, 1)


def _nearest_allowed(value: int, *, step: int, offset: int, low: int, high: int) -> list[int]:
    """The allowed values (offset + k*step, within low..high) nearest to value: the one below and the one above."""
    first = low + (offset - low) % step
    last = high - (high - offset) % step
    if first > last:
        return []
    clamped = min(max(value, first), last)
    below = clamped - (clamped - offset) % step
    above = below if below == clamped else below + step
    return sorted({below, above})


def _use_one_of(values: list[int]) -> str:
    if not values:
        return "raise the configured limit: no value fits it"
    return "use " + " or ".join(str(value) for value in values)


def _whole_number(value: object, column: str, context: _RowContext) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _WHOLE_NUMBER.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise _CellProblem(
            "not_integer",
            f"{column} {_quote(value)} is not a whole number",
            f"write a whole number such as {_example(column, context)}",
        )
    digits = match["digits"].lstrip("0") or "0"
    if len(digits) > _MAX_DIGITS:
        digits = "9" * _MAX_DIGITS
    number = int(digits)
    return -number if match["sign"] == "-" else number


def _finite_number(value: object, column: str, context: _RowContext) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str) and _NUMBER.fullmatch(value):
        number = float(value)
    else:
        number = math.nan
    if not math.isfinite(number):
        raise _CellProblem(
            "not_a_number",
            f"{column} {_quote(value)} is not a finite number",
            f"write a number such as {_example(column, context)}",
        )
    return number


def _parse_id(value: object, column: str, context: _RowContext) -> str | None:
    if value is None:
        return None
    return _checked_text(str(value), column, context)


def _parse_prompt(value: object, column: str, context: _RowContext) -> str:
    if not value:
        raise _CellProblem("empty_prompt", "prompt is empty", "write a prompt or delete the row")
    return _checked_text(str(value), column, context)


def _parse_negative_prompt(value: object, column: str, context: _RowContext) -> str | None:
    if value is None:
        return None  # the model's default, filled in once the row's model is known
    return _checked_text(str(value), column, context)


def _checked_text(text: str, column: str, context: _RowContext) -> str:
    if "\x00" in text:
        raise _CellProblem("nul_character", f"{column} {_quote(text)} contains a NUL character", "remove it")
    limit = context.limits.max_prompt_chars
    if len(text) > limit:
        raise _CellProblem(
            "prompt_too_long",
            f"{column} {_quote(text)} is {len(text):,} characters long, over the limit of {limit:,}",
            f"shorten it to at most {limit:,} characters",
        )
    return text


def _parse_model(value: object, column: str, context: _RowContext) -> str:
    if value in context.known_models:
        return str(value)
    known = sorted(context.known_models)
    if not known:
        fix = "register a model first: none is known"
    elif len(known) == 1:
        fix = f"use {known[0]}"
    else:
        fix = "use one of: " + ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
    raise _CellProblem("unknown_model", f"model {_quote(value)} is not a known model", fix)


def _parse_side(value: object, column: str, context: _RowContext) -> int:
    side = _whole_number(value, column, context)
    max_side = context.limits.max_side
    if side < 1:
        rule, problem = "size_not_positive", "is not a positive number of pixels"
    elif side > max_side:
        rule, problem = "size_too_large", f"is larger than the limit of {max_side} pixels"
    elif side % 16:
        rule, problem = "size_not_multiple_of_16", "is not a multiple of 16"
    else:
        return side
    allowed = _nearest_allowed(side, step=16, offset=0, low=16, high=max_side)
    raise _CellProblem(rule, f"{column} {_quote(value)} {problem}", _use_one_of(allowed))


def _parse_num_frames(value: object, column: str, context: _RowContext) -> int:
    frames = _whole_number(value, column, context)
    max_frames = context.limits.max_frames
    if frames < 1:
        rule, problem = "frames_not_positive", "is less than 1"
    elif frames > max_frames:
        rule, problem = "frames_too_many", f"is more than the limit of {max_frames}"
    elif (frames - 1) % 4:
        rule, problem = "frames_not_4k_plus_1", "is not one more than a multiple of 4 (4k+1, e.g. 81)"
    else:
        return frames
    allowed = _nearest_allowed(frames, step=4, offset=1, low=1, high=max_frames)
    raise _CellProblem(rule, f"{column} {_quote(value)} {problem}", _use_one_of(allowed))


def _parse_steps(value: object, column: str, context: _RowContext) -> int | None:
    if value is None:
        return None  # the model's default, filled in once the row's model is known
    steps = _whole_number(value, column, context)
    max_steps = context.limits.max_steps
    if not 1 <= steps <= max_steps:
        raise _CellProblem(
            "steps_out_of_range",
            f"{column} {_quote(value)} is outside 1 to {max_steps}",
            f"use a whole number from 1 to {max_steps}",
        )
    return steps


def _parse_guidance(value: object, column: str, context: _RowContext) -> float | None:
    if value is None:
        return None
    scale = _finite_number(value, column, context)
    if scale < 0:
        raise _CellProblem(
            "negative_guidance",
            f"{column} {_quote(value)} is negative",
            f"use 0 or a positive number such as {_example(column, context)}",
        )
    return scale


def _parse_seed(value: object, column: str, context: _RowContext) -> int | None:
    if value is None:
        return None
    seed = _whole_number(value, column, context)
    if not 0 <= seed <= MAX_SEED:
        raise _CellProblem(
            "seed_out_of_range",
            f"seed {_quote(value)} is outside 0 to {MAX_SEED}",
            f"use a whole number from 0 to {MAX_SEED}",
        )
    return seed


def _parse_num_videos(value: object, column: str, context: _RowContext) -> int:
    count = _whole_number(value, column, context)
    limit = context.limits.max_num_videos
    if count < 1:
        rule, problem = "too_few_videos", "is less than 1"
    elif count > limit:
        rule, problem = "too_many_videos", f"is more than the limit of {limit}"
    else:
        return count
    raise _CellProblem(
        rule, f"{column} {_quote(value)} {problem}", f"use a whole number from 1 to {limit}, or split the row"
    )


def _parse_flag(value: object, column: str, context: _RowContext) -> bool:
    if isinstance(value, bool):
        return value
    word = str(value).lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise _CellProblem("not_boolean", f"{column} {_quote(value)} is not true or false", "use true or false")


BACKENDS = get_args(Backend)


def _parse_image(value: object, column: str, context: _RowContext) -> str | None:
    """A path or URL as written; where it may be read from and whether it is an image is intake's business
    (tasks/images.py), which reads it before any GPU time. A URL that carries a secret (a user name or password,
    a query string such as a signature) is refused here, so it reaches no message, database row or page."""
    if value is None:
        return None
    text = str(value)
    links = [link.split("://", 1)[1] for link in text.split("::") if "://" in link]
    if any("@" in link.split("/", 1)[0] for link in links):
        raise _CellProblem(
            "image_credentials_in_url", f"{column}: the URL carries a user name or password",
            "remove them: credentials come from the standard AWS variables or a profile, never from the manifest")
    if links and "?" in text:
        raise _CellProblem(
            "image_url_query", f"{column}: the URL has a query string (it may carry a signature)",
            "give the object's plain URL (s3://bucket/key) and let the storage credentials sign the read")
    return _checked_text(text, column, context)


def _parse_plan(value: object, column: str, context: _RowContext) -> ParallelPlan | None:
    if value is None or isinstance(value, ParallelPlan):
        return value
    try:
        return ParallelPlan.parse(str(value))
    except ValueError as error:
        raise _CellProblem(
            "bad_plan",
            f"{column} {_quote(value)}: {error}",
            "write it like dp=2,cfg=2,ulysses=1,ring=1, or leave the cell empty to let reelbatch choose",
        ) from None


def _parse_backend(value: object, column: str, context: _RowContext) -> str:
    backend = str(value).strip().lower()
    if backend not in BACKENDS:
        raise _CellProblem(
            "unknown_backend", f"{column} {_quote(value)} is not a parallel backend", f"use one of: {', '.join(BACKENDS)}"
        )
    return backend


ColumnParser = Callable[[object, str, _RowContext], object]

# The manifest's columns, in the order a row's problems are looked for. A parser receives the stripped cell, or
# the run default when the cell is empty, and returns the value for the ManifestRow field of the same name.
# A new column (``plan``, ``backend``) is one entry here plus a field of that name on ManifestRow (and on
# RunDefaults if the run gives it a default).
COLUMN_PARSERS: dict[str, ColumnParser] = {
    "id": _parse_id,
    "prompt": _parse_prompt,
    "negative_prompt": _parse_negative_prompt,
    "model": _parse_model,
    "height": _parse_side,
    "width": _parse_side,
    "num_frames": _parse_num_frames,
    "num_inference_steps": _parse_steps,
    "guidance_scale": _parse_guidance,
    "embedded_guidance_scale": _parse_guidance,
    "seed": _parse_seed,
    "num_videos": _parse_num_videos,
    "sequence_batch": _parse_flag,
    "plan": _parse_plan,
    "backend": _parse_backend,
    "guidance_scale_2": _parse_guidance,
    "image": _parse_image,
    "last_image": _parse_image,
}

# Columns whose empty cells, with no run default, take the row's model's default: see _fill_model_defaults.
_MODEL_DEFAULTED = ("negative_prompt", "num_inference_steps", "guidance_scale")
# Inputs only some models take: an empty cell takes the run's default only for a model that takes it.
_MODEL_OPTIONAL = ("embedded_guidance_scale", "guidance_scale_2")


def _fill_model_defaults(values: dict[str, object], context: _RowContext, empty_cells: Collection[str]) -> None:
    """Empty cells with no run default take the row's model's default (``reelbatch models show NAME``), and the
    model's recipe is resolved (``flow_shift``, and a two-expert model's ``guidance_scale_2`` when empty: the
    pipeline's rule, the same as ``guidance_scale``). ``empty_cells``: which of _MODEL_OPTIONAL had an empty cell
    (their value, if any, is the run's default). ``values`` may lack per-row columns (the columnar reader's
    shapes): those are left alone."""
    family = context.families.get(values["model"])  # type: ignore[call-overload]
    defaults = family.defaults if family is not None else _FALLBACK_DEFAULTS
    for column in _MODEL_DEFAULTED:
        if column in values and values[column] is None:
            values[column] = getattr(defaults, column)
    takes = {
        "embedded_guidance_scale": family is not None and family.guidance_embedding,
        "guidance_scale_2": family is not None and family.experts == 2,
    }
    for column in _MODEL_OPTIONAL:
        if column in empty_cells and not takes[column]:
            values[column] = None  # a run default for a model without that input
        if values[column] is None:
            values[column] = getattr(defaults, column)
    if takes["guidance_scale_2"] and values["guidance_scale_2"] is None:
        values["guidance_scale_2"] = values["guidance_scale"]
    if values.get("negative_prompt") == "" and drops_true_cfg(family, values["guidance_scale"]):
        values["guidance_scale"] = 1.0
    height, width = values["height"], values["width"]
    sized = isinstance(height, int) and isinstance(width, int)
    values["flow_shift"] = defaults.flow_shift_for(height, width) if sized else None  # type: ignore[arg-type]


def drops_true_cfg(family: ModelFamily | None, guidance: object) -> bool:
    """Whether a row's guidance is true CFG that its pipeline skips for want of a negative prompt (HunyuanVideo
    pipelines run true CFG only against one): such a row runs, and is recorded, at guidance 1 (the same video, so
    the same identity, and planned without a CFG pass)."""
    return family is not None and family.true_cfg and isinstance(guidance, float) and guidance > 1.0


def _frame_problem(values: Mapping[str, object], line: int) -> RowRejection | None:
    """A last frame needs a first one (every pipeline that takes ``last_image`` takes it after ``image``)."""
    if values["last_image"] is not None and values["image"] is None:
        return RowRejection(
            row=line, column="last_image", rule="last_image_without_image",
            message="last_image is given but image (the first frame) is empty",
            fix="add the first frame in the image column, or leave last_image empty")
    return None


def raw_cells(header: _Header, record: list[str]) -> dict[str, str]:
    """The cells of a rejected row as written (cut to RAW_CELL_CHARS), the secrets of URLs in them cut out."""
    return {c: redact_secrets(header.cell(record, c))[:RAW_CELL_CHARS] for c in header.positions}


def row_cells(row: ManifestRow) -> dict[str, str]:
    """A row's values as the text of its cells (for the database's view of a row rejected after reading)."""
    return {column: redact_secrets(str(value))[:RAW_CELL_CHARS] for column in COLUMN_PARSERS
            if (value := getattr(row, column)) is not None}


def unknown_column_warning(name: str) -> str:
    close = difflib.get_close_matches(name, list(COLUMN_PARSERS), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else f"; manifest columns: {', '.join(COLUMN_PARSERS)}"
    return f"column {name!r} is not a manifest column and is ignored{hint}"


def check_columns(result: ManifestReadResult, strict: bool) -> None:
    """Under --strict, a column reelbatch would ignore refuses the run (a misspelt column is a silent default)."""
    if strict and result.unknown_columns:
        raise ManifestError(f"--strict: {'; '.join(result.warnings)}")


class _RowCellsBase(BaseModel):
    @field_validator("*", mode="before")
    @classmethod
    def _parse_cell(cls, value: object, info: ValidationInfo) -> object:
        return COLUMN_PARSERS[info.field_name](value, info.field_name, info.context)


# Field types are ManifestRow's, so pydantic checks each parser's output against the schema the rows must meet.
def _cell_type(column: str) -> object:
    annotation = ManifestRow.model_fields[column].annotation
    return annotation | None if column in _MODEL_DEFAULTED else annotation


_RowCells = create_model(
    "_RowCells",
    __base__=_RowCellsBase,
    **{column: (_cell_type(column), ...) for column in COLUMN_PARSERS},
)
_COLUMNS_WITH_RUN_DEFAULT = frozenset(COLUMN_PARSERS) & frozenset(RunDefaults.model_fields)


# --------------------------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Header:
    width: int
    positions: dict[str, int]  # known column -> cell index
    unknown: tuple[str, ...] = ()  # named columns that are not manifest columns (ignored, with a warning)

    def cell(self, record: list[str], column: str) -> str:
        position = self.positions.get(column)
        return record[position].strip() if position is not None and position < len(record) else ""


def _check_record(
    record: list[str], line: int, header: _Header, context: _RowContext, first_line_of_id: dict[str, int]
) -> ManifestRow | RowRejection:
    # Every id is registered, even on rows rejected for something else: fixing that row must not create a clash.
    row_id = header.cell(record, "id")
    first_line_with_id = first_line_of_id.setdefault(row_id, line) if row_id else line

    extra_cells = [cell for cell in record[header.width :] if cell.strip()]
    if extra_cells:
        return RowRejection(
            row=line,
            column=None,
            rule="extra_cells",
            message=(
                f"the row has {len(record)} cells but the header has {header.width} columns"
                f" (first extra cell: {_quote(extra_cells[0].strip())})"
            ),
            fix="put double quotes around cells that contain commas, or delete the extra cells",
        )

    values: dict[str, object] = {}
    defaulted: set[str] = set()
    for column in COLUMN_PARSERS:
        cell = header.cell(record, column)
        if cell:
            values[column] = cell
        elif column in _COLUMNS_WITH_RUN_DEFAULT:
            values[column] = getattr(context.defaults, column)
            defaulted.add(column)
        else:
            values[column] = None
    try:
        cells = _RowCells.model_validate(values, context=context)
    except ValidationError as error:
        return _rejection_from(error, line, defaulted)

    if first_line_with_id != line:
        return RowRejection(
            row=line,
            column="id",
            rule="duplicate_id",
            message=f"id {_quote(row_id)} is already used by the row on line {first_line_with_id}",
            fix="give this row a different id, or leave its id cell empty",
        )
    problem = _frame_problem(cells.__dict__, line)
    if problem is not None:
        return problem
    values = {**cells.__dict__, **dict.fromkeys(RESOLVED_FIELDS)}
    _fill_model_defaults(values, context, defaulted)
    return ManifestRow(row=line, **values)


def _rejection_from(error: ValidationError, line: int, defaulted: set[str]) -> RowRejection:
    first = error.errors(include_url=False)[0]
    column = str(first["loc"][0]) if first["loc"] else None
    problem = first.get("ctx", {}).get("error")
    if isinstance(problem, _CellProblem):
        rule, message, fix = problem.rule, problem.message, problem.fix
    else:  # a parser returned the wrong type: a bug here, but the row still gets a readable rejection
        rule, message, fix = first["type"], f"{column}: {first['msg']}", f"correct the {column} cell"
    if column in defaulted:
        message += " (this is the run default, used because the cell is empty)"
    return RowRejection(row=line, column=column, rule=rule, message=message, fix=fix)


# Columns whose cells are mostly different on every row: remembering them would only cost memory.
_UNREPEATED_COLUMNS = frozenset({"id", "prompt", "seed"})
_REMEMBERED_CELLS = 10_000  # per column: bounds the memory a hostile file can make the reader hold
_ROW_FIELDS = set(ManifestRow.model_fields)
# ManifestRow's fields that are not columns: the images' hashes (set by intake, tasks/images.py) and the recipe's
# flow shift (resolved with the model's defaults).
RESOLVED_FIELDS = ("image_sha256", "last_image_sha256", "flow_shift")
if list(ManifestRow.model_fields) != ["row", *COLUMN_PARSERS, *RESOLVED_FIELDS]:
    raise ImportError("manifest: COLUMN_PARSERS must list ManifestRow's fields after 'row', in the same order")
_CELL_TYPES = {column: TypeAdapter(_cell_type(column)) for column in COLUMN_PARSERS}
_FAILED = object()
_ABSENT = 2**62  # the position of a column the header lacks: past the end of every record


class _RowChecker:
    """``_check_record`` for one file, fast on rows that pass; a row with any problem is handed to it.

    A cell's value depends only on its column and its text (defaults and limits are the file's), so a cell that
    repeats, like a model name or a size, is parsed and type-checked once. The row is built from values that
    have passed exactly the checks ``_check_record`` applies, so it is not validated a second time. Rows with a
    problem (a bad cell, extra cells, an id already used) go through ``_check_record``, which writes the
    rejection; a rejected row is rare, so that costs nothing overall.
    """

    def __init__(self, header: _Header, context: _RowContext, first_line_of_id: dict[str, int]) -> None:
        self._header = header
        self._context = context
        self._first_line_of_id = first_line_of_id
        self._id_position = header.positions.get("id", _ABSENT)
        self._columns = [
            (column, header.positions.get(column, _ABSENT), None if column in _UNREPEATED_COLUMNS else {})
            for column in COLUMN_PARSERS
        ]
        self._optional = [(column, header.positions.get(column, _ABSENT)) for column in _MODEL_OPTIONAL]

    def check(self, record: list[str], line: int) -> ManifestRow | RowRejection:
        cells = len(record)
        if cells > self._header.width and any(cell.strip() for cell in record[self._header.width :]):
            return self._reference(record, line)
        if self._id_position < cells:
            row_id = record[self._id_position].strip()
            if row_id and self._first_line_of_id.setdefault(row_id, line) != line:
                return self._reference(record, line)
        values: dict[str, object] = {"row": line}
        for column, position, seen in self._columns:
            cell = record[position] if position < cells else ""
            value = _FAILED if seen is None else seen.get(cell, _FAILED)
            if value is _FAILED:
                value = self._parse(column, cell, seen)
                if value is _FAILED:
                    return self._reference(record, line)
            values[column] = value
        if values["last_image"] is not None and values["image"] is None:
            return self._reference(record, line)
        for name in RESOLVED_FIELDS:
            values[name] = None
        empty = [column for column, position in self._optional if position >= cells or not record[position].strip()]
        _fill_model_defaults(values, self._context, empty)
        return trusted(ManifestRow, values, _ROW_FIELDS)

    def _parse(self, column: str, cell: str, seen: dict[str, object] | None) -> object:
        text = cell.strip()
        if text:
            value: object = text
        elif column in _COLUMNS_WITH_RUN_DEFAULT:
            value = getattr(self._context.defaults, column)
        else:
            value = None
        try:
            value = COLUMN_PARSERS[column](value, column, self._context)
            if seen is None:
                # id, prompt and seed parsers return str, str and int by construction: no type check per row.
                return value
            value = _CELL_TYPES[column].validate_python(value)
        except Exception:  # the reference path turns it into the same rejection, or raises it the same way
            return _FAILED
        if len(seen) < _REMEMBERED_CELLS:
            seen[cell] = value
        return value

    def _reference(self, record: list[str], line: int) -> ManifestRow | RowRejection:
        return _check_record(record, line, self._header, self._context, self._first_line_of_id)


# --------------------------------------------------------------------------------------------------------------
# File
# --------------------------------------------------------------------------------------------------------------

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class _HashingLineReader:
    """Decodes a UTF-8 byte stream into lines for csv.reader, hashing every byte as it is read.

    Lines keep their endings and break only at \\r\\n, \\r or \\n (what ``open(newline="")`` gives), so
    csv.reader sees quoted line breaks intact and its ``line_num`` counts the file's physical lines.
    """

    def __init__(self, stream: BinaryIO, subject: str) -> None:
        self._stream = stream
        self._subject = subject
        self._hash = hashlib.sha256()
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._bytes_decoded = 0
        self._lines_yielded = 0
        self._partial_line: list[str] = []
        self._partial_line_chars = 0
        self._held_carriage_return = ""
        self.exhausted = False

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def __iter__(self) -> Iterator[str]:
        at_start = True
        while True:
            chunk = self._stream.read(_READ_CHUNK_BYTES)
            final = not chunk
            self._hash.update(chunk)
            text = self._decode(chunk, final)
            if at_start and text:
                text = text.removeprefix("\ufeff")
                at_start = False
            for line in self._split(text, final):
                self._lines_yielded += 1
                if "\x00" in line:
                    raise ManifestError(
                        f"{self._subject} contains a NUL byte on line {self._lines_yielded}:"
                        " it looks like a binary or UTF-16 file, not a UTF-8 CSV file"
                    )
                yield line
            if final:
                self.exhausted = True
                return

    def _decode(self, chunk: bytes, final: bool) -> str:
        undecoded_tail = self._decoder.getstate()[0]
        try:
            text = self._decoder.decode(chunk, final)
        except UnicodeDecodeError as error:
            raise self._not_utf8(undecoded_tail + chunk, error.start, len(undecoded_tail)) from None
        self._bytes_decoded += len(chunk)
        return text

    def _not_utf8(self, data: bytes, bad_index: int, carried_bytes: int) -> ManifestError:
        offset = self._bytes_decoded - carried_bytes + bad_index
        text_before = self._held_carriage_return + data[:bad_index].decode("utf-8")
        line = self._lines_yielded + 1 + len(_LINE_BREAK.findall(text_before))
        return ManifestError(
            f"{self._subject} is not UTF-8 text: the byte 0x{data[bad_index]:02X} at offset {offset} (line {line})"
            ' cannot be decoded; save the file as UTF-8 (in Excel: "CSV UTF-8")'
        )

    def _split(self, text: str, final: bool) -> Iterator[str]:
        text = self._held_carriage_return + text
        self._held_carriage_return = ""
        if text.endswith("\r") and not final:
            # The \n of a \r\n may start the next chunk.
            text, self._held_carriage_return = text[:-1], "\r"
        start = 0
        for line_break in _LINE_BREAK.finditer(text):
            yield self._take_partial_line() + text[start : line_break.end()]
            start = line_break.end()
        if start < len(text):
            self._partial_line.append(text[start:])
            self._partial_line_chars += len(text) - start
            if self._partial_line_chars > _MAX_LINE_CHARS:
                raise ManifestError(
                    f"{self._subject} has a line longer than {_MAX_LINE_CHARS:,} characters"
                    f" (line {self._lines_yielded + 1}): it does not look like a CSV file"
                )
        if final and self._partial_line:
            yield self._take_partial_line()

    def _take_partial_line(self) -> str:
        if not self._partial_line:
            return ""
        text = "".join(self._partial_line)
        self._partial_line.clear()
        self._partial_line_chars = 0
        return text


def _allow_large_csv_fields() -> None:
    # Huge cells must reach validation (and be rejected as too long) instead of failing inside csv. The limit is
    # process-wide, so it is only ever raised, never restored: that stays safe with readers in other threads.
    if csv.field_size_limit() < _MAX_FIELD_CHARS:
        csv.field_size_limit(_MAX_FIELD_CHARS)


def _records(reader: Iterator[list[str]], lines: _HashingLineReader, subject: str) -> Iterator[tuple[int, list[str]]]:
    """Yields (line the record starts on, cells) for every record that is not blank."""
    while True:
        start_line = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise ManifestError(f"{subject} is not valid CSV near line {reader.line_num}: {error}") from None
        if lines.exhausted:
            # csv.reader only asks for more input mid-record while inside quotes, and gives up silently at the end.
            raise ManifestError(
                f"{subject} has a quoted cell in the row starting on line {start_line} that is never closed:"
                ' add the missing closing double quote (")'
            )
        if any(cell.strip() for cell in record):
            yield start_line, record


def _read_header(record: list[str], subject: str) -> _Header:
    names = [cell.strip().lower() for cell in record]
    if "prompt" not in names:
        raise ManifestError(f"{subject} has no 'prompt' column: the header row has {_list_names(names)}")
    duplicates = sorted(name for name, count in Counter(names).items() if name and count > 1)
    if duplicates:
        raise ManifestError(f"{subject} has duplicate column names: {_list_names(duplicates)}")
    positions = {name: position for position, name in enumerate(names) if name in COLUMN_PARSERS}
    unknown = tuple(name for name in names if name and name not in COLUMN_PARSERS)
    return _Header(width=len(names), positions=positions, unknown=unknown)


def _list_names(names: list[str], shown: int = 10) -> str:
    listed = ", ".join(_quote(name) for name in names[:shown])
    return listed + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _subject(source: str) -> str:
    return "The manifest" if source == INLINE_SOURCE else f"Manifest {source}"


# A CSV manifest up to this size is read whole and tried on the columnar fast path (tasks.manifest_columnar); a
# bigger one, or one that is not regular, is streamed through the line reader below.
COLUMNAR_MAX_BYTES = 128 * 1024 * 1024


class _PrefixedStream(io.RawIOBase):
    """``prefix`` (bytes already read) followed by the rest of ``stream``."""

    def __init__(self, prefix: bytes, stream: BinaryIO) -> None:
        self._prefix = memoryview(prefix)
        self._stream = stream

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._prefix is not None:
            size = len(self._prefix) if size is None or size < 0 else size
            taken, self._prefix = bytes(self._prefix[:size]), self._prefix[size:]
            if not self._prefix:
                self._prefix = None  # lets go of the prefix's bytes (an empty view would keep them alive)
            return taken
        return self._stream.read(size)


def _size_of(stream: BinaryIO) -> int | None:
    size = getattr(stream, "size", None)  # fsspec's remote files
    if isinstance(size, int):
        return size
    try:
        return os.fstat(stream.fileno()).st_size
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


def _read_at_most(stream: BinaryIO, limit: int) -> bytes:
    """Up to ``limit + 1`` bytes: all of them when the stream is no longer than ``limit``."""
    size = _size_of(stream)
    # Asking for the size (plus one byte, to see the end) spares a read buffer of ``limit`` bytes.
    chunks = [stream.read(limit + 1 if size is None else min(size + 1, limit + 1))]
    size = len(chunks[0])
    while chunks[-1] and size <= limit:  # a stream may return less than asked before its end
        chunks.append(stream.read(limit + 1 - size))
        size += len(chunks[-1])
    chunks = [chunk for chunk in chunks if chunk]
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)  # (no copy of a file read in one go)


def _parse_csv(
    stream: BinaryIO, defaults: RunDefaults, known_models: Models, limits: ManifestLimits, source: str,
    columnar: bool = True,
) -> ManifestReadResult:
    """The columnar fast path when the file is small enough and regular, else the line reader: same results."""
    if not columnar:
        return _parse_stream(stream, defaults, known_models, limits, source)
    head = _read_at_most(stream, COLUMNAR_MAX_BYTES)
    if len(head) > COLUMNAR_MAX_BYTES:
        stream = _PrefixedStream(head, stream)
        del head  # the stream owns the prefix now, and frees it once it is read
        return _parse_stream(stream, defaults, known_models, limits, source)
    from reelbatch.tasks.manifest_columnar import read_columnar  # it builds on this module

    result = read_columnar(head, defaults, known_models, limits, source, Sha256Of(head))
    if result is not None:
        return result
    return _parse_stream(io.BytesIO(head), defaults, known_models, limits, source)


def _parse_stream(
    stream: BinaryIO, defaults: RunDefaults, known_models: Models, limits: ManifestLimits, source: str
) -> ManifestReadResult:
    subject = _subject(source)
    _allow_large_csv_fields()
    lines = _HashingLineReader(stream, subject)
    records = _records(csv.reader(lines), lines, subject)
    first_record = next(records, None)
    if first_record is None:
        raise ManifestError(f"{subject} is empty: it needs a header row with a 'prompt' column")
    header = _read_header(first_record[1], subject)
    return _validate_records(header, records, defaults, known_models, limits, source, lambda: lines.sha256)


@many_models()
def _validate_records(
    header: _Header,
    records: Iterable[tuple[int, list[str]]],
    defaults: RunDefaults,
    known_models: Models,
    limits: ManifestLimits,
    source: str,
    sha256: Callable[[], str],
) -> ManifestReadResult:
    subject = _subject(source)
    context = _RowContext.of(defaults, limits, known_models)
    rows: list[ManifestRow] = []
    rejections: list[RowRejection] = []
    checker = _RowChecker(header, context, first_line_of_id={})
    raw_rows: dict[int, dict[str, str]] = {}
    total_rows = 0
    for line, record in records:
        total_rows += 1
        if total_rows > limits.max_rows:
            raise ManifestError(
                f"{subject} has more than {limits.max_rows:,} rows: split it into smaller manifests"
            )
        outcome = checker.check(record, line)
        if isinstance(outcome, RowRejection):
            rejections.append(outcome)
            raw_rows[line] = raw_cells(header, record)
        else:
            rows.append(outcome)
    return ManifestReadResult(
        rows=rows,
        rejections=rejections,
        total_rows=total_rows,
        digest=sha256(),
        source=source,
        raw_rows=raw_rows,
        unknown_columns=list(header.unknown),
    )


def _cell_text(value: object) -> str:
    """A JSON or Parquet value as the text a CSV cell would hold (so one set of parsers serves every format)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _table_records(objects: Iterable[tuple[int, Mapping[str, object]]], subject: str):
    """(header, records) from row objects: the header is the union of keys, in first-seen order."""
    objects = list(objects)
    names: list[str] = []
    for _, obj in objects:
        names.extend(key for key in obj if key not in names)
    header = _read_header([str(n) for n in names], subject)
    records = [(line, [_cell_text(obj.get(name)) for name in names]) for line, obj in objects]
    return header, [(line, cells) for line, cells in records if any(c.strip() for c in cells)]


def _parse_jsonl(raw: bytes, defaults, known_models, limits, source) -> ManifestReadResult:
    subject = _subject(source)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ManifestError(f"{subject} is not UTF-8 (byte {error.start}): save it as UTF-8") from None
    objects = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as error:
            raise ManifestError(f"{subject} line {number} is not a JSON object: {error.msg}") from None
        if not isinstance(obj, dict):
            raise ManifestError(f"{subject} line {number} is not a JSON object (one object per line)")
        objects.append((number, obj))
    if not objects:
        raise ManifestError(f"{subject} is empty: it needs one JSON object per line with a 'prompt' key")
    header, records = _table_records(objects, subject)
    digest = hashlib.sha256(raw).hexdigest()
    return _validate_records(header, records, defaults, known_models, limits, source, lambda: digest)


def _parse_parquet(raw: bytes, defaults, known_models, limits, source) -> ManifestReadResult:
    import pyarrow as pa
    import pyarrow.parquet as pq

    subject = _subject(source)
    try:
        table = pq.read_table(io.BytesIO(raw))
    except (pa.ArrowException, OSError) as error:
        raise ManifestError(f"{subject} is not a readable Parquet file: {error}") from None
    if table.num_rows > limits.max_rows:
        raise ManifestError(f"{subject} has more than {limits.max_rows:,} rows: split it into smaller manifests")
    # Row numbers are 1-based positions in the table (Parquet has no lines).
    objects = enumerate(table.to_pylist(), 1)
    header, records = _table_records(objects, subject)
    digest = hashlib.sha256(raw).hexdigest()
    return _validate_records(header, records, defaults, known_models, limits, source, lambda: digest)


MANIFEST_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


def manifest_format(source: str) -> str:
    """csv, jsonl or parquet from the file name (before any compression suffix); csv when unknown."""
    name = source.split("?", 1)[0].lower()
    for suffix, fmt in MANIFEST_FORMATS.items():
        if name.endswith(suffix):
            return fmt
    return "csv"


# --------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------


def read_manifest(
    source: str | os.PathLike[str],
    defaults: RunDefaults,
    known_models: Models,
    limits: ManifestLimits = ManifestLimits(),
    *,
    columnar: bool = True,
) -> ManifestReadResult:
    """Read and validate the CSV manifest at ``source``: a local path or any fsspec URL.

    ``columnar=False`` skips the fast path (tasks.manifest_columnar) and reads every CSV line by line: the
    results are the same, only slower (tests compare the two).
    """
    location = os.fspath(source)
    try:
        stream = fsspec.open(location, "rb").open()
    except Exception as error:  # every storage backend fails its own way; the user needs one sentence
        reason = redact_text(str(getattr(error, "strerror", None) or error), location)
        raise ManifestError(f"Cannot open manifest {redact_url(location)}: {reason}") from None
    fmt = manifest_format(location)
    shown = redact_url(location)  # what messages and the database see
    with stream:
        if fmt == "csv":
            return _parse_csv(stream, defaults, known_models, limits, shown, columnar)
        # JSONL and Parquet manifests are small next to the videos they describe: read whole, then validate.
        raw = stream.read()
    parse = _parse_jsonl if fmt == "jsonl" else _parse_parquet
    return parse(raw, defaults, known_models, limits, shown)


def parse_manifest_text(
    text: str | bytes,
    defaults: RunDefaults,
    known_models: Models,
    limits: ManifestLimits = ManifestLimits(),
    source: str = INLINE_SOURCE,
    *,
    columnar: bool = True,
) -> ManifestReadResult:
    """Validate manifest CSV given as text or bytes (e.g. pasted into a UI form), exactly like ``read_manifest``."""
    # surrogatepass: a str with lone surrogates then fails as "not UTF-8" instead of raising UnicodeEncodeError.
    raw = bytes(text) if isinstance(text, (bytes, bytearray)) else text.encode("utf-8", "surrogatepass")
    return _parse_csv(io.BytesIO(raw), defaults, known_models, limits, source, columnar)


# Prefect is imported last so that everything above reads, and is tested, as plain Python.
from prefect import task  # noqa: E402

read_manifest_task = task(name="read-and-validate-manifest")(read_manifest)
