"""What ``dispatcherctl top`` draws from collected replies (no service, no terminal)."""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
from typing import Any

import pytest
from rich.console import Console, RenderableType
from rich.screen import Screen

from dispatcher.config import load_settings
from dispatcher.server import ctl_top, ctl_top_poll
from dispatcher.server.ctl_top_plain import plain_screen
from dispatcher.server.ctl_top_render import (
    FAILURES_SHOWN,
    Poll,
    Rates,
    rates,
    screen,
    service_panel,
)
from dispatcher.server.stats import QueueDepth

NOW = 1_800_000_000.0


def text_of(renderable: RenderableType, width: int = 160) -> str:
    """What a terminal of *width* columns shows, without colours."""
    out = io.StringIO()
    Console(file=out, width=width, color_system=None, force_terminal=False).print(renderable)
    return out.getvalue()


def status(node: str = "node-a", **fields: Any) -> dict[str, Any]:
    """A ``status`` reply with a busy and an idle worker, nothing finished yet."""
    return {
        "node_id": node,
        "uptime": 100.0,
        "pid": 4242,
        "received": 0,
        "finished": {},
        "queued": 3,
        "blocked": 1,
        "delayed": 2,
        "pool": {"count": 2, "min": 1, "max": 4},
        "workers": {
            "worker-0": {
                "worker_id": 0,
                "pid": 5000,
                "state": "busy",
                "current_task": "app.tasks.resize",
                "current_task_uuid": "u-resize",
                "current_task_age": 75.0,
                "finished_count": 12,
                "rss_bytes": 30 * 2**20,
            },
            "worker-1": {
                "worker_id": 1,
                "pid": 5001,
                "state": "ready",
                "current_task": None,
                "current_task_uuid": None,
                "current_task_age": None,
                "finished_count": 7,
            },
        },
        "recent_failures": [],
        **fields,
    }


def row_of(text: str, marker: str) -> list[str]:
    [line] = [line for line in text.splitlines() if marker in line]
    return line.strip("│ ").split()


def test_each_worker_shows_what_it_runs_and_for_how_long() -> None:
    text = text_of(screen(Poll(at=1.0, wall=NOW, replies=[status()])))
    assert "node-a" in text
    assert row_of(text, "u-resize") == [
        *("0", "5000", "busy", "app.tasks.resize", "u-resize"),
        *("1", "min", "15", "s", "12", "30.0", "MiB"),
    ]
    assert row_of(text, "5001") == ["1", "5001", "ready", "-", "-", "-", "7", "-"]
    assert "queued 3   blocked 1   delayed 2" in text
    assert "workers 2 (min 1, max 4)" in text


def test_each_service_shows_the_version_it_runs_when_it_says_it() -> None:
    text = text_of(screen(Poll(at=1.0, wall=NOW, replies=[status(version="0.2.0")])))
    assert "workers 2 (min 1, max 4)   version 0.2.0" in text
    older = text_of(screen(Poll(at=1.0, wall=NOW, replies=[status()])))
    assert "version" not in older


def test_a_failure_is_listed_with_its_task_uuid_age_and_error_line() -> None:
    failure = {
        "task": "app.tasks.charge",
        "uuid": "u-charge",
        "outcome": "error",
        "error": "ValueError: card declined",
        "time": NOW - 42,
    }
    text = text_of(screen(Poll(at=1.0, wall=NOW, replies=[status(recent_failures=[failure])])))
    assert "recent failures" in text
    row = " ".join(row_of(text, "u-charge"))
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d \(42 s ago\) error app\.tasks\.charge u-charge ValueError: card declined",
        row,
    ), row


def test_only_the_newest_failures_are_listed_and_the_others_counted() -> None:
    failures = [
        {"task": "t", "uuid": f"u-{n}", "outcome": "timeout", "error": "timeout", "time": NOW - n}
        for n in range(FAILURES_SHOWN + 3)
    ]
    text = text_of(service_panel(status(recent_failures=failures), None, NOW))
    assert [f"u-{n}" in text for n in range(FAILURES_SHOWN + 3)] == [True] * FAILURES_SHOWN + [
        False
    ] * 3
    assert "and 3 older (dispatcherctl status --json)" in text


