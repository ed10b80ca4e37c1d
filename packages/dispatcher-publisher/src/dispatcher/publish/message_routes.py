"""Where a submission goes: the channel or durable queue its queue names, found once per config.

Also the default queue, and what a config lacks when it has none.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from dispatcher.config import ConfigError, NotConfiguredError, SigningKey, get_settings
from dispatcher.publish import interception
from dispatcher.publish.brokers import JobBroker
from dispatcher.publish.errors import PublishError
from dispatcher.publish.invalid_submission import invalid_submission
from dispatcher.publish.json_values import shown
from dispatcher.publish.mistakes import check_queue
from dispatcher.publish.per_config import PerConfig
from dispatcher.publish.routing import default_broker, job_broker_for
from dispatcher.publish.signing import signing_key
from dispatcher.schema import CHANNEL_NAME_RULE, is_valid_channel_name


def resolve_channel(name: str, queue: str | None) -> str:
    """The channel for *queue* (``None``: the default one), checked."""
    if queue is None:
        queue = _default_channel(name)
    if not is_valid_channel_name(queue):
        reason = f"queue: {shown(queue)} is not a valid channel name ({CHANNEL_NAME_RULE})"
        raise invalid_submission(name, reason)
    return queue


class Route(NamedTuple):
    """Where the submissions for one queue go, under one config."""

    channel: str
    """The channel (or durable queue) itself, checked."""
    durable: bool
    """Whether a job broker stores them (unsigned, whole), rather than a NOTIFY."""
    key: SigningKey | None
    """The key NOTIFY messages are signed with, if any."""


MAX_REMEMBERED_ROUTES: Final = 1024
"""Routes remembered per config (queue functions may name many queues): then forgotten."""

_routes: PerConfig[dict[str | None, Route]] = PerConfig(lambda settings: {})
"""The routes found under each config used lately, by the queue a submission names (``None``:
the default queue). A config never changes, nor do its brokers' queues."""


def known_route(queue: str | None) -> Route | None:
    """The route already found for *queue* under the config in force, if any."""
    if queue is not None and type(queue) is not str:
        return None  # not a channel name: the long way says so
    try:
        settings = get_settings()
    except ConfigError:
        return None  # the long way says what is wrong, when it matters
    return _routes.get(settings).get(queue)


def remember_route(queue: str | None, channel: str, durable: bool) -> Route:
    """Make the route of *queue*, found the long way, and remember it for the config in force.

    A NOTIFY channel no service of the config listens on is warned about here, once.
    """
    route = Route(channel, durable, signing_key())
    try:
        settings = get_settings()
    except NotConfiguredError:
        return route  # an explicit queue and connection need no config
    if not durable:
        check_queue(channel, settings)
    routes = _routes.get(settings)
    if len(routes) >= MAX_REMEMBERED_ROUTES:
        routes.clear()
    routes[queue] = route
    return route


def job_broker(name: str, channel: str) -> JobBroker | None:
    """The broker that stores tasks for *channel* as jobs, or ``None`` if it is not durable."""
    broker = job_broker_for(channel)
    if broker is not None and channel not in broker.queues:
        raise invalid_submission(
            name,
            f"queue: {shown(channel)} is not one of the queues of brokers.{broker.name} "
            f"({', '.join(sorted(broker.queues))}): no service would claim it",
        )
    return broker


def durability_unknown() -> bool:
    """Whether no config says which queues are durable, under :mod:`dispatcher.testing`.

    Its submissions are taken in-process, with no config needed: ``max_attempts`` is
    recorded, as it would be for the durable queue the task names in production.
    """
    if interception.current is None:
        return False
    try:
        get_settings()
    except NotConfiguredError:
        return True
    return False


def _default_channel(name: str) -> str:
    """The default queue of the broker tasks go through by default.

    Without a config, an installed interceptor's default queue, if it has one.
    """
    try:
        settings = get_settings()
    except NotConfiguredError:
        interceptor = interception.current
        if interceptor is None or interceptor.default_queue is None:
            raise
        return interceptor.default_queue
    try:
        broker = default_broker(settings)
    except PublishError as exc:
        raise invalid_submission(name, f"no channel to send it on: {exc}") from None
    if broker.default_queue is not None:
        return broker.default_queue
    raise invalid_submission(
        name,
        "no channel to send it on: pass queue=..., or give the task a queue with "
        f"@task(queue=...){no_default_queue(broker.name, settings.source)}",
    )


def no_default_queue(broker_name: str, source: str) -> str:
    """What the config *source* lacks for tasks to have a default queue.

    *broker_name* is the default broker's. The clause ends a message that first says what
    to pass instead: ``, or set ...`` or `` (...)``.
    """
    if broker_name == "pg_notify":
        return f", or set brokers.pg_notify.default_publish_channel in {source}"
    if broker_name == "pg_queue":
        return f" (brokers.pg_queue has a default only when it lists one queue, in {source})"
    return f" (brokers.{broker_name}, the default broker, names no default queue)"
