"""The root of every dispatcher error, and readable validation problems.

:class:`DispatcherError` is the base class of every exception the dispatcher distributions
raise on purpose (schema, publisher, config and control errors alike), so that one
``except DispatcherError`` catches them all. Validation problems are ``path: reason``
sentences built from ``jsonschema`` errors: the path written as
:mod:`dispatcher.schema.value_text` writes it, the reason worded by
:mod:`dispatcher.schema.problem_reasons`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dispatcher.schema.patterns import unlisted_keys
from dispatcher.schema.problem_reasons import reason_with_value, reason_without_value
from dispatcher.schema.value_text import (
    MAX_QUOTED_CHARS,
    format_path,
    json_type_name,
    key_kind,
    key_text,
    quoted,
)

if TYPE_CHECKING:
    from jsonschema.exceptions import ValidationError

__all__ = [  # MAX_QUOTED_CHARS and the functions but problems_from_errors: from value_text
    "MAX_QUOTED_CHARS",
    "DispatcherError",
    "InvalidArgumentType",
    "InvalidArgumentValue",
    "PathItem",
    "Problem",
    "SchemaValidationError",
    "format_path",
    "json_type_name",
    "key_kind",
    "key_text",
    "problems_from_errors",
    "quoted",
]

PathItem = str | int


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
    reason = (
        reason_with_value(error, schema) if quote_values else reason_without_value(error, schema)
    )
    return [Problem(path, reason or f"does not match the schema ({keyword})")]


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
