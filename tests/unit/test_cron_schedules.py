"""Cron schedules of ``producers.scheduled``: config checks, next runs, DST, durable ticks."""

from __future__ import annotations

import itertools
import sys
import time
import zoneinfo
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from dispatcher.config import ConfigError, Settings, load_settings
from dispatcher.server.backoff import MAX_RETRY
from dispatcher.server.brokers.base import TICK_OFFER_WINDOW
from dispatcher.server.brokers.pg_queue.upkeep import KEEP_TICKS
from dispatcher.server.control_shapes import producers_reply
from dispatcher.server.cron import CronSchedule
from dispatcher.server.producers import TICK_ATTEMPT_LIMIT, run_once_per_tick
from dispatcher.server.stats import ServiceStats
from dispatcher.server.timetables import (
    NEXT_RUNS_SHOWN,
    CronTimetable,
    IntervalTimetable,
    ScheduleBoard,
)
from support.examples import examples
from support.producer_clock import FakeClock

TASK = "app.tasks.report"
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


ONE_VALUE = "a range of one value (such as 3-3), read as the whole field: write the value alone"


def settings(**entry: Any) -> Settings:
    """A config with one scheduled entry for TASK."""
    return load_settings({"version": 1, "producers": {"scheduled": {TASK: entry}}})


def problems(**entry: Any) -> list[str]:
    """The config errors of one scheduled entry, without the source."""
    with pytest.raises(ConfigError) as caught:
        settings(**entry)
    return caught.value.problems


def at(
    zone: ZoneInfo,
    year: int,
    month: int,
    day: int,
    hour: int,
    minute: int,
    second: int = 0,
    *,
    fold: int = 0,
) -> datetime:
    """A wall-clock time in *zone* (*fold* 1: the second pass of a repeated hour)."""
    return datetime(year, month, day, hour, minute, second, tzinfo=zone, fold=fold)


def shown(runs: list[datetime]) -> list[str]:
    return [run.isoformat() for run in runs]


# -- the config --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "schedule",
    ["0 3 * * *", "*/5 * * * *", "0 9 * * mon-fri", "* * * * * */10", "@hourly", "@DAILY"],
)
def test_cron_expressions_are_accepted(schedule: str) -> None:
    entry = settings(schedule=schedule).producers.scheduled[TASK]
    assert entry.schedule == schedule
    assert entry.is_cron
    assert entry.timezone == "UTC"


@pytest.mark.parametrize(
    "schedule",
    [
        "0 9 * * sat-sun",  # Sunday at a range's end is 7, not 0
        "0 9 * * mon-sun",
        "0 9 * * mon-sun/2",
        "0 9 * * 5-0",
        "0 22-2 * * *",  # backwards: wraps around, as croniter reads it
        "0 0 1 nov-feb *",
        "*/90 * * * *",  # a step past the field's end: its start only
        "0 */24 * * *",
    ],
)
def test_expressions_earlier_releases_ran_are_still_accepted(schedule: str) -> None:
    assert settings(schedule=schedule).producers.scheduled[TASK].schedule == schedule


def test_a_period_is_still_a_number_of_seconds() -> None:
    entry = settings(schedule=2.5).producers.scheduled[TASK]
    assert entry.schedule == 2.5
    assert not entry.is_cron