def test_rates_come_from_the_counters_of_two_polls() -> None:
    before = Poll(at=10.0, wall=NOW, replies=[status(received=4, finished={"ok": 4})])
    after = Poll(
        at=12.0,
        wall=NOW + 2,
        replies=[status(uptime=102.0, received=10, finished={"ok": 8, "error": 1})],
    )
    assert rates(before, after) == {"node-a": Rates(received=3.0, finished=2.5)}
    text = text_of(screen(after, before))
    assert "received 3.0/s   finished 2.5/s" in text
    assert "finished: ok 8, error 1" in text
    alone = text_of(screen(after))
    assert "received -/s   finished -/s" in alone


def test_no_rate_across_a_restart_or_for_a_service_seen_once() -> None:
    before = Poll(at=10.0, wall=NOW, replies=[status(received=50, finished={"ok": 50})])
    restarted = Poll(
        at=12.0,
        wall=NOW + 2,
        replies=[
            status(uptime=1.5, received=2, finished={"ok": 1}),
            status("node-new", received=9, finished={"ok": 9}),
        ],
    )
    assert rates(before, restarted) == {}
    assert rates(restarted, restarted) == {}  # no time passed


def test_missing_services_notes_and_error_replies_are_shown() -> None:
    poll = Poll(
        at=1.0,
        wall=NOW,
        replies=[{"node_id": "node-b", "error": "the status command is not allowed"}],
        missing=["node-c"],
        notes=["skipped a reply: not JSON"],
    )
    text = text_of(screen(poll))
    assert "dispatcherctl top: 1 service at" in text
    assert "error: the status command is not allowed" in text
    assert "node-c: no answer in time" in text
    assert "skipped a reply: not JSON" in text


def test_the_durable_queues_depth_is_shown_when_configured() -> None:
    depths = {
        "mail": QueueDepth(ready=3, delayed=1, oldest_ready_age=130.0),
        "bulk": QueueDepth(ready=100_000, delayed=0, oldest_ready_age=7200.0),
        "idle": QueueDepth(ready=0, delayed=0, oldest_ready_age=0.0),
    }
    text = text_of(screen(Poll(at=1.0, wall=NOW, depths=depths)))
    assert "durable queues (brokers.pg_queue)" in text
    assert row_of(text, "mail ") == ["mail", "3", "1", "2", "min", "10", "s"]
    assert row_of(text, "bulk ") == ["bulk", ">=100000", "0", "2", "h"]
    assert row_of(text, "idle ") == ["idle", "0", "0", "-"]
    assert "durable queues" not in text_of(screen(Poll(at=1.0, wall=NOW)))
    assert "(not sampled)" in text_of(screen(Poll(at=1.0, wall=NOW, depths={})))


def test_the_queues_are_listed_deepest_first_then_by_name() -> None:
    # They were sorted by name as text: q10 before q2, the busy queue anywhere.
    depths = {
        "q2": QueueDepth(ready=0, delayed=0, oldest_ready_age=0.0),
        "q10": QueueDepth(ready=0, delayed=0, oldest_ready_age=0.0),
        "busy": QueueDepth(ready=500, delayed=0, oldest_ready_age=9.0),
        "later": QueueDepth(ready=0, delayed=7, oldest_ready_age=0.0),
        "some": QueueDepth(ready=3, delayed=0, oldest_ready_age=1.0),
    }
    for text in (text_of(screen(Poll(at=1.0, wall=NOW, depths=depths)))
                 , plain_screen(Poll(at=1.0, wall=NOW, depths=depths))):  # fmt: skip
        lines = text.splitlines()
        start = next(n for n, line in enumerate(lines) if "durable queues" in line) + 2
        assert [line.split()[0] for line in lines[start : start + 5]] == [
            *("busy", "some", "later", "q2", "q10")
        ]


