"""dispatcherctl against odd input: absurd numbers in replies, bad option values, Ctrl-C,
its own log lines, and ``top``'s deadline on a database that stops answering."""

from __future__ import annotations

import argparse
import io
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from rich.console import Console, RenderableType

from dispatcher.config import load_settings, reset
from dispatcher.control import ControlResult
from dispatcher.server import ctl, ctl_control, ctl_parser, ctl_top_poll, ctl_top_render
from dispatcher.server.ctl_columns import width
from dispatcher.server.ctl_exits import EXIT_INTERRUPTED, EXIT_OK
from dispatcher.server.ctl_output import STDERR_HANDLER
from dispatcher.server.ctl_render import render
from dispatcher.server.ctl_top_poll import Collector
from dispatcher.server.ctl_top_render import Poll, screen
from dispatcher.server.ctl_values import duration_text, size_text

NOW = 1_800_000_000.0
ABSURD = (1e300, -1e300, 1.7976931348623157e308, 10**30, -(10**30), 6.7e16)
"""Numbers a reply may hold (strict JSON decodes them all) that no clock or unit expects."""


def text_of(renderable: RenderableType) -> str:
    out = io.StringIO()
    Console(file=out, width=160, color_system=None, force_terminal=False).print(renderable)
    return out.getvalue()


def odd_status(node: str, number: float) -> dict[str, Any]:
    """A ``status`` reply whose every duration, size, count and date is *number*."""
    worker = {
        "worker_id": number,
        "pid": number,
        "state": "busy",
        "current_task": "app.t",
        "current_task_uuid": "u",
        "current_task_age": number,
        "finished_count": number,
        "rss_bytes": number,
        "age": number,
    }
    return {
        "node_id": node,
        "uptime": number,
        "pid": number,
        "received": number,
        "finished": {"ok": number},
        "queued": number,
        "pool": {"count": number, "min": number, "max": number},
        "workers": {"worker-0": worker},
        "running": {"worker-0": {"uuid": "u", "task": "app.t", "time_pub": number}},
        "recent_failures": [{"time": number, "task": "app.t", "uuid": "u", "error": "e"}],
        "main": {"pool": {"usage": {"top5": {"1": number}}}},
        "chunks": {"status": {"active_bytes": number}},
    }


@pytest.mark.parametrize("number", ABSURD)
def test_absurd_numbers_are_shown_in_short_text_by_every_view(number: float) -> None:
    replies = [odd_status("odd", number), odd_status("plain", 1.0)]
    human = render(ControlResult("status", replies=replies, expected=2), now=NOW)
    assert all(len(line) < 400 for line in human.splitlines())
    for command in ("running", "workers"):
        per_entry = [{"node_id": "odd", **odd_status("x", number)["workers"]}]
        render(ControlResult(command, replies=per_entry, expected=1), now=NOW)
    before = Poll(at=1.0, wall=NOW, replies=[odd_status("odd", 0), odd_status("plain", 0)])
    drawn = text_of(screen(Poll(at=2.0, wall=NOW, replies=replies), before, 1.0))
    assert "odd" in drawn
    assert "plain" in drawn
    assert "cannot show this reply" not in drawn  # shown, not merely survived
    assert all(len(line) <= 160 for line in drawn.splitlines())


def test_durations_and_sizes_stay_short_whatever_the_number() -> None:
    for number in (*ABSURD, 0, 0.5, 59.6, 86400 * 99_999):
        for text in (duration_text(number), size_text(number)):
            assert len(text) <= 16, text
    assert duration_text(86400 * 99_999 - 1) == "99998 d 23 h"
    assert duration_text(1e300) == "1.16e+295 d"
    assert size_text(3 * 1024**4) == "3.00 TiB"
    assert size_text(-2048) == "-2.0 KiB"


def test_dates_in_replies_are_shown_in_local_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        failure = {"task": "t", "uuid": "u", "outcome": "error", "error": "e", "time": NOW}
        reply = {"node_id": "n", "recent_failures": [failure], "time_pub": 1e300}
        shown = render(ControlResult("status", replies=[reply], expected=1), now=NOW)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert "  2027-01-15 08:00:00" in shown
    assert "time_pub: 1e+300" in shown  # beyond any clock: as it is


def test_table_columns_line_up_with_wide_and_combining_characters() -> None:
    reply = {
        "node_id": "n",
        "worker-0": {"uuid": "中文字", "task": "a.b", "where": "x"},
        "queued-0": {"uuid": "e\u0301e\u0301", "task": "a.b", "where": "y"},
        "queued-1": {"uuid": "plain", "task": "a.b", "where": "z"},
    }
    lines = render(ControlResult("running", replies=[reply], expected=1), now=NOW).splitlines()
    # Where the task column starts, in terminal columns, is the same on every line.
    starts = {
        width(line[: line.index("a.b") if "a.b" in line else line.index("task")])
        for line in lines[1:]
    }
    assert len(starts) == 1, lines


