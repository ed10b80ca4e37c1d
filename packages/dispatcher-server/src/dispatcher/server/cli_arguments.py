"""The command line of ``dispatcher-standalone`` (see :mod:`dispatcher.server.cli`).

Apart from the command itself, so that the command holds the stop signals before this
module's imports (``argparse``, ``dispatcher.schema``) take their time.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from dispatcher.schema import LOG_FORMATS, LOG_LEVELS
from dispatcher.server.release import DISTRIBUTION, installed_version


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
        print(f"{DISTRIBUTION} {installed_version()}")
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
