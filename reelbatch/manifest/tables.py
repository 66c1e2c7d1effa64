"""JSONL and Parquet manifests: read whole, each row object made into CSV-like cells, checked like CSV rows.

Such manifests are small next to the videos they describe, so there is no streaming and no fast path here.
Row numbers are line numbers for JSONL and 1-based positions for Parquet (it has no lines).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Mapping

from reelbatch.manifest.checks import read_header, subject_of, validate_records
from reelbatch.manifest.types import ManifestError, ManifestReadResult


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
    header = read_header([str(n) for n in names], subject)
    records = [(line, [_cell_text(obj.get(name)) for name in names]) for line, obj in objects]
    return header, [(line, cells) for line, cells in records if any(c.strip() for c in cells)]


def read_jsonl(raw: bytes, defaults, known_models, limits, source) -> ManifestReadResult:
    subject = subject_of(source)
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
            # Not always a JSONDecodeError: an integer of more than 4300 digits is a plain ValueError.
            reason = error.msg if isinstance(error, json.JSONDecodeError) else str(error)
            raise ManifestError(f"{subject} line {number} is not a JSON object: {reason}") from None
        if not isinstance(obj, dict):
            raise ManifestError(f"{subject} line {number} is not a JSON object (one object per line)")
        objects.append((number, obj))
    if not objects:
        raise ManifestError(f"{subject} is empty: it needs one JSON object per line with a 'prompt' key")
    header, records = _table_records(objects, subject)
    digest = hashlib.sha256(raw).hexdigest()
    return validate_records(header, records, defaults, known_models, limits, source, lambda: digest)


def read_parquet(raw: bytes, defaults, known_models, limits, source) -> ManifestReadResult:
    import pyarrow as pa
    import pyarrow.parquet as pq

    subject = subject_of(source)
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
    return validate_records(header, records, defaults, known_models, limits, source, lambda: digest)
