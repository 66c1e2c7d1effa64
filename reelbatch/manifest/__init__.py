"""Reading a manifest of video prompts: every row checked, each bad row one rejection with a fix.

The modules build on each other one way:

* ``types``: the columns, limits, header, ``ManifestReadResult`` and ``ManifestError``;
* ``cells``: one parser per column; ``rejected``: the cells of rejected rows, as kept and as read back;
* ``checks``: a record to a ``ManifestRow`` or a ``RowRejection`` (``check_record``, ``RowChecker``);
* readers: ``lines`` (any CSV, streamed), ``columnar`` (a regular CSV, with pyarrow), ``tables`` (JSONL, Parquet);
* ``read``: ``read_manifest`` and ``parse_manifest_text``, which choose the reader.

The Prefect task that runs ``read_manifest`` in a flow is ``tasks.manifest.read_manifest_task``.
"""

from reelbatch.manifest.read import MANIFEST_FORMATS, manifest_format, parse_manifest_text, read_manifest
from reelbatch.manifest.rejected import raw_cells, rejected_row_values, row_cells
from reelbatch.manifest.types import (
    COLUMNS,
    MAX_SEED,
    ManifestError,
    ManifestLimits,
    ManifestReadResult,
    Models,
    check_columns,
)

__all__ = [
    "COLUMNS",
    "MANIFEST_FORMATS",
    "MAX_SEED",
    "ManifestError",
    "ManifestLimits",
    "ManifestReadResult",
    "Models",
    "check_columns",
    "manifest_format",
    "parse_manifest_text",
    "raw_cells",
    "read_manifest",
    "rejected_row_values",
    "row_cells",
]
