"""The record of one translation of dispatcherd's layout, written by its section translators.

It holds the document built, where each part came from, and the errors and warnings found on
the way. The section translators (``dispatcherd_brokers``, ``dispatcherd_service``, ...)
write through a :class:`TranslationWriter`; see :mod:`dispatcher.config.dispatcherd_layout`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dispatcher.config.legacy import Path, PathMap
from dispatcher.schema import Problem


@dataclass
class Translation:
    """A dispatcherd config moved into the version 1 layout."""

    document: dict[str, Any]
    """The config in the version 1 layout, still to be validated."""
    paths: PathMap = field(default_factory=PathMap)
    """Where each moved part came from."""
    problems: list[Problem] = field(default_factory=list)
    """Errors found while translating, located as the user wrote them."""
    warnings: list[Problem] = field(default_factory=list)
    """Keys dropped for want of an equivalent (and other notes), located as written."""


def unknown_key(key: Any, allowed: Iterable[str], what: str) -> str:
    """The reason given for *key*, not an option of dispatcherd's *what* (which takes *allowed*)."""
    names = sorted(allowed)
    close = difflib.get_close_matches(str(key), names, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"it takes: {', '.join(names)}"
    return f"unknown key: not an option of dispatcherd's {what} ({hint})"


class TranslationWriter:
    """One translation: the document being built and what was found on the way."""

    def __init__(self) -> None:
        self.out = Translation(document={"version": 1})

    def put(self, new: Path, old: Path, value: Any) -> None:
        """Write *value* at *new* in the document; errors found there name *old*."""
        target: dict[Any, Any] = self.out.document
        for key in new[:-1]:
            target = target.setdefault(key, {})
            if not isinstance(target, dict):
                return  # the parent was written as it is, not a mapping: validation says so
        target[new[-1]] = value
        self.out.paths.moves.append((new, old))

    def error(self, path: Path, reason: str) -> None:
        """Record an error at *path* (as the user wrote it)."""
        self.out.problems.append(Problem(path, reason))

    def warn(self, path: Path, reason: str) -> None:
        """Record a warning at *path* (as the user wrote it)."""
        self.out.warnings.append(Problem(path, reason))

    def section(self, value: Any, new: Path, old: Path) -> Mapping[Any, Any] | None:
        """*value* when it is a mapping; else write it as it is, for validation to report.

        ``null`` (a YAML key with nothing under it) is an empty section, as dispatcherd
        reads it.
        """
        if isinstance(value, Mapping):
            return value
        if value is None:
            return {}
        self.put(new, old, value)
        return None
