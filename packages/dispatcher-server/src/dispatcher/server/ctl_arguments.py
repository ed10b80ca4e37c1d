"""The values ``dispatcherctl``'s options take: each checked, its error naming what it got.

argparse prefixes each error with the option's name (``argument --timeout: ...``).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from typing import Any


def json_list(text: str) -> list[Any]:
    """An argument that must be a JSON array."""
    value = _json(text)
    if not isinstance(value, list):
        raise argparse.ArgumentTypeError(f"expected a JSON array, got {text!r}")
    return value


def json_object(text: str) -> dict[str, Any]:
    """An argument that must be a JSON object."""
    value = _json(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def seconds(text: str) -> float:
    """An argument that must be a number of seconds: finite, at least 0."""
    value = _number(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a number of seconds (0 or more), got {text!r}")
    return value


def positive_seconds(text: str) -> float:
    """An argument that must be a number of seconds above 0 (and finite)."""
    value = _number(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text!r}")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def count(text: str) -> int:
    """An argument that must be a whole number, at least 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number (0 or more), got {text!r}")
    return value


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc}): {text!r}") from None


def seconds_between(low: float, high: float) -> Callable[[str], float]:
    """An argument that must be a number of seconds from *low* to *high*."""

    def parse(text: str) -> float:
        value = _number(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"must be between {low:g} and {high:g} seconds, got {text!r}"
            )
        return value

    return parse


def count_between(low: int, high: int) -> Callable[[str], int]:
    """An argument that must be a whole number from *low* to *high*."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {text!r}")
        return value

    return parse
