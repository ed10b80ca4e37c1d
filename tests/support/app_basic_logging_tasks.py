"""A task module that sets the application's logging up with ``basicConfig()`` when imported.

The simplest set-up an application makes: a handler on the root logger, to standard error,
in the app's own format. Under ``dispatcher-standalone`` it must be kept, as a ``dictConfig``
is (:mod:`support.app_logging_tasks`); so must it as the module of ``worker.class``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

from dispatcher.publish import task
from dispatcher.server import BaseWorker

BASIC_FORMAT: Final = "APPFMT %(levelname)s %(name)s: %(message)s"

logging.basicConfig(format=BASIC_FORMAT)


@task()
def log_a_warning(text: str) -> None:
    """Log *text* at WARNING through a logger of the app's."""
    logging.getLogger("myapp.basic").warning("basic: %s", text)


class BasicConfigWorker(BaseWorker):
    """Worker hooks, for ``worker.class`` with task modules that set no logging up.

    This module is then imported in the worker alone, whose root logger has the service's
    handler when the ``basicConfig()`` above runs.
    """

    def pre_task(self, message: Mapping[str, Any]) -> None:
        """Log the task about to run, through a logger of the app's."""
        logging.getLogger("myapp.hooks").warning("before %s", message.get("task"))
