"""Broker plug-ins: found through entry points, each bringing the schema of its config section.

A distribution adds a broker by naming a :class:`BrokerPlugin` in the entry-point group
:data:`ENTRY_POINT_GROUP`; the entry's name is the broker's name, the key of its section
under ``brokers``::

    [project.entry-points."dispatcher.brokers"]
    spool = "dispatcher_spool.plugin:PLUGIN"

The object it names must be importable cheaply (publishers load it to validate their config):
the service side and the publishing side are named by ``module:attribute`` strings and only
imported by the side that uses them. Only the plug-ins a config names are loaded.
"""

from __future__ import annotations

import difflib
import functools
import json
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Final, cast

from dispatcher.schema import DispatcherError, Problem, SchemaName, Validator, load_schema

ENTRY_POINT_GROUP: Final = "dispatcher.brokers"
"""The entry-point group broker plug-ins register in (both sides, one entry per broker)."""

BUILTIN_BROKERS: Final = ("pg_notify", "socket", "pg_queue")
"""Brokers that ship with dispatcher; a plug-in cannot take their names."""

CONFIG_SCHEMA_ID: Final = "urn:dispatcher:schema:config:1"
"""The ``$id`` of the config schema: a plug-in's schema may ``$ref`` its ``$defs``, e.g.
``urn:dispatcher:schema:config:1#/$defs/channel_name``."""

_EMBEDDED_CONFIG: Final = "dispatcher-config-schema"
"""Where a plug-in's schema gets the config schema embedded (under ``$defs``)."""

SHARED_KEYS: Final = frozenset({"allow_control"})
"""Keys every broker section takes, handled by the service itself: they are taken out of a
plug-in's section before it is checked against the plug-in's schema."""


class PluginError(DispatcherError):
    """A broker plug-in cannot be loaded, or does not provide what is asked of it."""


@dataclass(frozen=True)
class BrokerPlugin:
    """What a broker plug-in's entry point names: its config schema and where its sides are."""

    config_schema: Mapping[str, Any]
    """JSON Schema (draft 2020-12) of the broker's section under ``brokers``, without the
    keys of :data:`SHARED_KEYS`. Give it ``"additionalProperties": false`` so that typos are
    reported."""
    server: str | None = None
    """``module:attribute`` of the service-side factory,
    ``factory(options, context) -> Broker`` (see ``dispatcher.server.brokers``)."""
    publisher: str | None = None
    """``module:attribute`` of the publishing-side factory,
    ``factory(options, settings) -> PublishBroker`` (see ``dispatcher.publish.brokers``)."""

    def load_server(self, name: str) -> Any:
        """Import and return the service-side factory of the broker *name*."""
        return _resolve(name, "server", self.server)

    def load_publisher(self, name: str) -> Any:
        """Import and return the publishing-side factory of the broker *name*."""
        return _resolve(name, "publisher", self.publisher)


def _resolve(name: str, side: str, reference: str | None) -> Any:
    if reference is None:
        raise PluginError(f"broker plug-in {name!r} has no {side} side")
    try:
        return pkgutil.resolve_name(reference)
    except (ImportError, AttributeError, ValueError) as exc:
        raise PluginError(
            f"broker plug-in {name!r}: cannot load its {side} side {reference!r}: {exc}"
        ) from exc


def installed_plugins() -> list[str]:
    """The names of the broker plug-ins installed (their entry points are not loaded)."""
    return sorted({entry.name for entry in entry_points(group=ENTRY_POINT_GROUP)})


@functools.cache
def load_plugin(name: str) -> BrokerPlugin:
    """Load the plug-in registered as *name* (once per process).

    :raises PluginError: when none is installed under that name, or it cannot be loaded.
    """
    if name in BUILTIN_BROKERS:
        raise PluginError(f"{name!r} is a built-in broker, not a plug-in")
    found = [entry for entry in entry_points(group=ENTRY_POINT_GROUP) if entry.name == name]
    if not found:
        raise PluginError(f"no broker plug-in named {name!r} is installed")
    if len({entry.value for entry in found}) > 1:
        sources = ", ".join(sorted(entry.value for entry in found))
        raise PluginError(f"several broker plug-ins are named {name!r}: {sources}")
    try:
        plugin = found[0].load()
    except Exception as exc:  # anything a third-party import may raise
        raise PluginError(f"broker plug-in {name!r} ({found[0].value}) cannot load: {exc}") from exc
    if not isinstance(plugin, BrokerPlugin):
        raise PluginError(
            f"broker plug-in {name!r} ({found[0].value}) is a {type(plugin).__name__}, "
            "not a dispatcher.config.BrokerPlugin"
        )
    return plugin