@pytest.mark.parametrize(
    ("schedule", "reason"),
    [
        ("61 * * * *", "minute: the value is out of range (0-59)"),
        ("0 0 1-0 * *", "day-of-month: the end of the range is out of range (1-31)"),
        ("0 0 * * 1-8/2", "day-of-week: the end of the range is out of range (0-7)"),
        ("0 0,1,24 * * *", "hour, item 3 of 3: the value is out of range (0-23)"),
        ("* * *", "3 fields; expected 5 (minute hour day-of-month month day-of-week) or 6"),
        ("* * * * * * 2030", "7 fields"),
        ("@reboot", "unknown alias (expected one of @annually, @daily"),
        ("H * * * *", "hashed and random values (H, R) are not supported"),
        ("R 3 * * *", "hashed and random values (H, R) are not supported"),
        ("0 0 31 2 *", "no date matches it"),
        ("*/0 * * * *", "minute: the step (after '/') is not a positive number"),
        ("0 3-3 * * *", f"hour: {ONE_VALUE}"),
        ("0 0 * * sun-sun", f"day-of-week: {ONE_VALUE}"),
        ("0 0 * * 7-0", f"day-of-week: {ONE_VALUE}"),
        # A digit int() does not read: croniter refuses it, without naming the field.
        ("0 0 * * ²", "day-of-week: not acceptable"),
        ("1,,2 * * * *", "minute: not acceptable"),
        ("0 0 * * 5L", "day-of-week: not acceptable"),  # croniter's last Friday is L5
        ("0 0 * * mon-frx", "day-of-week: not acceptable"),
        ("0 0 * * * 1,,2", "seconds: not acceptable"),
        ("*/² * * * *", "minute: the step (after '/') is not a positive number"),
        (
            "0 0 * * mon#9",
            "day-of-week: Invalid day_of_week value",
        ),  # croniter's words, without the value
        ("every day", "2 fields"),
    ],
)
def test_bad_cron_expressions_name_the_key_and_the_reason(schedule: str, reason: str) -> None:
    [problem] = problems(schedule=schedule)
    prefix = f"producers.scheduled['{TASK}'].schedule: not a cron expression: "
    assert problem.startswith(prefix), problem
    assert reason in problem.removeprefix(prefix)
    # The expression is not quoted: it may be a secret written in the wrong place.
    if " " in schedule:
        assert schedule not in problem


def numbered(words: str, first: int) -> dict[str, int]:
    """The names of a field's values (``jan``...), numbered from *first*."""
    return {word: number for number, word in enumerate(words.split(" "), first)}


FIELDS = [
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, numbered("jan feb mar apr may jun jul aug sep oct nov dec", 1)),
    ("day-of-week", 0, 7, numbered("sun mon tue wed thu fri sat", 0)),
    ("seconds", 0, 59, {}),
]


@st.composite
def field_items(draw: st.DrawFn) -> tuple[int, str, str | None]:
    """A field's index, one item of it, and the problem it has (``None`` when none)."""
    index = draw(st.integers(0, len(FIELDS) - 1))
    name, least, greatest, names = FIELDS[index]

    def value() -> tuple[str, int]:
        if names and draw(st.booleans()):
            word = draw(st.sampled_from(sorted(names)))
            return draw(st.sampled_from([word, word.upper(), word.title()])), names[word]
        number = draw(st.integers(0, greatest + 5))
        return str(number), number

    shape = draw(st.sampled_from(["value", "range", "star"]))
    step = draw(st.none() | st.integers(0, greatest + 5))
    start, low = value()
    end, high = value()
    item = {"value": start, "range": f"{start}-{end}", "star": "*"}[shape]
    if step is not None:
        item += f"/{step}"
    problem = None
    bounds = {"value": [(start, low)], "range": [(start, low), (end, high)], "star": []}[shape]
    outside = [text for text, number in bounds if not least <= number <= greatest]
    if outside:
        part = (
            "the value"
            if shape == "value"
            else f"the {'start' if outside[0] == start else 'end'} of the range"
        )
        problem = f"{name}{{where}}: {part} is out of range ({least}-{greatest})"
    elif shape == "range" and (low == high or (name == "day-of-week" and (low, high) == (7, 0))):
        problem = f"{name}{{where}}: {ONE_VALUE}"
    elif step == 0:
        problem = f"{name}{{where}}: the step (after '/') is not a positive number"
    return index, item, problem


@hypothesis_settings(max_examples=examples(300), deadline=None)
@given(field_items(), st.booleans())
def test_every_bound_and_step_of_every_field_is_checked_and_the_field_named(
    case: tuple[int, str, str | None], beside: bool
) -> None:
    index, item, problem = case
    fields = ["*"] * (6 if index == 5 else 5)
    fields[index] = f"{item},{fields[index] if index != 2 else 1}" if beside else item
    schedule = " ".join(fields)
    if problem is None:
        assert settings(schedule=schedule).producers.scheduled[TASK].schedule == schedule
        return
    [found] = problems(schedule=schedule)
    prefix = f"producers.scheduled['{TASK}'].schedule: not a cron expression: "
    where = ", item 1 of 2" if beside else ""
    assert found == prefix + problem.format(where=where), (found, problem)


