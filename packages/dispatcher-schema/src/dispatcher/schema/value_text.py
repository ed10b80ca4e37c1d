"""How a problem writes a place in a document, a key, a value, and a value's JSON type.

A path is ``brokers.pg_notify.channels[1]``, a key that is not a string is written as YAML
writes it (``service[null]``), and a value quoted is cut after :data:`MAX_QUOTED_CHARS`
characters, saying how many more, so that one long bad value leaves room for the other
problems of the same document.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence
from typing import Any

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")

_JSON_TYPE_NAMES: dict[type, str] = {
    type(None): "null",
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    tuple: "array",
    dict: "object",
}

MAX_QUOTED_CHARS = 80
"""Characters of a value quoted in a problem's text: a longer one is cut (saying how much),
so that one long bad value leaves room for the other problems of the same document."""


def format_path(path: Sequence[object]) -> str:
    """Render a location inside a JSON document, e.g. ``brokers.pg_notify.channels[1]``.

    Keys that are not plain identifiers are written in brackets (``scheduled['a.b']``);
    the document itself is ``(root)``. A key of another type than a string (a YAML ``~:``,
    ``1.5:`` or ``2024-01-01:``, a dict built in Python) is written in brackets as
    :func:`key_text` writes it (``service[null]``): any value can be a step of a path.
    """
    text = ""
    for item in path:
        if isinstance(item, int) and not isinstance(item, bool):
            text += f"[{item}]"
        elif not isinstance(item, str):
            text += f"[{key_text(item)}]"
        elif _IDENTIFIER.match(item) and len(item) <= MAX_QUOTED_CHARS:
            text += f".{item}" if text else item
        else:
            text += f"[{quoted(item)}]"
    return text or "(root)"


def key_text(key: object) -> str:
    """A key of a mapping as a path shows it: a string quoted, another key as YAML writes it.

    ``None`` is ``null``, booleans ``true`` and ``false``, a date its ISO form
    (``2024-01-01``), anything else its ``repr()``, cut as :func:`quoted` cuts it.
    """
    if key is None:
        return "null"
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, datetime.date):  # a datetime too
        return key.isoformat()
    return quoted(key)


def key_kind(key: object) -> str:
    """What a key that is not a string is, for a reason: ``null``, ``an integer``, ``a date``..."""
    if key is None:
        return "null"
    for kinds, name in _KEY_KINDS:
        if isinstance(key, kinds):
            return name
    return f"a value of type {type(key).__name__}"


_KEY_KINDS: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (bool, "a boolean"),
    (int, "an integer"),
    (float, "a number"),
    (datetime.datetime, "a date and time"),
    (datetime.date, "a date"),
    ((bytes, bytearray), "binary data"),
    ((list, tuple), "a list"),
    (dict, "a mapping"),
)


def quoted(value: Any) -> str:
    """``repr(value)``, cut after :data:`MAX_QUOTED_CHARS` characters, saying how many more.

    A string keeps its quotes: ``'xxxxxxxx...' (2940 more characters)``.
    """
    if isinstance(value, str) and len(value) > MAX_QUOTED_CHARS:
        shown = repr(value[:MAX_QUOTED_CHARS])
        more = len(value) - MAX_QUOTED_CHARS
        return f"{shown[:-1]}...{shown[-1]} ({more} more characters)"
    text = repr(value)
    if len(text) > MAX_QUOTED_CHARS:
        more = len(text) - MAX_QUOTED_CHARS
        return f"{text[:MAX_QUOTED_CHARS]}... ({more} more characters)"
    return text


def json_type_name(value: Any) -> str:
    """Name the JSON type of a Python value as JSON Schema does (``string``, ``array``, ...)."""
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)
