"""Translation of dispatcherd's ``brokers`` section (``pg_notify``, ``socket``).

``brokers.pg_notify.config``, psycopg's ``connect()`` arguments, becomes one libpq conninfo.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from dispatcher.config.conninfo import conninfo_text_problem
from dispatcher.config.dispatcherd_translation import TranslationWriter, unknown_key
from dispatcher.config.legacy import Path

_CONNECT_OPTIONS: Final = frozenset(
    {"autocommit", "prepare_threshold", "row_factory", "cursor_factory", "context"}
)
"""psycopg ``connect()`` arguments that are not libpq parameters."""

_CONNECTION_SAVERS: Final = (
    "dispatcherd.brokers.pg_notify.connection_saver",
    "dispatcherd.brokers.pg_notify.async_connection_saver",
)
"""dispatcherd's own connection factories: one shared connection per process, opened from
``config``, which is what the publishers here do without a factory."""


def translate_brokers(writer: TranslationWriter, value: Any) -> None:
    """Translate dispatcherd's ``brokers`` section."""
    brokers = writer.section(value, ("brokers",), ("brokers",))
    if brokers is None:
        return
    writer.put(("brokers",), ("brokers",), {})
    for name, section in brokers.items():
        where = ("brokers", name)
        if name == "pg_notify":
            _pg_notify(writer, section)
        elif name == "socket":
            _socket(writer, section)
        elif isinstance(name, str) and name.startswith("dispatcherd.testing."):
            writer.error(where, "dispatcherd's test brokers have no equivalent here")
        elif isinstance(name, str) and "." in name:
            writer.error(
                where,
                "a broker module of dispatcherd has no equivalent here: the brokers are "
                "pg_notify, socket, pg_queue and installed plug-ins",
            )
        else:
            writer.put(where, where, section)


def _pg_notify(writer: TranslationWriter, value: Any) -> None:
    old: Path = ("brokers", "pg_notify")
    section = writer.section(value, old, old)
    if section is None:
        return
    writer.put(old, old, {})
    moves = {
        "channels": "channels",
        "default_publish_channel": "default_publish_channel",
        "sync_connection_factory": "connection_factory",
        "async_connection_factory": "async_connection_factory",
    }
    connections = ("sync_connection", "async_connection")
    allowed = {
        *moves,
        *connections,
        "config",
        "max_connection_idle_seconds",
        "max_self_check_message_age_seconds",
    }
    for key, item in section.items():
        where = (*old, key)
        if key == "config":
            _connection_config(writer, item)
        elif key in moves and isinstance(item, str) and item.lstrip().startswith("lambda"):
            writer.warn(where, "a lambda is not taken here: name a function (module.name); ignored")
        elif key in moves:
            if item is not None and item not in _CONNECTION_SAVERS:
                writer.put((*old, moves[key]), where, item)
        elif key in connections:
            writer.warn(
                where,
                "a connection object has no place in a config: the service and the "
                "publishers connect with 'config' (or a connection factory); ignored",
            )
        elif key == "max_connection_idle_seconds":
            if item is None:
                writer.warn(
                    where,
                    "null (no self-check) has no equivalent: the connection is checked "
                    "after self_check_interval seconds (default 30) without traffic",
                )
            else:
                writer.put((*old, "self_check_interval"), where, item)
        elif key == "max_self_check_message_age_seconds":
            if item is not None:
                writer.put((*old, "self_check_timeout"), where, item)
        else:
            writer.error(where, unknown_key(key, allowed, "pg_notify broker"))
    if "conninfo" not in writer.out.document["brokers"]["pg_notify"]:
        # Validation finds no conninfo ("is required"): it is the config that is missing.
        writer.out.paths.moves.append(((*old, "conninfo"), (*old, "config")))


def _connection_config(writer: TranslationWriter, value: Any) -> None:
    """``brokers.pg_notify.config``: psycopg's ``connect()`` arguments, as one conninfo."""
    old: Path = ("brokers", "pg_notify", "config")
    new: Path = ("brokers", "pg_notify", "conninfo")
    if value is None or value in ("", {}):
        return  # reported by validation: the conninfo it gives is required
    if isinstance(value, str):
        writer.put(new, old, value)
        return
    if not isinstance(value, Mapping):
        writer.error(old, f"expected an object of libpq parameters, got {type(value).__name__}")
        return
    conninfo = value.get("conninfo", "")
    params: dict[str, Any] = {}
    for key, item in value.items():
        where = (*old, key)
        if key == "conninfo":
            if not isinstance(conninfo, str):
                writer.error(where, f"expected string, got {type(conninfo).__name__}")
                return
            if (unreadable := conninfo_text_problem(conninfo)) is not None:
                writer.error(where, unreadable)
                return
        elif key in _CONNECT_OPTIONS:
            writer.warn(where, "a psycopg option with no equivalent; ignored")
        elif item is None:
            continue  # psycopg leaves out parameters given as None
        elif isinstance(item, bool) or not isinstance(item, str | int | float):
            writer.error(where, f"expected string or number, got {type(item).__name__}")
        elif (unreadable := conninfo_text_problem(str(item))) is not None:
            writer.error(where, unreadable)
            return
        elif not _is_libpq_parameter(str(key)):
            writer.error(where, "unknown key: not a libpq connection parameter")
        else:
            params[str(key)] = item
    if not params:
        if conninfo:
            writer.put(new, (*old, "conninfo"), conninfo)
        else:
            writer.error(old, "no libpq parameters (such as conninfo, or host and dbname)")
        return
    joined = _join_conninfo(conninfo, params)
    if joined is None:
        writer.error((*old, "conninfo"), "not a valid libpq connection string")
    else:
        writer.put(new, old, joined)


def _socket(writer: TranslationWriter, value: Any) -> None:
    old: Path = ("brokers", "socket")
    section = writer.section(value, old, old)
    if section is None:
        return
    writer.put(old, old, {})
    for key, item in section.items():
        if key == "socket_path":
            writer.put((*old, "path"), (*old, key), item)
        else:
            writer.error((*old, key), unknown_key(key, ["socket_path"], "socket broker"))


def _is_libpq_parameter(name: str) -> bool:
    from psycopg import ProgrammingError
    from psycopg.conninfo import make_conninfo

    try:
        make_conninfo("", **{name: "x"})
    except (ProgrammingError, UnicodeEncodeError):  # a name with lone surrogates is none
        return False
    return True


def _join_conninfo(conninfo: str, params: Mapping[str, Any]) -> str | None:
    """*conninfo* with *params* added (they win), or ``None`` when *conninfo* is invalid."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import make_conninfo

    try:
        return make_conninfo(conninfo, **params)
    except ProgrammingError:
        return None
