"""When a cron schedule runs, in its time zone, over daylight-saving changes (with croniter).

Imported only when a ``producers.scheduled`` entry has a cron expression: croniter is the
optional extra ``dispatcher-server[cron]``.

Daylight-saving changes: a run whose local time is skipped (clocks go forward) happens at
the first moment after the gap, once; an expression that runs every hour (its hour field
is ``*``) runs no time of an hour wholly skipped (it goes on an hour after the hour before
the gap), but does run those skipped in an hour that partly exists (02:00 to 02:30 on Lord
Howe Island) at the end of the gap. A run whose local time comes twice (clocks go back)
happens once, the first time, unless the expression runs every hour, in which case it runs
in both passes, an hour apart, as an hourly job should.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Final
from zoneinfo import ZoneInfo

from croniter import croniter  # type: ignore[import-untyped, import-not-found, unused-ignore]

_HOUR_FIELD: Final = 1
_HOURS_IN_A_DAY: Final = 24
_OFFSET_SAMPLE: Final = 6 * 3600


def _instant(run: datetime) -> float:
    return run.timestamp()


class CronSchedule:
    """A cron expression read in a time zone: :meth:`next_run` after any moment."""

    def __init__(self, expression: str, zone: tzinfo | str = "UTC") -> None:
        """Parse *expression* (already checked by the config loader) for *zone*."""
        self.expression = expression.strip()
        self.zone = ZoneInfo(zone) if isinstance(zone, str) else zone
        self._croniter = croniter(self.expression, datetime.now(self.zone))
        hours = self._croniter.expanded[_HOUR_FIELD]
        self._every_hour = hours == ["*"] or len(set(hours)) == _HOURS_IN_A_DAY

    def next_run(self, after: datetime) -> datetime:
        """The first run strictly after *after* (an aware datetime), in :attr:`zone`."""
        found = self._next_on_wall_clock(after)
        earlier = []
        if self._every_hour:
            earlier += [
                self._next_after_a_gap(after, found),
                self._next_in_repeated_time(after, found),
            ]
        return min((run for run in earlier if run is not None), default=found, key=_instant)

    def _next_after_a_gap(self, after: datetime, found: datetime) -> datetime | None:
        """A run at the end of a gap (clocks went forward) between *after* and *found*.

        croniter walks hour by hour when the hour field is ``*``: over a gap that is not a
        whole hour (02:00 to 02:30 on Lord Howe Island) it steps from before the gap to the
        next hour, losing the times the expression names in the hour's missing part. They
        run once, at the first moment after the gap, as a skipped time does in other
        expressions. An hour wholly skipped (02:00 to 03:00) has no run: the runs go on
        in the next hour, an hour after those of the hour before the gap.
        """
        start, end = after.timestamp(), found.timestamp()
        for change, before, later in self._changes(start, end):
            if later <= before or not start < change < end:
                continue  # clocks went back, or the end of the gap is not strictly between
            first_missing = datetime.fromtimestamp(change, timezone(before)).replace(tzinfo=None)
            first_after = first_missing + (later - before)
            # The missing times of the hour the gap ends in (its first moment, if it did).
            since = max(first_missing, first_after.replace(minute=0, second=0, microsecond=0))
            named: datetime = croniter(self.expression, since - timedelta(seconds=1)).get_next(
                datetime
            )
            if named < first_after:
                return datetime.fromtimestamp(change, self.zone)
        return None

    def _changes(self, start: float, end: float) -> list[tuple[int, timedelta, timedelta]]:
        """Each change of the zone's offset in ``(start, end]``.

        As its first second, and the offsets before and from it (looked for every 6 hours:
        changes are months apart).
        """
        found = []
        low = start
        while low < end:
            high = min(low + _OFFSET_SAMPLE, end)
            before, later = self._offset_at(low), self._offset_at(high)
            if before != later:
                found.append((self._change_in(low, high, before, later), before, later))
            low = high
        return found

    def _change_in(self, low: float, high: float, before: timedelta, later: timedelta) -> int:
        """The first whole second at offset *later* in ``(low, high]`` (one change in it)."""
        while high - low > 1:
            middle = (low + high) / 2
            low, high = (middle, high) if self._offset_at(middle) == before else (low, middle)
        return next(
            second
            for second in range(math.floor(low), math.ceil(high) + 1)
            if self._offset_at(second) == later
        )

    def _next_on_wall_clock(self, after: datetime) -> datetime:
        """The next run as croniter walks the zone's wall clock (see :meth:`next_run`)."""
        # Instants are compared as timestamps: two datetimes of one zone compare by wall time.
        moment = after.astimezone(self.zone)
        while True:
            candidate: datetime = self._croniter.get_next(datetime, start_time=moment)
            if candidate.timestamp() <= moment.timestamp():  # not expected: never loop forever
                moment = datetime.fromtimestamp(moment.timestamp() + 1, self.zone)
                continue
            if candidate.timestamp() > after.timestamp() and not self._second_pass(candidate):
                return candidate
            moment = candidate

    def _next_in_repeated_time(self, after: datetime, found: datetime) -> datetime | None:
        """A run between *after* and *found* in the second pass of a time that comes twice.

        croniter's walk over wall times can step from the end of the first pass past the
        second one (it does in zones whose clocks go back by 30 minutes): the first time
        the expression names in the second pass, if earlier than *found*, is that run.
        """
        start, end = after.timestamp(), found.timestamp()
        before, later = self._offset_at(start), self._offset_at(end)
        if later >= before:
            return None  # the clocks did not go back in between
        change = self._change_in(start, end, before, later)
        fixed = timezone(later)
        wall = datetime.fromtimestamp(max(start, change - 1), fixed).replace(tzinfo=None)
        candidate: datetime = croniter(self.expression, wall).get_next(datetime)
        moment = candidate.replace(tzinfo=fixed).timestamp()
        if change <= moment < change + (before - later).total_seconds() and start < moment < end:
            return datetime.fromtimestamp(moment, self.zone)
        return None

    def _offset_at(self, moment: float) -> timedelta:
        offset = datetime.fromtimestamp(moment, self.zone).utcoffset()
        assert offset is not None  # a ZoneInfo has an offset for every time
        return offset

    def runs(self, after: datetime, count: int) -> list[datetime]:
        """The next *count* runs after *after*."""
        found: list[datetime] = []
        while len(found) < count:
            after = self.next_run(after)
            found.append(after)
        return found

    def _second_pass(self, run: datetime) -> bool:
        """Tell whether *run* repeats a local time already run (clocks went back), to skip."""
        if self._every_hour:
            return False
        wall = run.replace(tzinfo=None)
        first, second = (wall.replace(tzinfo=self.zone, fold=fold) for fold in (0, 1))
        first_offset, second_offset = first.utcoffset(), second.utcoffset()
        assert first_offset is not None  # a ZoneInfo has an offset for every time
        assert second_offset is not None
        repeated = first_offset > second_offset
        return repeated and run.utcoffset() == second_offset
