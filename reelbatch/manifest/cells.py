"""One parser per manifest column: a cell's text (or the run default) in, the row's value or a ``CellProblem`` out.

A problem names a rule id, says what is wrong with the value as written and gives a concrete fix; the row checks
(``checks``) turn the first one of a row into its ``RowRejection``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import get_args

from reelbatch.manifest.types import COLUMNS, MAX_SEED, ManifestLimits, Models
from reelbatch.models.catalog import ModelCatalog, UnknownModel
from reelbatch.models.pipelines import GenerationDefaults
from reelbatch.models.registry import FAMILIES, ModelFamily
from reelbatch.redact import redact_secrets
from reelbatch.schemas import Backend, ParallelPlan, RunDefaults
from reelbatch.stepcache import SYNTAX, parse_cache

_QUOTED_VALUE_CHARS = 40


class CellProblem(ValueError):
    """Raised by a column parser; pydantic collects it and keeps the instance in the error's ``ctx``."""

    def __init__(self, rule: str, message: str, fix: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message
        self.fix = fix


@dataclass(frozen=True)
class RowContext:
    defaults: RunDefaults
    limits: ManifestLimits
    known_models: frozenset[str]
    families: Mapping[str, ModelFamily] = field(default_factory=dict)  # what empty cells become, per model

    @classmethod
    def of(cls, defaults: RunDefaults, limits: ManifestLimits, models: Models) -> RowContext:
        if isinstance(models, ModelCatalog):
            families = {}
            for name in models.names():
                try:
                    families[name] = models.family(name)
                except UnknownModel:
                    pass  # planning rejects its rows; their cells take the fallback defaults meanwhile
            return cls(defaults, limits, frozenset(models.names()), families)
        known = frozenset(models)
        return cls(defaults, limits, known, {name: FAMILIES[name] for name in known if name in FAMILIES})


# What empty cells of a model without a family become.
FALLBACK_DEFAULTS = GenerationDefaults()


_WHOLE_NUMBER = re.compile(r"(?P<sign>[+-]?)(?P<digits>[0-9]+)(?:\.0*)?")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# Longer numbers are outside every limit anyway, and int() refuses strings of more than 4300 digits.
_MAX_DIGITS = 40
_TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
_FALSE_WORDS = frozenset({"false", "0", "no", "off"})
# Examples for fixes of columns whose run default is None.
_FALLBACK_EXAMPLES: dict[str, object] = {"seed": 42, "embedded_guidance_scale": 6.0}


def quote(value: object) -> str:
    """The value as the user wrote it (but the secrets of URLs in it), shortened and kept on one line, quoted."""
    text = redact_secrets(str(value))
    if len(text) > _QUOTED_VALUE_CHARS:
        text = text[: _QUOTED_VALUE_CHARS - 3] + "..."
    text = "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)
    return f'"{text}"'


def _example(column: str, context: RowContext) -> object:
    default = getattr(context.defaults, column, None)
    return default if default is not None else _FALLBACK_EXAMPLES.get(column, 1)


def _nearest_allowed(value: int, *, step: int, offset: int, low: int, high: int) -> list[int]:
    """The allowed values (offset + k*step, within low..high) nearest to value: the one below and the one above."""
    first = low + (offset - low) % step
    last = high - (high - offset) % step
    if first > last:
        return []
    clamped = min(max(value, first), last)
    below = clamped - (clamped - offset) % step
    above = below if below == clamped else below + step
    return sorted({below, above})


def _use_one_of(values: list[int]) -> str:
    if not values:
        return "raise the configured limit: no value fits it"
    return "use " + " or ".join(str(value) for value in values)


def _whole_number(value: object, column: str, context: RowContext) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _WHOLE_NUMBER.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise CellProblem(
            "not_integer",
            f"{column} {quote(value)} is not a whole number",
            f"write a whole number such as {_example(column, context)}",
        )
    digits = match["digits"].lstrip("0") or "0"
    if len(digits) > _MAX_DIGITS:
        digits = "9" * _MAX_DIGITS
    number = int(digits)
    return -number if match["sign"] == "-" else number


def _finite_number(value: object, column: str, context: RowContext) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str) and _NUMBER.fullmatch(value):
        number = float(value)
    else:
        number = math.nan
    if not math.isfinite(number):
        raise CellProblem(
            "not_a_number",
            f"{column} {quote(value)} is not a finite number",
            f"write a number such as {_example(column, context)}",
        )
    return number


def _parse_id(value: object, column: str, context: RowContext) -> str | None:
    if value is None:
        return None
    return _checked_text(str(value), column, context)


