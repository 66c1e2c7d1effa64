"""The CSV reader's fast path: a regular manifest parsed by Arrow and checked column by column.

The line reader (``lines``) reads CSV with Python's csv module, which alone takes several times as long as
pandas takes for a whole 100,000-row file. Most manifests are regular: one record per line, no blank lines,
every row as wide as the header, UTF-8. Such a file is parsed here by pyarrow's CSV reader into string columns
and checked per column:

* cells that repeat (model, sizes, steps, guidance, flags, plan, backend, num_videos) are checked once per
  distinct value, by the parsers the line reader uses (``RowChecker.parse_cell``), and each row gets the index of
  its combination of them (a "shape", ``rows.RowTable``);
* prompts, negative prompts and ids are accepted as written when they are within the length limit and have no
  space to strip; seeds when they are plain digits;
* a row with any cell these checks do not accept as written is read again from its own line and checked by the
  line reader's ``RowChecker``, so its rejection (rule, message, fix) or its row is exactly the line reader's.

Anything irregular about the file as a whole (a quoted header, line breaks inside cells, blank lines, rows of
another width, bytes that are not UTF-8, ids that repeat, ...) returns None, and the line reader reads the file:
it knows the exact line numbers and writes the file-level errors. tests/test_manifest_columnar.py checks that
both readers give the same result.
"""

from __future__ import annotations

import codecs
import csv
from typing import cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from reelbatch.manifest.cells import COLUMN_PARSERS, FALLBACK_DEFAULTS, RowContext
from reelbatch.manifest.checks import FAILED, RowChecker, drops_true_cfg, fill_model_defaults, read_header, subject_of
from reelbatch.manifest.lines import allow_large_csv_fields
from reelbatch.manifest.rejected import raw_cells
from reelbatch.manifest.types import (
    MAX_FIELD_CHARS,
    MAX_LINE_CHARS,
    MODEL_OPTIONAL,
    RESOLVED_FIELDS,
    ManifestError,
    ManifestLimits,
    ManifestReadResult,
    Models,
    Sha256Of,
)
from reelbatch.rows import RowTable, dictionary_codes
from reelbatch.schemas import ManifestRow, RowRejection, RunDefaults, many_models

# Cells that differ on most rows: checked with vector operations. Every other column is checked per distinct value.
_IMAGE_COLUMNS = ("image", "last_image")
_TEXT_COLUMNS = ("id", "prompt", "negative_prompt", *_IMAGE_COLUMNS)
_SEED = "seed"
_PER_ROW_COLUMNS = frozenset({*_TEXT_COLUMNS, _SEED})
_PLAIN_SEED = r"^[0-9]{1,18}$"  # < 2**63 whatever the digits: no range check needed


def read_columnar(
    data: bytes,
    defaults: RunDefaults,
    known_models: Models,
    limits: ManifestLimits,
    source: str,
    sha256: str | Sha256Of,
) -> ManifestReadResult | None:
    """The manifest in ``data`` read like the line reader (``lines``) reads it, or None when the file is not regular."""
    body = data.removeprefix(codecs.BOM_UTF8)
    names = _plain_header(body)
    if names is None:
        return None
    subject = subject_of(source)
    try:
        header = read_header(names, subject)
    except ManifestError:
        return None  # the line reader says so, or first names a problem it meets earlier (bytes that are not UTF-8)
    repeating = {position for column, position in header.positions.items() if column not in _PER_ROW_COLUMNS}
    table = _parse(body, len(names), repeating)
    if table is None:
        return None
    allow_large_csv_fields()  # rows that fail a check are read again with csv, like the line reader reads them
    context = RowContext.of(defaults, limits, known_models)
    checker = RowChecker(header, context, first_line_of_id={})
    return _check_table(body, table, header, checker, context, source, sha256)


def _plain_header(body: bytes) -> list[str] | None:
    """The header's cells when the file can take the fast path as far as its first line tells, else None."""
    if not body or b"\x00" in body:
        return None
    end = body.find(b"\n")
    if end < 0:
        return None
    line = body[:end].rstrip(b"\r")
    if b'"' in line or b"\r" in line:
        return None
    try:
        names = line.decode("utf-8").split(",")
    except UnicodeDecodeError:
        return None
    return names if any(name.strip() for name in names) else None


