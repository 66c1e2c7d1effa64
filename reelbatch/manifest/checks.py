"""Row checks: a record's cells in, a ``ManifestRow`` (defaults applied) or exactly one ``RowRejection`` out.

``check_record`` is the reference: every cell through pydantic and the column parsers (``cells``), the first
problem becomes the rejection. ``RowChecker`` gives the same answers faster on rows that pass (a cell that repeats
is parsed once) and hands any row with a problem to ``check_record``. ``validate_records`` checks every record of
a file: the line reader and the JSONL/Parquet readers share it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, cast

from pydantic import BaseModel, TypeAdapter, ValidationError, ValidationInfo, create_model, field_validator

from reelbatch.manifest.cells import COLUMN_PARSERS, FALLBACK_DEFAULTS, CellProblem, RowContext, quote
from reelbatch.manifest.rejected import raw_cells
from reelbatch.manifest.types import (
    MODEL_DEFAULTED,
    MODEL_OPTIONAL,
    RESOLVED_FIELDS,
    Header,
    ManifestError,
    ManifestLimits,
    ManifestReadResult,
    Models,
)
from reelbatch.models.registry import ModelFamily
from reelbatch.redact import INLINE_SOURCE
from reelbatch.schemas import (
    ManifestRow,
    ParallelPlan,  # noqa: F401  (pydantic resolves _RowCells' field types here)
    RowRejection,
    RunDefaults,
    many_models,
    trusted,
)


def fill_model_defaults(values: dict[str, object], context: RowContext, empty_cells: Collection[str]) -> None:
    """Empty cells with no run default take the row's model's default (``reelbatch models show NAME``), and the
    model's recipe is resolved (``flow_shift``, and a two-expert model's ``guidance_scale_2`` when empty: the
    pipeline's rule, the same as ``guidance_scale``). ``empty_cells``: which of MODEL_OPTIONAL had an empty cell
    (their value, if any, is the run's default). ``values`` may lack per-row columns (the columnar reader's
    shapes): those are left alone."""
    family = context.families.get(values["model"])  # type: ignore[call-overload]
    defaults = family.defaults if family is not None else FALLBACK_DEFAULTS
    for column in MODEL_DEFAULTED:
        if column in values and values[column] is None:
            values[column] = getattr(defaults, column)
    takes = {
        "embedded_guidance_scale": family is not None and family.guidance_embedding,
        "guidance_scale_2": family is not None and family.experts == 2,
    }
    for column in MODEL_OPTIONAL:
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
            row=line,
            column="last_image",
            rule="last_image_without_image",
            message="last_image is given but image (the first frame) is empty",
            fix="add the first frame in the image column, or leave last_image empty",
        )
    return None


class _RowCellsBase(BaseModel):
    @field_validator("*", mode="before")
    @classmethod
    def _parse_cell(cls, value: object, info: ValidationInfo) -> object:
        name = info.field_name
        assert name is not None  # a field validator always runs for a field
        # The context is the RowContext every model_validate call of this module passes.
        return COLUMN_PARSERS[name](value, name, cast(RowContext, info.context))


# Field types are ManifestRow's, so pydantic checks each parser's output against the schema the rows must meet.
def _cell_type(column: str) -> Any:
    annotation: Any = ManifestRow.model_fields[column].annotation
    return annotation | None if column in MODEL_DEFAULTED else annotation


_CELL_FIELDS: dict[str, Any] = {column: (_cell_type(column), ...) for column in COLUMN_PARSERS}
_RowCells = create_model("_RowCells", __base__=_RowCellsBase, **_CELL_FIELDS)
_COLUMNS_WITH_RUN_DEFAULT = frozenset(COLUMN_PARSERS) & frozenset(RunDefaults.model_fields)


def check_record(
    record: list[str], line: int, header: Header, context: RowContext, first_line_of_id: dict[str, int]
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
                f" (first extra cell: {quote(extra_cells[0].strip())})"
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
            message=f"id {quote(row_id)} is already used by the row on line {first_line_with_id}",
            fix="give this row a different id, or leave its id cell empty",
        )
    problem = _frame_problem(cells.__dict__, line)
    if problem is not None:
        return problem
    values = {**cells.__dict__, **dict.fromkeys(RESOLVED_FIELDS)}
    fill_model_defaults(values, context, defaulted)
    return ManifestRow(row=line, **values)


def _rejection_from(error: ValidationError, line: int, defaulted: set[str]) -> RowRejection:
    first = error.errors(include_url=False)[0]
    column = str(first["loc"][0]) if first["loc"] else None
    problem = first.get("ctx", {}).get("error")
    if isinstance(problem, CellProblem):
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
_CELL_TYPES: dict[str, TypeAdapter[Any]] = {column: TypeAdapter(_cell_type(column)) for column in COLUMN_PARSERS}
FAILED = object()  # what RowChecker.parse_cell returns for a cell that does not pass: check_record says why
_ABSENT = 2**62  # the position of a column the header lacks: past the end of every record


class RowChecker:
    """``check_record`` for one file, fast on rows that pass; a row with any problem is handed to it.

    A cell's value depends only on its column and its text (defaults and limits are the file's), so a cell that
    repeats, like a model name or a size, is parsed and type-checked once. The row is built from values that
    have passed exactly the checks ``check_record`` applies, so it is not validated a second time. Rows with a
    problem (a bad cell, extra cells, an id already used) go through ``check_record``, which writes the
    rejection; a rejected row is rare, so that costs nothing overall.
    """

    def __init__(self, header: Header, context: RowContext, first_line_of_id: dict[str, int]) -> None:
        self._header = header
        self._context = context
        self._first_line_of_id = first_line_of_id
        self._id_position = header.positions.get("id", _ABSENT)
        # (column, position, its cells seen so far: text -> value; None for columns whose cells rarely repeat)
        self._columns: list[tuple[str, int, dict[str, object] | None]] = [
            (column, header.positions.get(column, _ABSENT), None if column in _UNREPEATED_COLUMNS else {})
            for column in COLUMN_PARSERS
        ]
        self._optional = [(column, header.positions.get(column, _ABSENT)) for column in MODEL_OPTIONAL]

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
            value = FAILED if seen is None else seen.get(cell, FAILED)
            if value is FAILED:
                value = self.parse_cell(column, cell, seen)
                if value is FAILED:
                    return self._reference(record, line)
            values[column] = value
        if values["last_image"] is not None and values["image"] is None:
            return self._reference(record, line)
        for name in RESOLVED_FIELDS:
            values[name] = None
        empty = [column for column, position in self._optional if position >= cells or not record[position].strip()]
        fill_model_defaults(values, self._context, empty)
        return trusted(ManifestRow, values, _ROW_FIELDS)

    def parse_cell(self, column: str, cell: str, seen: dict[str, object] | None) -> object:
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
            return FAILED
        if len(seen) < _REMEMBERED_CELLS:
            seen[cell] = value
        return value

    def _reference(self, record: list[str], line: int) -> ManifestRow | RowRejection:
        return check_record(record, line, self._header, self._context, self._first_line_of_id)


# --------------------------------------------------------------------------------------------------------------
# A file's header and records
# --------------------------------------------------------------------------------------------------------------


def read_header(record: list[str], subject: str) -> Header:
    """Where each known column is; a ManifestError when there is no prompt column or a name comes twice."""
    names = [cell.strip().lower() for cell in record]
    if "prompt" not in names:
        raise ManifestError(f"{subject} has no 'prompt' column: the header row has {_list_names(names)}")
    duplicates = sorted(name for name, count in Counter(names).items() if name and count > 1)
    if duplicates:
        raise ManifestError(f"{subject} has duplicate column names: {_list_names(duplicates)}")
    positions = {name: position for position, name in enumerate(names) if name in COLUMN_PARSERS}
    unknown = tuple(name for name in names if name and name not in COLUMN_PARSERS)
    return Header(width=len(names), positions=positions, unknown=unknown)


def _list_names(names: list[str], shown: int = 10) -> str:
    listed = ", ".join(quote(name) for name in names[:shown])
    return listed + (f" and {len(names) - shown} more" if len(names) > shown else "")


def subject_of(source: str) -> str:
    """How messages name the manifest: by its (redacted) location, or as "The manifest" when it was pasted."""
    return "The manifest" if source == INLINE_SOURCE else f"Manifest {source}"


@many_models()
def validate_records(
    header: Header,
    records: Iterable[tuple[int, list[str]]],
    defaults: RunDefaults,
    known_models: Models,
    limits: ManifestLimits,
    source: str,
    sha256: Callable[[], str],
) -> ManifestReadResult:
    subject = subject_of(source)
    context = RowContext.of(defaults, limits, known_models)
    rows: list[ManifestRow] = []
    rejections: list[RowRejection] = []
    checker = RowChecker(header, context, first_line_of_id={})
    raw_rows: dict[int, dict[str, str]] = {}
    total_rows = 0
    for line, record in records:
        total_rows += 1
        if total_rows > limits.max_rows:
            raise ManifestError(f"{subject} has more than {limits.max_rows:,} rows: split it into smaller manifests")
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
