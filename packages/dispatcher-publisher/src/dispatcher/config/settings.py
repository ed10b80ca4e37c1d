"""The validated config as typed, read-only objects.

Every default here is also written in ``config.schema.json`` (for the docs); a test keeps
the two equal. The ``service`` section's objects are in
:mod:`~dispatcher.config.service_settings`; :mod:`~dispatcher.config.settings_building` makes
a :class:`Settings` of a validated document.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal

from dispatcher.config.security import Security
from dispatcher.config.service_settings import Service
from dispatcher.schema import OnDuplicate

BrokerName = str
"""The name of a broker, as a key of the config's ``brokers`` section: ``pg_notify``,
``socket`` or the name of an installed plug-in (see :mod:`dispatcher.config.plugins`)."""


def _empty_mapping() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True)
class PgNotifyBroker:
    """``brokers.pg_notify``: PostgreSQL LISTEN/NOTIFY."""

    conninfo: str
    channels: tuple[str, ...] = ()
    default_publish_channel: str | None = None
    connection_factory: str | None = None
    """``module.name`` of a function returning the connection publishers send tasks on."""
    async_connection_factory: str | None = None
    """The same for asyncio publishers (it may be a coroutine function)."""
    self_check_interval: float = 30
    self_check_timeout: float = 2
    transaction_pooler: bool = False
    """Whether the conninfo leads to a pooler in transaction mode: publishers prepare nothing."""
    allow_control: tuple[str, ...] | None = None
    """Control commands accepted over pg_notify; ``None`` means every command."""


@dataclass(frozen=True)
class SocketBroker:
    """``brokers.socket``: the local unix socket."""

    path: str
    allow_control: tuple[str, ...] | None = None
    """Control commands accepted over the socket; ``None`` means every command."""


@dataclass(frozen=True)
class PgQueueBroker:
    """``brokers.pg_queue``: durable queues, one table row per message."""

    conninfo: str
    """The database of the queue: as written, else ``brokers.pg_notify``'s conninfo."""
    queues: tuple[str, ...]
    """The durable queues; every other queue name is a NOTIFY channel."""
    schema: str = "dispatcher"
    """PostgreSQL schema of the queue's tables."""
    lease: float = 30
    """Seconds a claim holds a job without renewal."""
    poll_interval: float = 1.0
    """Seconds between looks at the table when no wake-up arrives."""
    max_attempts: int = 3
    """Starts of a job before it is left ``failed`` (a task's own value overrides it)."""
    retry_backoff: float = 1.0
    """Seconds before the first retry; doubled for each further one."""
    retry_backoff_max: float = 300
    """Longest wait before a retry, in seconds."""
    retry_jitter: float = 0.1
    """Fraction of a retry's wait added or taken away at random."""
    keep_finished: float = 604800
    """Seconds a finished job stays in the table."""
    batch_size: int = 100
    """Most jobs claimed or settled in one statement."""
    prefetch: int | Literal["auto"] = "auto"
    """Jobs claimed ahead of the free workers (leased to this service while they wait):
    that many, or (``auto``) as many as the pace of the recent jobs makes worth it."""
    transaction_pooler: bool = False
    """Whether the conninfo leads to a pooler in transaction mode: prepare and set nothing."""
    allow_control: tuple[str, ...] | None = None
    """Control commands accepted from the queue; ``None`` means every command."""


@dataclass(frozen=True)
class PluginBroker:
    """``brokers.<name>`` of a broker plug-in, checked against the plug-in's own schema."""

    name: str
    options: Mapping[str, Any] = field(default_factory=_empty_mapping)
    """The section as written, less the keys every broker takes (``allow_control``)."""
    allow_control: tuple[str, ...] | None = None
    """Control commands accepted over this broker; ``None`` means every command."""


