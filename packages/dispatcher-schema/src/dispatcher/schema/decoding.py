"""Decoding JSON text that came from outside: bounded in depth, strict about numbers.

Every path that reads a message (NOTIFY, the local socket, chunk envelopes, control replies)
decodes with :func:`decode_json`, so that a hostile payload costs one rejection with a reason,
never a ``RecursionError`` or a number that breaks arithmetic later.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from typing import Any, Final, Literal

from dispatcher.schema.errors import DispatcherError, format_path
from dispatcher.schema.wire import MAX_NESTING_DEPTH

DecodeReason = Literal["not_json", "too_deep"]


class DecodeError(DispatcherError, ValueError):
    """JSON text refused by :func:`decode_json`; :attr:`reason` is the counter's key."""

    def __init__(self, reason: DecodeReason, message: str, uuid: str | None = None) -> None:
        super().__init__(message)
        self.reason: DecodeReason = reason
        """``not_json`` (not strict JSON) or ``too_deep`` (nested beyond the limit)."""
        self.uuid: str | None = uuid
        """The ``uuid`` of the refused text's top-level object, when it could be read back
        (JSON too deep, or holding a NaN, an infinity, a number out of range or an integer of
        too many digits, at most :data:`UUID_READ_BACK_BELOW` characters for the latter):
        for the log line."""


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


class _TooManyDigits:
    """Where a text read back leniently has an integer over Python's digit limit."""


_TOO_MANY_DIGITS: Final = _TooManyDigits()


def _lenient_int(text: str) -> int | _TooManyDigits:
    try:
        return int(text)
    except ValueError:  # over sys.get_int_max_str_digits()
        return _TOO_MANY_DIGITS


_DECODER: Final = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)
_LENIENT: Final = json.JSONDecoder(parse_int=_lenient_int)
"""Takes NaN, infinities, numbers out of range and integers over the digit limit: only to
read back a refused text's uuid, and where its integer of too many digits is."""

UUID_READ_BACK_BELOW: Final = 65536
"""Texts refused for a number are decoded again for their uuid when shorter than this."""

_NUMBER_PROBLEMS: Final = (" is not valid JSON", " is out of range")
_DIGITS_PROBLEM: Final = "for integer string conversion"
"""In the ``ValueError`` of ``int()`` for an integer over Python's digit limit."""

_SCAN: Final[Callable[[str, int], tuple[Any, int]]] = _DECODER.scan_once  # type: ignore[attr-defined]
_CONTAINERS: Final = (dict, list, tuple)


def _decode(text: str) -> Any:
    """``_DECODER.decode(text)``, a microsecond cheaper for text with no outer whitespace.

    The scanner is called directly; only text it does not take whole (outer whitespace, or
    not JSON: the full decoder then says why) goes the long way.
    """
    try:
        value, end = _SCAN(text, 0)
    except StopIteration:
        return _DECODER.decode(text)
    return value if end == len(text) else _DECODER.decode(text)


def _same_int(text: str) -> int:
    return int(text)


def _same_object(value: dict[str, Any]) -> dict[str, Any]:
    return value


_SHARING: Final = json.JSONDecoder(
    parse_constant=_refuse_constant,
    parse_float=_finite_float,
    parse_int=_same_int,
    object_hook=_same_object,
)
""":data:`_DECODER` with a call of Python code for every number and object: see
:func:`decode_json_sharing`."""


def decode_json(text: str | bytes, max_depth: int = MAX_NESTING_DEPTH) -> Any:
    """Decode *text* (bytes must be UTF-8), refusing what a message may not hold.

    Refused: text that is not strict JSON (including ``NaN``, ``Infinity``, numbers that
    overflow a float such as ``1e400``, integers over Python's digit limit, invalid UTF-8),
    and arrays and objects nested more than *max_depth* levels (the outermost is level 1).
    A number too small for a float (``1e-400``) is read as ``0.0``, as ``float()`` reads it.

    :raises DecodeError: saying why, with :attr:`DecodeError.reason` set.
    """
    return _decode_json(text, max_depth, _decode, _text_exceeds_depth)


def decode_json_sharing(text: str | bytes, max_depth: int = MAX_NESTING_DEPTH) -> Any:
    """:func:`decode_json`, for a worker thread that must let the others run meanwhile.

    The decoder of the standard library runs from start to end without letting another
    thread run, but where it calls Python code (between two calls of it, an other thread
    gets its turn within milliseconds): this one calls some for every number and every
    object, at some cost (a 6 MB message of numbers and objects: 0.3 s, not 0.2). Text of
    strings and arrays alone still goes in one stretch, fast (6 MB of strings: 40 ms).

    :raises DecodeError: as :func:`decode_json` does.
    """
    return _decode_json(text, max_depth, _SHARING.decode, _value_exceeds_depth)


