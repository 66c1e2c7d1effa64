"""A finished run as a dataset people can load: an index next to the videos, exports, an offline gallery.

- ``metadata.csv`` in the Hugging Face ``videofolder`` layout: ``file_name`` (relative to the output folder)
  plus the prompt and generation parameters, one line per done video;
- ``samples.parquet``: every column of the run's samples table;
- ``gallery/<run>.html``: self-contained pages (first frames inlined as PNG) that open offline; page 1 links the
  others (see ``tasks.gallery``).

Everything streams: sample rows are read from the database in chunks and each chunk is written (CSV rows,
a Parquet row group, gallery cards) before the next is read, so memory follows the chunk, not the run.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import fsspec

from reelbatch import defaults as default
from reelbatch.infra.db import Database
from reelbatch.infra.db.models import SampleRecord
from reelbatch.infra.storage import images_root, is_local
from reelbatch.tasks.gallery import card, page_html, page_name

ExportFormat = Literal["parquet", "csv", "jsonl"]

METADATA_COLUMNS = (
    "file_name", "prompt", "negative_prompt", "model", "height", "width", "num_frames", "num_inference_steps",
    "guidance_scale", "embedded_guidance_scale", "seed", "sample_id", "row", "row_id", "video_index",
    "guidance_scale_2", "conditioning", "image", "image_sha256", "last_image", "last_image_sha256",
    "cache", "transformer_forwards", "cached_forwards",
    "lora", "lora_sha256", "lora_scale",
)  # fmt: skip

# A spreadsheet runs a cell starting with one of these as a formula (CSV injection).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def neutralise_formula(value: object) -> object:
    """Text a spreadsheet would execute gets a leading apostrophe; numbers and other text pass unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def resolved_root(output_root: str) -> str:
    """The output folder as the videos' recorded paths start: an absolute local path, or the URL."""
    root = output_root.rstrip("/")
    return str(Path(root.removeprefix("file://")).resolve()) if is_local(root) else root


def batched(rows: Iterable[dict], size: int) -> Iterator[list[dict]]:
    """Rows in lists of at most ``size`` (itertools.batched is Python 3.12)."""
    iterator = iter(rows)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _open(url: str, mode: str):
    if "w" in mode and is_local(url):
        Path(url.removeprefix("file://")).parent.mkdir(parents=True, exist_ok=True)
    return fsspec.open(url, mode, **({"encoding": "utf-8", "newline": ""} if "b" not in mode else {}))


def _jsonable(value: object) -> object:
    return value.isoformat() if hasattr(value, "isoformat") else value


class MetadataCsv:
    """metadata.csv: one line per done video, written a chunk at a time."""

    def __init__(self, fh, output_root: str) -> None:
        self._prefix = resolved_root(output_root) + "/"  # resolved once: a filesystem call per line adds up
        self.lines = 0
        self._writer = csv.DictWriter(fh, fieldnames=METADATA_COLUMNS, extrasaction="ignore")
        self._writer.writeheader()

    def write(self, chunk: list[dict]) -> None:
        # Not neutralised: this file is the dataset itself, read by loaders, and must keep prompts verbatim.
        done = [
            {**s, "file_name": s["output_path"].removeprefix(self._prefix)}
            for s in chunk
            if s["status"] == "done" and s["output_path"]
        ]
        self._writer.writerows(done)
        self.lines += len(done)


def _arrow_schema(first_chunk: list[dict]):
    """The first chunk's inferred schema, with a type from the samples table for a column that chunk has only
    nulls in: a later chunk's values must fit the file's one schema."""
    import pyarrow as pa

    by_python_type = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}
    columns = SampleRecord.__table__.columns
    fields = []
    for field in pa.Table.from_pylist(first_chunk).schema:
        if pa.types.is_null(field.type):
            python_type = columns[field.name].type.python_type if field.name in columns else str
            # Every datetime reelbatch stores is UTC (UTCDateTime): naive would lose that in the file.
            field = field.with_type(by_python_type.get(python_type, pa.timestamp("us", tz="UTC")))
        fields.append(field)
    return pa.schema(fields)


def check_format(fmt: str) -> None:
    if fmt not in ("parquet", "csv", "jsonl"):
        raise ValueError(f"unknown export format {fmt!r}: use parquet, csv or jsonl")


