"""The root of every dispatcher error, and readable validation problems.

:class:`DispatcherError` is the base class of every exception the dispatcher distributions
raise on purpose (schema, publisher, config and control errors alike), so that one
``except DispatcherError`` catches them all. Validation problems are ``path: reason``
sentences built from ``jsonschema`` errors.
"""

from __future__ import annotations

import datetime
import difflib
import numbers
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dispatcher.schema.patterns import unlisted_keys

if TYPE_CHECKING:
    from jsonschema.exceptions import ValidationError

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

PathItem = str | int

MAX_QUOTED_CHARS = 80
"""Characters of a value quoted in a problem's text: a longer one is cut (saying how much),
so that one long bad value leaves room for the other problems of the same document."""


class DispatcherError(Exception):
    """The root of every public error of the dispatcher distributions.

    Each error also keeps the built-in base it had (most are ``ValueError``), so existing
    ``except ValueError`` clauses still catch them. ``DispatcherCancel`` and
    ``DispatcherExit`` are not errors but signals a task receives or raises to end itself;
    they derive from ``BaseException`` and not from this class.
    """


class InvalidArgumentType(DispatcherError, TypeError):
    """An argument of a public function is of a type it does not take.

    Such as a connection of the other kind (``submit_task()`` given an ``AsyncConnection``)
    or ``get_job(5)``; the message names the argument. Also a ``TypeError``, as Python's own.
    """


class InvalidArgumentValue(DispatcherError, ValueError):
    """An argument of a public function has a value it does not take.

    Such as ``jobs(state="bogus")`` or an unknown schema name; the message names the argument
    and the reason. Also a ``ValueError``, as Python's own.
    """


_BOUNDS = {
    "minimum": "at least",
    "exclusiveMinimum": "more than",
    "maximum": "at most",
    "exclusiveMaximum": "less than",
}


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


@dataclass(frozen=True)
class Problem:
    """One reason why a document does not match its schema."""

    path: tuple[PathItem, ...]
    """Where in the document: keys and list indexes from the top."""
    reason: str
    """What is wrong there, as a sentence fragment."""

    @property
    def location(self) -> str:
        """The path rendered for people, e.g. ``brokers.pg_notify.channels[1]``."""
        return format_path(self.path)

    @property
    def sort_key(self) -> tuple[list[tuple[int, str]], str]:
        """Orders problems as their locations appear in a document (indexes numerically).

        Keys of any type compare (a string key before another key, such as ``None``).
        """
        path = [
            (0, f"{p:08d}")
            if isinstance(p, int) and not isinstance(p, bool)
            else (1, p)
            if isinstance(p, str)
            else (2, key_text(p))
            for p in self.path
        ]
        return path, self.reason

    def __str__(self) -> str:
        return f"{self.location}: {self.reason}"


class SchemaValidationError(DispatcherError, ValueError):
    """A document does not match its schema; :attr:`problems` says where and why."""

    def __init__(self, schema: str, problems: Sequence[Problem]) -> None:
        self.schema = schema
        self.problems = tuple(problems)
        super().__init__("; ".join(str(problem) for problem in self.problems))


def json_type_name(value: Any) -> str:
    """Name the JSON type of a Python value as JSON Schema does (``string``, ``array``, ...)."""
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def problems_from_errors(
    errors: Iterable[ValidationError], *, quote_values: bool = True
) -> list[Problem]:
    """Turn ``jsonschema`` errors into problems, sorted by location.

    With *quote_values* false, no reason quotes the value at fault (a config's value may be
    a secret): it says what was expected, and the JSON type of what was found.
    """
    problems: list[Problem] = []
    for error in errors:
        problems.extend(_problems_from_error(error, quote_values))
    return sorted(set(problems), key=lambda problem: problem.sort_key)


def _problems_from_error(error: ValidationError, quote_values: bool) -> list[Problem]:
    path: tuple[PathItem, ...] = tuple(error.absolute_path)
    keyword = error.validator
    schema = error.schema if isinstance(error.schema, dict) else {}
    if "propertyNames" in error.absolute_schema_path:
        # jsonschema reports a bad key at the object holding it; point at the key itself.
        path = (*path, str(error.instance))
    if keyword == "required":
        missing = _quoted_name(error.message)
        return [Problem((*path, missing), "is required")]
    if keyword == "additionalProperties" and schema.get("additionalProperties") is False:
        return [
            Problem((*path, key), _unknown_key_reason(key, schema))
            for key in _unexpected_keys(error.instance, schema)
        ]
    reason = _reason(error, schema) if quote_values else _unquoted_reason(error, schema)
    return [Problem(path, reason or f"does not match the schema ({keyword})")]


def _reason(error: ValidationError, schema: dict[str, Any]) -> str:
    keyword, instance = error.validator, error.instance
    expected: Any = error.validator_value
    title = schema.get("title")
    if title and keyword in _LENGTHS:
        return f"{quoted(instance)} is not a valid {title}: {_length_rule(keyword, expected)}"
    if title and keyword == "pattern":
        return f"{quoted(instance)} is not a valid {title}{_hint(schema)}"
    if keyword == "type":
        types = expected if isinstance(expected, list) else [expected]
        if instance is None:
            return f"expected {' or '.join(types)}, got null"
        if _foreign_number(instance):
            return f"expected {' or '.join(types)}, got {quoted(instance)}{_INT_OR_FLOAT}"
        return f"expected {' or '.join(types)}, got {json_type_name(instance)} {quoted(instance)}"
    if keyword in _BOUNDS:
        return f"must be {_BOUNDS[keyword]} {expected!r}, got {quoted(instance)}"
    if keyword == "const":
        return f"must be {expected!r}, got {quoted(instance)}"
    if keyword == "enum":
        choices = ", ".join(repr(choice) for choice in expected)
        return f"{quoted(instance)} is not one of {choices}"
    if keyword == "items" and expected is False:  # no item past prefixItems
        expected, keyword = len(schema.get("prefixItems", [])), "maxItems"
    counted = _count_rule(keyword, expected)
    if counted is not None:
        # Worded here: jsonschema's words for these changed in 4.21 ("is too short" became
        # "should be non-empty" for a bound of 1; items: false's too), and the message must
        # not depend on the version installed.
        if keyword == "minLength" and expected == 1 and instance == "":
            return "'' should be non-empty"
        return f"{quoted(instance)} is {counted}"
    # jsonschema's own words quote the value whole: quote it as above instead.
    return str(error.message).replace(repr(instance), quoted(instance))


