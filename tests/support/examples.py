"""How many examples each property test tries.

The everyday suite (what CI runs) tries each test's own count, chosen to keep the whole
suite within its time budget. A deep run multiplies every count:
``DISPATCHER_TEST_EXAMPLES=10 hatch run test tests/unit`` (``hatch run test-deep`` does so),
and the property tests' time limit with them.
"""

from __future__ import annotations

import os

SCALE_VARIABLE = "DISPATCHER_TEST_EXAMPLES"


def examples(count: int) -> int:
    """The number of examples to try for a test whose everyday count is ``count``."""
    return max(1, round(count * _scale()))


def scaled_seconds(seconds: float) -> float:
    """The time limit of a property test whose everyday limit is *seconds* (at least that)."""
    return seconds * max(1.0, _scale())


def _scale() -> float:
    raw = os.environ.get(SCALE_VARIABLE, "1")
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{SCALE_VARIABLE} must be a number, got {raw!r}") from None
