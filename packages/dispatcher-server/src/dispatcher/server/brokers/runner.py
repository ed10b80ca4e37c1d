"""Running one broker inside the service: a broker that fails is run again, never lost.

A broker's ``run()`` that raises (or returns) while the service runs is logged at ERROR and
run again after a pause that grows while it keeps failing (0.1 s, doubling up to 30 s, as
for a database that is down; from 0.1 s again once a run lasted 5 s): the service never
goes on deaf to one of its brokers. A broker that refuses to start (:class:`StartRefused`:
a socket path another service holds, say) stops the service's start, or, when it refuses
on a later run, the service itself, with exit status 2: waiting cannot cure it.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable

import anyio
from anyio.abc import TaskStatus

from dispatcher.server.backoff import FIRST_RETRY, HEALTHY_AFTER, MAX_RETRY, Backoff
from dispatcher.server.brokers.base import Broker, Deliver, StartRefused
from dispatcher.server.log_arguments import Block
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_text import first_line
from dispatcher.server.resources import shortage_text
from dispatcher.server.stats import BrokerHealth

logger = get_logger("dispatcher.brokers")


class _Started:
    """Passes ``started()`` on once, and remembers whether it was.

    Each call (each run's) says that the broker serves (again).
    """

    def __init__(self, task_status: TaskStatus[None], health: BrokerHealth | None) -> None:
        self._task_status = task_status
        self._health = health
        self.done = False

    def started(self, value: None = None) -> None:
        if self._health is not None:
            self._health.serving()
        if not self.done:
            self.done = True
            self._task_status.started()


def refusal_in(exc: BaseException) -> StartRefused | None:
    """The :class:`StartRefused` *exc* is, or the first one its group (a task group's) holds."""
    if isinstance(exc, StartRefused):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = refusal_in(inner)
            if found is not None:
                return found
    return None


def failure_text(exc: BaseException) -> str:
    """What ended a broker, in a line: for a group of errors, each of its own (once)."""
    if isinstance(exc, BaseExceptionGroup):
        reasons = dict.fromkeys(failure_text(inner) for inner in exc.exceptions)
        return "; ".join(reasons)
    return shortage_text(exc) or first_line(exc)


async def run_broker(
    broker: Broker,
    deliver: Deliver,
    *,
    on_refused: Callable[[StartRefused], None] | None = None,
    stopping: anyio.Event | None = None,
    health: BrokerHealth | None = None,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run *broker* until cancelled, running it again whenever it fails (see the module).

    The service's start waits for the broker to say it started, or to fail a first time
    (it then goes on starting while the broker is tried again), but for
    :class:`StartRefused` before that, which reaches the service's start. A refusal on a
    later run is handed to *on_refused* (the service stops); without one, it is logged and
    the broker is not run again. Once *stopping* is set, a broker that ends is not run again.
    Its failures, and its starts, are told to *health*.
    """
    started = _Started(task_status, health)
    backoff = Backoff(initial=FIRST_RETRY, maximum=MAX_RETRY)
    while True:
        began = time.monotonic()
        try:
            await broker.run(deliver, task_status=started)
            reason = "its run() returned"
        except StartRefused as refused:
            if not started.done:
                raise  # before the start: the service does not start, and says why
            _refused(broker, refused, on_refused)
            return
        except Exception as exc:  # never the service: the broker is run again
            refusal = refusal_in(exc)
            if refusal is not None:  # from one of the broker's own tasks
                if not started.done:
                    raise refusal from None
                _refused(broker, refusal, on_refused)
                return
            reason = failure_text(exc)
            logger.debug(
                "the %s broker failed:%s",
                broker.name,
                Block("".join(traceback.format_exception(exc))),
            )
        what = "the %s broker stopped" if started.done else "cannot start the %s broker"
        if not started.done:
            started.started()  # (a broker that failed does not hold the service's start)
        if health is not None and not (stopping is not None and stopping.is_set()):
            health.failed(reason)
        if stopping is not None and stopping.is_set():
            logger.info("the %s broker ended while the service stops: %s", broker.name, reason)
            return
        if time.monotonic() - began >= HEALTHY_AFTER:
            backoff.reset()
        delay = backoff.next_delay()
        logger.error(what + ": %s; starting it again in %.1f s", broker.name, reason, delay)
        await anyio.sleep(delay)


def _refused(
    broker: Broker, refused: StartRefused, on_refused: Callable[[StartRefused], None] | None
) -> None:
    if on_refused is not None:
        on_refused(refused)
    else:
        logger.error("the %s broker stopped: it cannot go on: %s", broker.name, refused)
