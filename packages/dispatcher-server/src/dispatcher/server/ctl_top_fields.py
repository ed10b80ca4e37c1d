"""Reading a field of a ``status`` reply defensively, for ``dispatcherctl top``.

A reply may come from a service of another version, or be hand-made: a value of an
unexpected type reads as nothing (``None``, an empty dict or list), never as an error.
"""

from __future__ import annotations

from typing import Any


def number(value: object) -> float | None:
    """*value* if it is a number (an int or a float, not a bool), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def as_dict(value: object) -> dict[Any, Any]:
    """*value* if it is a dict, else an empty one."""
    return value if isinstance(value, dict) else {}


def as_list(value: object) -> list[Any]:
    """*value* if it is a list, else an empty one."""
    return value if isinstance(value, list) else []