def _parse(body: bytes, width: int, repeating: set[int]) -> pa.Table | None:
    """The cells as Arrow strings; the ``repeating`` columns dictionary-encoded while they are converted."""
    names = [f"c{i}" for i in range(width)]
    text, encoded = pa.string(), pa.dictionary(pa.int32(), pa.string())
    try:
        table = pa_csv.read_csv(
            pa.py_buffer(body),
            read_options=pa_csv.ReadOptions(column_names=names, skip_rows=1),
            # Empty lines are kept as records (or fail as too narrow), so a record per line can be checked below.
            parse_options=pa_csv.ParseOptions(newlines_in_values=b'"' in body, ignore_empty_lines=False),
            convert_options=pa_csv.ConvertOptions(
                column_types={name: encoded if i in repeating else text for i, name in enumerate(names)},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
                check_utf8=True,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None  # ragged rows, invalid UTF-8, ...: the line reader says which line
    # Every line is one record: empty lines are kept as records (or refused as too narrow), Arrow and the line
    # reader both end lines at \n, \r\n and \r, and no record goes on past a line break in a quoted cell.
    if b'"' in body and (not body.endswith((b"\n", b"\r")) or _line_breaks_in_cells(table)):
        # A record over several lines needs the line reader for its line numbers; and Arrow accepts a quote left
        # open at the very end of the file, which the line reader refuses.
        return None
    table = table.unify_dictionaries()  # each block of the file was encoded with a dictionary of its own
    longest = sum(2 * _longest_cell(column) + 3 for column in table.columns)
    if longest > min(MAX_LINE_CHARS, MAX_FIELD_CHARS):
        return None  # a line may be over the line reader's limit: let it say so
    return table


def _line_breaks_in_cells(table: pa.Table) -> bool:
    """Whether a cell holds \n or \r (only a quoted one can): then a record spans several lines."""
    for column in table.columns:
        for chunk in column.chunks:
            values = chunk.dictionary if pa.types.is_dictionary(chunk.type) else chunk
            data = values.buffers()[2]
            if data is not None:
                text = data.to_pybytes()  # bytes' search is memchr: far quicker than a pass of Arrow or numpy
                if b"\n" in text or b"\r" in text:
                    return True
    return False


def _line_ends(body: bytes) -> np.ndarray:
    """Offsets of the last byte of every line break (\n, \r\n or a lone \r, as the line reader splits)."""
    as_bytes = np.frombuffer(body, dtype=np.uint8)
    ends = as_bytes == 10
    if b"\r" in body:
        lone = as_bytes == 13
        lone[:-1] &= as_bytes[1:] != 10
        ends |= lone
    return np.flatnonzero(ends)


def _longest_cell(column: pa.ChunkedArray) -> int:
    if pa.types.is_dictionary(column.type):
        return max((int(pc.max(pc.binary_length(c.dictionary)).as_py() or 0) for c in column.chunks[:1]), default=0)
    return max((int(np.diff(_offsets(chunk)).max()) if len(chunk) else 0 for chunk in column.chunks), default=0)


def _offsets(chunk: pa.Array) -> np.ndarray:
    return np.frombuffer(chunk.buffers()[1], dtype=np.int32, count=len(chunk) + 1, offset=chunk.offset * 4)


# Bytes that may start or end a cell accepted as written: printable ASCII other than space. A cell that starts or
# ends with anything else (a space, a control character, any non-ASCII character) is looked at by Python below.
_PLAIN_EDGE = np.zeros(256, dtype=bool)
_PLAIN_EDGE[0x21:0x7F] = True


def _text_cells(column: pa.ChunkedArray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """(plain, empty) per cell: plain cells are their own stripped text, 1 to ``limit`` characters long."""
    plain_parts, empty_parts = [], []
    for chunk in column.chunks:
        offsets = _offsets(chunk)
        buffer = chunk.buffers()[2]
        # (one zero byte stands in for an empty buffer: every cell is empty then, and empty cells are not plain)
        data = np.frombuffer(buffer, dtype=np.uint8) if buffer is not None and buffer.size else np.zeros(1, np.uint8)
        sizes = np.diff(offsets)
        empty = sizes == 0
        last = len(data) - 1
        plain = ~empty & (sizes <= limit)
        plain &= _PLAIN_EDGE[data[np.minimum(offsets[:-1], last)]] & _PLAIN_EDGE[data[np.maximum(offsets[1:] - 1, 0)]]
        unsure = np.flatnonzero(~empty & ~plain & (sizes <= 4 * limit))
        if len(unsure):  # non-ASCII edges, or more bytes than the limit in characters: ask Python
            for index, text in zip(unsure.tolist(), chunk.take(pa.array(unsure)).to_pylist(), strict=True):
                plain[index] = 0 < len(text) <= limit and text == text.strip()
        plain_parts.append(plain)
        empty_parts.append(empty)
    if not plain_parts:
        return np.zeros(0, bool), np.zeros(0, bool)
    return np.concatenate(plain_parts), np.concatenate(empty_parts)


def _plain_seeds(column: pa.ChunkedArray) -> np.ndarray:
    """Cells of 1 to 18 ASCII digits: whole numbers below 2**63, so in range, with nothing to strip."""
    parts = []
    for chunk in column.chunks:
        data, offsets = chunk.buffers()[2], _offsets(chunk)
        sizes = np.diff(offsets)
        digits = np.frombuffer(data, dtype=np.uint8)[offsets[0] : offsets[-1]] if data is not None else sizes[:0]
        if ((digits >= 48) & (digits <= 57)).all():
            parts.append((sizes >= 1) & (sizes <= 18))
        else:
            parts.append(pc.match_substring_regex(chunk, _PLAIN_SEED).to_numpy(zero_copy_only=False))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)


class _Shapes:
    """The repeating columns: each distinct cell parsed once, each row's combination of them numbered."""

    def __init__(self, table: pa.Table, header, checker: RowChecker, context: RowContext) -> None:
        rows = table.num_rows
        self.failed = np.zeros(rows, dtype=bool)
        # Image hashes come later (intake); the bucket of a row with an image is decided on the row itself
        # (planning/planner.py makes a table with images into rows), so every shape here is a text-only one.
        constant: dict[str, object] = {**dict.fromkeys(RESOLVED_FIELDS), "conditioning": "text"}
        empty_everywhere: set[str] = set()  # optional inputs whose cell is empty on every row
        codes: list[tuple[str, np.ndarray, list[object], list[bool]]] = []
        for column in COLUMN_PARSERS:
            position = header.positions.get(column)
            if position is None:
                value = checker.parse_cell(column, "", {})
                if value is FAILED:
                    self.failed[:] = True
                constant[column] = value
                empty_everywhere.add(column)
            elif column not in _PER_ROW_COLUMNS:
                indices, cells = dictionary_codes(table.column(position))
                texts = cells.to_pylist()
                values = [checker.parse_cell(column, cell, {}) for cell in texts]
                bad = np.array([value is FAILED for value in values], dtype=bool)
                if bad.any():
                    self.failed |= bad[indices]
                codes.append((column, indices, values, [not text.strip() for text in texts]))
        for column, _, values, empties in codes:
            if len(values) == 1:  # the same cell on every row: part of every shape, not of the key
                constant[column] = values[0]
                if empties[0]:
                    empty_everywhere.add(column)
        codes = [code for code in codes if len(code[2]) > 1]
        key = np.zeros(rows, dtype=np.int64)
        radix = 1
        for _, indices, values, _ in codes:
            radix *= len(values)
            if radix >= 2**62:
                raise OverflowError  # a hostile file with millions of distinct cells: the line reader copes
            key *= len(values)
            key += indices
        indices, keys = dictionary_codes(pa.chunked_array([key]))
        self.of_row = indices.astype(np.int32)
        self.shapes: list[dict[str, object]] = []
        for combined in keys.to_pylist():
            shape = dict(constant)
            empty = set(empty_everywhere)
            for column, _, values, empties in reversed(codes):
                combined, index = divmod(combined, len(values))
                shape[column] = values[index]
                if empties[index]:
                    empty.add(column)
            if shape["model"] is not FAILED:  # (a failed shape's rows are all read again by the line reader)
                fill_model_defaults(shape, context, empty & set(MODEL_OPTIONAL))
            self.shapes.append(shape)

    def model_default(self, column: str, context: RowContext) -> pa.Array:
        """Per row, the default of ``column`` for the row's model (a per-row column left empty)."""
        per_shape = [
            getattr(
                family.defaults if (family := context.families.get(cast(str, shape["model"]))) else FALLBACK_DEFAULTS,
                column,
            )
            for shape in self.shapes
        ]
        return pa.array(per_shape, pa.string()).take(pa.array(self.of_row))


def _unique(ids: pa.ChunkedArray, plain: np.ndarray, empty: np.ndarray) -> bool:
    """Whether the non-empty ids are written without spaces to strip and no two are equal."""
    if not (plain | empty).all():
        return False
    named = ids.filter(pa.array(~empty)) if empty.any() else ids
    if len(named) < 2:
        return True
    named = named.combine_chunks()
    if pc.all(pc.less(named[:-1], named[1:])).as_py():
        return True  # strictly increasing, as generated ids usually are: no hashing needed
    return pc.count_distinct(named).as_py() == len(named)


@many_models()
def _check_table(
    body: bytes, table: pa.Table, header, checker: RowChecker, context: RowContext, source: str, sha256: str | Sha256Of
) -> ManifestReadResult | None:
    rows = table.num_rows
    limits = context.limits
    try:
        shapes = _Shapes(table, header, checker, context)
    except OverflowError:
        return None
    flagged = shapes.failed.copy()
    columns: dict[str, pa.Array] = {}
    for column in _TEXT_COLUMNS:
        position = header.positions.get(column)
        if position is None:
            continue
        cells = table.column(position)
        plain, empty = _text_cells(cells, limits.max_prompt_chars)
        if column == "prompt":
            flagged |= ~plain
        else:
            empty_value = checker.parse_cell(column, "", {})
            flagged |= ~(plain | empty) | (empty & (empty_value is FAILED))
            if column in _IMAGE_COLUMNS:  # a URL with a secret in it is refused by the line reader's parser
                flagged |= pc.match_substring_regex(cells, "[@?]").to_numpy(zero_copy_only=False)
            if empty.any() and column == "negative_prompt" and empty_value is None:
                cells = pc.if_else(pa.array(empty), shapes.model_default(column, context), cells)
            elif empty.any() and empty_value != "":
                fill = None if empty_value is FAILED else empty_value
                cells = pc.if_else(pa.array(empty), pa.scalar(fill, pa.string()), cells)
        if column == "id" and not _unique(cells, plain, empty):
            return None  # ids to strip or used twice: the line reader registers them line by line
        columns[column] = cells
    if "negative_prompt" in columns:  # true CFG without a negative prompt: the row itself says what runs
        skips = np.array(
            [
                shape["model"] is not FAILED
                and drops_true_cfg(context.families.get(cast(str, shape["model"])), shape["guidance_scale"])
                for shape in shapes.shapes
            ],
            dtype=np.bool_,
        )
        if skips.any():
            no_negative = pc.fill_null(pc.equal(columns["negative_prompt"], ""), False)
            flagged |= skips[shapes.of_row] & no_negative.to_numpy(zero_copy_only=False)
    if "last_image" in columns:  # a last frame without a first: the line reader writes the rejection
        no_first = columns["image"].is_null() if "image" in columns else pa.scalar(True)
        flagged |= pc.and_(columns["last_image"].is_valid(), no_first).to_numpy(zero_copy_only=False)
    position = header.positions.get(_SEED)
    if position is not None:
        cells = table.column(position)
        empty = pc.equal(pc.binary_length(cells), 0).to_numpy()
        plain = _plain_seeds(cells)
        empty_value = checker.parse_cell(_SEED, "", {})
        flagged |= ~(plain | empty) | (empty & (empty_value is FAILED))
        seeds = pc.cast(pc.if_else(pa.array(plain), cells, "0"), pa.int64())
        if empty.any():
            fill = None if empty_value is FAILED else empty_value
            seeds = pc.if_else(pa.array(empty), pa.scalar(fill, pa.int64()), seeds)
        columns[_SEED] = seeds

    accepted = ~flagged
    overrides: dict[int, ManifestRow] = {}
    rejections: list[RowRejection] = []
    raw_rows: dict[int, dict[str, str]] = {}
    blank = 0
    suspects = np.flatnonzero(flagged)
    if len(suspects):
        breaks = _line_ends(body)
        for index in suspects.tolist():
            line = index + 2  # the file has one record per line (checked in _parse)
            end = int(breaks[index + 1]) if index + 1 < len(breaks) else len(body)
            text = body[int(breaks[index]) + 1 : end].decode("utf-8")
            record = next(csv.reader([text.rstrip("\r\n")]), [])
            if not any(cell.strip() for cell in record):
                blank += 1  # not a row, as for the line reader
                continue
            outcome = checker.check(record, line)
            if isinstance(outcome, RowRejection):
                rejections.append(outcome)
                raw_rows[line] = raw_cells(header, record)
            else:
                accepted[index] = True
                overrides[index] = outcome
    total_rows = rows - blank
    if total_rows > limits.max_rows:
        raise ManifestError(
            f"{subject_of(source)} has more than {limits.max_rows:,} rows: split it into smaller manifests"
        )
    positions = np.flatnonzero(accepted)
    row_of_position = {int(np.searchsorted(positions, index)): row for index, row in overrides.items()}
    table_rows = RowTable(
        lines=positions + 2,
        positions=positions,
        shape_of_row=shapes.of_row[positions],
        shapes=shapes.shapes,
        columns=columns,
        overrides=row_of_position,
    )
    return ManifestReadResult(
        rows=table_rows,
        rejections=rejections,
        total_rows=total_rows,
        digest=sha256,
        source=source,
        raw_rows=raw_rows,
        unknown_columns=list(header.unknown),
    )
