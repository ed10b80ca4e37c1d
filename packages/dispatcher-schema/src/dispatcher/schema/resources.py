"""Access to the schema files shipped in this package."""

from __future__ import annotations

import functools
import json
import re
from importlib import resources
from typing import Any, Final, Literal, NamedTuple, get_args

from dispatcher.schema.errors import InvalidArgumentValue

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
        raise InvalidArgumentValue(
            f"unknown schema {name!r}; known schemas: {', '.join(SCHEMA_NAMES)}"
        )
    package_files = resources.files(__package__ or "dispatcher.schema")
    return (package_files / "schemas" / f"{name}.schema.json").read_text(encoding="utf-8")


def sql_publisher() -> str:
    """Return the SQL that installs ``dispatcher_submit()``, a publisher usable from SQL."""
    package_files = resources.files(__package__ or "dispatcher.schema")
    return (package_files / "schemas" / "dispatcher_submit.sql").read_text(encoding="utf-8")


def sql_queue_publisher() -> str:
    """Return the SQL that installs ``dispatcher_enqueue()``: jobs of durable queues, from SQL.

    It also installs ``dispatcher_duplicate_key()``, the ``dup_key`` of a job, as
    :func:`~dispatcher.schema.duplicate_key` computes it.
    """
    package_files = resources.files(__package__ or "dispatcher.schema")
    return (package_files / "schemas" / "dispatcher_enqueue.sql").read_text(encoding="utf-8")


class Migration(NamedTuple):
    """One versioned step of the durable queue's tables (``migrations/NNNN_name.sql``)."""

    version: int
    """Its number: steps run in this order, each once per database schema."""
    name: str
    """Its file name, without the number and ``.sql`` (``pg_queue``)."""
    text: str
    """Its SQL, one transaction's worth; ``{schema}`` stands for the quoted schema name."""


_MIGRATION_FILE: Final = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@functools.cache
def _migrations() -> tuple[Migration, ...]:
    folder = resources.files(__package__ or "dispatcher.schema") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match is not None:
            text = entry.read_text(encoding="utf-8")
            found.append(Migration(int(match[1]), match[2], text))
    found.sort()
    versions = [migration.version for migration in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"the migrations are not numbered 1, 2, ... in turn: {versions}")
    return tuple(found)


def migrations() -> list[Migration]:
    """Every migration this version ships, in order (versions 1, 2, ... without gaps).

    The SQL is written for any schema: replace ``{schema}`` with the quoted schema name.
    """
    return list(_migrations())


@functools.cache
def _parsed(name: SchemaName) -> Any:
    return json.loads(schema_text(name))


def load_schema(name: SchemaName) -> dict[str, Any]:
    """Return the schema *name* as a new dict (the caller may change it freely)."""
    schema: dict[str, Any] = json.loads(json.dumps(_parsed(name)))
    return schema