def live_screen(renderable: RenderableType, width: int, height: int) -> list[str]:
    """The lines a live view of *width* by *height* shows (rich's full-screen mode)."""
    out = io.StringIO()
    console = Console(file=out, width=width, height=height, color_system=None, force_terminal=False)
    console.print(Screen(renderable))
    return out.getvalue().splitlines()


def test_the_live_view_cuts_the_lists_to_fit_its_height_and_says_so() -> None:
    # 40 workers and 100 queues: the screen showed workers 0-23, and nothing after them (the
    # box's end, the failures, the queues) without a word.
    workers = {
        f"worker-{n}": {
            "worker_id": n,
            "pid": 6000 + n,
            "state": "busy",
            "current_task": "app.tasks.slow",
            "current_task_uuid": f"uuid-of-worker-{n}",
            "current_task_age": 2.0,
            "finished_count": 0,
        }
        for n in range(40)
    }
    failure = {"task": "app.tasks.x", "uuid": "u-failed", "outcome": "error", "error": "boom"}
    reply = status(workers=workers, recent_failures=[failure | {"time": NOW - 5}])
    depths = {f"q{n}": QueueDepth(ready=n % 7, delayed=0, oldest_ready_age=1.0) for n in range(100)}
    poll = Poll(at=1.0, wall=NOW, replies=[reply], depths=depths, notes=["a note"])
    lines = live_screen(screen(poll, interval=1.0, fit_height=True), width=120, height=40)
    text = "\n".join(lines)
    assert len(lines) == 40
    assert any(line.startswith("╰") for line in lines)  # the service's box is whole
    assert "u-failed" in text
    assert lines[-1].strip() == "a note"
    shown_workers = [n for n in range(40) if f"uuid-of-worker-{n} " in text]
    assert shown_workers == list(range(len(shown_workers)))
    assert 3 <= len(shown_workers) < 40
    assert f"… {40 - len(shown_workers)} more workers (a taller terminal" in text
    start = next(n for n, line in enumerate(lines) if "durable queues" in line) + 2
    queues = [line.split()[0] for line in lines[start:] if line.startswith("q")]
    assert 3 <= len(queues) < 100
    expected = sorted(depths, key=lambda q: (-depths[q].ready, int(q[1:])))[: len(queues)]
    assert queues == expected  # the deepest first
    assert f"… {100 - len(queues)} more queues (a taller terminal" in text
    # The lines are shared: neither list takes them all.
    assert abs(len(queues) - len(shown_workers)) <= 1
    # A snapshot (no height) lists everything.
    whole = text_of(screen(poll))
    assert "more workers" not in whole
    assert all(f"uuid-of-worker-{n} " in whole for n in range(40))


def test_values_from_replies_cannot_style_the_screen_or_reach_the_terminal() -> None:
    hostile = "[bold red]x[/] \x1b[2J\nline"
    reply = status(
        node=hostile,
        recent_failures=[
            {"task": hostile, "uuid": "u-h", "outcome": "error", "error": hostile, "time": NOW}
        ],
    )
    reply["workers"]["worker-0"]["current_task"] = hostile
    out = io.StringIO()
    Console(file=out, width=200, force_terminal=True, color_system="truecolor").print(
        screen(Poll(at=1.0, wall=NOW, replies=[reply]))
    )
    written = out.getvalue()
    assert "\x1b[2J" not in written
    plain = re.sub(r"\x1b\[[0-9;]*m", "", written)
    assert plain.count("[bold red]x[/] \\x1b[2J\\nline") == 4  # title, worker, failure x2


