"""Validators: compiled to plain Python for the hot path, ``jsonschema`` to explain failures."""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final

from dispatcher.schema.compiler import UnsupportedSchema, compile_schema, repeated
from dispatcher.schema.errors import PathItem, Problem, SchemaValidationError, problems_from_errors
from dispatcher.schema.patterns import ecma_pattern, unlisted_keys
from dispatcher.schema.resources import SchemaName, load_schema
from dispatcher.schema.wire import MAX_INTEGER_DIGITS, has_too_many_digits

if TYPE_CHECKING:
    import jsonschema


MAX_REPEATS_SHOWN: Final = 10
"""Repeated items of one array (``uniqueItems``) a validation error names; the others are
counted."""


class Validator:
    """Checks documents against one schema.

    :meth:`is_valid` runs the schema compiled to Python (:mod:`dispatcher.schema.compiler`,
    about a microsecond for a typical task message); only when a document fails is the
    slower ``jsonschema`` loaded and run to say why. A schema using keywords the compiler does
    not implement (a plug-in's config schema may) is checked by ``jsonschema`` alone.
    """

    def __init__(self, name: SchemaName, schema: dict[str, Any]) -> None:
        self.name: SchemaName = name
        """The schema's name, e.g. ``task-message``."""
        self._schema = schema
        try:
            self._compiled: Callable[[Any], bool] | None = compile_schema(schema)
        except UnsupportedSchema:
            self._compiled = None
        self._explainer: jsonschema.Draft202012Validator | None = None

    def is_valid(self, instance: Any) -> bool:
        """Tell whether *instance* matches the schema."""
        if self._compiled is not None:
            try:
                return self._compiled(instance)
            except Exception:  # a value no JSON decoder makes, with odd methods: ask jsonschema
                pass
        return not self.problems(instance)

    def problems(self, instance: Any, *, quote_values: bool = True) -> list[Problem]:
        """Say what is wrong with *instance*, sorted by location; empty when it is valid.

        Never empty when :meth:`is_valid` refuses *instance*, and never raises for a value
        of a type JSON does not have (a ``Decimal`` NaN, a ``datetime``): it is named.

        With *quote_values* false, no reason quotes a value of *instance* (a config's may be
        a secret): each says what was expected, and the JSON type of what was found.
        """
        if self._explainer is None:
            self._explainer = _explainer_class()(self._schema)
        try:
            found = problems_from_errors(
                self._explainer.iter_errors(instance), quote_values=quote_values
            )
        except ValueError:  # explaining writes values out: a too long integer cannot be
            path = _too_long_integer(instance, ())
            if path is None:
                raise
            reason = (
                f"the integer has more than {MAX_INTEGER_DIGITS} digits, too many to send (a "
                f"service reads integers of at most {MAX_INTEGER_DIGITS} digits)"
            )
            return [Problem(path, reason)]
        except Exception:  # a value no JSON decoder makes, whose comparisons raise
            found = []
        if found or not self._refused_by_compiled(instance):
            return found
        # jsonschema saw nothing wrong where the compiled schema did (or could not look):
        # a value JSON has no text for. Never an empty explanation.
        odd = _first_value_not_json(instance, ())
        if odd is None:
            return [Problem((), "does not match the schema")]
        return [Problem(*odd)]

    def _refused_by_compiled(self, instance: Any) -> bool:
        """Whether the compiled schema refuses *instance* (or fails on it); not without one."""
        if self._compiled is None:
            return False
        try:
            return not self._compiled(instance)
        except Exception:  # a value no JSON decoder makes, with odd methods
            return True

    def validate(self, instance: Any) -> None:
        """Return if *instance* matches the schema.

        :raises SchemaValidationError: listing every problem, when it does not.
        """
        if self.is_valid(instance):
            return
        raise SchemaValidationError(self.name, self.problems(instance))


def _first_value_not_json(value: Any, path: tuple[PathItem, ...]) -> tuple[Any, str] | None:
    """The place of the first value in *value* that is not JSON's, and what it is.

    A value of another type than JSON's (a ``Decimal``, a ``datetime``), a NaN or an
    infinity, or a key that is not a string.
    """
    if value is None or isinstance(value, str | bool | int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, f"{value} is not valid in JSON")
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _first_value_not_json(item, (*path, index))
            if found is not None:
                return found
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _first_value_not_json(item, (*path, key))
            if found is not None:
                return found
        return None
    kind = type(value).__name__
    if isinstance(value, numbers.Number):
        return path, f"a {kind}, not a number of JSON: give an int or a float"
    return path, f"a value of type {kind} is not JSON-serialisable"


