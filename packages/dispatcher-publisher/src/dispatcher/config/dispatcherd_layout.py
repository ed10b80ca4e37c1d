"""Translation of dispatcherd's config layout (its ``version: 2``) into version 1.

dispatcherd's sections hold keyword arguments of its classes (``service.pool_kwargs``,
``brokers.pg_notify.config``, ``producers.ScheduledProducer``, ...). Each key with an
equivalent here is moved to it; :class:`~dispatcher.config.legacy.PathMap` maps the new
locations back, so that errors name the keys as the user wrote them. A key dispatcherd accepts
that has no equivalent here is dropped with a warning naming it; a key dispatcherd itself
would refuse (an unknown keyword argument) is an error, as it is there. The table of keys is
in the "dispatcherd config files" section of ``docs/config.md``.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from dispatcher.config.conninfo import conninfo_text_problem
from dispatcher.config.legacy import Path, PathMap
from dispatcher.schema import Problem

VERSION: Final = 2
"""The ``version`` of dispatcherd's current layout."""

DEFAULT_WORKER_CLASS: Final = "dispatcherd.worker.task.TaskWorker"
"""dispatcherd's own worker class: naming it is the same as naming none."""

PROCESS_MANAGERS: Final = ("ForkServerManager", "ProcessManager", "SpawnServerManager")
"""dispatcherd's process managers; the first, its default, is what the service does."""

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
_PRODUCERS: Final = ("ScheduledProducer", "OnStartProducer", "ControlProducer")

_POOL_MOVES: Final = {
    "min_workers": "min_workers",
    "max_workers": "max_workers",
    "scaledown_wait": "scaledown_wait",
    "worker_max_lifetime_seconds": "max_worker_lifetime",
}
_POOL_DROPPED: Final = {
    "scaledown_interval": "the pool is checked on every event and at least every second",
    "scaledown_reserve": "idle workers above min_workers stop after scaledown_wait",
    "worker_stop_wait": "see service.shutdown_grace and service.cancel_grace",
    "worker_removal_wait": "how long dispatcherd lists stopped workers",
    "results_read_timeout": "an internal wait of dispatcherd's pool",
}

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

_SCHEDULED_OPTIONS: Final = ("schedule", "args", "kwargs", "timeout", "on_duplicate")
_ON_START_OPTIONS: Final = ("args", "kwargs", "timeout", "delay", "on_duplicate")

_CHUNK_EXPIRY_MAX: Final = 31536000
"""The longest ``service.chunk_expiry``: what dispatcherd's "never expire" becomes."""


@dataclass
class Translation:
    """A dispatcherd config moved into the version 1 layout."""

    document: dict[str, Any]
    """The config in the version 1 layout, still to be validated."""
    paths: PathMap = field(default_factory=PathMap)
    """Where each moved part came from."""
    problems: list[Problem] = field(default_factory=list)
    """Errors found while translating, located as the user wrote them."""
    warnings: list[Problem] = field(default_factory=list)
    """Keys dropped for want of an equivalent (and other notes), located as written."""


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
        or set(_PRODUCERS).intersection(producers)
        or {"worker_cls", "worker_kwargs"}.intersection(worker)
    )


def translate(data: Mapping[str, Any]) -> Translation:
    """Move a config in dispatcherd's layout into the version 1 layout."""
    return _Translator(data).run()


def _mapping(value: Any) -> Mapping[Any, Any]:
    return value if isinstance(value, Mapping) else {}