_COUNTED = {
    "minLength": ("too short (at least", "character"),
    "maxLength": ("too long (at most", "character"),
    "minItems": ("too short (at least", "item"),
    "maxItems": ("too long (at most", "item"),
    "minProperties": ("too small (at least", "key"),
    "maxProperties": ("too large (at most", "key"),
}


def _count_rule(keyword: object, limit: Any) -> str | None:
    """``too short (at least 2 characters)`` and the like, for a keyword bounding a count."""
    if keyword not in _COUNTED or not isinstance(limit, int):
        return None
    rule, unit = _COUNTED[keyword]
    return f"{rule} {limit} {unit}{'' if limit == 1 else 's'})"


_INT_OR_FLOAT = ", which is no number of JSON: give an int or a float"


def _foreign_number(value: Any) -> bool:
    """Whether *value* is a number of another type than JSON's (a ``Decimal``, a ``Fraction``)."""
    return isinstance(value, numbers.Number) and not isinstance(value, int | float)


_LENGTHS = {"minLength": "too short (at least", "maxLength": "too long (at most"}


def _length_rule(keyword: str, limit: int) -> str:
    """``too short (at least 2 characters)``, ``too long (at most 255 characters)``."""
    return f"{_LENGTHS[keyword]} {limit} character{'' if limit == 1 else 's'})"


def _hint(schema: dict[str, Any]) -> str:
    """`` (what the value should be)``: a titled definition's description, or nothing."""
    hint = str(schema.get("description", "")).rstrip(".")
    return f" ({hint})" if hint else ""


def _unquoted_reason(error: ValidationError, schema: dict[str, Any]) -> str:
    """What :func:`_reason` says, quoting no value: what was expected, and the type found."""
    keyword, instance = error.validator, error.instance
    expected: Any = error.validator_value
    title = schema.get("title")
    found = json_type_name(instance)
    if keyword in _LENGTHS:
        rule = _length_rule(keyword, expected)
        return f"not a valid {title}: {rule}" if title else rule
    if keyword == "pattern":
        if title:
            return f"not a valid {title}{_hint(schema)}"
        return f"does not match the pattern {expected!r}"
    if keyword == "type":
        types = expected if isinstance(expected, list) else [expected]
        if _foreign_number(instance):
            return f"expected {' or '.join(types)}, got a {found}{_INT_OR_FLOAT}"
        return f"expected {' or '.join(types)}, got {found}"
    if keyword in _BOUNDS:
        return f"must be {_BOUNDS[keyword]} {expected!r}"
    if keyword == "multipleOf":
        return f"must be a multiple of {expected!r}"
    if keyword == "const":
        return f"must be {expected!r}"
    if keyword == "enum":
        return f"expected one of {', '.join(repr(choice) for choice in expected)}"
    if keyword == "items" and expected is False:  # no item past prefixItems
        expected, keyword = len(schema.get("prefixItems", [])), "maxItems"
    if keyword in ("minItems", "maxItems", "minProperties", "maxProperties"):
        bound = "least" if keyword.startswith("min") else "most"
        what = "item" if keyword.endswith("Items") else "key"
        return f"expected at {bound} {expected} {what}{'' if expected == 1 else 's'}"
    if keyword == "uniqueItems":
        # The explaining validator names the repeated item's index without its value; only
        # jsonschema's own words ("... has non-unique elements") quote the whole array.
        message = str(error.message)
        return _repeated_item(instance) if "non-unique" in message else message
    if keyword == "format":
        return f"not a valid {expected}"
    if keyword in ("anyOf", "oneOf"):
        return f"a {found} that matches none of the forms this setting takes"
    if keyword == "not":
        return f"a {found} is not taken here"
    return ""  # the caller says which keyword of the schema it fails


def _repeated_item(items: Any) -> str:
    """Which items of *items* are the same (their indexes, not their values)."""
    if isinstance(items, list | tuple):
        for later, item in enumerate(items):
            for earlier in range(later):
                other = items[earlier]
                if type(other) is type(item) and other == item:
                    return f"items [{earlier}] and [{later}] are the same: each may be given once"
    return "has repeated items: each may be given once"


def _quoted_name(message: str) -> str:
    # jsonschema words it "'name' is a required property".
    match = re.match(r"^'(.*)' is a required property$", message)
    return match.group(1) if match else message


def _unexpected_keys(instance: Any, schema: dict[str, Any]) -> list[str]:
    if not isinstance(instance, dict):
        return []
    return [str(key) for key in unlisted_keys(instance, schema)]


def _unknown_key_reason(key: str, schema: dict[str, Any]) -> str:
    allowed = sorted(schema.get("properties", {}))
    if not allowed:
        return "unknown key (this section takes no keys)"
    close = difflib.get_close_matches(key, allowed, n=1)
    if close:
        return f"unknown key (did you mean {close[0]!r}?)"
    return f"unknown key (expected one of: {', '.join(allowed)})"