def test_replies_of_unexpected_shapes_show_dashes_instead_of_failing() -> None:
    odd = {
        "node_id": "node-odd",
        "uptime": "long",
        "pool": [],
        "workers": {"worker-0": {"worker_id": "zero", "current_task": {"a": 1}}, "x": 3},
        "finished": {"ok": "many", "error": True},
        "recent_failures": ["not a failure", {"time": "yesterday"}],
    }
    text = text_of(screen(Poll(at=1.0, wall=NOW, replies=[odd]), Poll(at=0.0, wall=NOW)))
    assert "uptime -" in text
    assert "finished: none yet" in text


def without_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make rich fail to import, as when it is not installed (even what is loaded already)."""
    for name in [n for n in sys.modules if n == "rich" or n.startswith("rich.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "rich", None)
    monkeypatch.delitem(sys.modules, "dispatcher.server.ctl_top_render", raising=False)


def top_options(**given: Any) -> argparse.Namespace:
    options = {"interval": 1.0, "once": True, "json": False, "timeout": 1.0}
    return argparse.Namespace(**{**options, "expected_replies": None, "config": None, **given})


@pytest.fixture
def polled(monkeypatch: pytest.MonkeyPatch) -> Poll:
    """What top's collector gets (without asking any service): a busy service with a
    failure and a rejection, and the durable queues."""
    failure = {"task": "app.t", "uuid": "u-failed", "outcome": "error", "error": "E", "time": NOW}
    poll = Poll(
        at=1.0,
        wall=NOW,
        replies=[status(recent_failures=[failure], rejected={"unknown_task": 1})],
        depths={"mail": QueueDepth(ready=3, delayed=1, oldest_ready_age=130.0)},
        notes=["a note"],
    )

    async def collected(self: ctl_top_poll.Collector) -> Poll:
        return poll

    monkeypatch.setattr(ctl_top_poll.Collector, "poll", collected)
    return poll


def test_without_rich_the_live_view_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    without_rich(monkeypatch)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert ctl_top.run(load_settings({"version": 1}), top_options(once=False)) == 2
    assert capsys.readouterr().err == (
        "dispatcherctl: top's live view needs the rich library: pip install "
        '"dispatcher-server[top]" (top --once prints a plain snapshot without it)\n'
    )


def test_without_rich_a_json_snapshot_is_printed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], polled: Poll
) -> None:
    without_rich(monkeypatch)
    assert ctl_top.run(load_settings({"version": 1}), top_options(json=True)) == 0
    printed = capsys.readouterr()
    assert json.loads(printed.out) == {
        "replies": polled.replies,
        "missing": [],
        "pg_queue": {"mail": {"ready": 3, "delayed": 1, "oldest_ready_age": 130.0}},
    }
    assert printed.err == "dispatcherctl: a note\n"


def test_without_rich_a_snapshot_is_printed_as_plain_text(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], polled: Poll
) -> None:
    without_rich(monkeypatch)
    assert ctl_top.run(load_settings({"version": 1}), top_options()) == 0
    printed = capsys.readouterr()
    assert printed.err == ""
    text = printed.out
    assert text.startswith("dispatcherctl top: 1 service at ")
    assert "\nnode-a:\n  uptime 1 min 40 s   pid 4242   workers 2 (min 1, max 4)\n" in text
    assert "\n  rejected: unknown_task 1\n" in text
    assert row_of(text, "worker ") == [
        "worker",
        "pid",
        "state",
        "task",
        "uuid",
        "running",
        *("for", "done", "memory"),
    ]
    assert row_of(text, "u-resize") == [
        *("0", "5000", "busy", "app.tasks.resize", "u-resize"),
        *("1", "min", "15", "s", "12", "30.0", "MiB"),
    ]
    assert "  recent failures:\n" in text
    assert row_of(text, "u-failed")[-4:] == ["error", "app.t", "u-failed", "E"]
    assert row_of(text, "mail ") == ["mail", "3", "1", "2", "min", "10", "s"]
    assert text.endswith("\na note\n")


def test_rejected_messages_are_counted_by_reason() -> None:
    reply = status(rejected={"unknown_task": 1, "not_json": 3, "bad_args": 0})
    text = text_of(screen(Poll(at=1.0, wall=NOW, replies=[reply])))
    assert "rejected: not_json 3, unknown_task 1" in text
    assert "rejected" not in text_of(screen(Poll(at=1.0, wall=NOW, replies=[status()])))


def test_uuids_and_task_names_do_not_wrap_the_error_takes_the_rest() -> None:
    uuid = "3f1c9a52-7d4e-4b8a-9c61-ed0a35f31163"
    task = "myapp.tasks.reports.build_monthly_report"
    failure = {
        "task": task,
        "uuid": uuid,
        "outcome": "error",
        "error": "RuntimeError: " + "the report could not be built " * 4,
        "time": NOW - 5,
    }
    reply = status(recent_failures=[failure])
    reply["workers"]["worker-0"]["current_task_uuid"] = uuid
    narrow = text_of(screen(Poll(at=1.0, wall=NOW, replies=[reply])), width=120)
    assert narrow.count(uuid) == 2, narrow  # the worker's and the failure's, each whole
    [row] = [line for line in narrow.splitlines() if "ago)" in line]
    assert re.search(r" myapp\.tasks\.reports\.\S*… +" + uuid + r" +RuntimeError: the report ", row)
    assert "build_monthly" not in narrow.replace(row, "")  # cut short, not wrapped
    wide = text_of(screen(Poll(at=1.0, wall=NOW, replies=[reply])), width=200)
    [row] = [line for line in wide.splitlines() if "ago)" in line]
    assert f" {task}  {uuid}  RuntimeError: the report could not be built " in row


# -- fitted to the terminal's width ---------------------------------------------------------------

UUIDS = ["3f1c9a52-7d4e-4b8a-9c61-ed0a35f31163", "9b2e4c11-0a6f-4d3e-8b7c-5f1a2e3d4c5b"]
LONG_TASK = "myapp.tasks.reports.build_monthly_report_for_every_customer"
FAILED_UUID = "c0ffee00-1234-4abc-8def-0123456789ab"


def busy_reply() -> dict[str, Any]:
    """Two workers running tasks of long names under whole uuids, one stopping, and a
    failure of a long name and a long error."""
    reply = status(
        recent_failures=[
            {
                "task": LONG_TASK,
                "uuid": FAILED_UUID,
                "outcome": "error",
                "error": "RuntimeError: " + "the report could not be built " * 4,
                "time": NOW - 5,
            }
        ]
    )
    workers = reply["workers"]
    for worker, uuid in zip(("worker-0", "worker-1"), UUIDS, strict=True):
        workers[worker].update(
            state="busy", current_task=LONG_TASK, current_task_uuid=uuid, current_task_age=75.0
        )
    workers["worker-2"] = {"worker_id": 2, "pid": 5002, "state": "stopping", "finished_count": 3}
    return reply


WORKERS_AT = {  # the workers' columns shown, by how many: done, pid, memory, state, running
    # for are left out, in this order
    3: ["worker", "task", "uuid"],
    4: ["worker", "task", "uuid", "running for"],
    5: ["worker", "state", "task", "uuid", "running for"],
    6: ["worker", "state", "task", "uuid", "running for", "memory"],
    7: ["worker", "pid", "state", "task", "uuid", "running for", "memory"],
    8: ["worker", "pid", "state", "task", "uuid", "running for", "done", "memory"],
}
FAILURES_AT = {3: ["task", "uuid", "error"], 5: ["when", "outcome", "task", "uuid", "error"]}
FITTED = {  # width: the workers' columns, the failures', whether uuids are whole in each
    40: (WORKERS_AT[3], FAILURES_AT[3], False, False),
    60: (WORKERS_AT[5], FAILURES_AT[3], False, False),
    80: (WORKERS_AT[4], FAILURES_AT[3], True, True),
    100: (WORKERS_AT[6], FAILURES_AT[3], True, True),
    120: (WORKERS_AT[8], FAILURES_AT[5], True, True),
    200: (WORKERS_AT[8], FAILURES_AT[5], True, True),
}
"""What the rich screen shows at each width (its panel takes 4 columns): a uuid is cut to 8
characters only when every column that can be left out is (then the others come back)."""
PLAIN_FITTED = {  # the same for the plain snapshot (indented by 2 columns, 4 for failures)
    40: (WORKERS_AT[3], FAILURES_AT[3], False, False),
    60: (WORKERS_AT[3], FAILURES_AT[3], True, False),
    80: (WORKERS_AT[4], FAILURES_AT[3], True, True),
    100: (WORKERS_AT[7], FAILURES_AT[3], True, True),
    120: (WORKERS_AT[8], FAILURES_AT[5], True, True),
    200: (WORKERS_AT[8], FAILURES_AT[5], True, True),
}


def uuid_as_shown(uuid: str, whole: bool) -> str:
    return uuid if whole else uuid[:8] + "…"


def header_columns(line: str, names: list[str]) -> list[str]:
    """The column names a table's header line shows, in order ("running for" is one)."""
    found = re.findall(r"running for|\S+", line)
    assert " ".join(found) == " ".join(names), line
    return found


