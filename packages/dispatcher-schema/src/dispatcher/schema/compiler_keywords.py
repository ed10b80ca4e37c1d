"""The part of JSON Schema the compiler implements, and the refusal of the rest.

The keywords :mod:`dispatcher.schema.compiler` writes checks for, those that only describe,
the Python test of each ``type``, and :class:`UnsupportedSchema`, raised for anything else
(the caller then falls back to ``jsonschema``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from dispatcher.schema.errors import DispatcherError

ANNOTATIONS: Final = frozenset(
    {
        "$schema",
        "$id",
        "$comment",
        "$defs",
        "title",
        "description",
        "default",
        "examples",
        "deprecated",
        "readOnly",
        "writeOnly",
        "format",  # an annotation only, unless a format checker is asked for (it is not)
    }
)
"""Keywords that describe and never constrain (``$defs`` holds subschemas reached by ``$ref``)."""

TYPE_TESTS: Final = {
    "object": "isinstance({v}, dict)",
    "array": "isinstance({v}, (list, tuple))",  # a tuple is written as an array
    "string": "isinstance({v}, str)",
    "boolean": "({v} is True or {v} is False)",
    "null": "{v} is None",
    "integer": (
        "(isinstance({v}, int) and not isinstance({v}, bool)"
        " or isinstance({v}, float) and {v}.is_integer())"
    ),
    "number": (
        "(isinstance({v}, int) and not isinstance({v}, bool)"
        " or isinstance({v}, float) and {v} - {v} == 0)"  # not NaN, not infinite
    ),
}
"""Per ``type``, the test of a value in ``{v}``."""
GUARDS: Final = {
    "number": "isinstance({v}, (int, float)) and not isinstance({v}, bool)",
    "string": "isinstance({v}, str)",
    "array": "isinstance({v}, (list, tuple))",
    "object": "isinstance({v}, dict)",
}
"""Per kind of keyword (``minimum`` is a number's), the test that the keyword applies to ``{v}``."""
KEYWORDS: Final = frozenset(
    {
        "$ref", "type", "enum", "const", "allOf", "anyOf", "oneOf", "not",
        "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
        "minLength", "maxLength", "pattern",
        "items", "prefixItems", "minItems", "maxItems", "uniqueItems",
        "properties", "required", "additionalProperties", "patternProperties",
        "propertyNames", "minProperties", "maxProperties",
    }
)  # fmt: skip
"""The constraining keywords the compiler implements."""


NESTING: Final = frozenset(
    {
        "$ref", "allOf", "anyOf", "oneOf", "not", "items", "prefixItems", "properties",
        "additionalProperties", "patternProperties", "propertyNames",
    }
)  # fmt: skip
"""The keywords holding subschemas."""


def is_leaf(node: Any) -> bool:
    """Tell whether *node* holds no subschema: a ``$ref`` to it is written inline."""
    return not isinstance(node, Mapping) or not NESTING & node.keys()


class UnsupportedSchema(DispatcherError, ValueError):
    """The schema uses something :mod:`~dispatcher.schema.compiler` does not implement."""
