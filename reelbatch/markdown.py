"""Safe pieces of markdown for Prefect artifacts built from user text (prompts, file names, error messages)."""

from __future__ import annotations

from pathlib import Path

_ESCAPES = str.maketrans(
    {
        "\\": "\\\\",
        "|": "\\|",
        "[": "\\[",
        "]": "\\]",
        "`": "\\`",
        "*": "\\*",
        "_": "\\_",
        "<": "&lt;",
        ">": "&gt;",
        "\r": " ",
        "\n": " ",
    }
)


def cell(text: object, limit: int = 300) -> str:
    """``text`` as literal content of one table cell: no row breaks, no links, tags or emphasis it did not mean."""
    value = str(text)
    if len(value) > limit:
        value = value[: limit - 1] + "…"
    return value.translate(_ESCAPES)


def link(location: str, label: str | None = None) -> str:
    """A link to an output: URLs as they are, local paths as file:// URIs (spaces and brackets encoded)."""
    target = location if "://" in location else Path(location).as_uri()
    return f"[{cell(label or location, 500)}](<{target}>)"
