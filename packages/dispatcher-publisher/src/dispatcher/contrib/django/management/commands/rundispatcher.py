"""``python manage.py rundispatcher``: run the dispatcher service with the project's settings."""

from __future__ import annotations

import logging
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from dispatcher.config import (
    CONFIG_FILE_ENV,
    DEFAULT_CONFIG_FILE,
    NotConfiguredError,
    get_settings,
)
from dispatcher.schema import LOG_FORMATS, LOG_LEVELS, DispatcherError


class Command(BaseCommand):
    """Run the dispatcher service, its config from ``settings.DISPATCHER``."""

    help = (
        "Run the dispatcher service with this project's settings: the config of "
        "settings.DISPATCHER, the task modules of tasks.modules, Django set up in every "
        "worker. Stops gracefully on SIGTERM, SIGINT or SIGHUP. Needs dispatcher-server, on "
        "Linux 5.3 or later."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        """``--log-level``, ``--log-format``, ``--reload``."""
        parser.add_argument(
            "--log-level",
            default="INFO",
            type=str.upper,
            choices=LOG_LEVELS,
            help="log level of the service (default: INFO)",
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
            help="restart the workers when a task module changes (for development; needs "
            "dispatcher-server[reload])",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the service until it stops; fail with its exit status if that is not 0."""
        from dispatcher.contrib.django.service import ServerMissing, missing_watchfiles, run

        try:
            if options["reload"] and (missing := missing_watchfiles()) is not None:
                raise CommandError(missing, returncode=2)
            settings = get_settings()
            status = run(
                settings,
                getattr(logging, options["log_level"]),
                options["reload"],
                options["log_format"],
            )
        except ServerMissing as exc:
            raise CommandError(str(exc)) from None
        except NotConfiguredError:
            raise CommandError(
                "dispatcher is not configured: set DISPATCHER in the Django settings "
                f"(or ${CONFIG_FILE_ENV}, or create ./{DEFAULT_CONFIG_FILE})",
                returncode=2,
            ) from None
        except DispatcherError as exc:  # the config, or a broker that cannot start
            raise CommandError(str(exc), returncode=2) from None
        if status != 0:
            raise CommandError(
                f"the dispatcher service stopped with exit status {status}", returncode=status
            )
