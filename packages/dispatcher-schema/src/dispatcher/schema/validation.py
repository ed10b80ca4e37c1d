"""Validators: compiled for the hot path, ``jsonschema`` for explaining failures."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import jsonschema_rs

from dispatcher.schema.errors import Problem, SchemaValidationError, problems_from_errors
from dispatcher.schema.resources import SchemaName, load_schema

if TYPE_CHECKING:
    import jsonschema


class Validator:
    """Checks documents against one schema.

    :meth:`is_valid` runs a compiled validator (about a microsecond for a typical task
    message); only when a document fails is the slower ``jsonschema`` loaded and run to say
    why.
    """

    def __init__(self, name: SchemaName, schema: dict[str, Any]) -> None:
        self.name: SchemaName = name
        """The schema's name, e.g. ``task-message``."""
        self._schema = schema
        self._compiled = jsonschema_rs.Draft202012Validator(schema)
        self._explainer: jsonschema.Draft202012Validator | None = None

    def is_valid(self, instance: Any) -> bool:
        """Tell whether *instance* matches the schema."""
        try:
            return bool(self._compiled.is_valid(instance))
        except ValueError:
            # Python values that have no JSON form (e.g. non-string dict keys) are not
            # accepted by the compiled validator; the reference implementation decides.
            return not self.problems(instance)

    def problems(self, instance: Any) -> list[Problem]:
        """Say what is wrong with *instance*, sorted by location; empty when it is valid."""
        if self._explainer is None:
            import jsonschema  # costs ~0.1 s to import: only when there is something to explain

            self._explainer = jsonschema.Draft202012Validator(self._schema)
        return problems_from_errors(self._explainer.iter_errors(instance))

    def validate(self, instance: Any) -> None:
        """Return if *instance* matches the schema.

        :raises SchemaValidationError: listing every problem, when it does not.
        """
        if self.is_valid(instance):
            return
        # The two validators differ only on values JSON has no text for (NaN, Infinity),
        # which the compiled one refuses and jsonschema lets pass.
        problems = self.problems(instance) or [
            Problem((), "holds a value JSON cannot represent (such as NaN or Infinity)")
        ]
        raise SchemaValidationError(self.name, problems)


@functools.cache
def validator(name: SchemaName) -> Validator:
    """Return the (shared, compiled once) validator of the schema *name*."""
    return Validator(name, load_schema(name))


def explain(name: SchemaName, instance: Any) -> list[str]:
    """Explain why *instance* does not match the schema *name*, one ``path: reason`` per line.

    Returns an empty list when *instance* is valid.
    """
    return [str(problem) for problem in validator(name).problems(instance)]
