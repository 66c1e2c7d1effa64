"""Example counts for tests with a deliberate cap of their own (each example is expensive).

The profiles are registered in tests/conftest.py: a cap written for `ci` grows with the loaded profile, so
`nightly` runs a capped test twenty times longer too. Call it at decoration time, after conftest loaded the profile.
"""

from __future__ import annotations

from hypothesis import settings


def scaled(examples: int, most: int | None = None) -> int:
    """``examples`` under the `ci` profile, as many times more as the loaded profile draws; at most ``most``."""
    factor = settings.default.max_examples / settings.get_profile("ci").max_examples
    count = max(1, round(examples * factor))
    return count if most is None else min(count, max(examples, most))
