"""When each ``producers.scheduled`` entry runs: every N seconds, or on a cron expression.

Times are wall-clock seconds since the epoch, the same on every host: a durable queue stores
each run once for the whole cluster, keyed by its tick (see :meth:`Timetable.tick`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final, Protocol

from dispatcher.config import ConfigError, ScheduledTask, Settings
from dispatcher.config.schedules import CRON_EXTRA
from dispatcher.schema import Problem

NEXT_RUNS_SHOWN: Final = 3
"""How many next run times the ``producers`` control reply lists for each schedule."""


class Timetable(Protocol):
    """When a scheduled task runs."""

    def next_after(self, moment: float) -> float:
        """The first run strictly after *moment*, on a grid that every host shares."""
        ...

    def following(self, due: float) -> float:
        """The run after the one due at *due*."""
        ...

    def tick(self, due: float) -> int:
        """The run due at *due* as a number that every host gives it (durable queues)."""
        ...

    def former_ticks(self, due: float) -> list[int]:
        """The other numbers older releases gave the run due at *due* (none: ``[]``)."""
        ...

    def show(self, due: float) -> str:
        """The run due at *due* in ISO 8601, with the offset of its time zone."""
        ...


class IntervalTimetable:
    """Every :attr:`period` seconds: on the grid of multiples of it since the epoch.

    Its tick is the run's time (see :func:`time_tick`), as a cron run's is: services whose
    periods differ (a rolling change of the period) agree on the runs they share. Releases
    before this one numbered a tick by its multiple (``due / period``): that number is
    recorded too (:meth:`former_ticks`), so that a fleet of old and new services still
    stores each run once. (A schedule run by one service alone keeps a grid of its own,
    from its start: see ``producers.run_schedule``.)
    """

    def __init__(self, period: float) -> None:
        self.period = period

    def next_after(self, moment: float) -> float:
        """The first multiple of the period after *moment*."""
        return (math.floor(moment / self.period) + 1) * self.period

    def following(self, due: float) -> float:
        """One period later."""
        return due + self.period

    def tick(self, due: float) -> int:
        """The run's time (see :func:`time_tick`)."""
        return time_tick(due)

    def former_ticks(self, due: float) -> list[int]:
        """The multiple's number, which older releases used as the tick."""
        former = round(due / self.period)
        return [] if former == self.tick(due) else [former]

    def show(self, due: float) -> str:
        """In UTC."""
        return _iso(datetime.fromtimestamp(due, UTC))


class CronTimetable:
    """On a cron expression, read in a time zone. Its tick is the run's time, in seconds."""

    def __init__(self, expression: str, zone: str) -> None:
        from dispatcher.server.cron import CronSchedule  # croniter: only for cron schedules

        self.schedule = CronSchedule(expression, zone)

    def next_after(self, moment: float) -> float:
        """The first run after *moment*."""
        return self.schedule.next_run(datetime.fromtimestamp(moment, UTC)).timestamp()

    def following(self, due: float) -> float:
        """The next run."""
        return self.next_after(due)

    def tick(self, due: float) -> int:
        """The run's time (see :func:`time_tick`): cron runs fall on whole seconds."""
        return time_tick(due)

    def former_ticks(self, due: float) -> list[int]:
        """None: a cron run's tick has always been its time."""
        return []

    def show(self, due: float) -> str:
        """In the schedule's time zone."""
        return _iso(datetime.fromtimestamp(due, self.schedule.zone))


WHOLE_SECOND: Final = 1e-6
"""How far (seconds) a due time may be from a whole second and still be taken for it (the
float arithmetic of ``n * period``)."""


def time_tick(due: float) -> int:
    """The tick of the run due at *due* (seconds since the epoch), whatever its schedule.

    A run on a whole second: that second (as a cron run's tick). Any other (a period that
    is not a whole number of seconds): the time in milliseconds, a number about a thousand
    times larger than any time in seconds, so the two never meet.
    """
    second = round(due)
    return second if abs(due - second) < WHOLE_SECOND else round(due * 1000)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds" if not moment.microsecond else "milliseconds")


def timetable_for(task: str, entry: ScheduledTask, source: str) -> Timetable:
    """The timetable of the ``producers.scheduled`` entry *task* of the config *source*.

    :raises ConfigError: for a cron schedule when croniter is not installed.
    """
    if not isinstance(entry.schedule, str):
        return IntervalTimetable(entry.schedule)
    try:
        return CronTimetable(entry.schedule, entry.timezone)
    except ImportError as exc:
        if exc.name != "croniter":
            raise
        reason = f'a cron schedule needs croniter: pip install "{CRON_EXTRA}"'
        problem = Problem(("producers", "scheduled", task, "schedule"), reason)
        raise ConfigError(source, [str(problem)]) from None


class ScheduleBoard:
    """The timetable of every ``producers.scheduled`` entry, and when each runs next."""

    def __init__(self, settings: Settings) -> None:
        """Build the timetables.

        :raises ConfigError: when a cron schedule is configured and croniter is missing.
        """
        scheduled: Mapping[str, ScheduledTask] = settings.producers.scheduled
        self._timetables = {
            task: timetable_for(task, entry, settings.source) for task, entry in scheduled.items()
        }
        self._due: dict[str, float] = {}
        self._on_monotonic: set[str] = set()
        """The tasks whose next run is noted on the monotonic clock (see expect_monotonic)."""

    def timetable(self, task: str) -> Timetable:
        """The timetable of the entry *task*."""
        return self._timetables[task]

    def expect(self, task: str, due: float) -> None:
        """Note that the next run of *task* is due at *due* (seconds since the epoch)."""
        self._due[task] = due
        self._on_monotonic.discard(task)

    def expect_monotonic(self, task: str, due: float) -> None:
        """Note that the next run of *task* is due at *due* on ``time.monotonic()``.

        For a period run by this service alone: its runs follow the monotonic clock, so
        the wall-clock time shown is worked out when asked, after any step of the clock.
        """
        self._due[task] = due
        self._on_monotonic.add(task)

    def next_runs(self, task: str, count: int = NEXT_RUNS_SHOWN) -> list[str]:
        """The next *count* runs of *task*, in ISO 8601 with an offset."""
        timetable = self._timetables.get(task)
        if timetable is None:
            return []
        due = self._due.get(task)
        if due is None:  # not started yet: where its timetable would put it
            due = timetable.next_after(time.time())
        elif task in self._on_monotonic:
            due += time.time() - time.monotonic()
        runs = [due]
        while len(runs) < count:
            runs.append(timetable.following(runs[-1]))
        return [timetable.show(run) for run in runs]
