"""Translation of the seed's unversioned config layout into version 1.

The seed read ``{"pool": {...}, "producers": {"brokers": {...}, "scheduled": {...}}}``, with the
pg_notify channel list either inside ``pg_notify`` or beside it. Such a config is moved key by
key into the current layout; :class:`PathMap` maps locations back so that errors name the keys
as the user wrote them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dispatcher.schema.errors import PathItem

Path = tuple[PathItem, ...]
_Put = Callable[[Path, Path, Any], None]


@dataclass
class PathMap:
    """Where each moved part of a translated config came from."""

    moves: list[tuple[Path, Path]] = field(default_factory=list)
    """Pairs of (location in the new layout, location in the original)."""

    def original(self, path: Path) -> Path:
        """Return the location in the original document of *path* in the translated one."""
        best: tuple[Path, Path] | None = None
        for new, old in self.moves:
            if path[: len(new)] == new and (best is None or len(new) > len(best[0])):
                best = (new, old)
        if best is None:
            return path
        new, old = best
        return old + path[len(new) :]


def is_unversioned(data: Mapping[str, Any]) -> bool:
    """Tell whether *data* looks like the seed's layout (no ``version``, seed-only sections)."""
    if "version" in data:
        return False
    producers = data.get("producers")
    return "pool" in data or (isinstance(producers, Mapping) and "brokers" in producers)


def translate(data: Mapping[str, Any]) -> tuple[dict[str, Any], PathMap]:
    """Move an unversioned config into the version 1 layout."""
    paths = PathMap()
    result: dict[Any, Any] = {"version": 1}

    def put(new: Path, old: Path, value: Any) -> None:
        target = result
        for key in new[:-1]:
            target = target.setdefault(key, {})
            if not isinstance(target, dict):
                return  # the parent is not a mapping: validation reports that already
        target[new[-1]] = value
        paths.moves.append((new, old))

    for key, value in data.items():
        if key == "pool":
            put(("service", "pool"), ("pool",), value)
        elif key == "producers" and isinstance(value, Mapping):
            for name, section in value.items():
                if name == "brokers" and isinstance(section, Mapping):
                    _translate_brokers(section, put)
                else:
                    put(("producers", name), ("producers", name), section)
        else:
            put((key,), (key,), value)
    return result, paths


def _translate_brokers(brokers: Mapping[str, Any], put: _Put) -> None:
    for name, section in brokers.items():
        if name == "channels":
            put(("brokers", "pg_notify", "channels"), ("producers", "brokers", "channels"), section)
        elif name == "pg_notify" and isinstance(section, Mapping):
            for key, value in section.items():
                old = ("producers", "brokers", "pg_notify", key)
                put(("brokers", "pg_notify", key), old, value)
        else:
            put(("brokers", name), ("producers", "brokers", name), section)