def test_a_time_zone_is_an_iana_name_and_goes_with_a_cron_schedule_only() -> None:
    entry = settings(schedule="0 3 * * *", timezone="Europe/Berlin").producers.scheduled[TASK]
    assert entry.timezone == "Europe/Berlin"
    where = f"producers.scheduled['{TASK}'].timezone"
    assert problems(schedule="0 3 * * *", timezone="Mars/Olympus") == [
        f"{where}: unknown time zone (expected an IANA name such as 'Europe/Paris')"
    ]
    assert problems(schedule="0 3 * * *", timezone="../../etc/passwd")[0].startswith(
        f"{where}: unknown time zone"
    )
    assert problems(schedule=60, timezone="Europe/Berlin") == [
        f"{where}: only allowed with a cron schedule (schedule is a number of seconds)"
    ]


def test_a_host_without_a_time_zone_database_is_told_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(zoneinfo, "available_timezones", set)
    [problem] = problems(schedule="0 3 * * *", timezone="Mars/Olympus")
    assert problem.endswith("this host has no time zone database (pip install tzdata)")


def test_without_croniter_the_loader_checks_the_shape_and_the_service_refuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "croniter", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "dispatcher.server.cron", raising=False)
    loaded = settings(schedule="61 * * * *")  # only croniter knows minute 61 is wrong
    assert problems(schedule="* * *")[0].endswith(
        "3 fields; expected 5 (minute hour "
        "day-of-month month day-of-week) or 6 (the same, then seconds)"
    )
    with pytest.raises(ConfigError) as caught:
        ScheduleBoard(loaded)
    assert str(caught.value) == (
        f"config: producers.scheduled['{TASK}'].schedule: a cron schedule needs croniter: "
        'pip install "dispatcher-server[cron]"'
    )
    ScheduleBoard(settings(schedule=60))  # periods need nothing more


# -- next runs ---------------------------------------------------------------------------


def test_next_runs_in_utc_are_strictly_after_the_moment() -> None:
    schedule = CronSchedule("*/15 * * * *")
    assert shown(schedule.runs(at(ZoneInfo("UTC"), 2026, 5, 1, 10, 15), 3)) == [
        "2026-05-01T10:30:00+00:00",
        "2026-05-01T10:45:00+00:00",
        "2026-05-01T11:00:00+00:00",
    ]


def test_a_time_zone_moves_the_runs_and_the_offset_shows_it() -> None:
    after = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
    assert shown(CronSchedule("0 9 * * *", "America/New_York").runs(after, 2)) == [
        "2026-01-15T09:00:00-05:00",  # 07:00 there when it is 12:00 in UTC
        "2026-01-16T09:00:00-05:00",
    ]
    assert CronSchedule("0 9 * * *", "America/New_York").next_run(after).timestamp() == (
        datetime(2026, 1, 15, 14, 0, tzinfo=UTC).timestamp()
    )


def test_six_fields_end_with_seconds_and_aliases_expand() -> None:
    after = at(ZoneInfo("UTC"), 2026, 5, 1, 10, 0, 0)
    assert shown(CronSchedule("* * * * * */20").runs(after, 3)) == [
        "2026-05-01T10:00:20+00:00",
        "2026-05-01T10:00:40+00:00",
        "2026-05-01T10:01:00+00:00",
    ]
    assert shown(CronSchedule("@hourly").runs(after, 1)) == ["2026-05-01T11:00:00+00:00"]


def test_spring_forward_runs_a_skipped_time_once_right_after_the_gap() -> None:
    # Berlin, 2026-03-29: 02:00 CET becomes 03:00 CEST; 02:xx does not exist.
    night_before = at(BERLIN, 2026, 3, 28, 23, 0)
    assert shown(CronSchedule("30 2 * * *", BERLIN).runs(night_before, 3)) == [
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]
    assert shown(CronSchedule("*/20 2 * * *", BERLIN).runs(night_before, 2)) == [
        "2026-03-29T03:00:00+02:00",  # once, not three times
        "2026-03-30T02:00:00+02:00",
    ]
    assert shown(CronSchedule("0 * * * *", BERLIN).runs(at(BERLIN, 2026, 3, 29, 0, 30), 3)) == [
        "2026-03-29T01:00:00+01:00",
        "2026-03-29T03:00:00+02:00",  # an hour after 01:00 CET
        "2026-03-29T04:00:00+02:00",
    ]


