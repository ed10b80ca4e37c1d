"""Equality of values as JSON means it, and the items of an array that repeat (``uniqueItems``).

``true`` is not ``1``, ``1`` is ``1.0``, and containers compare deeply: the compiled
validators (:mod:`dispatcher.schema.compiler`) check ``const``, ``enum`` and ``uniqueItems``
so, and the explaining validator (:mod:`dispatcher.schema.validation`) names the repeated
items of an array with :func:`repeated`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def json_equal(one: Any, other: Any) -> bool:
    """Equality as JSON means it: ``true`` is not ``1``, ``1`` is ``1.0``, deep for containers.

    A value is equal to itself, even ``NaN``, as ``jsonschema`` has it.
    """
    if one is other:
        return True
    if isinstance(one, bool) or isinstance(other, bool):
        return type(one) is type(other) and bool(one == other)
    if isinstance(one, str) or isinstance(other, str):
        return bool(one == other)
    if isinstance(one, (list, tuple)) and isinstance(other, (list, tuple)):
        return len(one) == len(other) and all(map(json_equal, one, other))
    if isinstance(one, dict) and isinstance(other, dict):
        return one.keys() == other.keys() and all(json_equal(one[k], other[k]) for k in one)
    return bool(one == other)


def all_unique(items: Sequence[Any]) -> bool:
    """Tell whether no two of *items* are :func:`json_equal` (``uniqueItems``)."""
    return not repeated(items, 1)


def repeated(items: Sequence[Any], limit: int | None = None) -> list[tuple[int, int]]:
    """``(first, index)`` of each item :func:`json_equal` to an earlier one, in order.

    *first* is the index of the first item of that value. At most *limit* pairs. Each item
    is hashed once by its JSON form (:func:`_canonical`), so that a list of thousands costs
    thousands of steps, not millions of comparisons; only a list holding a value that has
    no such form (of a type JSON does not know, unhashable) is compared pair by pair.
    """
    found: list[tuple[int, int]] = []
    try:
        seen: dict[Any, int] = {}
        for index, item in enumerate(items):
            first = seen.setdefault(_canonical(item), index)
            if first != index:
                found.append((first, index))
                if len(found) == limit:
                    break
        return found
    except (TypeError, RecursionError):
        found = []
    for index, item in enumerate(items):
        for first in range(index):
            if json_equal(items[first], item):
                found.append((first, index))
                if len(found) == limit:
                    return found
                break
    return found


_BOOLEAN, _STRING, _ARRAY, _OBJECT, _OTHER = range(5)


def _canonical(value: Any) -> Any:
    """A hashable form of *value*, equal to another's exactly when :func:`json_equal` says.

    A value equals itself, even ``NaN`` (Python's containers compare identity first).

    :raises TypeError: for a value of a type JSON does not know that cannot be hashed.
    """
    if isinstance(value, bool):
        return _BOOLEAN, value
    if isinstance(value, str):
        return _STRING, value
    if isinstance(value, (list, tuple)):
        return _ARRAY, tuple(_canonical(item) for item in value)
    if isinstance(value, dict):
        return _OBJECT, frozenset((key, _canonical(item)) for key, item in value.items())
    hash(value)
    return _OTHER, value  # numbers (1 equals 1.0), null, and what == says of the others
