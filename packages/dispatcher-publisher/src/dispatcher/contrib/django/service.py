"""Running the dispatcher service from a Django project (``manage.py rundispatcher``).

The service runs in this process, which Django has set up: its fork server is forked from
it (so it inherits the set-up project, shared with every worker) after Django's database
connections are closed. :mod:`dispatcher.contrib.django.worker` is imported first of the
task modules: it sets Django up where the fork server had to be started as a new program,
and keeps every worker from inheriting a database connection.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Final

from dispatcher.config import Settings
from dispatcher.contrib.django.connections import close_connections_and_pools
from dispatcher.schema import DispatcherError, LogFormat

WORKER_MODULE: Final = "dispatcher.contrib.django.worker"
"""Imported by the fork server before the task modules: Django set up, connections closed."""

WORKER_CLASS: Final = f"{WORKER_MODULE}.DjangoWorker"
"""The workers' hooks when the config names no ``worker.class``."""


class ServerMissing(DispatcherError, ImportError):
    """The ``dispatcher-server`` distribution, which runs the service, is not installed."""

    def __init__(self) -> None:
        super().__init__("the dispatcher service is not installed: pip install dispatcher-server")


def service_settings(settings: Settings) -> Settings:
    """*settings* with the Django worker module first in ``tasks.modules``.

    And :class:`~dispatcher.contrib.django.worker.DjangoWorker` as ``worker.class`` unless
    one is set. An empty ``tasks.modules`` stays empty (the service says what to do).
    """
    modules = settings.tasks.modules
    if modules:
        modules = (WORKER_MODULE, *(name for name in modules if name != WORKER_MODULE))
    worker = settings.worker
    if worker.worker_class is None:
        worker = dataclasses.replace(worker, worker_class=WORKER_CLASS)
    tasks = dataclasses.replace(settings.tasks, modules=modules)
    return dataclasses.replace(settings, tasks=tasks, worker=worker)


def missing_watchfiles() -> str | None:
    """What ``--reload`` lacks, in one line (watchfiles); ``None`` when nothing.

    :raises ServerMissing: when ``dispatcher-server`` is not installed.
    """
    try:
        from dispatcher.server.reload import missing_watchfiles as missing
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[:2] == ["dispatcher", "server"]:
            raise ServerMissing from None
        raise
    return missing()


def run(
    settings: Settings, log_level: int, reload: bool = False, log_format: LogFormat | None = None
) -> int:
    """Run the service configured by *settings* until SIGTERM, SIGINT or SIGHUP; its status.

    *reload*: restart the workers when a task module's source changes (as
    ``dispatcher-standalone --reload``). *log_format*: ``text`` or ``json`` (as
    ``dispatcher-standalone --log-format``); ``None``: ``service.log_format``.

    :raises ServerMissing: when ``dispatcher-server`` is not installed.
    :raises DispatcherError: when a broker cannot be built or started (``ConfigError``,
        ``BrokerNotReady``), or this host cannot run the service (``UnsupportedHost``: not
        Linux 5.3 or later).
    """
    try:
        from dispatcher.server.host import refuse_unsupported_host
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[:2] == ["dispatcher", "server"]:
            raise ServerMissing from None
        raise
    refuse_unsupported_host()  # (before the modules that would not import on another OS)
    try:
        from dispatcher.server.early_signals import held_stop_signals
        from dispatcher.server.forkserver import fork_server, worker_options
        from dispatcher.server.log_setup import log_to
        from dispatcher.server.logformat import service_formatter, with_log_format
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[:2] == ["dispatcher", "server"]:
            raise ServerMissing from None
        raise
    settings = with_log_format(service_settings(settings), log_format)
    log_to(sys.stderr, log_level, service_formatter(settings.service.log_format))
    close_connections_and_pools()  # neither the fork server nor the workers may share them
    forked = None
    # A stop signal while the service starts stops it once it is built: exit status 0.
    with held_stop_signals() as release:
        try:
            forked = fork_server(worker_options(settings, log_level), settings)
            import anyio

            from dispatcher.server.service import Service

            # (The command's process is the service's alone: it freezes what it holds.)
            service = Service(settings, log_level, fork_server=forked, reload=reload, freeze=True)
            release()
            return anyio.run(service.run, backend="asyncio")
        except KeyboardInterrupt:  # a signal before the service could install its handlers
            if forked is not None:
                forked.kill()  # no worker yet; it may be stuck importing the task modules
            return 0
        finally:
            if forked is not None:
                forked.close()  # if the service did not take it over and stop it already