LORD_HOWE = ZoneInfo("Australia/Lord_Howe")
PARIS = ZoneInfo("Europe/Paris")


@pytest.mark.parametrize(
    ("expression", "runs"),
    [
        ("0 * * * *", ["02:30+11:00", "03:00+11:00", "04:00+11:00"]),
        ("@hourly", ["02:30+11:00", "03:00+11:00", "04:00+11:00"]),
        ("0 * * * * 0", ["02:30+11:00", "03:00+11:00", "04:00+11:00"]),
        ("0 0-22 * * *", ["02:30+11:00", "03:00+11:00", "04:00+11:00"]),
        (
            "*/20 * * * *",
            ["01:20+10:30", "01:40+10:30", "02:30+11:00", "02:40+11:00", "03:00+11:00"],
        ),
        (
            "15,45 * * * *",
            ["01:15+10:30", "01:45+10:30", "02:30+11:00", "02:45+11:00", "03:15+11:00"],
        ),
        ("30 * * * *", ["01:30+10:30", "02:30+11:00", "03:30+11:00"]),
    ],
)
def test_a_gap_of_half_an_hour_runs_an_hourly_time_it_skips_at_its_end(
    expression: str, runs: list[str]
) -> None:
    # Lord Howe Island, 2027-10-03: 02:00 (+10:30) becomes 02:30 (+11:00).
    found = CronSchedule(expression, LORD_HOWE).runs(at(LORD_HOWE, 2027, 10, 3, 1, 10), len(runs))
    assert [run.isoformat(timespec="minutes")[11:] for run in found] == runs


@pytest.mark.parametrize(
    ("zone", "day", "expression", "runs"),
    [
        (NEW_YORK, 14, "0 * * * *", ["01:00-05:00", "03:00-04:00", "04:00-04:00"]),
        (NEW_YORK, 14, "30 * * * *", ["01:30-05:00", "03:30-04:00", "04:30-04:00"]),
        (
            NEW_YORK,
            14,
            "*/20 * * * *",
            ["01:00-05:00", "01:20-05:00", "01:40-05:00", "03:00-04:00"],
        ),
        (NEW_YORK, 14, "30 2 * * *", ["03:00-04:00"]),
        (PARIS, 28, "0 * * * *", ["01:00+01:00", "03:00+02:00", "04:00+02:00"]),
        (PARIS, 28, "15,45 * * * *", ["01:15+01:00", "01:45+01:00", "03:15+02:00"]),
    ],
)
def test_a_gap_of_a_whole_hour_skips_its_hour_in_hourly_expressions(
    zone: ZoneInfo, day: int, expression: str, runs: list[str]
) -> None:
    # 2027-03-14 in New York, 2027-03-28 in Paris: 02:00 becomes 03:00.
    found = CronSchedule(expression, zone).runs(at(zone, 2027, 3, day, 0, 50), len(runs))
    assert [run.isoformat(timespec="minutes")[11:] for run in found] == runs


def test_fall_back_runs_a_daily_time_once_and_an_hourly_one_every_hour() -> None:
    # Berlin, 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:xx happens twice.
    night_before = at(BERLIN, 2026, 10, 24, 23, 0)
    assert shown(CronSchedule("30 2 * * *", BERLIN).runs(night_before, 2)) == [
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
    ]
    assert shown(CronSchedule("0 * * * *", BERLIN).runs(at(BERLIN, 2026, 10, 25, 1, 30), 4)) == [
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:00:00+01:00",  # an hour later, the same wall time
        "2026-10-25T03:00:00+01:00",
        "2026-10-25T04:00:00+01:00",
    ]
    # Started during the second pass, after the first pass ran: nothing more that night.
    second_pass = at(BERLIN, 2026, 10, 25, 2, 10, fold=1)
    assert shown(CronSchedule("30 2 * * *", BERLIN).runs(second_pass, 1)) == [
        "2026-10-26T02:30:00+01:00"
    ]