@functools.cache
def _explainer_class() -> type[jsonschema.Draft202012Validator]:
    """``jsonschema``'s 2020-12 validator, agreeing with the compiled one where they differ.

    A ``pattern`` or a key of ``patternProperties`` has ECMA-262's ``$`` (end of text, not
    before a final newline) and matches only string keys; a tuple is an array, as the JSON
    encoder writes it; a number is an ``int`` or a ``float`` (not a ``Decimal``);
    ``uniqueItems`` finds any two equal items (``jsonschema`` compares only neighbours once
    sorted, and ``[[1], [true], [1]]`` sorts with the two ``[1]`` apart), and names each
    repeated item by its index and the first one's (``channels[3]: repeats item [0]``), at
    most :data:`MAX_REPEATS_SHOWN`, rather than quoting the whole array.
    """
    import jsonschema  # costs ~0.1 s to import: only when there is something to explain

    base = jsonschema.Draft202012Validator

    def pattern(
        validator: Any, pattern: str, instance: Any, schema: dict[str, Any]
    ) -> Iterator[jsonschema.ValidationError]:
        if validator.is_type(instance, "string") and not ecma_pattern(pattern).search(instance):
            yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")

    def pattern_properties(
        validator: Any, patterns: dict[str, Any], instance: Any, schema: dict[str, Any]
    ) -> Iterator[jsonschema.ValidationError]:
        if not validator.is_type(instance, "object"):
            return
        for pattern, subschema in patterns.items():
            search = ecma_pattern(pattern).search
            for key, value in instance.items():
                if isinstance(key, str) and search(key):
                    yield from validator.descend(value, subschema, path=key, schema_path=pattern)

    def additional_properties(
        validator: Any, additional: Any, instance: Any, schema: dict[str, Any]
    ) -> Iterator[jsonschema.ValidationError]:
        if not validator.is_type(instance, "object"):
            return
        extras = unlisted_keys(instance, schema)
        if validator.is_type(additional, "object"):
            for extra in extras:
                yield from validator.descend(instance[extra], additional, path=extra)
        elif additional is False and extras:
            listed = ", ".join(repr(extra) for extra in extras)
            yield jsonschema.ValidationError(f"unexpected keys: {listed}")

    def unique_items(
        validator: Any, unique: Any, instance: Any, schema: dict[str, Any]
    ) -> Iterator[jsonschema.ValidationError]:
        if not unique or not validator.is_type(instance, "array"):
            return
        pairs = repeated(instance, MAX_REPEATS_SHOWN + 1)
        for first, index in pairs[:MAX_REPEATS_SHOWN]:
            # (No value quoted: a config's may be a secret.)
            message = f"repeats item [{first}] (each may be given once)"
            yield jsonschema.ValidationError(message, path=(index,), instance=instance[index])
        if len(pairs) > MAX_REPEATS_SHOWN:
            count = len(repeated(instance))
            yield jsonschema.ValidationError(
                f"{count} items repeat earlier ones; the first {MAX_REPEATS_SHOWN} are named"
            )

    checker = base.TYPE_CHECKER.redefine_many(
        {
            "array": lambda checker, instance: isinstance(instance, (list, tuple)),
            # An int or a float, as the compiled schema has it: a Decimal or a Fraction is no
            # number of JSON (and a Decimal NaN raises when compared with a bound).
            "number": lambda checker, instance: (
                isinstance(instance, (int, float)) and not isinstance(instance, bool)
            ),
            "integer": lambda checker, instance: (
                (isinstance(instance, int) and not isinstance(instance, bool))
                or (isinstance(instance, float) and instance.is_integer())
            ),
        }
    )
    extended: type[jsonschema.Draft202012Validator] = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
        base,
        {
            "pattern": pattern,
            "patternProperties": pattern_properties,
            "additionalProperties": additional_properties,
            "uniqueItems": unique_items,
        },
        type_checker=checker,
    )
    return extended


def validator(name: SchemaName) -> Validator:
    """Return the (shared, compiled once) validator of the schema *name*."""
    return _validator(name)


@functools.cache
def _validator(name: SchemaName) -> Validator:
    # Behind a plain function: a functools.cache wrapper's type takes any argument, so a
    # misspelt schema name would pass the type checker.
    return Validator(name, load_schema(name))


def explain(name: SchemaName, instance: Any) -> list[str]:
    """Explain why *instance* does not match the schema *name*, one ``path: reason`` per line.

    Returns an empty list when *instance* is valid.
    """
    return [str(problem) for problem in validator(name).problems(instance)]


def _too_long_integer(value: Any, path: tuple[PathItem, ...]) -> tuple[PathItem, ...] | None:
    """Where in *value* the first integer of more than :data:`MAX_INTEGER_DIGITS` digits is."""
    if isinstance(value, int) and not isinstance(value, bool):
        return path if has_too_many_digits(value) else None
    items: Any = ()
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    for key, item in items:
        found = _too_long_integer(item, (*path, key))
        if found is not None:
            return found
    return None
