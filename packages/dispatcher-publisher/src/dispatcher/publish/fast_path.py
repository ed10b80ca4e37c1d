"""The cheap check of a task message whose shape is known: what its construction guarantees.

:func:`~dispatcher.publish.prepare_submission` builds every message the same way: the name
of a registered task (checked against the schema when it was registered), a uuid, ``args``
as a list, ``kwargs`` as a dict, ``time_pub`` from the clock, and the options ``timeout``,
``delay``, ``on_duplicate`` and ``bind`` when set. For such a message, what the schema
(``task-message``) asks comes down to a few comparisons, read here from the schema itself.

:func:`surely_valid` answers ``True`` only when the message certainly matches the schema;
``False`` means "ask the schema", which also says what is wrong. The rules are taken from
the schema at import; a schema that says anything this module does not know how to check
(a new keyword, a constraint on another key) turns the shortcut off (:data:`RULES` is
``None``) and every message goes to the schema's validator.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, NamedTuple

from dispatcher.schema import load_schema

ANNOTATIONS: Final = frozenset({"description", "title", "$comment", "examples", "default"})
"""Schema keywords that describe and never constrain: ignored when reading the rules."""


class Rules(NamedTuple):
    """What the schema asks of the keys a built message may hold besides ``task``."""

    uuid_length: tuple[int, int]
    """Least and most characters of ``uuid``."""
    time_pub: tuple[float, float]
    """Least and greatest ``time_pub``."""
    timeout: tuple[float, float]
    """Least and greatest ``timeout``."""
    delay: tuple[float, float]
    """Least and greatest ``delay``."""
    on_duplicate: frozenset[str]
    """The values ``on_duplicate`` may take."""


_TOP_LEVEL: Final = frozenset({"$schema", "$id", "type", "required", "properties", "$defs"})
_NUMBER: Final = frozenset({"type", "minimum", "maximum"})


def _keywords(node: Mapping[str, Any]) -> frozenset[str]:
    return frozenset(node) - ANNOTATIONS


def _number_range(node: Mapping[str, Any]) -> tuple[float, float] | None:
    if _keywords(node) != _NUMBER or node["type"] != "number":
        return None
    low, high = node["minimum"], node["maximum"]
    if type(low) not in (int, float) or type(high) not in (int, float):
        return None
    return low, high


def rules_from_schema(schema: Mapping[str, Any]) -> Rules | None:
    """Read the rules of the fast path from the task-message *schema*.

    ``None`` when the schema holds anything the fast path would not check: then it must not
    be used.
    """
    if _keywords(schema) != _TOP_LEVEL or schema["type"] != "object":
        return None
    if schema["required"] != ["task"]:
        return None
    properties = schema["properties"]
    try:
        uuid, args, kwargs = properties["uuid"], properties["args"], properties["kwargs"]
        on_duplicate, bind = properties["on_duplicate"], properties["bind"]
        ranges = [_number_range(properties[key]) for key in ("time_pub", "timeout", "delay")]
    except (KeyError, TypeError):
        return None
    if _keywords(uuid) != {"type", "minLength", "maxLength"} or uuid["type"] != "string":
        return None
    if _keywords(args) != {"type"} or args["type"] != "array":
        return None
    if _keywords(kwargs) != {"type"} or kwargs["type"] != "object":
        return None
    if _keywords(bind) != {"type"} or bind["type"] != "boolean":
        return None
    if _keywords(on_duplicate) != {"enum"}:
        return None
    modes = on_duplicate["enum"]
    if not all(isinstance(mode, str) for mode in modes):
        return None
    time_pub, timeout, delay = ranges
    if time_pub is None or timeout is None or delay is None:
        return None
    lengths = uuid["minLength"], uuid["maxLength"]
    if not all(type(n) is int for n in lengths):
        return None
    return Rules(lengths, time_pub, timeout, delay, frozenset(modes))


RULES: Final = rules_from_schema(load_schema("task-message"))
"""The rules of the shipped schema; ``None`` if it is beyond the fast path."""

_NUMBERS: Final = (int, float)
_BASE: Final = frozenset({"task", "uuid", "args", "kwargs", "time_pub"})


def surely_valid(message: Mapping[str, Any], rules: Rules | None = RULES) -> bool:
    """Tell whether *message*, whose ``task`` is known to be valid, matches the schema.

    Meant for what :func:`~dispatcher.publish.prepare_submission` builds around the name of
    a registered task: ``task``, ``uuid``, ``args``, ``kwargs``, ``time_pub`` and the
    options. ``False`` means only "not sure": for a value of another type, a key it does not
    know (``extra``'s), or a value out of bounds, the schema's validator decides.
    """
    if rules is None or "task" not in message or type(message.get("args")) is not list:
        return False
    if type(message.get("kwargs")) is not dict:
        return False
    uuid: Any = message.get("uuid")
    shortest, longest = rules.uuid_length
    if type(uuid) is not str or not shortest <= len(uuid) <= longest:
        return False
    number: Any = message.get("time_pub")
    low, high = rules.time_pub
    if type(number) not in _NUMBERS or not low <= number <= high:
        return False
    if len(message) == len(_BASE):
        return True  # the five keys above and nothing else
    for key, value in message.items():
        if key in _BASE:
            continue
        if key == "timeout" or key == "delay":
            low, high = rules.timeout if key == "timeout" else rules.delay
            if type(value) not in _NUMBERS or not low <= value <= high:
                return False
        elif key == "on_duplicate":
            if type(value) is not str or value not in rules.on_duplicate:
                return False
        elif key != "bind" or value is not True:
            return False
    return True