def test_new_york_dst_days_keep_a_daily_job_daily() -> None:
    schedule = CronSchedule("30 1 * * *", NEW_YORK)
    spring = schedule.runs(at(NEW_YORK, 2026, 3, 7, 12, 0), 3)  # 2026-03-08: 02:00 -> 03:00
    fall = schedule.runs(at(NEW_YORK, 2026, 10, 31, 12, 0), 3)  # 2026-11-01: 02:00 -> 01:00
    assert [run.day for run in spring] == [8, 9, 10]
    assert [run.day for run in fall] == [1, 2, 3]
    assert shown(fall)[0] == "2026-11-01T01:30:00-04:00"


# -- timetables and the producers reply ---------------------------------------------------


def test_interval_ticks_stay_the_multiples_of_the_period() -> None:
    timetable = IntervalTimetable(60)
    due = timetable.next_after(1_800_000_030.5)
    assert due == 1_800_000_060
    assert timetable.tick(due) == 1_800_000_060  # the run's time
    assert timetable.former_ticks(due) == [30_000_001]  # the multiple's number
    assert timetable.following(due) == 1_800_000_120
    assert timetable.show(due) == "2027-01-15T08:01:00+00:00"


def test_a_cron_tick_is_the_run_time_itself() -> None:
    timetable = CronTimetable("0 */6 * * *", "Europe/Berlin")
    due = timetable.next_after(datetime(2026, 6, 1, 1, 0, tzinfo=UTC).timestamp())
    assert timetable.show(due) == "2026-06-01T06:00:00+02:00"
    assert timetable.tick(due) == int(datetime(2026, 6, 1, 4, 0, tzinfo=UTC).timestamp())
    assert timetable.show(timetable.following(due)) == "2026-06-01T12:00:00+02:00"


def test_the_producers_reply_lists_the_next_runs() -> None:
    config = load_settings(
        {
            "version": 1,
            "producers": {
                "scheduled": {
                    TASK: {"schedule": "0 3 * * *", "timezone": "Europe/Berlin"},
                    "app.tasks.poll": {"schedule": 30},
                }
            },
        }
    )
    board = ScheduleBoard(config)
    board.expect("app.tasks.poll", 1_800_000_000)
    reply = producers_reply(config, ServiceStats(), 1.0, board.next_runs)
    schedules = reply["scheduled-producer"]["schedules"]
    assert schedules["app.tasks.poll"] == {
        "schedule": 30,
        "next_runs": [
            "2027-01-15T08:00:00+00:00",
            "2027-01-15T08:00:30+00:00",
            "2027-01-15T08:01:00+00:00",
        ],
    }
    cron = schedules[TASK]
    assert (cron["schedule"], cron["timezone"]) == ("0 3 * * *", "Europe/Berlin")
    assert len(cron["next_runs"]) == NEXT_RUNS_SHOWN
    runs = [datetime.fromisoformat(run) for run in cron["next_runs"]]
    assert runs[0].timestamp() > time.time()
    assert all(run.astimezone(BERLIN).hour == 3 for run in runs)
    assert [(b - a).days for a, b in itertools.pairwise(runs)] == [1, 1]
    unchanged = producers_reply(config, ServiceStats(), 1.0)["scheduled-producer"]
    assert "next_runs" not in unchanged["schedules"][TASK]


# -- a durable queue: every host offers the same ticks ------------------------------------


