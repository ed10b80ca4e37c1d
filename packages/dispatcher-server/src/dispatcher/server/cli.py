"""``dispatcher-standalone``: run a dispatcher service from a config file.

Start-up is arranged for speed and shared memory: the garbage collector is off while the
modules are imported; the fork server is forked from this process as soon as the config is
read, with only what workers need imported by then (so that it and every worker share those
pages with this process); it imports the task modules while this process imports the
service's own machinery (anyio, the brokers). The service then waits for the fork server's
report on the task modules and refuses to start, before any broker listens, when they
cannot serve (see :mod:`dispatcher.server.task_imports`).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import stat
import sys
from collections.abc import Callable, Sequence
from typing import Any

from dispatcher.schema import LOG_FORMATS, LOG_LEVELS, LogFormat
from dispatcher.server.early_signals import held_stop_signals, stop_signals_allowed

EXIT_USAGE = 2

DISTRIBUTION = "dispatcher-server"
"""The distribution whose version ``--version`` prints."""


class _PrintVersion(argparse.Action):
    """``--version``: print the distribution's name and version, then exit 0.

    The version is looked up only when asked for, not at every start.
    """

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help=kwargs.get("help"))

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        from importlib.metadata import version

        print(f"{DISTRIBUTION} {version(DISTRIBUTION)}")
        parser.exit(0)


def parser() -> argparse.ArgumentParser:
    """The command line of ``dispatcher-standalone``."""
    from dispatcher.config.loading import CONFIG_FILE_HELP

    parser = argparse.ArgumentParser(
        prog="dispatcher-standalone",
        description="Run a dispatcher service: receive task messages over PostgreSQL "
        "NOTIFY and run them in worker processes. Stops gracefully on SIGTERM, SIGINT or "
        "SIGHUP (unless started with SIGHUP ignored, as by nohup).",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=CONFIG_FILE_HELP,
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=LOG_LEVELS,
        help="log level (default: INFO)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="how the log is written to standard error: text lines, or one JSON object "
        "per line (default: service.log_format in the config, else text)",
    )
    parser.add_argument(
        "--reload",
        action="store_true",
        help="restart the workers when a task module changes (for development)",
    )
    parser.add_argument(
        "--version",
        action=_PrintVersion,
        help="print the name and version of the installed dispatcher-server, and exit",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the service; return the process's exit status.

    SIGTERM and SIGINT that come before the service handles them (while it starts) stop it
    as they would later: exit status 0, no traceback (see
    :mod:`dispatcher.server.early_signals`).
    """
    options = parser().parse_args(argv)
    with held_stop_signals() as release:
        try:
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
    level = getattr(logging, options.log_level)
    collecting = gc.isenabled()
    gc.disable()
    try:
        from dispatcher.config import ConfigError, NotConfiguredError
        from dispatcher.server.forkserver import fork_server, worker_options
        from dispatcher.server.logformat import HeldRecords, service_formatter, with_log_format
        from dispatcher.server.logsafe import log_to
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
        forked = fork_server(worker_options(settings, level), settings)
    finally:
        if collecting:
            gc.enable()
    try:
        from dispatcher.server.brokers.base import BrokerNotReady
        from dispatcher.server.logsafe import lean_records
        from dispatcher.server.service import Service, run_in_event_loop

        try:
            service = Service(
                settings, level, fork_server=forked, reload=options.reload, freeze=True
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


def _load_settings(path: str | None) -> Any:
    """The config of *path* (else where :func:`~dispatcher.config.load_settings` looks).

    A file that is not a regular one (``/dev/stdin``, a named pipe) may never end: it is
    read with the stop signals let through, so that they can end the wait.
    """
    from dispatcher.config import load_settings
    from dispatcher.config.loading import read_limited, settings_from_file_data

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


def no_config_found() -> str:
    """What to do when no config file was named and ``./dispatcher.yml`` does not exist."""
    from dispatcher.config import (
        CONFIG_FILE_ENV,
        DEFAULT_CONFIG_FILE,
        DISPATCHERD_CONFIG_FILE_ENV,
    )

    return (
        f"no config file found: pass --config FILE, or set {CONFIG_FILE_ENV} (or "
        f"{DISPATCHERD_CONFIG_FILE_ENV}), or create {DEFAULT_CONFIG_FILE} in the working "
        f"directory ({os.getcwd()})"
    )


def entry_point() -> None:
    """Console-script entry point."""
    sys.exit(main())
