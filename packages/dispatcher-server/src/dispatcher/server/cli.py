"""``dispatcher-standalone``: run a dispatcher service from a config file.

Start-up is arranged for speed and shared memory: the garbage collector is off while the
modules are imported; the fork server is forked from this process as soon as the config is
read, with only what workers need imported by then (so that it and every worker share those
pages with this process); it imports the task modules while this process imports the
service's own machinery (anyio, the brokers). The service then waits for the fork server's
report on the task modules and refuses to start, before any broker listens, when they
cannot serve (see :mod:`dispatcher.server.task_imports`).

The stop signals are held from the command's first lines, before those imports (see
:mod:`dispatcher.server.early_signals`): one sent as the process starts is acted on once the
service is built, rather than killing it (or, for PID 1 of a container, being ignored).
"""

from __future__ import annotations

import gc
import os
import stat
import sys
from typing import TYPE_CHECKING, Any, Final

from dispatcher.server.early_signals import (
    held_stop_signals,
    stop_if_signalled,
    stop_signals_allowed,
)

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence

    from dispatcher.schema import LogFormat, SchemaName

EXIT_USAGE = 2

SERVICE_VALIDATORS: Final[tuple[SchemaName, ...]] = (
    "task-message",
    "chunk-envelope",
    "control-message",
)
"""The schemas the service checks what it receives against (its intake, its control
messages): compiled before the fork server is forked (see :func:`compile_validators`)."""


def parser() -> argparse.ArgumentParser:
    """The command line of ``dispatcher-standalone``."""
    from dispatcher.server.cli_arguments import parser as command_line

    return command_line()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the service; return the process's exit status.

    SIGTERM and SIGINT that come before the service handles them (while it starts) stop it
    as they would later: exit status 0, no traceback (see
    :mod:`dispatcher.server.early_signals`).
    """
    with held_stop_signals() as release:  # first: the modules take a while to import
        try:
            options = parser().parse_args(argv)
            from dispatcher.server.host import unsupported_host

            why = unsupported_host()
            if why is not None:
                print(f"dispatcher-standalone: {why}", file=sys.stderr)
                return EXIT_USAGE
            stop_if_signalled()
            return _run(options, release)
        except KeyboardInterrupt:
            return 0


def _run(options: argparse.Namespace, release: Callable[[], None]) -> int:
    """Load the config, fork the fork server, run the service; the exit status.

    *release* lets the stop signals held while the service starts act: it is called once
    the service is built, before it runs.
    """
    if options.reload:
        from dispatcher.server.reload import missing_watchfiles

        missing = missing_watchfiles()
        if missing is not None:
            print(f"dispatcher-standalone: {missing}", file=sys.stderr)
            return EXIT_USAGE
    import logging

    level = getattr(logging, options.log_level)
    collecting = gc.isenabled()
    gc.disable()
    try:
        from dispatcher.config import ConfigError, NotConfiguredError
        from dispatcher.server.forkserver import fork_server, worker_options
        from dispatcher.server.log_setup import log_to
        from dispatcher.server.logformat import HeldRecords, service_formatter, with_log_format
        from dispatcher.server.task_imports import missing_modules

        # Until the config says the format (reading it may log), records wait for it; a
        # format given on the command line is the log's from the start.
        held: HeldRecords | None = None
        if options.log_format is None:
            held = HeldRecords.hold(level)
        else:
            log_to(sys.stderr, level, service_formatter(options.log_format))

        def start_logging(log_format: LogFormat) -> None:
            if held is not None:
                held.stop_holding()  # (else log_to would take it for the application's)
            log_to(sys.stderr, level, service_formatter(log_format))
            if held is not None:
                held.replay()

        try:
            settings = with_log_format(_load_settings(options.config), options.log_format)
        except NotConfiguredError:
            from dispatcher.server.missing_config import no_config_found

            start_logging(options.log_format or "text")
            print(f"dispatcher-standalone: {no_config_found()}", file=sys.stderr)
            return EXIT_USAGE
        except ConfigError as exc:
            start_logging(options.log_format or "text")
            print(f"dispatcher-standalone: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except BaseException:
            start_logging(options.log_format or "text")
            raise
        start_logging(settings.service.log_format)
        missing = missing_modules(settings.tasks.modules, settings.source)
        if missing is not None:
            print(f"dispatcher-standalone: {missing}", file=sys.stderr)
            return EXIT_USAGE
        stop_if_signalled()  # (before the fork, and the imports of the service's machinery)
        compile_validators()
        forked = fork_server(worker_options(settings, level), settings)
    finally:
        if collecting:
            gc.enable()
    try:
        from dispatcher.server.brokers.base import BrokerNotReady
        from dispatcher.server.log_setup import lean_records
        from dispatcher.server.service import Service
        from dispatcher.server.service_loop import run_in_event_loop

        try:
            service = Service(
                settings,
                level,
                fork_server=forked,
                reload=options.reload,
                freeze=True,
                adopt_orphans=True,
            )
            release()
            with lean_records():  # (this process runs no task code, and shows no caller)
                return run_in_event_loop(service)
        except (ConfigError, BrokerNotReady) as exc:  # a broker cannot be built, or start
            print(f"dispatcher-standalone: {exc}", file=sys.stderr)
            return EXIT_USAGE
    except KeyboardInterrupt:  # a signal before the service could install its handlers
        if forked is not None:
            forked.kill()  # no worker yet; it may be stuck importing the task modules
        return 0
    finally:
        if forked is not None:
            forked.close()  # if the service did not take it over and stop it already


def compile_validators() -> None:
    """Compile the validators of :data:`SERVICE_VALIDATORS`, before the fork server is forked.

    Compiled here, each exists once, in memory this process shares with the fork server and
    its workers (the fork server checks task names against ``task-message`` as the task
    modules register their tasks). Compiled after the fork, the service and the fork server
    would each compile it, and the compiler's work would copy pages they share: about
    1 MiB more for an idle service of 4 workers (``benchmarks/footprint.py``).
    """
    from dispatcher.schema import validator

    for name in SERVICE_VALIDATORS:
        validator(name)


def _load_settings(path: str | None) -> Any:
    """The config of *path* (else where :func:`~dispatcher.config.load_settings` looks).

    A file that is not a regular one (``/dev/stdin``, a named pipe) may never end: it is
    read with the stop signals let through, so that they can end the wait.
    """
    from dispatcher.config import load_settings
    from dispatcher.config.loading import settings_from_file_data
    from dispatcher.config.yaml_reading import read_limited

    if path is None or _is_regular_file(path):
        return load_settings(file_path=path)
    try:
        with stop_signals_allowed(), open(path, "rb") as stream:
            data = read_limited(stream, path)
    except OSError:
        return load_settings(file_path=path)  # which says what is wrong, naming the file
    return settings_from_file_data(path, data)


def _is_regular_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return True  # let the loader say what is wrong


def entry_point() -> None:
    """Console-script entry point."""
    sys.exit(main())
