"""Which brokers a service runs: the built-ins, and plug-ins found through entry points.

A plug-in registers a :class:`~dispatcher.config.BrokerPlugin` in the entry-point group
``dispatcher.brokers`` (see :mod:`dispatcher.config.plugins`); its ``server`` names the
factory, ``factory(options, context) -> Broker``. Only configured brokers are built.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from typing import Any, Final

from dispatcher.config import ConfigError, PluginError, load_plugin
from dispatcher.server.brokers.base import Broker, BrokerContext, BrokerFactory, Capacity

BUILTIN_MODULES: Final[Mapping[str, str]] = {
    "pg_notify": "dispatcher.server.brokers.pg_notify.broker",
    "socket": "dispatcher.server.brokers.socket",
    "pg_queue": "dispatcher.server.brokers.pg_queue.broker",
}
"""The modules of the brokers that ship with the service, by name; each has a ``create``
factory. A module is imported only when its broker is configured: the others' (the SQL of
``pg_queue`` above all) would only take memory in every service."""


def broker_factory(name: str) -> BrokerFactory:
    """Return the factory of the broker *name*: a built-in, else an installed plug-in's.

    :raises PluginError: when no plug-in has that name, or its service side cannot be loaded.
    """
    module = BUILTIN_MODULES.get(name)
    if module is not None:
        builtin: BrokerFactory = importlib.import_module(module).create
        return builtin
    factory = load_plugin(name).load_server(name)
    if not callable(factory):
        raise PluginError(f"broker plug-in {name!r}: its server side is not callable")
    return factory  # type: ignore[no-any-return]


def create_brokers(
    context: BrokerContext, capacity_of: Callable[[str], Capacity] | None = None
) -> list[Broker]:
    """Build every broker the config names, in the order of the config.

    Each gets *context*, with ``capacity_of(name)`` as its capacity when given: a view of
    the service's capacity of its own, which counts only its own jobs as waiting.

    :raises ConfigError: when a plug-in's service side cannot be loaded or refuses its
        options (naming ``brokers.<name>`` and the reason).
    """
    brokers = context.settings.brokers
    built: list[Broker] = []
    for name in brokers.names:
        plugin = brokers.plugins.get(name)
        options: Mapping[str, Any] = {} if plugin is None else plugin.options
        own = (
            context
            if capacity_of is None
            else dataclasses.replace(context, capacity=capacity_of(name))
        )
        try:
            broker = broker_factory(name)(options, own)
        except (PluginError, ValueError, TypeError) as exc:
            raise ConfigError(context.settings.source, [f"brokers.{name}: {exc}"]) from exc
        if broker.name != name:
            raise ConfigError(
                context.settings.source,
                [f"brokers.{name}: the plug-in built a broker named {broker.name!r}"],
            )
        built.append(broker)
    return built
