"""Work the service starts by itself: ``producers.scheduled`` and ``producers.on_start``."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

import anyio

from dispatcher.config import ScheduledTask, TaskOptions
from dispatcher.server.backoff import FIRST_RETRY, MAX_RETRY, Backoff
from dispatcher.server.brokers.base import TICK_OFFER_WINDOW, OncePerTick
from dispatcher.server.catalogue import TaskCatalogue
from dispatcher.server.intake import Intake
from dispatcher.server.log_arguments import Excerpt
from dispatcher.server.log_records import get_logger
from dispatcher.server.log_text import MAX_REASON_CHARS
from dispatcher.server.ratelimit import RateLimitedLog
from dispatcher.server.rejection import Rejected
from dispatcher.server.timetables import ScheduleBoard, Timetable

logger = get_logger("dispatcher.producers")

TICK_ATTEMPT_LIMIT: Final = 10.0
"""Seconds one attempt to store a durable schedule's tick may take before it is made again
(on a new connection): a database that froze, or a connection cut without a word, holds
the tick no longer than that."""

WALL_CLOCK_CHECK: Final = 10.0
"""Seconds a wait for a time of the wall clock sleeps at most before it reads the clock
again. Sleeps follow the monotonic clock, which a step of the wall clock (an NTP step, a
virtual machine resumed after a pause) does not move: a run is at most that late after a
step forwards, never late by the step's length."""


def give_up_time(timetable: Timetable, due: float) -> float:
    """When the tick due at *due* stops being offered (seconds since the epoch).

    When its successor is due, or :data:`~dispatcher.server.brokers.base.TICK_OFFER_WINDOW`
    after its time, whichever comes first: long before a broker forgets the tick (and
    would store it again).
    """
    return min(timetable.following(due), due + TICK_OFFER_WINDOW)


def _message(task: str, options: TaskOptions) -> dict[str, Any]:
    message: dict[str, Any] = {"task": task, "args": list(options.args)}
    message["kwargs"] = dict(options.kwargs)
    for key in ("timeout", "delay", "on_duplicate"):
        value = getattr(options, key)
        if value is not None:
            message[key] = value
    return message


def _submit(intake: Intake, section: str, task: str, options: TaskOptions) -> None:
    try:
        intake.submit(_message(task, options), section)
    except Rejected as rejected:
        shown = Excerpt(rejected, MAX_REASON_CHARS)
        logger.error("producers.%s[%r]: task refused: %s", section, task, shown)
    except Exception:  # a producer must outlive any one submission
        logger.exception("producers.%s[%r]: submission failed", section, task)


def start_on_start_tasks(intake: Intake, entries: Mapping[str, TaskOptions]) -> None:
    """Submit each ``producers.on_start`` entry once (when the workers are ready)."""
    for task, options in entries.items():
        _submit(intake, "on_start", task, options)


class DurableRoutes:
    """Which scheduled tasks go to a durable queue.

    Known once the first worker reports the registered tasks and their queues.
    """

    def __init__(self, catalogue: TaskCatalogue, brokers: Sequence[object]) -> None:
        self._catalogue = catalogue
        self._sinks = [broker for broker in brokers if isinstance(broker, OncePerTick)]
        self._known = anyio.Event()
        catalogue.on_known(lambda names: self._known.set())

    async def route(self, task: str) -> tuple[OncePerTick, str] | None:
        """The broker and queue that store *task* once per tick, or ``None`` (run here)."""
        if not self._sinks:
            return None
        await self._known.wait()
        queue = self._catalogue.queues.get(task)
        for sink in self._sinks:
            if queue is not None and queue in sink.queues:
                return sink, queue
        return None

    def max_attempts(self, task: str) -> int | None:
        """The ``max_attempts`` *task* was registered with (``None``: the queue's)."""
        return self._catalogue.max_attempts.get(task)


async def run_schedule(
    intake: Intake,
    task: str,
    entry: ScheduledTask,
    board: ScheduleBoard,
    routes: DurableRoutes | None = None,
) -> None:
    """Submit *task* on its schedule (the *board* says when, and hears when it runs next).

    Every ``entry.schedule`` seconds, the first time one period from now: runs stay on the
    grid ``start + n * period``; a late wake-up does not shift later runs, and periods
    missed entirely (a stalled service) are skipped, not made up. A cron schedule runs at
    the wall-clock times it names; runs missed (a stalled or stopped service) are skipped,
    not made up. A task whose queue is durable (see :class:`DurableRoutes`) is stored in
    its queue instead, once per tick across every service (see :func:`run_once_per_tick`).
    """
    start = time.monotonic()
    period = None if isinstance(entry.schedule, str) else entry.schedule
    if period is None:
        board.expect(task, board.timetable(task).next_after(time.time()))
    else:  # run here, or on a durable queue's grid once its route is known
        board.expect_monotonic(task, start + period)
    route = None if routes is None else await routes.route(task)
    if route is not None and routes is not None:
        await run_once_per_tick(route[0], route[1], task, entry, board, routes.max_attempts)
        return
    if period is not None:
        await _run_every(intake, task, entry, period, start, board)
        return

    async def submit_here(due: float) -> None:
        _submit(intake, "scheduled", task, entry)

    await _run_on_wall_clock(task, board, submit_here)