def _decode_json(
    text: str | bytes,
    max_depth: int,
    decode: Callable[[str], Any],
    too_deep: Callable[[str, Any, int], bool],
) -> Any:
    if not isinstance(text, str):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError("not_json", f"not JSON (invalid UTF-8 at byte {exc.start})") from None
    try:
        value = decode(text)
    except RecursionError:
        raise DecodeError("too_deep", _too_deep_message(max_depth)) from None
    except ValueError as exc:
        reason = str(exc)
        if _DIGITS_PROBLEM in reason:
            read_back = _read_back(text)
            where = _too_many_digits_at(read_back)
            digits = f"has more than {sys.get_int_max_str_digits()} digits"
            reason = (
                f"{format_path(where)}: the integer {digits}" if where else f"an integer {digits}"
            )
            raise DecodeError("not_json", f"not JSON ({reason})", _uuid_of(read_back)) from None
        uuid = _uuid_of(_read_back(text)) if reason.endswith(_NUMBER_PROBLEMS) else None
        raise DecodeError("not_json", f"not JSON ({_short(reason)})", uuid) from None
    # n containers cannot nest deeper than n: most messages never need the measure.
    if _may_exceed_depth(text, max_depth) and too_deep(text, value, max_depth):
        raise DecodeError("too_deep", _too_deep_message(max_depth), _uuid_of(value))
    return value


def _uuid_of(value: object) -> str | None:
    """The ``uuid`` of a decoded message, when it is one a message may carry."""
    uuid = value.get("uuid") if isinstance(value, dict) else None
    return uuid if isinstance(uuid, str) and 0 < len(uuid) <= 255 else None


def _read_back(text: str) -> Any:
    """*text*, refused for one of its numbers only, decoded leniently.

    ``None`` when it is :data:`UUID_READ_BACK_BELOW` characters or more, or cannot be decoded
    even so.
    """
    if len(text) >= UUID_READ_BACK_BELOW:
        return None
    try:
        return _LENIENT.decode(text)
    except (ValueError, RecursionError):
        return None


def _too_many_digits_at(value: Any) -> tuple[str | int, ...] | None:
    """Where in *value*, read back leniently, the first integer over the digit limit is.

    ``None`` when it is nowhere below the top (the text is that integer, or could not be
    read back), or too deep to walk.
    """
    try:
        found = _find_too_many_digits(value, ())
    except RecursionError:
        return None
    return found or None


def _find_too_many_digits(value: Any, path: tuple[str | int, ...]) -> tuple[str | int, ...] | None:
    if value is _TOO_MANY_DIGITS:
        return path
    items: Any = ()
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    for key, item in items:
        found = _find_too_many_digits(item, (*path, key))
        if found is not None:
            return found
    return None


_COUNT_BELOW: Final = 1024
"""Texts shorter than this (in characters) have their brackets counted in one pass each."""

_FEW_BRACKETS: Final = 16
"""How many brackets of a longer text are looked for one by one, before they are counted."""


def _may_exceed_depth(text: str, max_depth: int) -> bool:
    """Tell whether *text* holds more than *max_depth* of ``[`` and ``{`` in all.

    ``str.count`` looks at each character in turn, while ``str.find`` of one character
    skips ahead with ``memchr``: a long text with few brackets (a large string argument) is
    looked through by a few ``find`` calls, at memory speed; a short one, or one with more
    brackets, is counted.
    """
    if len(text) >= _COUNT_BELOW:
        few = min(_FEW_BRACKETS, max_depth)
        found = _find_up_to(text, "[", few)
        if found <= few:
            found += _find_up_to(text, "{", few - found)
            if found <= few:
                return False  # every bracket of the text was found: at most max_depth
    return text.count("[") + text.count("{") > max_depth


def _find_up_to(text: str, char: str, limit: int) -> int:
    """How many times *char* occurs in *text*, counted up to ``limit + 1`` at most."""
    found = 0
    at = text.find(char)
    while at >= 0 and found <= limit:
        found += 1
        at = text.find(char, at + 1)
    return found


_STRUCTURE: Final = bytes.maketrans(b"[{]}", b"(())")
_NOT_STRUCTURE: Final = bytes(sorted(set(range(256)) - set(b'[]{}"')))


def _value_exceeds_depth(text: str, value: Any, max_depth: int) -> bool:
    """Tell whether *value*, decoded from *text*, nests more than *max_depth* levels.

    Slower than :func:`_text_exceeds_depth` (a step of Python code for each container), but
    each step lets other threads run, where that one's steps over megabytes hold them up.
    """
    return exceeds_depth(value, max_depth)


def _text_exceeds_depth(text: str, value: Any, max_depth: int) -> bool:
    """Tell whether the valid JSON *text* nests more than *max_depth* levels.

    With escapes gone, only brackets and quotes kept (brackets made ``(`` and ``)``) and
    every other piece between quotes (the strings) dropped, the brackets lose their
    innermost pairs at each pass, so the passes needed are the depth. Every step runs in
    C: a few microseconds for a message of a hundred containers.
    """
    if "\\" in text:
        text = text.replace("\\\\", "").replace('\\"', "")
    kept = text.encode("utf-8", "surrogatepass").translate(_STRUCTURE, _NOT_STRUCTURE)
    brackets = b"".join(kept.split(b'"')[::2])
    for _ in range(max_depth):
        if not brackets:
            return False
        brackets = brackets.replace(b"()", b"")
    return bool(brackets)


def exceeds_depth(value: object, max_depth: int = MAX_NESTING_DEPTH) -> bool:
    """Tell whether lists, tuples and dicts in *value* nest more than *max_depth* levels.

    Iterative, and stops at the first container beyond the limit, so a value that contains
    itself is simply too deep.
    """
    if not isinstance(value, _CONTAINERS):
        return False
    if max_depth < 1:
        return True
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, _CONTAINERS):
                if depth >= max_depth:
                    return True
                stack.append((child, depth + 1))
    return False


def _too_deep_message(max_depth: int) -> str:
    return f"arrays and objects nested more than {max_depth} levels deep"


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