def _unknown(key: Any, allowed: Iterable[str], what: str) -> str:
    names = sorted(allowed)
    close = difflib.get_close_matches(str(key), names, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"it takes: {', '.join(names)}"
    return f"unknown key: not an option of dispatcherd's {what} ({hint})"


class _Translator:
    """One translation: the document being built and what was found on the way."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = data
        self.out = Translation(document={"version": 1})

    def run(self) -> Translation:
        if "version" in self.data:
            self.put(("version",), ("version",), 1)
        else:
            self.warn((), "no 'version': read as dispatcherd's layout (version 2)")
        handlers = {
            "brokers": self.brokers,
            "service": self.service,
            "producers": self.producers,
            "worker": self.worker,
            "publish": self.publish,
        }
        for key, value in self.data.items():
            if key in handlers:
                handlers[key](value)
            elif key != "version" and key not in OUR_SECTIONS:
                self.warn((key,), "not a section of dispatcherd's layout; ignored, as it does")
        for key in OUR_SECTIONS:  # last: tasks.modules adds to the preloaded modules
            if key in self.data:
                self.our_section(key, self.data[key])
        return self.out

    # -- bookkeeping ------------------------------------------------------------------------

    def put(self, new: Path, old: Path, value: Any) -> None:
        """Write *value* at *new* in the document; errors found there name *old*."""
        target: dict[Any, Any] = self.out.document
        for key in new[:-1]:
            target = target.setdefault(key, {})
            if not isinstance(target, dict):
                return  # the parent was written as it is, not a mapping: validation says so
        target[new[-1]] = value
        self.out.paths.moves.append((new, old))

    def error(self, path: Path, reason: str) -> None:
        self.out.problems.append(Problem(path, reason))

    def warn(self, path: Path, reason: str) -> None:
        self.out.warnings.append(Problem(path, reason))

    def section(self, value: Any, new: Path, old: Path) -> Mapping[Any, Any] | None:
        """*value* when it is a mapping; else write it as it is, for validation to report.

        ``null`` (a YAML key with nothing under it) is an empty section, as dispatcherd
        reads it.
        """
        if isinstance(value, Mapping):
            return value
        if value is None:
            return {}
        self.put(new, old, value)
        return None

    def our_section(self, key: str, value: Any) -> None:
        """Read a section of our layout as written.

        ``tasks.modules`` joins the preloaded modules (``process_manager_kwargs``).
        """
        tasks = self.out.document.get("tasks")
        if key != "tasks" or not isinstance(tasks, dict) or not isinstance(value, Mapping):
            self.put((key,), (key,), value)
            return
        for name, item in value.items():
            modules = tasks.get("modules")
            if name == "modules" and isinstance(modules, list) and isinstance(item, list):
                for index, module in enumerate(item):
                    if module not in modules:
                        new = ("tasks", "modules", len(modules))
                        self.out.paths.moves.append((new, ("tasks", "modules", index)))
                        modules.append(module)
            else:
                self.put(("tasks", name), ("tasks", name), item)

    # -- brokers ----------------------------------------------------------------------------

    def brokers(self, value: Any) -> None:
        brokers = self.section(value, ("brokers",), ("brokers",))
        if brokers is None:
            return
        self.put(("brokers",), ("brokers",), {})
        for name, section in brokers.items():
            where = ("brokers", name)
            if name == "pg_notify":
                self.pg_notify(section)
            elif name == "socket":
                self.socket(section)
            elif isinstance(name, str) and name.startswith("dispatcherd.testing."):
                self.error(where, "dispatcherd's test brokers have no equivalent here")
            elif isinstance(name, str) and "." in name:
                self.error(
                    where,
                    "a broker module of dispatcherd has no equivalent here: the brokers are "
                    "pg_notify, socket, pg_queue and installed plug-ins",
                )
            else:
                self.put(where, where, section)

    def pg_notify(self, value: Any) -> None:
        old: Path = ("brokers", "pg_notify")
        section = self.section(value, old, old)
        if section is None:
            return
        self.put(old, old, {})
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
                self.connection_config(item)
            elif key in moves and isinstance(item, str) and item.lstrip().startswith("lambda"):
                self.warn(
                    where, "a lambda is not taken here: name a function (module.name); ignored"
                )
            elif key in moves:
                if item is not None and item not in _CONNECTION_SAVERS:
                    self.put((*old, moves[key]), where, item)
            elif key in connections:
                self.warn(
                    where,
                    "a connection object has no place in a config: the service and the "
                    "publishers connect with 'config' (or a connection factory); ignored",
                )
            elif key == "max_connection_idle_seconds":
                if item is None:
                    self.warn(
                        where,
                        "null (no self-check) has no equivalent: the connection is checked "
                        "after self_check_interval seconds (default 30) without traffic",
                    )
                else:
                    self.put((*old, "self_check_interval"), where, item)
            elif key == "max_self_check_message_age_seconds":
                if item is not None:
                    self.put((*old, "self_check_timeout"), where, item)
            else:
                self.error(where, _unknown(key, allowed, "pg_notify broker"))
        if "conninfo" not in self.out.document["brokers"]["pg_notify"]:
            # Validation finds no conninfo ("is required"): it is the config that is missing.
            self.out.paths.moves.append(((*old, "conninfo"), (*old, "config")))

    def connection_config(self, value: Any) -> None:
        """``brokers.pg_notify.config``: psycopg's ``connect()`` arguments, as one conninfo."""
        old: Path = ("brokers", "pg_notify", "config")
        new: Path = ("brokers", "pg_notify", "conninfo")
        if value is None or value in ("", {}):
            return  # reported by validation: the conninfo it gives is required
        if isinstance(value, str):
            self.put(new, old, value)
            return
        if not isinstance(value, Mapping):
            self.error(old, f"expected an object of libpq parameters, got {type(value).__name__}")
            return
        conninfo = value.get("conninfo", "")
        params: dict[str, Any] = {}
        for key, item in value.items():
            where = (*old, key)
            if key == "conninfo":
                if not isinstance(conninfo, str):
                    self.error(where, f"expected string, got {type(conninfo).__name__}")
                    return
                if (unreadable := conninfo_text_problem(conninfo)) is not None:
                    self.error(where, unreadable)
                    return
            elif key in _CONNECT_OPTIONS:
                self.warn(where, "a psycopg option with no equivalent; ignored")
            elif item is None:
                continue  # psycopg leaves out parameters given as None
            elif isinstance(item, bool) or not isinstance(item, str | int | float):
                self.error(where, f"expected string or number, got {type(item).__name__}")
            elif (unreadable := conninfo_text_problem(str(item))) is not None:
                self.error(where, unreadable)
                return
            elif not _is_libpq_parameter(str(key)):
                self.error(where, "unknown key: not a libpq connection parameter")
            else:
                params[str(key)] = item
        if not params:
            if conninfo:
                self.put(new, (*old, "conninfo"), conninfo)
            else:
                self.error(old, "no libpq parameters (such as conninfo, or host and dbname)")
            return
        joined = _join_conninfo(conninfo, params)
        if joined is None:
            self.error((*old, "conninfo"), "not a valid libpq connection string")
        else:
            self.put(new, old, joined)

    def socket(self, value: Any) -> None:
        old: Path = ("brokers", "socket")
        section = self.section(value, old, old)
        if section is None:
            return
        self.put(old, old, {})
        for key, item in section.items():
            if key == "socket_path":
                self.put((*old, "path"), (*old, key), item)
            else:
                self.error((*old, key), _unknown(key, ["socket_path"], "socket broker"))

    # -- service ----------------------------------------------------------------------------

    def service(self, value: Any) -> None:
        section = self.section(value, ("service",), ("service",))
        if section is None:
            return
        self.put(("service",), ("service",), {})
        for key, item in section.items():
            where = ("service", key)
            if key == "pool_kwargs":
                self.pool(item)
            elif key == "main_kwargs":
                self.main(item)
            elif key == "metrics_kwargs":
                self.metrics(item)
            elif key == "process_manager_cls":
                self.process_manager(item)
            elif key == "process_manager_kwargs":
                self.preload(item)
            elif key == "control":  # ours (cancel_without_filter): kept, as our sections are
                self.put(where, where, item)
            else:
                self.warn(where, "not a key of dispatcherd's service section; ignored, as it does")

    def pool(self, value: Any) -> None:
        old: Path = ("service", "pool_kwargs")
        section = self.section(value, ("service", "pool"), old)
        if section is None:
            return
        self.put(("service", "pool"), old, {})
        for key, item in section.items():
            where = (*old, key)
            if key in _POOL_MOVES:
                self.put(("service", "pool", _POOL_MOVES[key]), where, item)
            elif key in _POOL_DROPPED:
                self.warn(where, f"no equivalent ({_POOL_DROPPED[key]}); ignored")
            else:
                self.error(where, _unknown(key, [*_POOL_MOVES, *_POOL_DROPPED], "pool_kwargs"))

    def main(self, value: Any) -> None:
        old: Path = ("service", "main_kwargs")
        if value is None:
            return  # dispatcherd reads null as no options
        if not isinstance(value, Mapping):
            self.error(old, f"expected object or null, got {type(value).__name__}")
            return
        for key, item in value.items():
            where = (*old, key)
            if key == "node_id":
                if item is not None:
                    self.put(("service", "node_id"), where, item)
            elif key == "chunk_message_timeout_seconds":
                if isinstance(item, int | float) and not isinstance(item, bool) and item <= 0:
                    self.warn(
                        where,
                        "0 or less (never expire) has no equivalent: incomplete chunked "
                        f"messages expire after {_CHUNK_EXPIRY_MAX} seconds (one year)",
                    )
                    item = _CHUNK_EXPIRY_MAX
                self.put(("service", "chunk_expiry"), where, item)
            else:
                allowed = ["node_id", "chunk_message_timeout_seconds"]
                self.error(where, _unknown(key, allowed, "main_kwargs"))

    def metrics(self, value: Any) -> None:
        old: Path = ("service", "metrics_kwargs")
        if value is None:
            return  # null: no metrics server, as in dispatcherd
        section = self.section(value, ("service", "metrics"), old)
        if section is None:
            return
        self.put(("service", "metrics"), old, {})
        for key, item in section.items():
            where = (*old, key)
            if key in ("host", "port"):
                self.put(("service", "metrics", key), where, item)
            elif key == "log_level":
                self.warn(where, "an option of older dispatcherd releases with no equivalent")
            else:
                self.error(where, _unknown(key, ["host", "port"], "metrics_kwargs"))

    def process_manager(self, value: Any) -> None:
        where: Path = ("service", "process_manager_cls")
        if value is None or value == PROCESS_MANAGERS[0]:
            return  # workers are forked from a fork server here too
        if value in PROCESS_MANAGERS:
            self.warn(where, f"{value!r} has no equivalent: workers start from a fork server")
        else:
            choices = ", ".join(PROCESS_MANAGERS)
            self.error(where, f"not a dispatcherd process manager (expected one of {choices})")

    def preload(self, value: Any) -> None:
        old: Path = ("service", "process_manager_kwargs")
        if value is None:
            return
        if not isinstance(value, Mapping):
            self.error(old, f"expected object, got {type(value).__name__}")
            return
        for key, item in value.items():
            where = (*old, key)
            if key != "preload_modules":
                self.error(where, _unknown(key, ["preload_modules"], "process_manager_kwargs"))
            elif item is not None:
                modules = list(item) if isinstance(item, list | tuple) else item
                self.put(("tasks", "modules"), where, modules)

    # -- producers --------------------------------------------------------------------------

    def producers(self, value: Any) -> None:
        section = self.section(value, ("producers",), ("producers",))
        if section is None:
            return
        self.put(("producers",), ("producers",), {})
        for name, options in section.items():
            where = ("producers", name)
            if name == "ScheduledProducer":
                self.task_entries(options, name, "task_schedule", "scheduled", _SCHEDULED_OPTIONS)
            elif name == "OnStartProducer":
                self.task_entries(options, name, "task_list", "on_start", _ON_START_OPTIONS)
            elif name == "ControlProducer":
                if options is None or options == {}:
                    self.put(("producers", "control"), where, {})
                elif isinstance(options, Mapping):
                    for key in options:
                        self.error((*where, key), "unknown key: ControlProducer takes no options")
                else:
                    self.error(where, f"expected object or null, got {type(options).__name__}")
            else:
                choices = ", ".join(_PRODUCERS)
                self.error(where, f"not a producer of dispatcherd's config ({choices})")

    def task_entries(
        self, value: Any, producer: str, argument: str, ours: str, options: tuple[str, ...]
    ) -> None:
        """``ScheduledProducer.task_schedule`` or ``OnStartProducer.task_list``."""
        old: Path = ("producers", producer)
        if not isinstance(value, Mapping):
            self.error(old, f"expected object with {argument!r}, got {type(value).__name__}")
            return
        for key in value:
            if key != argument:
                self.error((*old, key), _unknown(key, [argument], producer))
        if argument not in value:
            self.error((*old, argument), "is required")
            return
        old = (*old, argument)
        new: Path = ("producers", ours)
        entries = self.section(value[argument], new, old)
        if entries is None:
            return
        self.put(new, old, {})
        for name, entry in entries.items():
            where = (*old, name)
            if isinstance(name, str) and name.lstrip().startswith("lambda"):
                self.warn(
                    where,
                    "a lambda never runs here (only registered tasks do): entry ignored; "
                    "register a function with @task and name it instead",
                )
                continue
            if not isinstance(entry, Mapping):
                self.put((*new, name), where, entry)
                continue
            self.put((*new, name), where, {})
            for key, item in entry.items():
                if key == "schedule" and isinstance(item, str):
                    item = self.seconds((*where, key), item)
                if key in options:
                    self.put((*new, name, key), (*where, key), item)
                elif key != "uuid":  # dispatcherd replaces it too
                    self.warn((*where, key), "a message key with no equivalent here; ignored")

    def seconds(self, where: Path, text: str) -> Any:
        """A ``schedule`` given as text: seconds, as dispatcherd reads it (``float()``).

        Here a text would be a cron expression; dispatcherd's schedules are periods only.
        """
        try:
            period = float(text)
        except ValueError:
            period = math.nan
        if not math.isfinite(period):
            self.error(where, "expected a number of seconds, got a string that is not a number")
            return text
        if period.is_integer() and abs(period) < 2**53:
            return int(period)
        return period

    # -- worker, publish --------------------------------------------------------------------

    def worker(self, value: Any) -> None:
        section = self.section(value, ("worker",), ("worker",))
        if section is None:
            return
        self.put(("worker",), ("worker",), {})
        for key, item in section.items():
            where = ("worker", key)
            if key == "worker_cls":
                if item is None or item == DEFAULT_WORKER_CLASS:
                    continue
                self.put(("worker", "class"), where, item)
                self.warn(
                    where,
                    "read as worker.class, which must subclass dispatcher.server.BaseWorker "
                    "(same hooks: on_start, pre_task, post_task, on_idle, on_shutdown); "
                    "else the service stops at start",
                )
            elif key == "worker_kwargs":
                self.worker_kwargs(item)
            else:
                self.warn(where, "not a key of dispatcherd's worker section; ignored, as it does")

    def worker_kwargs(self, value: Any) -> None:
        old: Path = ("worker", "worker_kwargs")
        if value is None:
            return
        if not isinstance(value, Mapping):
            self.error(old, f"expected object, got {type(value).__name__}")
            return
        for key, item in value.items():
            where = (*old, key)
            if key == "idle_timeout":
                if item is not None and item != 0:  # 0: never idle, as when absent
                    self.put(("worker", "idle_timeout"), where, item)
            else:
                self.warn(
                    where,
                    "no equivalent: a worker class here is given only its worker id; ignored",
                )

    def publish(self, value: Any) -> None:
        section = self.section(value, ("publish",), ("publish",))
        if section is None:
            return
        self.put(("publish",), ("publish",), {})
        for key, item in section.items():
            where = ("publish", key)
            if key in ("default_broker", "default_control_broker"):
                self.put(where, where, item)
            else:
                self.warn(where, "not a key of dispatcherd's publish section; ignored, as it does")


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
