"""A service run in an asyncio event loop of its own, the main thread's.

:func:`run_service` (an application's), :func:`run_in_event_loop` (``dispatcher-standalone``'s).
"""

from __future__ import annotations

import logging

import anyio

from dispatcher.config import Settings
from dispatcher.server.host import refuse_unsupported_host
from dispatcher.server.resources import shortage_text
from dispatcher.server.run_place import check_main_thread, check_no_loop_runs
from dispatcher.server.service import Service


def run_service(settings: Settings | None = None, log_level: int = logging.INFO) -> int:
    """Run a service from *settings* (default: the config in force) until it is stopped.

    Blocks; stops gracefully on SIGTERM, SIGINT or SIGHUP. Returns the exit status: 0 after a
    graceful stop; 2 when ``tasks.modules`` is empty, or when a broker or the metrics
    server cannot start (the metrics port or the socket broker's path taken, say); 3 when
    the task modules cannot be imported, register no task, or do not register a task named
    in ``producers`` (the service then refuses to start, before any broker listens, and
    logs why).

    Call it from the main thread, where no event loop runs: it runs an asyncio loop of its
    own, and handles the stop signals. Inside a running asyncio loop, ``await
    Service(settings).run()`` instead. Once it returns, the process's logging and its
    handlers of the stop signals are as they were.

    :raises UnsupportedHost: this host cannot run the service (not Linux 5.3 or later, or
        ``pidfd_open`` or ``pidfd_send_signal`` blocked): it would run without workers.
    :raises CannotRunHere: called from another thread, or inside a running event loop.
    :raises BrokerNotReady: when a broker cannot be built (a ``pg_queue`` broker whose
        tables are missing: see ``dispatcherctl migrate``).
    :raises ConfigError: when the config cannot serve (a cron schedule without croniter;
        ``$DISPATCHER_NODE_ID``, read without ``service.node_id``, not a valid node id).
    """
    refuse_unsupported_host()  # (the commands check before this; an application may not)
    check_main_thread("run_service()")
    check_no_loop_runs()
    if settings is None:
        from dispatcher.config import get_settings

        settings = get_settings()
    return run_in_event_loop(Service(settings, log_level))


def run_in_event_loop(service: Service) -> int:
    """Run *service* in an asyncio event loop of its own until it ends; its exit status.

    Closing the loop starts a thread (to shut its default executor down): when none can
    start (the process limit reached), the service's exit status stands all the same (the
    executor's threads, if any, end with the process).
    """
    status: list[int] = []

    async def run() -> None:
        status.append(await service.run())

    try:
        anyio.run(run, backend="asyncio")
    except RuntimeError as exc:
        if not status or shortage_text(exc) is None:
            raise
    return status[0]