def without_plugin_sections(document: Mapping[str, Any]) -> tuple[Any, list[Problem]]:
    """Check the plug-in sections of a config document against their plug-ins' schemas.

    Returns the document without those sections (for the config schema, which knows only
    the built-in brokers) and the problems found in them, with paths from the top of the
    config (``brokers.<name>...``). Keys that are neither built-in nor an installed plug-in
    stay, for the config schema to report.
    """
    brokers = document.get("brokers")
    if not isinstance(brokers, Mapping) or all(name in BUILTIN_BROKERS for name in brokers):
        return document, []
    installed = set(installed_plugins())
    kept: dict[str, Any] = {}
    problems: list[Problem] = []
    for name, section in brokers.items():
        if name in BUILTIN_BROKERS or name not in installed:
            kept[name] = section
        else:
            problems += _section_problems(name, section)
    return {**document, "brokers": kept}, problems


def name_unknown_brokers(problems: list[Problem]) -> list[Problem]:
    """Reword the config schema's "unknown key" under ``brokers`` to suggest plug-ins too."""
    return [
        Problem(p.path, unknown_broker_reason(str(p.path[1])))
        if len(p.path) == 2 and p.path[0] == "brokers" and p.reason.startswith("unknown key")
        else p
        for p in problems
    ]


def _section_problems(name: str, section: Any) -> list[Problem]:
    where: tuple[str, ...] = ("brokers", name)
    if not isinstance(section, Mapping):
        return [Problem(where, f"expected object, got {type(section).__name__}")]
    options = {key: value for key, value in section.items() if key not in SHARED_KEYS}
    shared = {key: value for key, value in section.items() if key in SHARED_KEYS}
    try:
        explainer = _explainer(name)
    except PluginError as exc:
        return [Problem(where, str(exc))]
    found = explainer.problems(options, quote_values=False) + _shared_explainer().problems(
        shared, quote_values=False
    )
    return [Problem((*where, *problem.path), problem.reason) for problem in found]


@functools.cache
def _explainer(name: str) -> Validator:
    """A validator of the plug-in's schema, able to refer to the config schema's ``$defs``.

    :raises PluginError: when the plug-in cannot be loaded or its schema is invalid.
    """
    plugin = load_plugin(name)
    schema = json.loads(json.dumps(dict(plugin.config_schema)))
    schema.setdefault("$schema", "https://json-schema.org/draft/2020-12/schema")
    if not isinstance(schema.get("$defs", {}), dict):
        raise PluginError(f"broker plug-in {name!r} has an invalid config schema: bad $defs")
    # Embedded with its $id, the config schema answers $refs to CONFIG_SCHEMA_ID.
    schema["$defs"] = {**schema.get("$defs", {}), _EMBEDDED_CONFIG: load_schema("config")}
    try:
        return Validator(_schema_name(name), schema)
    except Exception as exc:  # whatever the compiler says of a broken schema
        reason = f"broker plug-in {name!r} has an invalid config schema: {exc}"
        raise PluginError(reason) from None


@functools.cache
def _shared_explainer() -> Validator:
    config = load_schema("config")
    shared = {
        "$defs": config["$defs"],
        "type": "object",
        "properties": {"allow_control": {"$ref": "#/$defs/allow_control"}},
    }
    return Validator(_schema_name("shared"), shared)


def _schema_name(name: str) -> SchemaName:
    # A Validator names its schema in errors it raises; these are never raised, only read.
    return cast(SchemaName, f"brokers.{name}")


def unknown_broker_reason(name: str) -> str:
    """Say why *name* is not a broker, suggesting the closest built-in or installed one."""
    known = sorted({*BUILTIN_BROKERS, *installed_plugins()})
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"unknown key (did you mean {close[0]!r}?)"
    return (
        f"unknown key (expected one of: {', '.join(known)}; a plug-in adds a broker through "
        f"the entry-point group {ENTRY_POINT_GROUP!r})"
    )
