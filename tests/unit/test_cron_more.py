"""Cron schedules against a brute-force reading of the expression, in zones with odd shifts.

The reference: every minute (or second) instant in a window whose wall-clock time the
expression matches, in the schedule's zone. An expression that runs every hour must run at
each of them, in both passes of a time that comes twice; the others once, the first time.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from dispatcher.config import ConfigError, load_settings
from dispatcher.server.cron import CronSchedule

croniter = pytest.importorskip("croniter").croniter

CLOCKS_GO_BACK = [
    ("Australia/Lord_Howe", datetime(2026, 4, 4, 13, tzinfo=UTC)),  # by 30 minutes
    ("Antarctica/Troll", datetime(2026, 10, 24, 23, tzinfo=UTC)),  # by two hours
    ("America/St_Johns", datetime(2026, 11, 1, 2, tzinfo=UTC)),  # at a half-hour offset
    ("Europe/Paris", datetime(2026, 10, 24, 23, tzinfo=UTC)),
]
CLOCKS_GO_FORWARD = [
    ("Australia/Lord_Howe", datetime(2026, 10, 3, 14, tzinfo=UTC)),
    ("Europe/Paris", datetime(2026, 3, 28, 23, tzinfo=UTC)),
]
HOURLY = ["*/20 * * * *", "*/7 * * * *", "15,45 * * * *", "0 * * * *", "* * * * *"]


def matching(expression: str, zone: str, start: datetime, hours: int) -> list[datetime]:
    """Every minute after *start*, for *hours*, whose wall time in *zone* matches."""
    where = ZoneInfo(zone)
    found = []
    moment = start.replace(second=0, microsecond=0)
    for _ in range(hours * 60):
        moment += timedelta(minutes=1)
        if croniter.match(expression, moment.astimezone(where).replace(tzinfo=None)):
            found.append(moment)
    return found


def starts(start: datetime, hours: int) -> Iterator[datetime]:
    """Moments to ask for the next run from: every 3 minutes 20 seconds."""
    for step in range(0, (hours - 2) * 60, 3):
        yield start + timedelta(minutes=step, seconds=20)


@pytest.mark.parametrize("expression", HOURLY)
@pytest.mark.parametrize(("zone", "start"), CLOCKS_GO_BACK)
def test_an_hourly_expression_runs_in_both_passes_of_a_repeated_time(
    expression: str, zone: str, start: datetime
) -> None:
    schedule = CronSchedule(expression, zone)
    expected = matching(expression, zone, start, 6)
    for after in starts(start, 6):
        want = next(run for run in expected if run > after)
        # In UTC: a time in a fold never compares equal to one of another zone.
        got = schedule.next_run(after).astimezone(UTC)
        assert got == want, f"after {after:%H:%M:%S} UTC: {got} rather than {want}"


@pytest.mark.parametrize("expression", HOURLY)
@pytest.mark.parametrize(("zone", "start"), CLOCKS_GO_FORWARD)
def test_an_hourly_expression_skips_no_existing_time_when_clocks_go_forward(
    expression: str, zone: str, start: datetime
) -> None:
    schedule = CronSchedule(expression, zone)
    expected = matching(expression, zone, start, 6)
    runs: list[datetime] = []
    moment = start
    while (moment := schedule.next_run(moment).astimezone(UTC)) <= start + timedelta(hours=6):
        runs.append(moment)
    assert set(expected) <= set(runs)
    assert runs == sorted(set(runs))


def test_a_daily_run_in_lord_howes_half_hour_gap_and_repeat_happens_once() -> None:
    forward = CronSchedule("15 2 * * *", "Australia/Lord_Howe")  # 02:00 -> 02:30
    [run, _] = forward.runs(datetime(2026, 10, 3, 12, tzinfo=UTC), 2)
    assert run.isoformat() == "2026-10-04T02:30:00+11:00"
    back = CronSchedule("45 1 * * *", "Australia/Lord_Howe")  # 02:00 -> 01:30
    runs = back.runs(datetime(2026, 4, 4, 10, tzinfo=UTC), 2)
    assert [r.isoformat() for r in runs] == [
        "2026-04-05T01:45:00+11:00",
        "2026-04-06T01:45:00+10:30",
    ]


def test_a_schedule_years_apart_is_found_without_a_long_walk() -> None:
    schedule = CronSchedule("0 0 29 2 *", "Pacific/Apia")
    runs = schedule.runs(datetime(2026, 1, 1, tzinfo=UTC), 3)
    assert [r.date().isoformat() for r in runs] == ["2028-02-29", "2032-02-29", "2036-02-29"]


def timezone_error(name: str) -> str:
    entry: dict[str, Any] = {"schedule": "0 7 * * *", "timezone": name}
    document = {"version": 1, "producers": {"scheduled": {"app.tasks.report": entry}}}
    with pytest.raises(ConfigError) as raised:
        load_settings(document)
    return str(raised.value)


def test_a_zone_name_in_the_wrong_case_gets_the_right_one() -> None:
    assert "unknown time zone (did you mean 'Europe/Paris'?)" in timezone_error("europe/paris")
    assert "(did you mean 'UTC'?)" in timezone_error("utc")


def test_the_hosts_own_zone_is_refused_by_name() -> None:
    error = timezone_error("localtime")
    assert "producers.scheduled['app.tasks.report'].timezone: 'localtime' is whatever" in error


def test_reboot_points_to_on_start() -> None:
    document: dict[str, Any] = {
        "version": 1,
        "producers": {"scheduled": {"app.tasks.report": {"schedule": "@reboot"}}},
    }
    with pytest.raises(ConfigError) as raised:
        load_settings(document)
    assert "list it in producers.on_start" in str(raised.value)