class SamplesFile:
    """Every column of every sample row as Parquet (a row group per chunk), JSON lines or CSV."""

    def __init__(self, fh, fmt: ExportFormat) -> None:
        check_format(fmt)
        self.fh, self.fmt, self.rows = fh, fmt, 0
        self._parquet: Any = None
        self._csv: csv.DictWriter | None = None

    def write(self, chunk: list[dict]) -> None:
        if not chunk:
            return
        self.rows += len(chunk)
        if self.fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self.fh, _arrow_schema(chunk))
            self._parquet.write_table(pa.Table.from_pylist(chunk, schema=self._parquet.schema))
        elif self.fmt == "jsonl":
            self.fh.writelines(
                json.dumps({k: _jsonable(v) for k, v in s.items()}, ensure_ascii=False) + "\n" for s in chunk
            )
        else:
            if self._csv is None:
                self._csv = csv.DictWriter(self.fh, fieldnames=list(chunk[0]))
                self._csv.writeheader()
            self._csv.writerows({k: neutralise_formula(_jsonable(v)) for k, v in s.items()} for s in chunk)

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
        elif self.fmt == "parquet":  # no rows: a valid file all the same, as pyarrow writes an empty table
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({}), self.fh)
        elif self.fmt == "csv" and self._csv is None:
            self.fh.write("\r\n")  # csv.DictWriter's header of no columns


class Gallery:
    """The gallery pages, each written as soon as it holds ``page_size`` cards.

    ``run`` holds id, status, manifest_source, rows and done: the page count and every page's header are known
    before the first card."""

    def __init__(self, run: dict, url: str, images_dir: Path | None, page_size: int) -> None:
        self.run, self.images_dir, self.page_size = run, images_dir, page_size
        self.folder = url.rsplit("/", 1)[0]
        self.pages = max(1, math.ceil(run["rows"] / page_size))
        self.cards = 0
        self._page = 1
        self._pending: list[str] = []

    def write(self, chunk: list[dict]) -> None:
        for s in chunk:
            self._pending.append(card(s, self.images_dir))
            self.cards += 1
            if len(self._pending) == self.page_size and self._page < self.pages:
                self._flush()

    def _flush(self) -> None:
        with _open(f"{self.folder}/{page_name(self.run['id'], self._page)}", "w") as fh:
            fh.write(page_html(self.run, self._pending, self._page, self.pages))
        self._page, self._pending = self._page + 1, []

    def close(self) -> None:
        """The last page (the first, if the run has no rows); the rows counted at the start may have been fewer."""
        while self._page <= self.pages:
            self._flush()


def write_metadata_csv(samples: Iterable[dict], output_root: str, url: str) -> int:
    with _open(url, "w") as fh:
        metadata = MetadataCsv(fh, output_root)
        for chunk in batched(samples, default.EXPORT_CHUNK_ROWS):
            metadata.write(chunk)
    return metadata.lines


def write_samples(
    samples: Iterable[dict], url: str, fmt: ExportFormat, chunk_rows: int = default.EXPORT_CHUNK_ROWS
) -> int:
    """Every column of every sample row (rejected and failed ones too); ``samples`` may be a generator."""
    check_format(fmt)  # before a file is made
    with _open(url, "wb" if fmt == "parquet" else "w") as fh:
        exported = SamplesFile(fh, fmt)
        for chunk in batched(samples, chunk_rows):
            exported.write(chunk)
        exported.close()
    return exported.rows


def write_gallery(
    run: dict,
    samples: Iterable[dict],
    url: str,
    images_dir: Path | None = None,
    page_size: int = default.GALLERY_PAGE_SIZE,
) -> int:
    """The gallery pages of a run, page 1 at ``url``; ``run``: id, status, manifest_source, rows, done."""
    gallery = Gallery(run, url, images_dir, page_size)
    for chunk in batched(samples, page_size):
        gallery.write(chunk)
    gallery.close()
    return gallery.cards


def write_dataset_index(
    db: Database,
    run_id: str,
    output_root: str,
    chunk_rows: int = default.EXPORT_CHUNK_ROWS,
    page_size: int = default.GALLERY_PAGE_SIZE,
) -> dict[str, str]:
    """metadata.csv, samples.parquet and the gallery for a run, next to its videos; returns their locations.

    One pass over the run's sample rows, a chunk at a time, feeds all three."""
    summary = db.run_summary(run_id)
    root = resolved_root(output_root)
    locations = {
        "metadata": f"{root}/metadata.csv",
        "samples": f"{root}/samples.parquet",
        "gallery": f"{root}/gallery/{page_name(summary.id, 1)}",
    }
    run = {
        "id": summary.id,
        "status": summary.status,
        "manifest_source": summary.manifest_source,
        "rows": sum(summary.counts.values()),
        "done": summary.counts.get("done", 0),
    }
    with contextlib.ExitStack() as files:
        metadata = MetadataCsv(files.enter_context(_open(locations["metadata"], "w")), output_root)
        samples = SamplesFile(files.enter_context(_open(locations["samples"], "wb")), "parquet")
        gallery = Gallery(run, locations["gallery"], images_root(output_root), page_size)
        for chunk in db.sample_chunks(summary.id, chunk_rows):
            metadata.write(chunk)
            samples.write(chunk)
            gallery.write(chunk)
        samples.close()
        gallery.close()
    return locations


# Prefect is imported last so that everything above reads, and is tested, as plain Python.
from reelbatch.tasks.step import step  # noqa: E402

write_dataset_index_task = step("write-dataset-index", write_dataset_index)
