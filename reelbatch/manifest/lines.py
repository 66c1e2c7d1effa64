"""The line reader: any CSV manifest, streamed, with the exact line numbers of its rows and problems.

Bytes are hashed and decoded chunk by chunk and only the current line is held, so memory stays bounded however
large the manifest is (apart from the returned rows themselves). It writes every file-level error (not UTF-8, a
NUL byte, a quote never closed, ...), and it is the reference the columnar reader (``columnar``) must agree with.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, BinaryIO

from reelbatch.manifest.checks import read_header, subject_of, validate_records
from reelbatch.manifest.types import (
    MAX_FIELD_CHARS,
    MAX_LINE_CHARS,
    ManifestError,
    ManifestLimits,
    ManifestReadResult,
    Models,
)
from reelbatch.schemas import RunDefaults

if TYPE_CHECKING:
    from _csv import Reader

_READ_CHUNK_BYTES = 64 * 1024

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
            if self._partial_line_chars > MAX_LINE_CHARS:
                raise ManifestError(
                    f"{self._subject} has a line longer than {MAX_LINE_CHARS:,} characters"
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


def allow_large_csv_fields() -> None:
    # Huge cells must reach validation (and be rejected as too long) instead of failing inside csv. The limit is
    # process-wide, so it is only ever raised, never restored: that stays safe with readers in other threads.
    if csv.field_size_limit() < MAX_FIELD_CHARS:
        csv.field_size_limit(MAX_FIELD_CHARS)


def _records(reader: Reader, lines: _HashingLineReader, subject: str) -> Iterator[tuple[int, list[str]]]:
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


def read_lines(
    stream: BinaryIO, defaults: RunDefaults, known_models: Models, limits: ManifestLimits, source: str
) -> ManifestReadResult:
    subject = subject_of(source)
    allow_large_csv_fields()
    lines = _HashingLineReader(stream, subject)
    records = _records(csv.reader(lines), lines, subject)
    first_record = next(records, None)
    if first_record is None:
        raise ManifestError(f"{subject} is empty: it needs a header row with a 'prompt' column")
    header = read_header(first_record[1], subject)
    return validate_records(header, records, defaults, known_models, limits, source, lambda: lines.sha256)
