"""What stops a service, and the exit status it ends with.

A service stops when asked (:meth:`ServiceStop.stop`), on a stop signal (a second one kills
the workers and exits at once), or when a part cannot go on (a broker or the metrics server
that refuses to start, workers that cannot import the task modules): the first reason
given sets the exit status.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import anyio

from dispatcher.schema.log_fields import EVENT, NODE
from dispatcher.server.brokers.base import StartRefused
from dispatcher.server.exit_statuses import EXIT_CONFIG, EXIT_FORCED, EXIT_OK
from dispatcher.server.log_arguments import Excerpt
from dispatcher.server.log_handler import flush_logs
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_text import MAX_REASON_CHARS

logger = get_logger("dispatcher.service")


class ServiceStop:
    """The stop of the service named *node_id*."""

    def __init__(self, node_id: str) -> None:
        self.asked = anyio.Event()
        """Set once the service begins to stop."""
        self.exit_status = EXIT_OK
        self.kill: list[Callable[[], None]] = []
        """What a forced exit calls first: it kills the workers, the adopted orphans."""
        self._node_id = node_id

    def fields(self, event: str) -> dict[str, object]:
        """The attributes of a log record about the service's life: *event*, its node id."""
        return {EVENT: event, NODE: self._node_id}

    def stop(self) -> None:
        """Begin a graceful shutdown."""
        self.asked.set()

    async def cancel_on_stop(self, scope: anyio.CancelScope) -> None:
        """Cancel *scope* once the service begins to stop."""
        await self.asked.wait()
        scope.cancel()

    def on_signal(self, number: signal.Signals) -> None:
        """A stop signal came: begin to stop; the second time, kill the workers and exit."""
        if not self.asked.is_set():
            logger.info(
                "received %s: shutting down",
                signal.Signals(number).name,
                extra=self.fields("service_stopping"),
            )
            self.asked.set()
        else:
            logger.warning("received %s again: forcing exit now", signal.Signals(number).name)
            for kill in self.kill:
                kill()
            flush_logs()  # (bounded: the reader may be the reason it is stuck)
            os._exit(EXIT_FORCED)

    def refused_at_start(self, refused: StartRefused) -> None:
        """A broker or the metrics server refuses to start: stop, with exit status 2."""
        logger.critical("cannot start: %s", _whole(refused))
        self.exit_status = EXIT_CONFIG
        self.asked.set()

    def refused(self, refused: StartRefused) -> None:
        """A broker or the metrics server refuses to start late: stop, with exit status 2.

        A broker run again after a failure, or the metrics server once a thread could
        start. (Waiting cannot cure it, e.g. another service now holds the socket's path: an
        orchestrator that sees the service end can tell.)
        """
        if self.exit_status == EXIT_OK:
            logger.critical("cannot go on, stopping: %s", _whole(refused))
            self.exit_status = EXIT_CONFIG
        self.asked.set()


def _whole(refused: StartRefused) -> Excerpt:
    """*refused* as its line shows it: whole, escaped all the same.

    Not cut at one value's length: it names paths, settings and what to do after them.
    """
    return Excerpt(refused, MAX_REASON_CHARS)