class RecordingSink:
    """A durable broker that records the ticks offered to it."""

    def __init__(self, wanted: int) -> None:
        self.queues: Collection[str] = ("q",)
        self.offered: list[tuple[str, int, dict[str, Any]]] = []
        self.wanted = wanted
        self.enough = anyio.Event()

    async def submit_tick(
        self,
        task: str,
        tick: int,
        queue: str,
        message: dict[str, Any],
        max_attempts: int | None = None,
        *,
        former: Sequence[int] = (),
    ) -> bool:
        self.offered.append((task, tick, message))
        if len(self.offered) >= self.wanted:
            self.enough.set()
        return True


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_durable_cron_ticks_are_the_run_times_whole_seconds() -> None:
    config = settings(schedule="* * * * * *", args=["x"])
    entry = config.producers.scheduled[TASK]
    board = ScheduleBoard(config)
    sink = RecordingSink(wanted=2)
    began = time.time()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(run_once_per_tick, sink, "q", TASK, entry, board)
            await sink.enough.wait()
            group.cancel_scope.cancel()
    ticks = [tick for _, tick, _ in sink.offered]
    assert ticks[1] == ticks[0] + 1
    assert began < ticks[0] <= time.time()
    assert sink.offered[0][2] == {"task": TASK, "args": ["x"], "kwargs": {}}


class OlderPluginSink(RecordingSink):
    """A durable broker plug-in written before ``submit_tick`` took ``former``."""

    async def submit_tick(  # type: ignore[override]
        self,
        task: str,
        tick: int,
        queue: str,
        message: dict[str, Any],
        max_attempts: int | None = None,
    ) -> bool:
        return await super().submit_tick(task, tick, queue, message, max_attempts)


@pytest.mark.anyio
async def test_a_plugin_written_before_former_ticks_is_offered_each_tick_once() -> None:
    config = settings(schedule=1)
    entry = config.producers.scheduled[TASK]
    sink = OlderPluginSink(wanted=2)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(run_once_per_tick, sink, "q", TASK, entry, ScheduleBoard(config))
            await sink.enough.wait()
            group.cancel_scope.cancel()
    first, second = (tick for _, tick, _ in sink.offered)
    assert second == first + 1  # each tick offered once: none refused, none retried


class WrappedOlderPluginSink(OlderPluginSink):
    """An older plug-in whose submit_tick is behind a wrapper that hides its signature."""

    def __init__(self, wanted: int) -> None:
        super().__init__(wanted)
        older = super().submit_tick

        async def wrapper(*args: Any, **kwargs: Any) -> bool:
            return await older(*args, **kwargs)

        self.submit_tick = wrapper  # type: ignore[method-assign]


@pytest.mark.anyio
async def test_an_older_plugin_behind_a_wrapper_is_called_without_former_once_it_says_so() -> None:
    config = settings(schedule=1)
    entry = config.producers.scheduled[TASK]
    sink = WrappedOlderPluginSink(wanted=2)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(run_once_per_tick, sink, "q", TASK, entry, ScheduleBoard(config))
            await sink.enough.wait()
            group.cancel_scope.cancel()
    first, second = (tick for _, tick, _ in sink.offered)
    assert second == first + 1  # each tick stored: the TypeError cost no tick


class FlakySink(RecordingSink):
    """A durable broker whose first *failures* offers fail (a connection found cut)."""

    def __init__(self, wanted: int, failures: int) -> None:
        super().__init__(wanted)
        self.failures = failures
        self.attempts: list[int] = []

    async def submit_tick(
        self,
        task: str,
        tick: int,
        queue: str,
        message: dict[str, Any],
        max_attempts: int | None = None,
        *,
        former: Sequence[int] = (),
    ) -> bool:
        self.attempts.append(tick)
        if self.failures:
            self.failures -= 1
            raise OSError("server closed the connection unexpectedly")
        return await super().submit_tick(task, tick, queue, message, max_attempts)


@pytest.mark.anyio
async def test_a_tick_whose_offer_fails_is_offered_again_until_it_is_stored() -> None:
    config = settings(schedule="* * * * * *")
    entry = config.producers.scheduled[TASK]
    sink = FlakySink(wanted=2, failures=2)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(run_once_per_tick, sink, "q", TASK, entry, ScheduleBoard(config))
            await sink.enough.wait()
            group.cancel_scope.cancel()
    first, second = (tick for _, tick, _ in sink.offered)
    assert second == first + 1  # the failed tick was stored, then the next one
    assert sink.attempts == [first, first, first, second]