def _parse_prompt(value: object, column: str, context: RowContext) -> str:
    if not value:
        raise CellProblem("empty_prompt", "prompt is empty", "write a prompt or delete the row")
    return _checked_text(str(value), column, context)


def _parse_negative_prompt(value: object, column: str, context: RowContext) -> str | None:
    if value is None:
        return None  # the model's default, filled in once the row's model is known
    return _checked_text(str(value), column, context)


def _checked_text(text: str, column: str, context: RowContext) -> str:
    if "\x00" in text:
        raise CellProblem("nul_character", f"{column} {quote(text)} contains a NUL character", "remove it")
    limit = context.limits.max_prompt_chars
    if len(text) > limit:
        raise CellProblem(
            "prompt_too_long",
            f"{column} {quote(text)} is {len(text):,} characters long, over the limit of {limit:,}",
            f"shorten it to at most {limit:,} characters",
        )
    return text


def _parse_model(value: object, column: str, context: RowContext) -> str:
    if value in context.known_models:
        return str(value)
    known = sorted(context.known_models)
    if not known:
        fix = "register a model first: none is known"
    elif len(known) == 1:
        fix = f"use {known[0]}"
    else:
        fix = "use one of: " + ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
    raise CellProblem("unknown_model", f"model {quote(value)} is not a known model", fix)


def _parse_side(value: object, column: str, context: RowContext) -> int:
    side = _whole_number(value, column, context)
    max_side = context.limits.max_side
    if side < 1:
        rule, problem = "size_not_positive", "is not a positive number of pixels"
    elif side > max_side:
        rule, problem = "size_too_large", f"is larger than the limit of {max_side} pixels"
    elif side % 16:
        rule, problem = "size_not_multiple_of_16", "is not a multiple of 16"
    else:
        return side
    allowed = _nearest_allowed(side, step=16, offset=0, low=16, high=max_side)
    raise CellProblem(rule, f"{column} {quote(value)} {problem}", _use_one_of(allowed))


def _parse_num_frames(value: object, column: str, context: RowContext) -> int:
    frames = _whole_number(value, column, context)
    max_frames = context.limits.max_frames
    if frames < 1:
        rule, problem = "frames_not_positive", "is less than 1"
    elif frames > max_frames:
        rule, problem = "frames_too_many", f"is more than the limit of {max_frames}"
    elif (frames - 1) % 4:
        rule, problem = "frames_not_4k_plus_1", "is not one more than a multiple of 4 (4k+1, e.g. 81)"
    else:
        return frames
    allowed = _nearest_allowed(frames, step=4, offset=1, low=1, high=max_frames)
    raise CellProblem(rule, f"{column} {quote(value)} {problem}", _use_one_of(allowed))


def _parse_steps(value: object, column: str, context: RowContext) -> int | None:
    if value is None:
        return None  # the model's default, filled in once the row's model is known
    steps = _whole_number(value, column, context)
    max_steps = context.limits.max_steps
    if not 1 <= steps <= max_steps:
        raise CellProblem(
            "steps_out_of_range",
            f"{column} {quote(value)} is outside 1 to {max_steps}",
            f"use a whole number from 1 to {max_steps}",
        )
    return steps


def _parse_guidance(value: object, column: str, context: RowContext) -> float | None:
    if value is None:
        return None
    scale = _finite_number(value, column, context)
    if scale < 0:
        raise CellProblem(
            "negative_guidance",
            f"{column} {quote(value)} is negative",
            f"use 0 or a positive number such as {_example(column, context)}",
        )
    return scale


def _parse_seed(value: object, column: str, context: RowContext) -> int | None:
    if value is None:
        return None
    seed = _whole_number(value, column, context)
    if not 0 <= seed <= MAX_SEED:
        raise CellProblem(
            "seed_out_of_range",
            f"seed {quote(value)} is outside 0 to {MAX_SEED}",
            f"use a whole number from 0 to {MAX_SEED}",
        )
    return seed


def _parse_num_videos(value: object, column: str, context: RowContext) -> int:
    count = _whole_number(value, column, context)
    limit = context.limits.max_num_videos
    if count < 1:
        rule, problem = "too_few_videos", "is less than 1"
    elif count > limit:
        rule, problem = "too_many_videos", f"is more than the limit of {limit}"
    else:
        return count
    raise CellProblem(
        rule, f"{column} {quote(value)} {problem}", f"use a whole number from 1 to {limit}, or split the row"
    )


