"""Django's ``DATABASES`` entries seen as PostgreSQL connection strings (conninfo)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Final

from psycopg.conninfo import conninfo_to_dict, make_conninfo

POSTGRESQL_BACKENDS: Final = frozenset({"postgresql", "postgis"})
"""Last components of the ``ENGINE`` values that are PostgreSQL (Django's, GeoDjango's)."""

DJANGO_ONLY_OPTIONS: Final = frozenset(
    {
        "assume_role",
        "client_encoding",
        "context",
        "cursor_factory",
        "isolation_level",
        "pool",
        "prepare_threshold",
        "server_side_binding",
    }
)
"""``OPTIONS`` keys that Django's backend reads itself: no libpq parameters."""


def is_postgresql(database: Mapping[str, Any]) -> bool:
    """Tell whether a ``DATABASES`` entry uses a PostgreSQL backend."""
    engine = str(database.get("ENGINE") or "")
    return engine.rpartition(".")[2] in POSTGRESQL_BACKENDS


def database_conninfo(database: Mapping[str, Any]) -> str | None:
    """The conninfo that reaches the database of a ``DATABASES`` entry.

    Built as Django's backend connects: ``NAME``, ``USER``, ``PASSWORD``, ``HOST`` and
    ``PORT`` when set (``NAME`` ``None`` means the ``postgres`` database), and the
    ``OPTIONS`` that are libpq parameters (``sslmode``, ``options``, ``service``...; paths
    such as ``sslrootcert`` may be ``pathlib.Path`` objects).
    ``None`` when the entry is not PostgreSQL.
    """
    if not is_postgresql(database):
        return None
    params: dict[str, str] = {}
    options = database.get("OPTIONS") or {}
    for key, value in options.items():
        if key in DJANGO_ONLY_OPTIONS or isinstance(value, bool) or value == "":
            continue
        if isinstance(value, os.PathLike):  # sslrootcert = BASE_DIR / "ca.pem"
            params[key] = os.fspath(value)
        elif isinstance(value, str | int | float):
            params[key] = str(value)
    name = database.get("NAME", "")
    if name is None:
        params.pop("service", None)
        params["dbname"] = "postgres"
    elif name:
        params["dbname"] = str(name)
    for setting, key in (("USER", "user"), ("PASSWORD", "password"), ("HOST", "host")):
        if database.get(setting):
            params[key] = str(database[setting])
    if database.get("PORT"):
        params["port"] = str(database["PORT"])
    return make_conninfo(**params)


DEFAULT_PORT: Final = "5432"
"""The port libpq connects to when neither the conninfo nor ``$PGPORT`` names one."""


def _target(params: Mapping[str, Any]) -> tuple[str, str, str]:
    # What libpq would use where a value is left out, when that is known without a guess:
    # $PGHOST/$PGPORT/$PGDATABASE, and port 5432 (the socket directory depends on the build).
    host = params.get("host") or params.get("hostaddr") or os.environ.get("PGHOST") or ""
    port = params.get("port") or os.environ.get("PGPORT") or DEFAULT_PORT
    dbname = params.get("dbname") or os.environ.get("PGDATABASE") or ""
    return str(host), str(port).strip(), str(dbname)


def same_database(conninfo: str, database: Mapping[str, Any]) -> bool:
    """Tell whether *conninfo* names the database of the ``DATABASES`` entry *database*.

    Both must say the same host, port and database name, as written, where a value left
    out is the one libpq would use when that is known without connecting: ``$PGHOST``,
    ``$PGPORT`` (else 5432) and ``$PGDATABASE``; otherwise an unset host or name matches
    only an unset one. ``localhost`` and ``127.0.0.1`` count as different.
    """
    own = database_conninfo(database)
    if own is None:
        return False
    return _target(conninfo_to_dict(conninfo)) == _target(conninfo_to_dict(own))