@pytest.mark.parametrize("width", sorted(FITTED))
def test_at_any_width_a_worker_takes_one_line_and_no_uuid_wraps(width: int) -> None:
    worker_columns, failure_columns, whole, failure_whole = FITTED[width]
    text = text_of(screen(Poll(at=1.0, wall=NOW, replies=[busy_reply()])), width=width)
    assert max(map(len, text.splitlines())) <= width
    lines = [line[2:-2].rstrip() if line.startswith("│") else line for line in text.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("worker "))
    header_columns(lines[start], worker_columns)
    # A line per worker, then the failures: no row took a second line.
    workers = lines[start + 1 : start + 4]
    assert [row.split()[0] for row in workers] == ["0", "1", "2"], text
    assert lines[start + 4] == "recent failures", text
    for row, uuid in zip(workers[:2], UUIDS, strict=True):
        assert f"  {uuid_as_shown(uuid, whole)}  " in row + "  ", text
        [task] = [cell for cell in row.split() if cell.startswith("myapp.")]
        assert task == LONG_TASK or (task.endswith("…") and LONG_TASK.startswith(task[:-1]))
    assert "running for" not in worker_columns or "1 min 15 s" in workers[0]
    # The failure: its task, uuid and the start of its error on one line; only the error
    # wraps, under itself.
    header = lines[start + 5]
    header_columns(header, failure_columns)
    failed = uuid_as_shown(FAILED_UUID, failure_whole)
    [row] = [line for line in lines if failed in line]
    assert re.search(r"myapp\.\S+  " + re.escape(failed), row), text
    assert re.search(r"  RuntimeErr", row), text
    error_at = header.index("error")
    below = lines[lines.index(row) + 1 : -1]
    assert below, text  # the error did wrap
    assert all(not line[:error_at].strip() for line in below), text
    assert sum(LONG_TASK[:10] in line for line in lines) == 3  # no task name wrapped


