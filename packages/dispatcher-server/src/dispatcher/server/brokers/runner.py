"""Running one broker inside the service: its failure ends that broker only."""

from __future__ import annotations

import traceback

import anyio
from anyio.abc import TaskStatus

from dispatcher.server.brokers.base import Broker, Deliver, StartRefused
from dispatcher.server.logsafe import Block, first_line, get_logger

logger = get_logger("dispatcher.brokers")


class _Started:
    """Passes ``started()`` on once, and remembers whether it was."""

    def __init__(self, task_status: TaskStatus[None]) -> None:
        self._task_status = task_status
        self.done = False

    def started(self, value: None = None) -> None:
        if not self.done:
            self.done = True
            self._task_status.started()


async def run_broker(
    broker: Broker,
    deliver: Deliver,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run *broker* until cancelled; log (and outlive) its failure.

    The service's start waits for the broker to say it started; a broker that fails before
    that is logged and the service goes on without it, but for :class:`StartRefused`, which
    reaches the service's start.
    """
    started = _Started(task_status)
    try:
        await broker.run(deliver, task_status=started)
    except StartRefused:
        if not started.done:
            raise  # before the start: the service does not start, and says why
        logger.error("the %s broker stopped: it refused to go on", broker.name)
    except Exception as exc:  # a broken broker must not stop the service
        reason = first_line(exc)
        if started.done:
            logger.error("the %s broker stopped: %s", broker.name, reason)
        else:
            logger.error("cannot start the %s broker: %s", broker.name, reason)
        logger.debug(
            "the %s broker failed:%s", broker.name, Block("".join(traceback.format_exception(exc)))
        )
    started.started()  # (a broker that returned, or failed, does not hold the service's start)
