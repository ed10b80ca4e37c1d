"""Schema patterns as ECMA-262 reads them, shared by the compiled and the explaining validators."""

from __future__ import annotations

import re
from typing import Any


def ecma_pattern(pattern: str) -> re.Pattern[str]:
    r"""Compile a JSON Schema ``pattern`` with ECMA-262's meaning of ``$``.

    Outside a character class, an unescaped ``$`` becomes ``\Z`` (the very end of the text);
    the rest is left to Python's ``re``, which agrees with ECMA-262 on everything the
    project's schemas use. Character classes are delimited as ``re`` reads them: a ``]`` just
    after ``[`` or ``[^`` is a member, not the end.
    """
    out: list[str] = []
    in_class = False
    first = 0  # where the class's first member goes in *out*
    escaped = False
    for char in pattern:
        if escaped:
            out.append(char)
            escaped = False
        elif char == "\\":
            out.append(char)
            escaped = True
        elif in_class:
            if char == "]" and len(out) > first:
                in_class = False
            elif char == "^" and len(out) == first and out[-1] == "[":
                first += 1  # a negated class: its first member comes after the "^"
            out.append(char)
        elif char == "[":
            out.append(char)
            first = len(out)
            in_class = True
        elif char == "$":
            out.append(r"\Z")
        else:
            out.append(char)
    return re.compile("".join(out))


def unlisted_keys(instance: dict[Any, Any], schema: dict[str, Any]) -> list[Any]:
    """The keys of *instance* that neither ``properties`` nor ``patternProperties`` cover."""
    listed = schema.get("properties", {})
    searches = [ecma_pattern(p).search for p in schema.get("patternProperties", {})]
    return [
        key
        for key in instance
        if key not in listed
        and not (isinstance(key, str) and any(search(key) for search in searches))
    ]
