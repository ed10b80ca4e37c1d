"""``dispatcher-standalone``: run a dispatcher service from a config file."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from dispatcher.config import ConfigError, load_settings
from dispatcher.schema import LOG_LEVELS
from dispatcher.server.brokers.base import BrokerNotReady
from dispatcher.server.logsafe import log_to
from dispatcher.server.service import run_service

EXIT_USAGE = 2


def parser() -> argparse.ArgumentParser:
    """The command line of ``dispatcher-standalone``."""
    parser = argparse.ArgumentParser(
        prog="dispatcher-standalone",
        description="Run a dispatcher service: receive task messages over PostgreSQL "
        "NOTIFY and run them in worker processes. Stops gracefully on SIGTERM or SIGINT.",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="config file (default: $DISPATCHER_CONFIG_FILE, else ./dispatcher.yml)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=LOG_LEVELS,
        help="log level (default: INFO)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the service; return the process's exit status."""
    options = parser().parse_args(argv)
    level = getattr(logging, options.log_level)
    log_to(sys.stderr, level, "%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(file_path=options.config)
    except ConfigError as exc:
        print(f"dispatcher-standalone: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return run_service(settings, level)
    except (ConfigError, BrokerNotReady) as exc:  # a broker cannot be built, or start
        print(f"dispatcher-standalone: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # a signal before the service could install its handlers
        return 0


def entry_point() -> None:
    """Console-script entry point."""
    sys.exit(main())