@pytest.mark.parametrize("width", sorted(PLAIN_FITTED))
def test_the_plain_snapshot_fits_a_terminal_of_any_width_too(width: int) -> None:
    worker_columns, failure_columns, whole, failure_whole = PLAIN_FITTED[width]
    text = plain_screen(Poll(at=1.0, wall=NOW, replies=[busy_reply()]), width)
    lines = text.splitlines()
    start = lines.index("  finished: none yet") + 1
    tables = lines[start:]
    assert max(map(len, tables)) <= width, text  # no line the terminal would wrap
    header_columns(tables[0], worker_columns)
    for row, uuid in zip(tables[1:3], UUIDS, strict=True):
        assert f"  {uuid_as_shown(uuid, whole)}  " in row + "  ", text
    assert tables[3].split()[0] == "2"
    assert tables[4] == "  recent failures:"
    header_columns(tables[5], failure_columns)
    failed = uuid_as_shown(FAILED_UUID, failure_whole)
    assert re.search(r"  myapp\.\S+  " + re.escape(failed) + "  RuntimeErr", tables[6])
    assert tables[6].endswith("…") or width == 200, text
    assert len(tables) == 7, text


def test_a_plain_snapshot_on_a_terminal_fits_its_width(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], polled: Poll
) -> None:
    without_rich(monkeypatch)
    polled.replies[:] = [busy_reply()]
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setenv("COLUMNS", "80")
    assert ctl_top.run(load_settings({"version": 1}), top_options()) == 0
    text = capsys.readouterr().out
    tables = text[text.index("  worker ") : text.index("durable queues")].splitlines()
    assert max(map(len, tables)) <= 80, text
    assert all(f"  {uuid}  1 min 15 s" in text for uuid in UUIDS), text


