"""When a cron schedule runs, in its time zone, over daylight-saving changes (with croniter).

Imported only when a ``producers.scheduled`` entry has a cron expression: croniter is the
optional extra ``dispatcher-server[cron]``.

Daylight-saving changes: a run whose local time is skipped (clocks go forward) happens at
the first moment after the gap, once; a run whose local time comes twice (clocks go back)
happens once, the first time, unless the expression runs every hour (its hour field is
``*``), in which case it runs in both passes, an hour apart, as an hourly job should.
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import Final
from zoneinfo import ZoneInfo

from croniter import croniter  # type: ignore[import-untyped, import-not-found, unused-ignore]

_HOUR_FIELD: Final = 1
_HOURS_IN_A_DAY: Final = 24


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