@dataclass(frozen=True)
class Brokers:
    """``brokers``: each configured broker, ``None`` when absent."""

    pg_notify: PgNotifyBroker | None = None
    socket: SocketBroker | None = None
    pg_queue: PgQueueBroker | None = None
    plugins: Mapping[str, PluginBroker] = field(default_factory=_empty_mapping)
    """The sections of broker plug-ins, by broker name, in the order of the config."""

    @property
    def names(self) -> tuple[BrokerName, ...]:
        """The names of the configured brokers: the built-ins, then the plug-ins."""
        names: list[BrokerName] = []
        if self.pg_notify is not None:
            names.append("pg_notify")
        if self.socket is not None:
            names.append("socket")
        if self.pg_queue is not None:
            names.append("pg_queue")
        return (*names, *self.plugins)

    def allow_control(self, name: BrokerName) -> tuple[str, ...] | None:
        """The control commands allowed over the broker *name*; ``None`` means every one."""
        section: PgNotifyBroker | SocketBroker | PgQueueBroker | PluginBroker | None
        section = {
            "pg_notify": self.pg_notify,
            "socket": self.socket,
            "pg_queue": self.pg_queue,
        }.get(name)
        if section is None:
            section = self.plugins.get(name)
        return None if section is None else section.allow_control


@dataclass(frozen=True)
class Tasks:
    """``tasks``: where the tasks are defined."""

    modules: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskOptions:
    """Options of a task the service starts by itself (``producers.on_start`` entries)."""

    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=_empty_mapping)
    timeout: float | None = None
    delay: float | None = None
    on_duplicate: OnDuplicate | None = None


@dataclass(frozen=True)
class ScheduledTask(TaskOptions):
    """A ``producers.scheduled`` entry: a task run periodically."""

    schedule: float | str = 0
    """A period in seconds, or a cron expression (a string: see :attr:`is_cron`)."""
    timezone: str = "UTC"
    """The IANA time zone a cron :attr:`schedule` is read in."""

    @property
    def is_cron(self) -> bool:
        """Tell whether :attr:`schedule` is a cron expression rather than a period."""
        return isinstance(self.schedule, str)


@dataclass(frozen=True)
class Producers:
    """``producers``: sources of work inside the service."""

    scheduled: Mapping[str, ScheduledTask] = field(default_factory=_empty_mapping)
    on_start: Mapping[str, TaskOptions] = field(default_factory=_empty_mapping)
    control: bool = False


@dataclass(frozen=True)
class Worker:
    """``worker``: the worker subprocesses."""

    worker_class: str | None = None
    """``worker.class`` in the file."""
    idle_timeout: float | None = None
    max_memory: int | None = None
    """Bytes of resident memory past which a worker is killed (``memory_exceeded``)."""
    max_output_bytes: int = 65536
    """Bytes of each task's standard output and error kept for the log; the rest is counted."""


@dataclass(frozen=True)
class Publish:
    """``publish``: defaults of publishers and ``dispatcherctl``."""

    default_broker: BrokerName | None = None
    default_control_broker: BrokerName | None = None


@dataclass(frozen=True)
class Settings:
    """A whole, validated config."""

    source: str
    """Where it came from: a file name as given, or ``config`` for a dict (or what the
    caller of :func:`~dispatcher.config.setup` named it, such as ``settings.DISPATCHER``)."""
    data: Mapping[str, Any] = field(repr=False)
    """The config as a plain document in the version 1 layout (translated if it was older)."""
    brokers: Brokers = field(default_factory=Brokers)
    tasks: Tasks = field(default_factory=Tasks)
    service: Service = field(default_factory=Service)
    producers: Producers = field(default_factory=Producers)
    worker: Worker = field(default_factory=Worker)
    publish: Publish = field(default_factory=Publish)
    security: Security = field(default_factory=Security)
    version: int = 1
    warnings: tuple[str, ...] = ()
    """What loading noted without refusing the config, one ``location: note`` each: keys of
    dispatcherd's layout dropped for want of an equivalent, and the like (also logged)."""
    file: str | None = None
    """The file it was read from, as given (``None`` for a dict): what a command to run
    names with ``--config``."""

    def without_connection_factories(self) -> Settings:
        """Return the config with publishers on their own connections, not the application's."""
        pg = self.brokers.pg_notify
        if pg is None or (pg.connection_factory is None and pg.async_connection_factory is None):
            return self
        own = replace(pg, connection_factory=None, async_connection_factory=None)
        return replace(self, brokers=replace(self.brokers, pg_notify=own))


def dispatcherctl_command(command: str, config_file: str | None) -> str:
    """``dispatcherctl COMMAND``, with ``--config FILE`` when the config was read from a file.

    What an error message tells people to run; *config_file* is :attr:`Settings.file`.
    """
    if config_file is None:
        return f"dispatcherctl {command}"
    return f"dispatcherctl {command} --config {shlex.quote(config_file)}"
