"""The JSON text of a task message, checked, and a place in it named as the caller gave it."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any, Final

from dispatcher.publish.invalid_submission import invalid_submission
from dispatcher.publish.json_values import (
    first_unsendable,
    may_hold_converted_key,
    may_hold_too_long_integer,
)
from dispatcher.schema import CHUNK_KEY, MAX_NESTING_DEPTH, SIGNED_KEY, exceeds_depth
from dispatcher.schema.errors import format_path

RESERVED_KEYS: Final = frozenset(
    {"task", "uuid", "args", "kwargs", "time_pub", "timeout", "delay", "on_duplicate", "bind"}
    | {"channel", "control", CHUNK_KEY, SIGNED_KEY}
)
"""Message keys the SDK sets itself, which ``extra`` may not contain."""


def _not_json(value: object) -> Any:
    raise TypeError(f"a value of type {type(value).__name__} is not JSON-serialisable")


def _make_encoder() -> Callable[[dict[str, Any]], str]:
    """Return a compact, strict JSON encoder (no NaN, no infinities)."""
    if c_make_encoder is None:  # pragma: no cover - Python builds without the C accelerator
        return json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
    # The C encoder built once and called directly: json.dumps() builds it for every call.
    c_encoder = c_make_encoder(
        None, _not_json, encode_basestring_ascii, None, ":", ",", False, False, False
    )
    return lambda message: "".join(c_encoder(message, 0))


_encode: Final = _make_encoder()


_ascii_text: Final = encode_basestring_ascii


PLAIN_KEYS: Final = ("task", "uuid", "args", "kwargs", "time_pub")


def serialise(name: str, message: dict[str, Any], *, plain: bool = False) -> str:
    """The JSON text of *message*, as ``_encode(message)`` writes it.

    A *plain* message has the keys of :data:`PLAIN_KEYS` in that order and no other, with
    ``task`` and ``uuid`` strings, ``args`` a list, ``kwargs`` a dict and ``time_pub`` a
    finite ``int`` or ``float`` (whose ``repr()`` is their JSON text): what
    :func:`~dispatcher.publish.messages.prepare_submission` builds when no option is set,
    once checked. Its text is put together here; only the arguments go through the encoder.

    :raises InvalidSubmission: naming the value JSON cannot represent, or nested too deeply.
    """
    try:
        if plain:
            args = _encode(message["args"])
            kwargs = _encode(message["kwargs"]) if message["kwargs"] else "{}"
            text = (
                f'{{"task":{_ascii_text(message["task"])},"uuid":{_ascii_text(message["uuid"])},'
                f'"args":{args},"kwargs":{kwargs},"time_pub":{message["time_pub"]!r}}}'
            )
            # Arguments nest no deeper than they have characters: short ones cannot be too deep.
            may_be_deep = len(args) + len(kwargs) >= MAX_NESTING_DEPTH
            converted_keys = (
                may_hold_converted_key(args, 0)
                or may_hold_converted_key(kwargs, 1)
                or not _keys_are_strings(message["kwargs"])
            )
        else:
            text = _encode(message)
            may_be_deep = True
            converted_keys = may_hold_converted_key(text, 1)
    except (TypeError, ValueError, RecursionError) as exc:
        nested = too_deep(message)
        if nested is not None:
            raise invalid_submission(name, nested) from None
        try:
            found = first_unsendable(message)
        except RecursionError:
            found = ((), "the arguments are nested too deeply, or contain themselves")
        path, reason = found or ((), str(exc))
        raise invalid_submission(name, f"{as_given(path)}: {reason}") from None
    if (converted_keys or may_hold_too_long_integer(text)) and (
        found := first_unsendable(message)
    ) is not None:
        raise invalid_submission(name, f"{as_given(found[0])}: {found[1]}")
    # n arrays and objects cannot nest deeper than n: most messages skip the walk.
    if may_be_deep and text.count("[") + text.count("{") > MAX_NESTING_DEPTH:
        nested = too_deep(message)
        if nested is not None:
            raise invalid_submission(name, nested)
    return text


def _keys_are_strings(mapping: dict[Any, Any]) -> bool:
    """Whether every key of *mapping* is a string (joined at C speed: refused if one is not)."""
    try:
        "".join(mapping)
    except TypeError:
        return False
    return True


def unexplained(message: dict[str, Any]) -> str:
    """Why *message* is invalid when the schema's detailed problems name nothing.

    A NaN compares neither below nor above a limit: the fast check refuses it, the detailed
    one finds nothing to say.
    """
    try:
        found = first_unsendable(message)
    except RecursionError:
        return "the arguments are nested too deeply, or contain themselves"
    return "invalid message" if found is None else f"{as_given(found[0])}: {found[1]}"


def as_given(path: Sequence[str | int]) -> str:
    """*path*, a place in the message, as the caller gave it: keys of ``extra`` under it."""
    if path and path[0] not in RESERVED_KEYS:
        return format_path(("extra", *path))
    return format_path(tuple(path))


def too_deep(message: dict[str, Any]) -> str | None:
    """Name the first value nested deeper than a service accepts, and say why."""
    inner = MAX_NESTING_DEPTH - 1  # the message object is the first level
    for key, value in message.items():
        if exceeds_depth(value, inner):
            return (
                f"{as_given((str(key),))}: nested more than {inner} levels deep, or contains "
                f"itself (too_deep: a message may nest {MAX_NESTING_DEPTH} levels in all)"
            )
    return None
