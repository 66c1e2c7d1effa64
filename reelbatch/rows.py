"""Accepted manifest rows kept as columns, and a job's samples kept as (row, video index) references.

A big manifest is validated column by column (``manifest.columnar``). Building a pydantic object per row
and a hashed ``Sample`` per video up front cost more than reading the file itself, and planning needs neither:
it needs each row's bucket and video count. ``RowTable`` keeps the accepted rows in the columns they were read
into and builds a ``ManifestRow`` when one is asked for; ``SampleRefs`` is a run of a bucket's samples as
positions in a RowTable, made into ``Sample`` objects (seeds and identity hashes, ``identity.expand_row``) when
they are read: when a run records or dispatches the job, not when a manifest is planned.

Both are read-only sequences that compare equal to the lists they stand for.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reelbatch.identity import expand_row
from reelbatch.schemas import ManifestRow, Sample, trusted

_ROW_FIELDS = list(ManifestRow.model_fields)
IMAGE_COLUMNS = ("image", "last_image")
_ROW_FIELD_SET = set(_ROW_FIELDS)


class RowTable(Sequence[ManifestRow]):
    """The accepted rows of one manifest, in file order, as columns.

    Row ``i`` is line ``lines[i]`` of the file and position ``positions[i]`` of the columns read from it.
    ``columns`` are the per-line cells that differ on most rows (prompt, negative_prompt, id, seed) as Arrow
    arrays of checked values. ``shape_of_row`` indexes ``shapes``: the checked values of everything else (model,
    sizes, steps, guidance, num_videos, flags, plan, backend, and the text columns the file lacks), one dict per
    distinct combination. ``overrides`` are rows that were built one by one (cells the columnar checks did not
    accept as written, e.g. with spaces to strip), by row index; they win over the columns.
    """

    def __init__(
        self,
        lines: np.ndarray,
        positions: np.ndarray,
        shape_of_row: np.ndarray,
        shapes: list[dict[str, object]],
        columns: Mapping[str, pa.Array],
        overrides: Mapping[int, ManifestRow] | None = None,
    ) -> None:
        self.lines = lines
        self.positions = positions
        self.shape_of_row = shape_of_row
        self.shapes = shapes
        self.columns = dict(columns)
        self.overrides = dict(overrides or {})
        self._lists: dict[str, list] | None = None

    def __len__(self) -> int:
        return len(self.lines)

    @overload
    def __getitem__(self, index: int) -> ManifestRow: ...

    @overload
    def __getitem__(self, index: slice) -> list[ManifestRow]: ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._row(i) for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("row index out of range")
        return self._row(index)

    def __iter__(self) -> Iterator[ManifestRow]:
        return (self._row(i) for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (RowTable, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    def __repr__(self) -> str:
        return f"RowTable({len(self)} rows, {len(self.shapes)} shapes)"

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_lists": None}

    def _row(self, index: int) -> ManifestRow:
        row = self.overrides.get(index)
        if row is not None:
            return row
        if self._lists is None:  # once per table: Arrow to Python for every row at once is much cheaper
            self._lists = {name: column.to_pylist() for name, column in self.columns.items()}
        shape = self.shapes[self.shape_of_row[index]]
        position = int(self.positions[index])
        lists = self._lists
        values = {
            name: int(self.lines[index]) if name == "row" else lists[name][position] if name in lists else shape[name]
            for name in _ROW_FIELDS
        }
        # Every value passed the checks ManifestRow's schema makes (manifest.columnar), so none is repeated.
        return trusted(ManifestRow, values, _ROW_FIELD_SET)

    def has_images(self) -> bool:
        """Whether any row names an image (its shapes then do not tell its bucket: see planning/planner.py)."""
        return any(
            column.null_count < len(column) for name, column in self.columns.items() if name in IMAGE_COLUMNS
        ) or any(row.image is not None for row in self.overrides.values())

    def videos_per_row(self) -> np.ndarray:
        """``num_videos`` of every row, as integers."""
        per_shape = np.array(
            [v if isinstance(v := shape["num_videos"], int) else 0 for shape in self.shapes], dtype=np.int64
        )
        videos = per_shape[self.shape_of_row] if len(self.shapes) else np.zeros(len(self), dtype=np.int64)
        for index, row in self.overrides.items():
            videos[index] = row.num_videos
        return videos


def dictionary_codes(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """(index of each cell in the distinct cells, the distinct cells in order of first appearance).

    One memo serves all chunks of ``pc.dictionary_encode``, so every chunk holds the same dictionary; a column
    that is already dictionary-encoded must have one dictionary for all chunks too (``Table.unify_dictionaries``).
    """
    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column)
    if not column.num_chunks:
        return np.zeros(0, dtype=np.int64), pa.array([], type=column.type.value_type)
    indices = np.concatenate([chunk.indices.to_numpy(zero_copy_only=False) for chunk in column.chunks])
    return indices, column.chunk(column.num_chunks - 1).dictionary


class SampleRefs(Sequence[Sample]):
    """Samples of a job as (row position in ``table``, video index) pairs: ``rows[start:stop]`` and
    ``videos[start:stop]`` (a job keeps its bucket's arrays and two numbers). Made into ``Sample``s when read;
    pickled as those samples, so a job sent to another process carries its samples, not the manifest."""

    def __init__(
        self, table: RowTable, rows: np.ndarray, videos: np.ndarray, start: int = 0, stop: int | None = None
    ) -> None:
        self.table = table
        self._rows = rows
        self._videos = videos
        self._start = start
        self._stop = len(rows) if stop is None else stop
        self._samples: list[Sample] | None = None

    @property
    def rows(self) -> np.ndarray:
        return self._rows[self._start : self._stop]

    @property
    def videos(self) -> np.ndarray:
        return self._videos[self._start : self._stop]

    def __len__(self) -> int:
        return self._stop - self._start

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return self.samples()[index]
            return SampleRefs(self.table, self._rows, self._videos, self._start + start, self._start + max(start, stop))
        return self.samples()[index]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples())

    def __add__(self, other: Sequence[Sample]) -> list[Sample]:
        return [*self.samples(), *other]

    def __radd__(self, other: Sequence[Sample]) -> list[Sample]:
        return [*other, *self.samples()]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (SampleRefs, list, tuple)):
            return len(self) == len(other) and list(self) == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"SampleRefs({len(self)} samples)"

    def __reduce__(self):
        return list, (self.samples(),)

    def samples(self) -> list[Sample]:
        """The ``Sample`` objects, made once (the rows' seeds and identity hashes are computed here)."""
        if self._samples is None:
            made: list[Sample] = []
            current, expanded = -1, []
            for row, video in zip(self.rows.tolist(), self.videos.tolist(), strict=True):
                if row != current:
                    current, expanded = row, expand_row(self.table[row])
                made.append(expanded[video])
            self._samples = made
        return self._samples


def concat_samples(parts: Sequence[Sequence[Sample]]) -> Sequence[Sample]:
    """The parts one after another: still references when every part refers to the same table, else a list."""
    refs = [p for p in parts if isinstance(p, SampleRefs)]
    if refs and len(refs) == len(parts) and len({id(p.table) for p in refs}) == 1:
        return SampleRefs(
            refs[0].table, np.concatenate([p.rows for p in refs]), np.concatenate([p.videos for p in refs])
        )
    return [sample for part in parts for sample in part]
