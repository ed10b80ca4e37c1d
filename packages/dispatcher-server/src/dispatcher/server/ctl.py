"""``dispatcherctl``: send control commands to running services and show their replies.

Its entry point: parse the command line (:mod:`~dispatcher.server.ctl_parser`), load the
config, and run the command in the module that does: :mod:`~dispatcher.server.ctl_control`
(control commands), :mod:`~dispatcher.server.ctl_submit`, :mod:`~dispatcher.server.ctl_jobs`
(durable jobs), :mod:`~dispatcher.server.ctl_migrate`,
:mod:`~dispatcher.server.ctl_install_sql`, :mod:`~dispatcher.server.ctl_top`. Its output goes
through :mod:`~dispatcher.server.ctl_output`.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
from collections.abc import Sequence

from dispatcher.config import ConfigError, NotConfiguredError, Settings, setup
from dispatcher.schema import sql_publisher, sql_queue_publisher
from dispatcher.server import ctl_control, ctl_jobs, ctl_submit
from dispatcher.server.ctl_exits import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from dispatcher.server.ctl_install_sql import install_sql
from dispatcher.server.ctl_migrate import migrate_command
from dispatcher.server.ctl_output import (
    STDERR_HANDLER,
    empty_json,
    log_to_stderr,
    output_in_one_write,
)
from dispatcher.server.ctl_parser import parse_command_line
from dispatcher.server.missing_config import no_config_found


def main(argv: Sequence[str] | None = None) -> int:
    """Run dispatcherctl; return its exit status (:data:`EXIT_INTERRUPTED` on Ctrl-C)."""
    root = logging.root
    level = root.level
    try:
        return _main(argv)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        root.removeHandler(STDERR_HANDLER)
        root.setLevel(level)


def _main(argv: Sequence[str] | None) -> int:
    options = parse_command_line(argv)
    log_to_stderr(options.log_level)
    if options.command == "top":
        return _top(options)
    with output_in_one_write(empty_json(options.command) if options.json else None):
        return _run(options)


def _run(options: argparse.Namespace) -> int:
    """Run the command of *options* (but ``top``); its exit status."""
    if options.command == "install-sql" and options.print:
        print(sql_publisher(), sql_queue_publisher(), sep="\n", end="")
        return EXIT_OK
    settings = _settings(options.config)
    if settings is None:
        return EXIT_USAGE
    if options.command == "install-sql":
        return install_sql(settings)
    if options.command == "migrate":
        return migrate_command(settings, options.print, options.timeout)
    if options.command == "submit":
        return ctl_submit.run(settings, options)
    if options.command in ctl_jobs.COMMANDS:
        return ctl_jobs.run(options, settings)
    return ctl_control.run(settings, options)


def _settings(config: str | None) -> Settings | None:
    """The config to use, or ``None`` once the reason it cannot be loaded was printed."""
    try:
        return setup(file_path=config)
    except NotConfiguredError:
        print(f"dispatcherctl: {no_config_found()}", file=sys.stderr)
    except ConfigError as exc:
        print(f"dispatcherctl: {exc}", file=sys.stderr)
    return None


def _top(options: argparse.Namespace) -> int:
    """``dispatcherctl top``: the view is ``ctl_top``'s."""
    from dispatcher.server import ctl_top

    settings = _settings(options.config)
    if settings is None:
        if options.json:
            print(empty_json("top"), end="")  # --json prints JSON, whatever the outcome
        return EXIT_USAGE
    return ctl_top.run(settings, options)


def entry_point() -> None:
    """Console-script entry point."""
    for stream in (sys.stdout, sys.stderr):
        # A character the terminal's encoding lacks (a reply may hold any) is shown escaped.
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    try:
        status = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # Nothing more can be shown; keep the interpreter's last flush from failing too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = EXIT_BROKEN_PIPE
    sys.exit(status)


if __name__ == "__main__":
    entry_point()