def test_where_a_task_is_is_not_repeated_when_its_slot_says_it() -> None:
    on_workers = {
        "node_id": "n",
        "worker-2": {"uuid": "u-2", "task": "a.b", "where": "worker-2", "args": [], "kwargs": {}},
        "worker-0": {"uuid": "u-0", "task": "a.b", "where": "worker-0", "args": [], "kwargs": {}},
    }
    lines = render(ControlResult("running", replies=[on_workers], expected=1)).splitlines()
    assert lines[1].split() == ["slot", "uuid", "task", "args", "kwargs"]
    assert lines[2].split() == ["worker-2", "u-2", "a.b", "[]", "{}"]
    waiting = {**on_workers, "queued-0": {"uuid": "u-q", "task": "a.b", "where": "worker-0 next"}}
    lines = render(ControlResult("cancel", replies=[waiting], expected=1)).splitlines()
    assert lines[1].split()[:3] == ["slot", "where", "uuid"]
    assert lines[4].split()[:4] == ["queued-0", "worker-0", "next", "u-q"]


def test_one_reply_top_cannot_draw_leaves_the_others_drawn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = ctl_top_render.service_panel

    def fussy(reply: dict[str, Any], *args: Any) -> Any:
        if reply["node_id"] == "bad":
            raise RuntimeError("\x1b[2Jno")
        return real(reply, *args)

    monkeypatch.setattr(ctl_top_render, "service_panel", fussy)
    replies = [odd_status("bad", 1.0), odd_status("good", 1.0)]
    drawn = text_of(screen(Poll(at=1.0, wall=NOW, replies=replies)))
    assert "good" in drawn
    assert "cannot show this reply (RuntimeError: \\x1b[2Jno); --json shows it" in drawn


def test_the_header_names_the_key_that_quits() -> None:
    poll = Poll(at=1.0, wall=NOW)
    assert "q quits" in text_of(screen(poll, interval=1.0))
    without_keys = text_of(screen(poll, interval=1.0, quit_keys=False))
    assert "Ctrl-C quits" in without_keys
    assert "q quits" not in without_keys


# -- option values ------------------------------------------------------------------------


def every_parser() -> Iterator[argparse.ArgumentParser]:
    """dispatcherctl's parser, each command's, and top's (built when top runs)."""
    main = ctl_parser.parser()
    yield main
    for action in main._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.values()
    top = argparse.ArgumentParser(prog="dispatcherctl top")
    from dispatcher.server import ctl_top

    ctl_top.add_arguments(top)
    yield top


def typed_options() -> list[tuple[argparse.ArgumentParser, str]]:
    return [
        (parser, action.option_strings[0])
        for parser in every_parser()
        for action in parser._actions
        if action.option_strings and action.type not in (None, str)
    ]


def test_every_option_with_a_type_is_checked_here() -> None:
    found = {option for _, option in typed_options()}
    assert {"--timeout", "--expected-replies", "--delay", "--limit", "--interval"} <= found


