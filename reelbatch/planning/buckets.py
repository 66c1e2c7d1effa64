"""Rows into buckets, and the samples each bucket runs: one bucket per pipeline call shape.

Rows with the same generation shape (and the same pinned plan and backend) share a bucket. A row asks for
``num_videos`` samples; a row that asks for a video an earlier row already asks for is rejected with a fix. Two
paths give the same buckets and samples: lists of ``ManifestRow`` (row by row) and a columnar ``RowTable`` (numpy
over every row at once, samples kept as references into the table).
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reelbatch.identity import expand_row
from reelbatch.rows import RowTable, SampleRefs, dictionary_codes
from reelbatch.schemas import BucketKey, ManifestRow, RowRejection, Sample


def bucket_key(row: ManifestRow) -> BucketKey:
    # A bucket is the row's fields that shape the pipeline call; they carry the same names on both models.
    return BucketKey(**{name: getattr(row, name) for name in BucketKey.model_fields})


_bucket_fields = attrgetter(*BucketKey.model_fields)


def rows_by_bucket(rows: Sequence[ManifestRow]) -> dict[BucketKey, list[ManifestRow]]:
    """The rows by bucket, in the order buckets first appear.

    Rows are grouped by the plain tuple of their bucket fields, and a ``BucketKey`` (a pydantic model, slow to
    build and to hash) is built once per group, not once per row.
    """
    groups: dict[tuple, list[ManifestRow]] = {}
    for row in rows:
        fields = _bucket_fields(row)
        group = groups.get(fields)
        if group is None:
            groups[fields] = group = []
        group.append(row)
    buckets: dict[BucketKey, list[ManifestRow]] = {}
    for group in groups.values():
        # Distinct tuples that validate to one BucketKey (e.g. "5.0" and 5.0 on unvalidated rows) share a bucket.
        buckets.setdefault(bucket_key(group[0]), []).extend(group)
    return buckets


def _grouped(codes: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions sorted by code, keeping their order within a code, and where each code starts and how many."""
    # Few codes: 16-bit ones get numpy's radix sort, much quicker than a comparison sort of 64-bit ones.
    in_order = np.argsort(codes.astype(np.uint16) if count < 2**16 else codes, kind="stable")
    counts = np.bincount(codes, minlength=count)
    return in_order, np.cumsum(counts) - counts, counts


def _first_rows(codes: np.ndarray, count: int) -> dict[int, int]:
    """The first position of each code that occurs."""
    in_order, starts, counts = _grouped(codes, count)
    return {code: int(in_order[starts[code]]) for code in np.flatnonzero(counts).tolist()}


def positions_by_bucket(table: RowTable) -> dict[BucketKey, np.ndarray]:
    """``rows_by_bucket`` for a RowTable: row positions by bucket, buckets in order of first appearance."""
    names = tuple(BucketKey.model_fields)
    shape_of_row = table.shape_of_row.astype(np.int64)
    values_of_shape = {}
    for extra, (index, row) in enumerate(table.overrides.items(), start=len(table.shapes)):
        shape_of_row[index] = extra  # a row built one by one is a shape of its own
        values_of_shape[extra] = tuple(getattr(row, n) for n in names)
    # Shapes whose values are equal (0 and -0, say) share a bucket, whose key is the first accepted row's values,
    # as in rows_by_bucket: codes are handed out in the order of each shape's first row.
    all_shapes = len(table.shapes) + len(table.overrides)
    first_rows = _first_rows(shape_of_row, all_shapes)
    code_of_key: dict[tuple, int] = {}
    bucket_of_shape = np.full(all_shapes, -1, dtype=np.int64)
    for shape_index in sorted(first_rows, key=first_rows.__getitem__):
        values = values_of_shape.get(shape_index)
        if values is None:
            shape = table.shapes[shape_index]
            values = tuple(shape[n] for n in names)
        bucket_of_shape[shape_index] = code_of_key.setdefault(values, len(code_of_key))
    # Codes were handed out in order of first appearance: that is the order of the buckets too.
    in_order, starts, counts = _grouped(bucket_of_shape[shape_of_row], len(code_of_key))
    buckets: dict[BucketKey, np.ndarray] = {}
    for code, values in enumerate(code_of_key):
        key = BucketKey(**dict(zip(names, values, strict=True)))
        rows = in_order[starts[code] : starts[code] + counts[code]]
        # Distinct values that validate to one BucketKey (e.g. 5 and 5.0) share a bucket, in file order.
        buckets[key] = np.sort(np.concatenate([buckets[key], rows])) if key in buckets else rows
    return buckets