class OutageSink(RecordingSink):
    """A durable broker that records when each attempt starts, and fails every attempt
    that starts before *back* (each taking *slow* seconds of the fake clock)."""

    def __init__(self, clock: FakeClock, back: float, slow: float, wanted: int) -> None:
        super().__init__(wanted)
        self.clock, self.back, self.slow = clock, back, slow
        self.attempts: list[tuple[int, float]] = []

    async def submit_tick(
        self,
        task: str,
        tick: int,
        queue: str,
        message: dict[str, Any],
        max_attempts: int | None = None,
        *,
        former: Sequence[int] = (),
    ) -> bool:
        self.attempts.append((tick, self.clock.now))
        if self.clock.now < self.back:
            self.clock.now += self.slow
            raise OSError("server closed the connection unexpectedly")
        return await super().submit_tick(task, tick, queue, message, max_attempts)


async def run_until_enough(sink: RecordingSink, config: Settings) -> None:
    entry = config.producers.scheduled[TASK]
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(run_once_per_tick, sink, "q", TASK, entry, ScheduleBoard(config))
            await sink.enough.wait()
            group.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_daily_tick_is_offered_for_half_an_hour_not_until_the_next_day(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A tick offered until its successor was due (a day) outlived its row in the database
    (kept an hour): a service cut off for two hours stored it again, a second run."""
    due = datetime(2030, 1, 1, 3, tzinfo=UTC).timestamp()
    clock = FakeClock(monkeypatch, due - 1)
    sink = OutageSink(clock, back=due + 7200, slow=10.0, wanted=1)
    await run_until_enough(sink, settings(schedule="0 3 * * *"))
    first = [at for tick, at in sink.attempts if tick == round(due)]
    assert first[0] == due
    # The last attempt starts at most one pause (MAX_RETRY: the jitter never goes above it)
    # and one attempt before the offer ends.
    assert max(first) < due + TICK_OFFER_WINDOW <= max(first) + MAX_RETRY + TICK_ATTEMPT_LIMIT
    assert KEEP_TICKS >= 2 * TICK_OFFER_WINDOW > TICK_OFFER_WINDOW + TICK_ATTEMPT_LIMIT
    # The next day's tick is offered at its time, and stored.
    assert [tick for _, tick, _ in sink.offered] == [round(due) + 86400]
    assert sink.attempts[-1] == (round(due) + 86400, due + 86400)


def test_an_interval_tick_is_its_time_as_a_cron_runs_is() -> None:
    """Periods 5 and 10 firing at the same instant gave different ticks (the multiple's
    number): a rolling change of the period ran the task twice."""
    five, ten = IntervalTimetable(5), IntervalTimetable(10)
    due = 1_800_000_000.0
    assert five.tick(due) == ten.tick(due) == 1_800_000_000
    assert (five.former_ticks(due), ten.former_ticks(due)) == ([360_000_000], [180_000_000])
    half = IntervalTimetable(0.1)
    due = half.next_after(1_800_000_000.25)  # float arithmetic: not exactly .3
    assert half.tick(due) == 1_800_000_000_300  # in milliseconds
    assert half.tick(half.next_after(1_800_000_000.95)) == 1_800_000_001  # a whole second
    assert IntervalTimetable(1).former_ticks(1_800_000_000.0) == []  # the same: no other


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("slow", "offered"),
    [
        # Each attempt fails after 10 s: the tick at 0 is given up when the one at 10 is
        # due, which is offered then, and so on until the database is back (at 35).
        (10.0, [0, 10, 20, 30, 40]),
        # Each attempt fails after 25 s: the tick at 10 is already given up when the
        # first attempt ends (at 25); the one at 20 is still due (until 30): offered late.
        (25.0, [0, 20, 50]),
    ],
)
async def test_after_a_tick_is_given_up_the_next_one_still_due_is_offered(
    monkeypatch: pytest.MonkeyPatch, slow: float, offered: list[int]
) -> None:
    """A tick given up when its successor was due made the producer look for a tick
    strictly after that time: the successor was skipped, an outage lost every other tick."""
    start = 1_800_000_000.0
    clock = FakeClock(monkeypatch, start - 1)
    sink = OutageSink(clock, back=start + 35, slow=slow, wanted=1)
    await run_until_enough(sink, settings(schedule=10))
    assert sorted({tick - round(start) for tick, _ in sink.attempts}) == offered
    [(_, stored, _)] = sink.offered
    assert stored == round(start) + offered[-1]
