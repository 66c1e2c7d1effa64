"""The step-cache setting of a manifest row (``cache`` column, ``reelbatch run --cache``): its syntax, in one place.

A setting is ``none`` (no cache) or ``NAME[:THRESHOLD]``. The one name so far is ``fbc``: diffusers'
FirstBlockCache (``FirstBlockCacheConfig(threshold=...)``), which runs the transformer's first block each step and
reuses the residual of the remaining blocks from the previous step of the same pass when the first block's
residual changed by less than ``threshold`` (relative mean absolute difference). ``fbc`` alone takes diffusers'
default threshold (``defaults.FBC_THRESHOLD``); ``fbc:0`` never reuses anything (the uncached video).

The canonical text (``fbc:0.05``) is what rows, buckets, the database and the video's identity hold; ``None``
stands for no cache, so rows without one keep the identity they always had. Which transformers take which cache is
in ``models/pipelines.py``; the engine side is ``engine/caching.py``. Plain Python: every layer may import it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from reelbatch.defaults import FBC_THRESHOLD

# name -> (diffusers config class, what it is)
CACHE_KINDS: dict[str, tuple[str, str]] = {
    "fbc": (
        "FirstBlockCacheConfig",
        "First Block Cache: reuse the later blocks' residual while the first block's barely moves",
    ),
}
OFF = "none"
SYNTAX = "none, fbc or fbc:THRESHOLD (a number >= 0, e.g. fbc:0.05)"


@dataclass(frozen=True)
class StepCache:
    kind: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.kind}:{self.threshold!r}"


def parse_cache(text: object) -> str | None:
    """The canonical form of a cache setting (``fbc:0.05``), or None for ``none`` / an empty value.

    Raises ValueError with a message that names the syntax.
    """
    if text is None:
        return None
    raw = str(text).strip().lower()
    if raw in ("", OFF, "off"):
        return None
    name, sep, value = raw.partition(":")
    name = name.strip()
    if name not in CACHE_KINDS:
        raise ValueError(f"unknown step cache {name!r}: use {SYNTAX}")
    if not sep:
        return str(StepCache(name, FBC_THRESHOLD))
    try:
        threshold = float(value.strip())
    except ValueError:
        raise ValueError(f"cache {raw!r}: the threshold must be a number; use {SYNTAX}") from None
    if not math.isfinite(threshold) or threshold < 0:
        raise ValueError(f"cache {raw!r}: the threshold must be a finite number >= 0; use {SYNTAX}")
    return str(StepCache(name, threshold + 0.0))  # + 0.0: -0.0 is 0.0


def cache_spec(canonical: str | None) -> StepCache | None:
    """The parsed form of a canonical setting (None: no cache)."""
    value = parse_cache(canonical)
    if value is None:
        return None
    name, _, threshold = value.partition(":")
    return StepCache(name, float(threshold))
