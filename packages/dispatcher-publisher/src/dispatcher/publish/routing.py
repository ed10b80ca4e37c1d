"""Which broker carries a message: built-ins and plug-ins, chosen by queue and by config.

A task goes through the broker that claims its queue (:attr:`PublishBroker.queues`: the
durable queues of ``brokers.pg_queue``, the channels of ``brokers.pg_notify``), else
through ``publish.default_broker``; without that setting, through ``pg_notify`` when it is
configured, else through the only configured broker besides ``socket``, else through
``socket``. Control commands go through ``publish.default_control_broker``, else ``socket``
when configured and this platform has Unix sockets (not Windows: a config shared with the
service's host still serves a laptop there), else the task default.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Final

from dispatcher.config import NotConfiguredError, PluginError, Settings, get_settings, load_plugin
from dispatcher.publish.brokers import (
    JobBroker,
    PublishBroker,
    PublishBrokerFactory,
    is_job_broker,
)
from dispatcher.publish.errors import PublishError
from dispatcher.publish.per_config import PerConfig
from dispatcher.publish.pg_notify import PgNotifyPublisher
from dispatcher.publish.pg_notify import create as create_pg_notify
from dispatcher.publish.pg_queue import create as create_pg_queue
from dispatcher.publish.socket import create as create_socket
from dispatcher.publish.socket import unix_sockets
from dispatcher.publish.submission import Submission
from dispatcher.schema.log_fields import BROKER, EVENT, QUEUE, TASK, UUID

logger = logging.getLogger("dispatcher.publish")

BUILTIN_FACTORIES: Final[Mapping[str, PublishBrokerFactory]] = {
    "pg_notify": create_pg_notify,
    "socket": create_socket,
    "pg_queue": create_pg_queue,
}
"""The publishing sides of the brokers that ship with dispatcher, by name."""


class _Brokers:
    """The publishing brokers of one config, built on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.built: dict[str, PublishBroker] = {}
        self.by_queue: dict[str, PublishBroker] = {}
        self.jobs_by_queue: dict[str, JobBroker | None] = {}


_brokers: PerConfig[_Brokers] = PerConfig(_Brokers)
"""The publishing brokers of each config used lately."""


def publish_broker(name: str, settings: Settings | None = None) -> PublishBroker:
    """The publishing side of the configured broker *name* (built once per config).

    :raises PublishError: when *name* is not configured, or its plug-in has no publishing
        side (or it cannot be loaded).
    """
    settings = settings or get_settings()
    brokers = _brokers.get(settings)
    broker = brokers.built.get(name)
    if broker is not None:
        return broker
    if name not in settings.brokers.names:
        raise PublishError(f"no broker {name!r} is configured under 'brokers' in {settings.source}")
    plugin = settings.brokers.plugins.get(name)
    try:
        if plugin is None:
            broker = BUILTIN_FACTORIES[name]({}, settings)
        else:
            broker = load_plugin(name).load_publisher(name)(plugin.options, settings)
    except PluginError as exc:
        raise PublishError(f"cannot publish through brokers.{name}: {exc}") from exc
    brokers.built[name] = broker
    return broker


def default_broker(settings: Settings | None = None) -> PublishBroker:
    """The broker tasks go through when no broker claims their queue.

    :raises PublishError: when the config names no broker, or several and no
        ``publish.default_broker``.
    """
    settings = settings or get_settings()
    name = settings.publish.default_broker
    names = settings.brokers.names
    if name is None and "pg_notify" in names:
        name = "pg_notify"
    if name is None:
        if not names:
            raise PublishError(
                f"{settings.source} configures no broker: add one under brokers, "
                "e.g. brokers.pg_notify with its conninfo and channels"
            )
        others = [n for n in names if n != "socket"] or list(names)
        if len(others) != 1:
            raise PublishError(
                f"{settings.source} configures brokers {', '.join(names)}: "
                "set publish.default_broker to the one tasks go through by default"
            )
        name = others[0]
    return publish_broker(name, settings)


def control_broker(settings: Settings | None = None) -> PublishBroker:
    """The broker control commands go through."""
    settings = settings or get_settings()
    name = settings.publish.default_control_broker
    if name is None and settings.brokers.socket is not None and unix_sockets():
        name = "socket"
    return default_broker(settings) if name is None else publish_broker(name, settings)


def broker_for(queue: str, settings: Settings | None = None) -> PublishBroker:
    """The broker a task for *queue* goes through."""
    settings = settings or get_settings()
    brokers = _brokers.get(settings)
    broker = brokers.by_queue.get(queue)
    if broker is None:
        claims = (publish_broker(name, settings) for name in settings.brokers.names)
        broker = next((b for b in claims if queue in b.queues), None) or default_broker(settings)
        brokers.by_queue[queue] = broker
    return broker


def job_broker_for(queue: str) -> JobBroker | None:
    """The broker that stores tasks for *queue* as jobs; ``None`` when *queue* is not durable.

    Without a config, or when the broker of *queue* cannot be built (the send says why),
    ``None``.
    """
    try:
        settings = get_settings()
    except NotConfiguredError:
        return None
    if settings.brokers.pg_queue is None and not settings.brokers.plugins:
        return None
    brokers = _brokers.get(settings)
    try:
        return brokers.jobs_by_queue[queue]
    except KeyError:
        pass
    try:
        broker = broker_for(queue, settings)
    except PublishError:
        return None
    found = brokers.jobs_by_queue[queue] = broker if is_job_broker(broker) else None
    return found


def plan(
    submissions: Sequence[Submission], connection: object | None
) -> list[tuple[PublishBroker, list[Submission]]]:
    """Group *submissions* by the broker each goes through, keeping their order.

    With *connection* and no config, the NOTIFYs go inside that connection's transaction.
    """
    try:
        settings = get_settings()
    except NotConfiguredError:
        if connection is None:
            raise
        return [(PgNotifyPublisher(None), list(submissions))]
    if len(submissions) == 1:
        return [(broker_for(submissions[0].channel, settings), list(submissions))]
    groups: list[tuple[PublishBroker, list[Submission]]] = []
    channel: str | None = None
    group: list[Submission] = []
    for submission in submissions:
        if submission.channel != channel:  # a batch mostly goes to one channel
            channel = submission.channel
            broker = broker_for(channel, settings)
            if not groups or groups[-1][0] is not broker:
                group = []
                groups.append((broker, group))
        group.append(submission)
    return groups


def log_sent(groups: Sequence[tuple[PublishBroker, Sequence[Submission]]]) -> None:
    """Log each submission of *groups*, sent, at DEBUG (the caller checks that it is on)."""
    for broker, group in groups:
        for submission in group:
            task = submission.message.get("task")
            logger.debug(
                "submitted task %s (uuid %s) to %s %s",
                task,
                submission.uuid,
                broker.name,
                submission.channel,
                extra={
                    EVENT: "task_submitted",
                    TASK: task,
                    UUID: submission.uuid,
                    BROKER: broker.name,
                    QUEUE: submission.channel,
                },
            )
