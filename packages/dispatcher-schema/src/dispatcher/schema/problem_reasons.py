"""The reason of a problem, worded from a ``jsonschema`` error: quoting the value, or not.

:func:`reason_with_value` quotes the value at fault (cut, see
:func:`~dispatcher.schema.value_text.quoted`); :func:`reason_without_value` says only what
was expected and the JSON type found (a config's value may be a secret). Both word the
counts and bounds themselves, so that a message does not depend on the version of
``jsonschema`` installed.
"""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Any

from dispatcher.schema.value_text import json_type_name, quoted

if TYPE_CHECKING:
    from jsonschema.exceptions import ValidationError

_BOUNDS = {
    "minimum": "at least",
    "exclusiveMinimum": "more than",
    "maximum": "at most",
    "exclusiveMaximum": "less than",
}


def reason_with_value(error: ValidationError, schema: dict[str, Any]) -> str:
    """Why the value of *error* fails, quoting it (cut as :func:`quoted` cuts it)."""
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


def reason_without_value(error: ValidationError, schema: dict[str, Any]) -> str:
    """What :func:`reason_with_value` says, quoting no value: what was expected, the type found."""
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
