"""Finding the value a service could not read back, among those a caller sends.

Task messages and control commands are encoded at once, for speed; only when the encoder
fails (or may have let through what a service refuses) are the values walked here, to name
the one at fault and say why.
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any, Final

from dispatcher.schema import MAX_INTEGER_DIGITS, has_too_many_digits
from dispatcher.schema.errors import format_path

Path = tuple[str | int, ...]
"""Where a value is in a message: keys and indexes from the message down."""

TOO_MANY_DIGITS: Final = (
    f"has more than {MAX_INTEGER_DIGITS} digits, too many to send (a service reads integers "
    f"of at most {MAX_INTEGER_DIGITS} digits)"
)
"""Why an integer is refused, after what it is (``the integer``, ``an integer key``)."""


def shown(value: object) -> str:
    """Return *value* as an error message quotes it (``repr``).

    Or what it is, when it cannot be written out: Python refuses to write integers of more
    than 4,300 digits (by default).
    """
    try:
        return repr(value)
    except ValueError:  # an integer (or a container holding one) too long to write
        if isinstance(value, int):
            return f"an integer of more than {MAX_INTEGER_DIGITS} digits"
        return (
            f"a {type(value).__name__} holding an integer of more than {MAX_INTEGER_DIGITS} digits"
        )


def json_key(key: str | float | bool | None) -> str:
    """The string JSON writes for the key *key*: ``None`` is ``"null"``, ``1`` is ``"1"``.

    As :mod:`json` writes it: ``True`` ``"true"``, an integer or a float its ``repr()``
    (that of :class:`int` or :class:`float`, for a subclass such as an ``IntEnum``).
    """
    if isinstance(key, str):
        return key
    if key is None:
        return "null"
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, int):
        return int.__repr__(key)
    return float.__repr__(key)


def first_unsendable(value: Any, path: Path = ()) -> tuple[Path, str] | None:
    """The first value in *value* that JSON cannot represent or a service cannot read, and why.

    Those are values of other types than JSON's, NaN and infinities, keys that are no
    strings nor numbers (or that are NaN or infinite), integers of more than
    :data:`MAX_INTEGER_DIGITS` digits, and two keys of a dict that JSON writes as the same
    string (``1`` and ``"1"``, ``None`` and ``"null"``): a service would read one value
    only. *path* is where *value* is; a key in it is the string JSON writes.

    :raises RecursionError: when *value* contains itself, or nests too deeply to walk.
    """
    if value is None or isinstance(value, str | bool):
        return None
    if isinstance(value, int):
        return (path, f"the integer {TOO_MANY_DIGITS}") if has_too_many_digits(value) else None
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, f"{value} is not valid in JSON")
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = first_unsendable(item, (*path, index))
            if found:
                return found
        return None
    if isinstance(value, dict):
        written: dict[str, Any] | None = None  # the keys by their JSON text, once one is no str
        for key, item in value.items():
            if isinstance(key, str):
                name = key
            else:
                if not isinstance(key, int | float) and key is not None:
                    return (path, f"key {key!r} of type {type(key).__name__} cannot be a JSON key")
                if isinstance(key, int) and has_too_many_digits(key):
                    return (path, f"an integer key {TOO_MANY_DIGITS}")
                if isinstance(key, float) and not math.isfinite(key):
                    return (path, f"the key {key} is not valid in JSON")
                name = json_key(key)
                if written is None:
                    written = {other: other for other in value if isinstance(other, str)}
                if name in written:
                    return (
                        (*path, name),
                        f"the keys {shown(written[name])} and {shown(key)} are both "
                        f"{json.dumps(name)} in JSON: a service would read one of their values "
                        "only",
                    )
                written[name] = key
            found = first_unsendable(item, (*path, name))
            if found:
                return found
        return None
    return path, f"a value of type {type(value).__name__} is not JSON-serialisable"


def unsendable_reason(value: Any, path: Path = ()) -> str | None:
    """``"where: why"`` for the first value in *value* a service could not read, if any.

    A value that contains itself, or nests too deeply to walk, is named as such.
    """
    try:
        found = first_unsendable(value, path)
    except RecursionError:
        where = f"{format_path(path)}: " if path else ""
        return f"{where}nested too deeply, or contains itself"
    return None if found is None else f"{format_path(found[0])}: {found[1]}"


_CONVERTED_KEY: Final = re.compile(r'"(?:null|true|false|-?[0-9][0-9.e+-]*)":')
"""A key as JSON writes a key that is no string (``None``, ``True``, a number): the string
key ``"1"`` looks the same."""


def may_hold_converted_key(text: str, start: int = 0) -> bool:
    """Whether the JSON text *text*, which this process wrote, may hold a key that was no string.

    Two keys JSON writes the same (``1`` and ``"1"``) would lose a value: only a text that
    holds a key written as one that was no string is walked (:func:`first_unsendable`), to
    look for them. *start* is where an object may begin whose keys are not known to be
    strings (1 for a message, whose own keys are).
    """
    brace = text.find("{", start)
    while brace != -1 and text.startswith("}", brace + 1):  # an empty object holds no key
        brace = text.find("{", brace + 2)
    return brace != -1 and _CONVERTED_KEY.search(text, brace) is not None


def may_hold_too_long_integer(text: str) -> bool:
    """Tell whether the JSON text *text*, which this process wrote, may hold too long an integer.

    Only when it is long enough and this process writes integers longer than a service reads
    (``sys.set_int_max_str_digits()`` raised, or lifted): by default, writing one fails.
    """
    if len(text) <= MAX_INTEGER_DIGITS:
        return False
    limit = sys.get_int_max_str_digits()
    return limit == 0 or limit > MAX_INTEGER_DIGITS
