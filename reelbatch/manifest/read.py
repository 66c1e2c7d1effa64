"""``read_manifest``: a manifest's location (or text) in, its checked rows and rejections out.

File-level problems (not UTF-8, no header, no ``prompt`` column, ...) raise ``ManifestError`` carrying one
sentence for the user. Row-level problems never raise: each bad row becomes one ``RowRejection`` naming the
line, the column, a rule id and a concrete fix, and the good rows still run.

A CSV file of up to ``COLUMNAR_MAX_BYTES`` is read whole and, when it is regular, checked column by column
(``columnar``: same results, far faster). Any other CSV file is streamed by the line reader (``lines``). JSONL
and Parquet manifests are read whole (``tables``).
"""

from __future__ import annotations

import io
import os
from typing import BinaryIO, cast

from reelbatch.manifest.columnar import read_columnar
from reelbatch.manifest.lines import read_lines
from reelbatch.manifest.tables import read_jsonl, read_parquet
from reelbatch.manifest.types import ManifestError, ManifestLimits, ManifestReadResult, Models, Sha256Of
from reelbatch.redact import INLINE_SOURCE, redact_text, redact_url
from reelbatch.schemas import RunDefaults

# A CSV manifest up to this size is read whole and tried on the columnar fast path (``columnar``); a
# bigger one, or one that is not regular, is streamed through the line reader (``lines``). The line reader keeps
# every row as an object, so it saves no memory: a 1,000,000-row manifest (173 MB) peaks at 3.3 GB and 78 CPU
# seconds there, at 1.3 GB and 13 s on the fast path (docs/BENCHMARKS.md, "Planning at scale").
COLUMNAR_MAX_BYTES = 512 * 1024 * 1024


class _PrefixedStream(io.RawIOBase):
    """``prefix`` (bytes already read) followed by the rest of ``stream``."""

    def __init__(self, prefix: bytes, stream: BinaryIO) -> None:
        self._prefix: memoryview | None = memoryview(prefix)
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
    stream: BinaryIO,
    defaults: RunDefaults,
    known_models: Models,
    limits: ManifestLimits,
    source: str,
    columnar: bool = True,
) -> ManifestReadResult:
    """The columnar fast path when the file is small enough and regular, else the line reader: same results."""
    if not columnar:
        return read_lines(stream, defaults, known_models, limits, source)
    head = _read_at_most(stream, COLUMNAR_MAX_BYTES)
    if len(head) > COLUMNAR_MAX_BYTES:
        prefixed = _PrefixedStream(head, stream)
        del head  # the stream owns the prefix now, and frees it once it is read
        # A raw binary stream: read_lines only calls read() on it.
        return read_lines(cast(BinaryIO, prefixed), defaults, known_models, limits, source)
    result = read_columnar(head, defaults, known_models, limits, source, Sha256Of(head))
    if result is not None:
        return result
    return read_lines(io.BytesIO(head), defaults, known_models, limits, source)


def _open(location: str) -> BinaryIO:
    """A local path is opened directly: importing fsspec (and asyncio with it) costs more than reading a 100,000-row
    manifest's columns; any URL goes through fsspec."""
    if "://" not in location and not location.startswith(("file:", "~")):
        return open(location, "rb")  # noqa: SIM115 - the caller's `with` closes it
    import fsspec

    return cast(BinaryIO, fsspec.open(location, "rb").open())


MANIFEST_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


def manifest_format(source: str) -> str:
    """csv, jsonl or parquet from the file name (before any compression suffix); csv when unknown."""
    name = source.split("?", 1)[0].lower()
    for suffix, fmt in MANIFEST_FORMATS.items():
        if name.endswith(suffix):
            return fmt
    return "csv"


def read_manifest(
    source: str | os.PathLike[str],
    defaults: RunDefaults,
    known_models: Models,
    limits: ManifestLimits = ManifestLimits(),
    *,
    columnar: bool = True,
) -> ManifestReadResult:
    """Read and validate the manifest (CSV, JSONL or Parquet) at ``source``: a local path or any fsspec URL.

    ``columnar=False`` skips the fast path (``columnar``) and reads every CSV line by line: the results are the
    same, only slower (tests compare the two).
    """
    location = os.fspath(source)
    try:
        stream = _open(location)
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
    parse = read_jsonl if fmt == "jsonl" else read_parquet
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
