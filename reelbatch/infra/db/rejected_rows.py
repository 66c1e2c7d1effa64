"""The cells of a rejected manifest row that can still be read, so its ``rejected`` sample row shows its context."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

# Manifest columns a rejected row may still carry; parsed best effort so the rejection can be shown with its context.
_REJECTED_ROW_PARSERS: dict[str, Callable[[str], Any]] = {
    "model": str,
    "height": int,
    "width": int,
    "num_frames": int,
    "num_inference_steps": int,
    "guidance_scale": float,
    "embedded_guidance_scale": float,
    "guidance_scale_2": float,
    "seed": int,
}


def _parse_or_none(parse: Callable[[str], Any], text: Any) -> Any:
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        return parse(text.strip())
    except ValueError:
        return None


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in {"1", "true", "yes", "y"}:
        return True
    if lowered in {"0", "false", "no", "n"}:
        return False
    raise ValueError(text)


def _rejected_row_values(raw: Mapping[str, Any]) -> dict[str, Any]:
    def text(column: str) -> str:
        value = raw.get(column)
        return value if isinstance(value, str) else ""

    values = {column: _parse_or_none(parse, raw.get(column)) for column, parse in _REJECTED_ROW_PARSERS.items()}
    values["sequence_batch"] = _parse_or_none(_parse_bool, raw.get("sequence_batch"))
    values["prompt"] = text("prompt")
    values["negative_prompt"] = text("negative_prompt")
    values["row_id"] = text("id") or None
    values["image"] = text("image") or None
    values["last_image"] = text("last_image") or None
    return values