def _parse_flag(value: object, column: str, context: RowContext) -> bool:
    if isinstance(value, bool):
        return value
    word = str(value).lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise CellProblem("not_boolean", f"{column} {quote(value)} is not true or false", "use true or false")


BACKENDS = get_args(Backend)


def _parse_image(value: object, column: str, context: RowContext) -> str | None:
    """A path or URL as written; where it may be read from and whether it is an image is intake's business
    (tasks/images.py), which reads it before any GPU time. A URL that carries a secret (a user name or password,
    a query string such as a signature) is refused here, so it reaches no message, database row or page."""
    if value is None:
        return None
    text = str(value)
    links = [link.split("://", 1)[1] for link in text.split("::") if "://" in link]
    if any("@" in link.split("/", 1)[0] for link in links):
        raise CellProblem(
            "image_credentials_in_url",
            f"{column}: the URL carries a user name or password",
            "remove them: credentials come from the standard AWS variables or a profile, never from the manifest",
        )
    if links and "?" in text:
        raise CellProblem(
            "image_url_query",
            f"{column}: the URL has a query string (it may carry a signature)",
            "give the object's plain URL (s3://bucket/key) and let the storage credentials sign the read",
        )
    return _checked_text(text, column, context)


def _parse_lora(value: object, column: str, context: RowContext) -> str | None:
    """A LoRA adapter's path or URL as written: refused here if it carries a secret (as an image URL is); intake
    (``manifest/loras.py``) reads, checks and stages it before any GPU time."""
    if value is None:
        return None
    try:
        return _parse_image(value, column, context)
    except CellProblem as problem:
        raise CellProblem(problem.rule.replace("image_", "lora_", 1), problem.message, problem.fix) from None


def _parse_lora_scale(value: object, column: str, context: RowContext) -> float | None:
    """The LoRA's strength (diffusers' ``fuse_lora(lora_scale=...)``); empty: 1.0 where the row names a LoRA."""
    if value is None:
        return None
    return _finite_number(value, column, context)


def _parse_plan(value: object, column: str, context: RowContext) -> ParallelPlan | None:
    if value is None or isinstance(value, ParallelPlan):
        return value
    try:
        return ParallelPlan.parse(str(value))
    except ValueError as error:
        raise CellProblem(
            "bad_plan",
            f"{column} {quote(value)}: {error}",
            "write it like dp=2,cfg=2,ulysses=1,ring=1, or leave the cell empty to let reelbatch choose",
        ) from None


def _parse_backend(value: object, column: str, context: RowContext) -> str:
    backend = str(value).strip().lower()
    if backend not in BACKENDS:
        raise CellProblem(
            "unknown_backend",
            f"{column} {quote(value)} is not a parallel backend",
            f"use one of: {', '.join(BACKENDS)}",
        )
    return backend


def _parse_cache(value: object, column: str, context: RowContext) -> str | None:
    try:
        return parse_cache(value)
    except ValueError as error:
        raise CellProblem(
            "bad_cache",
            f"{column} {quote(value)}: {error}",
            f"write {SYNTAX}, or leave the cell empty for the run's setting",
        ) from None


ColumnParser = Callable[[object, str, RowContext], object]

# One parser per column of ``types.COLUMNS``, in that order. A parser receives the stripped cell, or the run
# default when the cell is empty, and returns the value for the ManifestRow field of the same name.
# A new column (``plan``, ``backend``) is one entry here, its name in COLUMNS and a field of that name on
# ManifestRow (and on RunDefaults if the run gives it a default).
COLUMN_PARSERS: dict[str, ColumnParser] = {
    "id": _parse_id,
    "prompt": _parse_prompt,
    "negative_prompt": _parse_negative_prompt,
    "model": _parse_model,
    "height": _parse_side,
    "width": _parse_side,
    "num_frames": _parse_num_frames,
    "num_inference_steps": _parse_steps,
    "guidance_scale": _parse_guidance,
    "embedded_guidance_scale": _parse_guidance,
    "seed": _parse_seed,
    "num_videos": _parse_num_videos,
    "sequence_batch": _parse_flag,
    "plan": _parse_plan,
    "backend": _parse_backend,
    "guidance_scale_2": _parse_guidance,
    "image": _parse_image,
    "last_image": _parse_image,
    "cache": _parse_cache,
    "lora": _parse_lora,
    "lora_scale": _parse_lora_scale,
}
if tuple(COLUMN_PARSERS) != COLUMNS:
    raise ImportError("manifest: COLUMN_PARSERS must have one parser per column of COLUMNS, in the same order")
