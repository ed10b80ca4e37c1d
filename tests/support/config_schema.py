"""The config schema walked setting by setting, and configs holding one value at one place."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from dispatcher.schema import load_schema

SAMPLE_KEY = "app.tasks.report"
"""The key put where the schema takes any key (a task name, a broker's name)."""

Path = tuple[str | int, ...]


def schema_nodes() -> Iterator[tuple[Path, dict[str, Any]]]:
    """Each node of the config schema with the path of the setting it describes.

    References are followed (each once on a path: no endless recursion), and so are the
    alternatives (``oneOf``, ``anyOf``, ``allOf``, ``if``/``then``/``else``), which describe
    the setting of their own path; a key the schema leaves free is :data:`SAMPLE_KEY`, a
    list's item is its first (``0``).
    """
    schema = load_schema("config")

    def resolve(ref: str) -> Any:
        node: Any = schema
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        return node

    pending: list[tuple[Path, Any, frozenset[str]]] = [((), schema, frozenset())]
    while pending:
        path, node, refs = pending.pop()
        if not isinstance(node, dict):
            continue
        yield path, node
        ref = node.get("$ref", "")
        if ref.startswith("#/") and ref not in refs:
            pending.append((path, resolve(ref), refs | {ref}))
        for key, child in node.get("properties", {}).items():
            pending.append(((*path, key), child, refs))
        for child in node.get("patternProperties", {}).values():
            pending.append(((*path, SAMPLE_KEY), child, refs))
        if isinstance(node.get("additionalProperties"), dict):
            pending.append(((*path, SAMPLE_KEY), node["additionalProperties"], refs))
        if isinstance(node.get("items"), dict):
            pending.append(((*path, 0), node["items"], refs))
        for word in ("oneOf", "anyOf", "allOf"):
            pending.extend((path, child, refs) for child in node.get(word, []))
        for word in ("if", "then", "else"):
            if word in node:
                pending.append((path, node[word], refs))


def sorted_paths(paths: set[Path]) -> list[Path]:
    """*paths* in a stable order (names and indexes compared as text)."""
    return sorted(paths, key=lambda path: [str(part) for part in path])


def document_with(path: Path, value: Any) -> dict[str, Any]:
    """A version 1 config with *value* at *path* (lists of one item where an index is)."""
    root: dict[str, Any] = {"version": 1}
    parent: Any = root
    for part, following in zip(path, [*path[1:], None], strict=True):
        child: Any = value if following is None else ([] if isinstance(following, int) else {})
        if isinstance(parent, list):
            parent.append(child)
        else:
            parent[part] = child
        parent = child
    return root
