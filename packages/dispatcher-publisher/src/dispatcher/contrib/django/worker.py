"""The Django side of the service's fork server and workers (loaded by ``rundispatcher``).

Importing this module sets Django up (``django.setup()``, from ``DJANGO_SETTINGS_MODULE``)
unless that is done already, so the task modules imported after it may use models. It also
makes the process that imports it (the fork server) close its Django database connections
and connection pools before each fork, so that no worker inherits one: each opens its own.

:class:`DjangoWorker`, the workers' hooks, gives tasks Django's request-like connection
handling: connections past ``CONN_MAX_AGE``, or left unusable by an error, are closed before
and after each task (a new one opens on the next query); a statement a task was stopped in
(its timeout, a cancel) is cancelled in the server (see :mod:`.connections`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import django
from django.apps import apps
from django.db import close_old_connections

from dispatcher.config.forking import at_fork
from dispatcher.contrib.django.connections import (
    close_connections_and_pools,
    settle_connections,
    settle_interrupted_queries,
)
from dispatcher.server.hooks import BaseWorker


def setup_django() -> None:
    """Set Django up in this process, unless it is already."""
    if not apps.ready:
        django.setup()


_forking_process = os.getpid()


def _close_connections_before_fork() -> None:
    # Only in the process that loaded this module (the fork server), not in the workers: a
    # task that forks must not lose the connection of its transaction.
    if os.getpid() == _forking_process:
        close_connections_and_pools()


setup_django()
at_fork(before=_close_connections_before_fork)


class DjangoWorker(BaseWorker):
    """Worker hooks for a Django project; subclass it for a ``worker.class`` of your own."""

    def pre_task(self, message: Mapping[str, Any]) -> None:
        """Close the connections that are too old or unusable before the task runs.

        And have each connection cancel in the server a statement the task is stopped in.
        """
        settle_interrupted_queries()
        close_old_connections()

    def post_task(self, outcome: Mapping[str, Any]) -> None:
        """Stop a statement the task left running; close the connections too old or unusable."""
        settle_connections()
        close_old_connections()

    def on_shutdown(self) -> None:
        """Close every connection of this worker, and its connection pools."""
        close_connections_and_pools()
