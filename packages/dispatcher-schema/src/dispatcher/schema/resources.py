"""Access to the schema files shipped in this package."""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any, Final, Literal, get_args

SchemaName = Literal[
    "task-message",
    "control-message",
    "control-reply",
    "chunk-envelope",
    "signed-envelope",
    "config",
]
"""The name of a schema: its file name without ``.schema.json``."""

SCHEMA_NAMES: Final[tuple[SchemaName, ...]] = get_args(SchemaName)
"""Every schema this package ships."""


def schema_text(name: SchemaName) -> str:
    """Return the text of the schema file ``<name>.schema.json``.

    :raises ValueError: when *name* is not one of :data:`SCHEMA_NAMES`.
    """
    if name not in SCHEMA_NAMES:
        raise ValueError(f"unknown schema {name!r}; known schemas: {', '.join(SCHEMA_NAMES)}")
    package_files = resources.files(__package__ or "dispatcher.schema")
    return (package_files / "schemas" / f"{name}.schema.json").read_text(encoding="utf-8")


def sql_publisher() -> str:
    """Return the SQL that installs ``dispatcher_submit()``, a publisher usable from SQL."""
    package_files = resources.files(__package__ or "dispatcher.schema")
    return (package_files / "schemas" / "dispatcher_submit.sql").read_text(encoding="utf-8")


@functools.cache
def _parsed(name: SchemaName) -> Any:
    return json.loads(schema_text(name))


def load_schema(name: SchemaName) -> dict[str, Any]:
    """Return the schema *name* as a new dict (the caller may change it freely)."""
    schema: dict[str, Any] = json.loads(json.dumps(_parsed(name)))
    return schema