@pytest.mark.parametrize("value", ["abc", "nan", "inf", "-1", "1e999", ""])
def test_every_typed_option_refuses_nonsense_naming_itself(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for parser, option in typed_options():
        if option in ("--args", "--kwargs", "--log-level", "--level"):
            continue  # JSON and names: tested elsewhere
        if option == "--max-attempts" and value == "-1":
            continue  # the SDK says why (at least 1)
        with pytest.raises(SystemExit) as refused:
            parser.parse_known_args([option, value])
        err = capsys.readouterr().err
        assert refused.value.code == 2
        assert f"argument {option}: " in err, err
        assert "invalid _" not in err  # no private function's name
        assert value == "" or repr(value) in err, err


def test_the_options_take_what_people_type(capsys: pytest.CaptureFixture[str]) -> None:
    options = ctl_parser.parser().parse_args(
        ["--timeout", "0.5", "alive", "--expected-replies", "0"]
    )
    assert (options.timeout, options.expected_replies) == (0.5, 0)
    submit = ctl_parser.parser().parse_args(["submit", "t", "--delay", "0", "--timeout", "2.5"])
    assert (submit.delay, submit.task_timeout) == (0.0, 2.5)
    assert not math.isnan(submit.delay)


@pytest.mark.parametrize(
    ("before", "said"),
    [
        (["--timeout", "5"], "--timeout before submit is the wait for replies"),
        (["--expected-replies", "1"], "--expected-replies: submit asks no service"),
    ],
)
def test_reply_options_before_submit_are_refused_not_ignored(
    before: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # "dispatcherctl --timeout 5 submit t" would otherwise send a task with no timeout.
    with pytest.raises(SystemExit) as refused:
        ctl.main([*before, "submit", "app.tasks.t"])
    assert refused.value.code == 2
    assert said in capsys.readouterr().err


# -- dispatcherd's --log-level, Ctrl-C and log lines --------------------------------------------


@pytest.fixture
def config(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "dispatcher.json"
    path.write_text(
        '{"version": 1, "brokers": {"pg_notify": {"conninfo": "dbname=nowhere", '
        '"channels": ["tasks"]}}}'
    )
    yield path
    reset()


def answer_with(monkeypatch: pytest.MonkeyPatch, result: Any) -> None:
    def control_with_reply(command: str, *args: Any, **kwargs: Any) -> ControlResult:
        if isinstance(result, BaseException):
            raise result
        logging.getLogger("dispatcher.control").warning("%s", "skipped a reply: junk")
        logging.getLogger("psycopg").warning("%s", "a \x1b[31mwarning")
        return result  # type: ignore[no-any-return]

    monkeypatch.setattr(ctl_control, "control_with_reply", control_with_reply)


@pytest.mark.parametrize(
    "argv",
    [
        ["--log-level", "INFO", "alive"],
        ["alive", "--log-level", "warning"],
        ["--log-level=ERROR", "alive", "--expected-replies", "1"],
    ],
)
def test_dispatcherds_log_level_option_is_taken_before_or_after_the_command(
    argv: list[str],
    config: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    result = ControlResult("alive", replies=[{"node_id": "n"}], expected=1)
    result.skipped.append("skipped a reply: junk")
    answer_with(monkeypatch, result)
    assert ctl.main([*argv, "--config", str(config)]) == EXIT_OK
    err = capsys.readouterr().err
    assert err.count("skipped a reply: junk") == 1  # said once, by dispatcherctl
    if "ERROR" in argv[0]:
        assert "warning" not in err
    else:
        assert "a \\x1b[31mwarning\n" in err  # log lines are escaped
        assert "\x1b" not in err
    assert STDERR_HANDLER not in logging.getLogger().handlers  # left as found


def test_ctrl_c_exits_130_without_a_traceback(
    config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answer_with(monkeypatch, KeyboardInterrupt())
    assert ctl.main(["alive", "--config", str(config)]) == EXIT_INTERRUPTED == 130
    assert capsys.readouterr().err == ""


# -- top's deadline ----------------------------------------------------------------------------


def test_a_database_that_stops_answering_does_not_freeze_top(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = load_settings(
        {
            "version": 1,
            "brokers": {
                "pg_notify": {"conninfo": "dbname=x", "channels": ["tasks"]},
                "pg_queue": {"conninfo": "dbname=x", "queues": ["mail"]},
            },
        }
    )
    collector = Collector(settings, None, timeout=0.2)
    monkeypatch.setattr(ctl_top_poll, "CONNECT_TIMEOUT", 0.1)

    async def stuck(*args: Any) -> Any:
        await anyio.sleep_forever()

    monkeypatch.setattr(collector, "_status", stuck)
    monkeypatch.setattr(collector, "_depths", stuck)

    async def poll_twice() -> tuple[Poll, float]:
        started = anyio.current_time()
        with anyio.fail_after(5):
            await collector.poll()
            return await collector.poll(), anyio.current_time() - started

    poll, took = anyio.run(poll_twice)
    assert took < 2
    assert poll.status == 1
    assert poll.notes == [
        "cannot ask the services: no answer from the database within 0.3 s",
        "cannot read the durable queues' depth: no answer from the database within 0.3 s",
    ]


@pytest.mark.parametrize(
    ("command", "reply", "shown"),
    [
        # A service of the first version answered running and cancel with lists.
        ("running", {"tasks": [{"uuid": "u-1", "task": "a.b"}]}, ["tasks:", "uuid  task", "u-1"]),
        ("cancel", {"cancelled": ["u-1", "u-2"]}, ['cancelled: ["u-1", "u-2"]']),
        ("workers", {"workers": [{"worker_id": 0, "pid": 42}]}, ["workers:", "worker_id  pid"]),
        ("aio_tasks", {"count": 3}, ["count: 3"]),
    ],
)
def test_a_reply_of_a_shape_it_does_not_know_is_shown_as_it_came_never_as_empty(
    command: str, reply: dict[str, Any], shown: list[str]
) -> None:
    text = render(ControlResult(command, replies=[{"node_id": "old-1", **reply}], expected=1))
    lines = [line.strip() for line in text.splitlines()]
    assert lines[0] == "old-1:"
    assert "(none)" not in text
    assert "not in the shape this dispatcherctl knows" in lines[1]
    for expected in shown:
        assert any(line.startswith(expected) for line in lines), (expected, lines)


def test_entries_beside_parts_of_an_unknown_shape_are_both_shown() -> None:
    reply = {"node_id": "n", "worker-0": {"uuid": "u-0", "task": "a.b"}, "extra": [1, 2]}
    lines = render(ControlResult("running", replies=[reply], expected=1)).splitlines()
    assert lines[2].split()[:3] == ["worker-0", "u-0", "a.b"]
    assert "not in the shape this dispatcherctl knows" in lines[3]
    assert lines[4].strip() == "extra: [1, 2]"
