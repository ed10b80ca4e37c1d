"""Values no config may hold, refused wherever they are before the schema is checked.

A NaN or an infinity, a number that is no int or float, a key that is not a string, a
container inside itself, nesting deeper than :data:`MAX_CONFIG_DEPTH`, more than
:data:`MAX_CONFIG_VALUES` values.
"""

from __future__ import annotations

import datetime
import math
import numbers
from collections.abc import Mapping
from typing import Any, Final

from dispatcher.schema import Problem
from dispatcher.schema.errors import key_kind

MAX_CONFIG_VALUES: Final = 1_000_000
"""Most values a config may hold once its YAML aliases are expanded."""

MAX_CONFIG_DEPTH: Final = 64
"""Deepest nesting of mappings and lists a config may have (a config has a handful)."""


def unusable_values(data: Any) -> list[Problem]:
    """Every NaN or infinity, key that is no string, cycle, too deep a nesting in *data*.

    And too many values.

    A NaN or infinity: YAML ``.nan``, ``.inf``; ``float('nan')`` in a dict. A key that is
    not a string: YAML ``~:``, ``1.5:``, ``2024-01-01:``, ``!!binary``, ``? [a]``, anywhere
    (a config is a JSON document, whose keys are strings: a task's ``args`` too). A cycle: a
    mapping or list that contains itself (a dict built in Python, a YAML alias inside its
    own anchor); nesting deeper than :data:`MAX_CONFIG_DEPTH`; more than
    :data:`MAX_CONFIG_VALUES` values.

    Refused wherever it is, before the schema is checked: the schema's bounds are
    comparisons, which a NaN passes (it is neither below nor above any bound), and no
    setting means anything with one (a ``schedule`` of NaN seconds, a ``timeout`` of
    infinity: say "no limit" as the setting documents it, not with an infinity). A cycle
    would have every later step (translation, validation, copying) recurse for ever.
    """
    problems: list[Problem] = []
    enclosing: set[int] = set()  # the ids of the containers around the value walked
    pending: list[tuple[bool, tuple[Any, ...], Any]] = [(False, (), data)]
    seen = 0
    while pending:
        leaving, path, value = pending.pop()
        if leaving:
            enclosing.discard(id(value))
            continue
        seen += 1
        if seen > MAX_CONFIG_VALUES:
            return [Problem((), f"more than {MAX_CONFIG_VALUES} values")]
        if isinstance(value, Mapping | list | tuple):
            if id(value) in enclosing:
                problems.append(
                    Problem(path, "contains itself (a cycle): a config is a tree of values")
                )
                continue
            if len(path) >= MAX_CONFIG_DEPTH:
                problems.append(Problem(path, f"nested more than {MAX_CONFIG_DEPTH} levels deep"))
                continue
            enclosing.add(id(value))
            pending.append((True, path, value))
            if isinstance(value, Mapping):
                problems.extend(
                    Problem((*path, key), _not_text_key(key))
                    for key in value
                    if not isinstance(key, str)
                )
            items = value.items() if isinstance(value, Mapping) else enumerate(value)
            pending.extend((False, (*path, key), item) for key, item in items)
        elif isinstance(value, float) and not math.isfinite(value):
            what = "NaN (not a number)" if math.isnan(value) else f"{value} (infinite)"
            problems.append(Problem(path, f"{what}: a finite number is expected"))
        elif isinstance(value, numbers.Number) and not isinstance(value, int | float):
            # A Decimal, a Fraction, a numpy number: the schema's checks and the code that
            # reads the setting take int and float only (a Decimal NaN raised from them).
            kind = type(value).__name__
            reason = f"a {kind}, not a number of JSON: give an int or a float"
            problems.append(Problem(path, reason))
    return sorted(problems, key=lambda p: p.sort_key)


def _not_text_key(key: object) -> str:
    """Why the mapping key *key* (not a string) is refused, with how to write a string."""
    reason = f"a key must be a string, not {key_kind(key)}"
    if key is None or isinstance(key, int | float | datetime.date):
        reason += " (YAML reads an unquoted ~, true, number or date as one: quote the key)"
    return reason
