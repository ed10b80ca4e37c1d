"""Building :class:`~dispatcher.config.settings.Settings` from a validated config document."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from dispatcher.config.security import Security
from dispatcher.config.service_settings import Limits, Metrics, Pool, Service, ServiceControl
from dispatcher.config.settings import (
    Brokers,
    PgNotifyBroker,
    PgQueueBroker,
    PluginBroker,
    Producers,
    Publish,
    ScheduledTask,
    Settings,
    SocketBroker,
    TaskOptions,
    Tasks,
    Worker,
)

_Options = TypeVar("_Options", bound=TaskOptions)


def settings_from_document(
    source: str, document: Mapping[str, Any], security: Security | None = None
) -> Settings:
    """Build :class:`Settings` from a document already validated against the config schema.

    *security* is its ``security`` section with the secrets read (see ``load_security``).
    """
    brokers = document.get("brokers", {})
    service = document.get("service", {})
    producers = document.get("producers", {})
    pg_notify = brokers.get("pg_notify")
    socket = brokers.get("socket")
    pg_queue = brokers.get("pg_queue")
    metrics = service.get("metrics")
    worker = document.get("worker", {})
    return Settings(
        source=source,
        data=document,
        brokers=Brokers(
            pg_notify=None if pg_notify is None else _pg_notify(pg_notify),
            socket=None if socket is None else SocketBroker(**_allow_control(socket)),
            pg_queue=None if pg_queue is None else _pg_queue(pg_queue, pg_notify),
            plugins=MappingProxyType(
                {
                    name: _plugin(name, section)
                    for name, section in brokers.items()
                    if name not in {"pg_notify", "socket", "pg_queue"}
                }
            ),
        ),
        tasks=Tasks(modules=tuple(document.get("tasks", {}).get("modules", ()))),
        service=Service(
            **{
                k: v
                for k, v in service.items()
                if k not in {"pool", "metrics", "limits", "control"}
            },
            pool=Pool(**service.get("pool", {})),
            metrics=None if metrics is None else Metrics(**metrics),
            limits=Limits(**service.get("limits", {})),
            control=ServiceControl(**service.get("control", {})),
        ),
        producers=Producers(
            scheduled=_entries(producers.get("scheduled", {}), ScheduledTask),
            on_start=_entries(producers.get("on_start", {}), TaskOptions),
            control="control" in producers,
        ),
        worker=Worker(
            worker_class=worker.get("class"),
            idle_timeout=worker.get("idle_timeout"),
            max_memory=worker.get("max_memory"),
            max_output_bytes=worker.get("max_output_bytes", Worker.max_output_bytes),
        ),
        publish=Publish(**document.get("publish", {})),
        security=security or Security(),
    )


def _pg_notify(section: Mapping[str, Any]) -> PgNotifyBroker:
    values = _allow_control(section)
    values["channels"] = tuple(values.get("channels", ()))
    return PgNotifyBroker(**values)


def _pg_queue(section: Mapping[str, Any], pg_notify: Mapping[str, Any] | None) -> PgQueueBroker:
    values = _allow_control(section)
    values["queues"] = tuple(values["queues"])
    if "conninfo" not in values and pg_notify is not None:
        values["conninfo"] = pg_notify["conninfo"]
    return PgQueueBroker(**values)


def _plugin(name: str, section: Mapping[str, Any]) -> PluginBroker:
    allowed = section.get("allow_control")
    return PluginBroker(
        name=name,
        options=MappingProxyType({k: v for k, v in section.items() if k != "allow_control"}),
        allow_control=None if allowed is None else tuple(allowed),
    )


def _allow_control(section: Mapping[str, Any]) -> dict[str, Any]:
    values = dict(section)
    if "allow_control" in values:
        values["allow_control"] = tuple(values["allow_control"])
    return values


def _entries(
    section: Mapping[str, Mapping[str, Any]], cls: type[_Options]
) -> Mapping[str, _Options]:
    return MappingProxyType({name: cls(**_options(values)) for name, values in section.items()})


def _options(section: Mapping[str, Any]) -> dict[str, Any]:
    values = dict(section)
    if "args" in values:
        values["args"] = tuple(values["args"])
    if "kwargs" in values:
        values["kwargs"] = MappingProxyType(dict(values["kwargs"]))
    return values