async def _run_every(
    intake: Intake,
    task: str,
    entry: ScheduledTask,
    period: float,
    start: float,
    board: ScheduleBoard,
) -> None:
    """Submit *task* at ``start + n * period`` (monotonic clock), skipping missed periods."""
    runs = 1
    while True:
        due = start + runs * period
        board.expect_monotonic(task, due)
        await anyio.sleep(max(0.0, due - time.monotonic()))
        _submit(intake, "scheduled", task, entry)
        runs = max(runs + 1, int((time.monotonic() - start) // period) + 1)


async def run_once_per_tick(
    sink: OncePerTick,
    queue: str,
    task: str,
    entry: ScheduledTask,
    board: ScheduleBoard,
    max_attempts: Callable[[str], int | None] = lambda task: None,
) -> None:
    """Store *task* in the durable *queue* at every tick, once across every service.

    Ticks are on the wall clock, the same for every host: a period's multiples since the
    epoch, or a cron expression's times; a tick's number is its time (see
    ``timetables.time_tick``), and an interval's tick is also recorded under the number
    older releases gave it (the multiple's), which they check. Each service offers each tick when it
    comes, and the database keeps the first offer only. Ticks missed (a stalled service)
    are skipped, not made up.

    A tick is offered until it is stored (by this service or another) or given up (see
    :func:`give_up_time`: when its successor is due, at most half an hour after its time):
    an offer that fails (a connection found cut, the database away) is made again, after a
    growing delay (0.1 s, doubling, up to 30 s), each attempt within
    :data:`TICK_ATTEMPT_LIMIT` so that a database that stopped answering holds no attempt
    for long; storing a tick twice is harmless (the database keeps the first). Whether
    the tick is given up is decided on this service's clock, before each attempt: none
    starts after that time, so a tick is stored at most one attempt after it (the
    database's clock, which may differ, is not asked).
    """
    logger.info(
        "producers.scheduled[%r]: stored in durable queue %s, once per tick across services",
        task,
        queue,
    )
    failures = RateLimitedLog(logger, logging.WARNING)
    timetable = board.timetable(task)
    # A plug-in written before ``former`` existed is called without it (its ticks are then
    # recorded under their number only).
    options = {"former"} if _takes_keyword(sink.submit_tick, "former") else set()

    async def offer(due: float) -> None:
        tick = timetable.tick(due)
        extra = {"former": timetable.former_ticks(due)} if options else {}
        give_up = give_up_time(timetable, due)
        message = _message(task, entry)
        backoff = Backoff(initial=FIRST_RETRY, maximum=MAX_RETRY)
        while time.time() < give_up:
            try:
                with anyio.fail_after(TICK_ATTEMPT_LIMIT):
                    await sink.submit_tick(task, tick, queue, message, max_attempts(task), **extra)
                return
            except Exception as exc:  # a producer must outlive any one submission
                if isinstance(exc, TypeError) and extra and "former" in str(exc):
                    # An older plug-in behind a wrapper that hid its signature.
                    logger.warning("%r: its submit_tick takes no former: called without", sink)
                    options.clear()
                    extra = {}
                    continue
                reason = "no answer in time" if isinstance(exc, TimeoutError) else exc
                failures.log(
                    "producers.scheduled[%r]: tick %d not stored yet: %s; retrying",
                    task,
                    tick,
                    reason,
                )
            await anyio.sleep(max(0.0, min(backoff.next_delay(), give_up - time.time())))
        logger.warning(
            "producers.scheduled[%r]: tick %d skipped: not stored in time (before the next "
            "tick was due, or within %d s)",
            task,
            tick,
            TICK_OFFER_WINDOW,
        )

    await _run_on_wall_clock(task, board, offer, lambda due: give_up_time(timetable, due))


def _takes_keyword(function: Callable[..., object], name: str) -> bool:
    """Whether *function* accepts the keyword argument *name* (or any keyword)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # no signature to read: call it as documented
        return True
    return any(
        parameter.kind is parameter.VAR_KEYWORD
        or (
            parameter.name == name
            and parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD)
        )
        for parameter in parameters
    )


async def _run_on_wall_clock(
    task: str,
    board: ScheduleBoard,
    run: Callable[[float], Awaitable[None]],
    give_up: Callable[[float], float] | None = None,
) -> None:
    """Call ``run(due)`` at each time of the task's timetable; times missed are skipped.

    The wall clock is read again every :data:`WALL_CLOCK_CHECK` seconds at least: after a
    step forwards, the run awaited is made (late, once) and the runs stepped over are
    skipped; after a step backwards, the runs wait for the clock to show their time again
    (none runs twice). With *give_up* (when a run due at ``due`` is too late), a run is
    still made late, until then: a *run* that returned after the next run's time (a tick
    offered until then) does not skip the next run.
    """
    timetable = board.timetable(task)
    due = timetable.next_after(time.time())
    while True:
        board.expect(task, due)
        # Sleeps follow the monotonic clock: the wall clock may lag it, or be stepped.
        while (left := due - time.time()) > 0:
            await anyio.sleep(min(left, WALL_CLOCK_CHECK))
        await run(due)
        now = time.time()
        if give_up is None:
            due = timetable.next_after(max(due, now))
            continue
        # Every run due that long ago is too late (see give_up_time): no need to walk
        # through each after a long stall.
        stale = now - TICK_OFFER_WINDOW
        due = timetable.following(due) if due > stale else timetable.next_after(stale)
        while give_up(due) <= now:
            due = timetable.following(due)