def test_without_a_terminal_the_plain_snapshot_shows_every_value_whole() -> None:
    text = plain_screen(Poll(at=1.0, wall=NOW, replies=[busy_reply()]))
    for uuid in UUIDS:
        assert re.search(f"  {LONG_TASK}  {uuid}  1 min 15 s  ", text), text
    assert "RuntimeError: " + "the report could not be built " * 3 in text


def flat(text: str) -> str:
    """*text*'s words, each line's joined to the next with a space (no borders)."""
    return " ".join(line.strip("│ ") for line in text.splitlines() if line.strip("│ "))


def drawn(reply: dict[str, Any], view: str) -> str:
    """A snapshot of *reply* on the rich screen or as plain text (*view*), 160 columns."""
    poll = Poll(at=1.0, wall=NOW, replies=[reply])
    return text_of(screen(poll, None)) if view == "rich" else plain_screen(poll, 160)


def first_version_status() -> dict[str, Any]:
    """A ``status`` reply of the first versions: the pool's size under ``workers``, no list."""
    reply = status(node="old-1")
    del reply["pool"], reply["recent_failures"]
    reply["workers"] = {"count": 2, "min": 1, "max": 3, "started": 2, "lost": 0}
    return reply


@pytest.mark.parametrize("view", ["rich", "plain"])
def test_a_workers_reply_of_an_older_shape_is_read_and_never_shown_as_no_workers(
    view: str,
) -> None:
    text = drawn(first_version_status(), view)
    assert "(no workers)" not in text
    assert "workers 2 (min 1, max 3)" in text
    said = flat(text)  # the rich screen wraps a note to the table's width
    assert "not in the shape this dispatcherctl knows: from a service of another version? " in said
    assert 'shown as it came) workers: {"count": 2, "lost": 0, "max": 3, "min": 1, ' in said


@pytest.mark.parametrize(
    ("workers", "shown"),
    [
        ({"worker-0": {"worker_id": 0, "pid": 7}, "extra": 3}, ['workers: {"extra": 3}']),
        ([{"worker_id": 0, "pid": 7}, "x"], ['workers: [{"pid": 7, "worker_id": 0}, "x"]']),
        ("busy", ["workers: busy"]),
    ],
)
@pytest.mark.parametrize("view", ["rich", "plain"])
def test_parts_of_workers_it_does_not_know_are_shown_as_they_came(
    view: str, workers: object, shown: list[str]
) -> None:
    text = drawn(status(workers=workers), view)
    assert "(no workers)" not in text
    assert "not in the shape this dispatcherctl knows" in flat(text)
    for expected in shown:
        assert f"shown as it came) {expected}" in flat(text)


@pytest.mark.parametrize("view", ["rich", "plain"])
def test_no_workers_is_said_only_when_the_pool_counts_none(view: str) -> None:
    none = status(workers={}, pool={"count": 0, "min": 0, "max": 4})
    assert "(no workers)" in drawn(none, view)
    unlisted = drawn(status(workers={}), view)  # the pool counts 2
    assert "(no workers)" not in unlisted
    assert "the pool counts 2 workers this reply does not list" in flat(unlisted)
