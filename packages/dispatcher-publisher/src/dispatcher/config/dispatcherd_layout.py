"""Translation of dispatcherd's config layout (its ``version: 2``) into version 1.

dispatcherd's sections hold keyword arguments of its classes (``service.pool_kwargs``,
``brokers.pg_notify.config``, ``producers.ScheduledProducer``, ...). Each key with an
equivalent here is moved to it; :class:`~dispatcher.config.legacy.PathMap` maps the new
locations back, so that errors name the keys as the user wrote them. A key dispatcherd accepts
that has no equivalent here is dropped with a warning naming it; a key dispatcherd itself
would refuse (an unknown keyword argument) is an error, as it is there. The table of keys is
in the "dispatcherd config files" section of ``docs/config.md``.

This module tells the layout apart and translates it section by section: ``brokers``
(:mod:`~dispatcher.config.dispatcherd_brokers`), ``service``
(:mod:`~dispatcher.config.dispatcherd_service`), ``producers``
(:mod:`~dispatcher.config.dispatcherd_producers`), ``worker``
(:mod:`~dispatcher.config.dispatcherd_worker`); ``publish`` and our own sections are read
here, as written. All write through a
:class:`~dispatcher.config.dispatcherd_translation.TranslationWriter`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from dispatcher.config.dispatcherd_brokers import translate_brokers
from dispatcher.config.dispatcherd_producers import PRODUCERS, translate_producers
from dispatcher.config.dispatcherd_service import translate_service
from dispatcher.config.dispatcherd_translation import Translation, TranslationWriter
from dispatcher.config.dispatcherd_worker import translate_worker

VERSION: Final = 2
"""The ``version`` of dispatcherd's current layout."""

OUR_SECTIONS: Final = ("tasks", "security")
"""Top-level sections of our layout that dispatcherd's lacks (and ignores): read as written."""

_SERVICE_KEYS: Final = frozenset(
    {
        "pool_kwargs",
        "main_kwargs",
        "metrics_kwargs",
        "process_manager_cls",
        "process_manager_kwargs",
    }
)


def is_dispatcherd(data: Mapping[str, Any]) -> bool:
    """Tell whether *data* is in dispatcherd's layout.

    It is with ``version: 2`` (or ``2.0``), or with no ``version`` and keys only dispatcherd's
    layout has (``service.pool_kwargs``, ``brokers.pg_notify.config``,
    ``producers.ScheduledProducer``, ``worker.worker_cls``, ...).
    """
    version = data.get("version")
    if "version" in data:  # 2.0 too: dispatcherd's check is ``!= 2``
        return (
            isinstance(version, int | float)
            and not isinstance(version, bool)
            and version == VERSION
        )
    service, brokers = _mapping(data.get("service")), _mapping(data.get("brokers"))
    producers, worker = _mapping(data.get("producers")), _mapping(data.get("worker"))
    pg_notify, socket = _mapping(brokers.get("pg_notify")), _mapping(brokers.get("socket"))
    return bool(
        _SERVICE_KEYS.intersection(service)
        or {"config", "sync_connection_factory", "async_connection_factory"}.intersection(pg_notify)
        or "socket_path" in socket
        or set(PRODUCERS).intersection(producers)
        or {"worker_cls", "worker_kwargs"}.intersection(worker)
    )


def _mapping(value: Any) -> Mapping[Any, Any]:
    return value if isinstance(value, Mapping) else {}


def _publish(writer: TranslationWriter, value: Any) -> None:
    """The ``publish`` section: its default brokers, as written."""
    section = writer.section(value, ("publish",), ("publish",))
    if section is None:
        return
    writer.put(("publish",), ("publish",), {})
    for key, item in section.items():
        where = ("publish", key)
        if key in ("default_broker", "default_control_broker"):
            writer.put(where, where, item)
        else:
            writer.warn(where, "not a key of dispatcherd's publish section; ignored, as it does")


def _our_section(writer: TranslationWriter, key: str, value: Any) -> None:
    """Read a section of our layout as written.

    ``tasks.modules`` joins the preloaded modules (``process_manager_kwargs``).
    """
    tasks = writer.out.document.get("tasks")
    if key != "tasks" or not isinstance(tasks, dict) or not isinstance(value, Mapping):
        writer.put((key,), (key,), value)
        return
    for name, item in value.items():
        modules = tasks.get("modules")
        if name == "modules" and isinstance(modules, list) and isinstance(item, list):
            for index, module in enumerate(item):
                if module not in modules:
                    new = ("tasks", "modules", len(modules))
                    writer.out.paths.moves.append((new, ("tasks", "modules", index)))
                    modules.append(module)
        else:
            writer.put(("tasks", name), ("tasks", name), item)


_HANDLERS: Final[dict[str, Callable[[TranslationWriter, Any], None]]] = {
    "brokers": translate_brokers,
    "service": translate_service,
    "producers": translate_producers,
    "worker": translate_worker,
    "publish": _publish,
}
"""The translator of each of dispatcherd's sections."""


def translate(data: Mapping[str, Any]) -> Translation:
    """Move a config in dispatcherd's layout into the version 1 layout."""
    writer = TranslationWriter()
    if "version" in data:
        writer.put(("version",), ("version",), 1)
    else:
        writer.warn((), "no 'version': read as dispatcherd's layout (version 2)")
    for key, value in data.items():
        if key in _HANDLERS:
            _HANDLERS[key](writer, value)
        elif key != "version" and key not in OUR_SECTIONS:
            writer.warn((key,), "not a section of dispatcherd's layout; ignored, as it does")
    for key in OUR_SECTIONS:  # last: tasks.modules adds to the preloaded modules
        if key in data:
            _our_section(writer, key, data[key])
    return writer.out