def duplicate_suspects(table: RowTable) -> np.ndarray:
    """Rows that may ask for a video another row asks for. Only they are hashed while planning.

    A video is its content (prompt, model, shape, ...), its seed and its video index, and a row's videos have
    seeds ``seed + index``, so two rows with a seed can only share a video when they have the same seed. Rows
    without one get seeds derived from their content, which any row with the same prompt may match. So: when every
    row has a seed and no two share one (the usual dataset manifest), no row is a suspect; otherwise the suspects
    are the rows whose prompt is not unique.
    """
    if not len(table):
        return np.zeros(0, dtype=bool)
    seeds = table.columns.get("seed")
    if seeds is not None and not table.overrides and not seeds.null_count:
        values = np.concatenate([chunk.to_numpy() for chunk in seeds.chunks])[table.positions]
        if (values[1:] > values[:-1]).all() or len(np.unique(values)) == len(values):
            return np.zeros(len(table), dtype=bool)
    prompts = table.columns["prompt"]
    codes = dictionary_codes(prompts)[0][table.positions]
    suspects = np.bincount(codes)[codes] > 1
    if table.overrides:  # their prompt was stripped: compare it with every row's
        stripped = pa.array([row.prompt for row in table.overrides.values()])
        suspects |= pc.is_in(prompts, value_set=stripped).to_numpy(zero_copy_only=False)[table.positions]
        suspects[list(table.overrides)] = True
    return suspects


def duplicate_of(row: ManifestRow, row_samples: list[Sample], seen: dict[str, int]) -> RowRejection | None:
    """The rejection of a row that asks for a video an earlier row asks for, or None (its ids then join seen)."""
    if any(s.sample_id in seen for s in row_samples):
        first = seen.get(row_samples[0].sample_id, row.row)
        return RowRejection(
            row=row.row,
            column="seed",
            rule="duplicate_sample",
            message=f"asks for the same video as row {first} (same prompt, parameters and seed)",
            fix="give the row a different seed, or raise num_videos on the first row",
        )
    for s in row_samples:
        seen[s.sample_id] = row.row
    return None


def table_samples(
    table: RowTable,
    bucket_rows: np.ndarray,
    suspects: np.ndarray,
    videos: np.ndarray,
    seen: dict[str, int],
    rejections: list[RowRejection],
) -> tuple[SampleRefs, int]:
    """A bucket's samples as references (every video of every row, less rows that repeat an earlier row's video)
    and how many rows were left out for that.

    Only the ``duplicate_suspects`` can repeat a video; they are hashed here, in the order the list path hashes
    rows, so the same rows are rejected with the same messages.
    """
    keep = np.ones(len(bucket_rows), dtype=bool)
    for at in np.flatnonzero(suspects[bucket_rows]).tolist():
        row = table[int(bucket_rows[at])]
        duplicate = duplicate_of(row, expand_row(row), seen)
        if duplicate is not None:
            rejections.append(duplicate)
            keep[at] = False
    kept = bucket_rows[keep]
    videos_per_row = videos[kept]
    sample_rows = np.repeat(kept, videos_per_row)
    first_of_row = np.repeat(np.cumsum(videos_per_row) - videos_per_row, videos_per_row)
    return SampleRefs(table, sample_rows, np.arange(len(sample_rows)) - first_of_row), len(bucket_rows) - len(kept)
