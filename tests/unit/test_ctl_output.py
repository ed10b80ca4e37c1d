"""``dispatcherctl`` shows replies from outside without letting them forge terminal lines."""

from __future__ import annotations

import json
import re

import pytest

from dispatcher.control import ControlResult
from dispatcher.server.ctl_columns import cut, width
from dispatcher.server.ctl_control import _control_data
from dispatcher.server.ctl_parser import parser
from dispatcher.server.ctl_render import ARGUMENTS_WIDTH, add_elapsed, render, task_ages
from dispatcher.server.ctl_reply_notes import mixed_versions, shortfall, tally
from dispatcher.server.ctl_values import duration_text, size_text


def test_replies_cannot_start_lines_or_send_terminal_sequences() -> None:
    result = ControlResult(
        "status",
        replies=[
            {
                "node_id": "host-a\nhost-b:",
                "note\u2028key": "value\r\x1b[2J\x00",
                "running": {
                    "worker-0\n": {"uuid": "u\nhost-c:", "task": "t\u202e", "where": "worker-0"}
                },
            }
        ],
    )
    assert render(result).splitlines() == [
        "host-a\\nhost-b::",
        "  note\\u2028key: value\\r\\x1b[2J\\x00",
        "  running:",
        "    slot        where     uuid        task",
        "    worker-0\\n  worker-0  u\\nhost-c:  t\\u202e",
    ]


def test_running_and_workers_replies_are_tables_of_their_entries() -> None:
    running = ControlResult(
        "running",
        replies=[
            {
                "node_id": "b",
                "worker-0": {"task": "app.t", "uuid": "u1", "where": "worker-0", "args": [1]},
                "queued-0": {"task": "app.t", "uuid": "u2", "where": "worker-0 next"},
            },
            {"node_id": "a"},
            {"node_id": "c", "error": "cancel needs a filter"},
        ],
    )
    assert render(running).splitlines() == [
        "a:",
        "  (none)",
        "b:",
        "  slot      where          uuid  task   args",
        "  worker-0  worker-0       u1    app.t  [1]",
        "  queued-0  worker-0 next  u2    app.t  -",
        "c:",
        "  error: cancel needs a filter",
    ]
    worker = {"worker_id": 3, "pid": 7, "status": "ready", "state": "busy", "current_task": "t"}
    theirs = {"worker_id": 4, "pid": 8, "status": "ready", "current_task": None}
    replies = [{"node_id": "a", "worker-3": worker, "worker-4": theirs}]
    lines = render(ControlResult("workers", replies=replies)).splitlines()
    # Columns no worker has a value for are left out.
    assert lines[1].split() == ["worker_id", "pid", "state", "current_task"]
    assert lines[2].split() == ["3", "7", "busy", "t"]
    assert lines[3].split() == ["4", "8", "ready", "-"]  # a dispatcherd one


def test_arguments_are_cut_to_their_columns_wide_characters_counting_two() -> None:
    entry = {"task": "app.t", "uuid": "u1", "where": "worker-0"}
    wide = {**entry, "args": ["報告" * 30], "kwargs": {"k": "y" * 100}}
    result = ControlResult("running", [{"node_id": "a", "worker-0": wide}])
    [_, _, row] = render(result).splitlines()
    [*_, args, kwargs] = re.split(r"  +", row)
    assert args == '["' + "報告" * 9 + "…"  # 39 columns: the next character takes two
    assert kwargs == '{"k": "' + "y" * 32 + "…"
    assert width(kwargs) == ARGUMENTS_WIDTH


def test_cut_counts_columns() -> None:
    assert cut("abc", 3) == "abc"
    assert cut("abcd", 3) == "ab…"
    assert cut("漢字漢字", 8) == "漢字漢字"
    assert cut("漢字漢字", 7) == "漢字漢…"
    assert cut("漢字漢字", 6) == "漢字…"
    assert cut("cafe\u0301s", 4) == "caf…"
    assert cut("cafe\u0301", 4) == "cafe\u0301"


def test_the_tally_says_how_many_replies_were_waited_for_and_why() -> None:
    result = ControlResult("alive", replies=[{"node_id": "a"}], expected=2)
    result.expected_nodes = ["a", "b"]
    assert tally(result, looked_up=True, channel="tasks") == (
        "(1 of 2 replies: one per dispatcher service listening on channel tasks; "
        "dispatcherd services are not counted: --expected-replies N waits for N)"
    )
    assert tally(result, looked_up=False) == "(1 of 2 replies)"
    more = ControlResult("alive", replies=[{"node_id": "a"}, {"node_id": "dd-1"}], expected=1)
    more.expected_nodes = ["a"]  # and a dispatcherd service answered too
    assert tally(more, looked_up=True).startswith("(2 replies, 1 waited for: one per")


def test_a_reply_from_a_service_not_looked_up_is_unexpected() -> None:
    result = ControlResult("alive", replies=[{"node_id": "a"}, {"node_id": "dd-1"}], expected=2)
    assert result.unexpected == []  # nobody was looked up
    result.expected_nodes = ["a", "b"]
    assert (result.unexpected, result.missing) == (["dd-1"], ["b"])


@pytest.mark.parametrize(
    ("argv", "data"),
    [
        (["running"], {}),
        (["running", "--uuid", "u", "--args", "[1]"], {"uuid": "u", "args": [1]}),
        (["cancel", "--kwargs", '{"a": 1}'], {"kwargs": {"a": 1}}),
        (["cancel", "--all"], {"all": True}),
        (["aio_tasks", "--limit", "2"], {"limit": 2}),
        (["set_log_level", "debug"], {"level": "DEBUG"}),
        (["set_log_level", "--level", "WARN"], {"level": "WARN"}),
        (["set_log_level", "15"], {"level": 15}),
        (["main"], {}),
    ],
)
def test_command_line_to_control_data(argv: list[str], data: dict[str, object]) -> None:
    assert _control_data(parser().parse_args(argv)) == data


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["running", "--args", "{}"], "expected a JSON array"),
        (["set_log_level", "loud"], "unknown log level 'loud'"),
        (["set_log_level", "--", "-5"], "unknown log level '-5' (expected a whole number, 0 or"),
        (["--log-level", "\x1b[31m", "alive"], "invalid choice: '\\x1b[31m'"),  # as given
    ],
)
def test_bad_options_are_refused_saying_why(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(argv)
    assert said in capsys.readouterr().err


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0.25, "250 ms"),
        (9.383, "9.4 s"),
        (42.4, "42 s"),
        (185, "3 min 5 s"),
        (180, "3 min"),
        (7800, "2 h 10 min"),
        (3 * 86400 + 4 * 3600, "3 d 4 h"),
    ],
)
def test_durations_have_units(seconds: float, shown: str) -> None:
    assert duration_text(seconds) == shown


@pytest.mark.parametrize(
    ("size", "shown"),
    [(512, "512 B"), (12 * 1024, "12.0 KiB"), (29769728, "28.4 MiB"), (3 << 29, "1.50 GiB")],
)
def test_sizes_have_units(size: int, shown: str) -> None:
    assert size_text(size) == shown


def test_fields_are_blocks_of_json_words_and_units() -> None:
    reply = {
        "node_id": "a",
        "uptime": 9.383,
        "metrics": {"enabled": False},
        "chunks": {"status": {"active_bytes": 2048}, "partials": {}},
        "producer": {"produced_count": None, "uptime_seconds": 200.0},
        "keys": ["k1"],
        "pool": {"usage": {"top5": {"1": 61.0}, "near_worker_ct": {"2": "absent"}}},
    }
    assert render(ControlResult("status", replies=[reply])).splitlines() == [
        "a:",
        "  uptime: 9.4 s",
        "  metrics:",
        "    enabled: false",
        "  chunks:",
        "    status:",
        "      active_bytes: 2.0 KiB",
        "    partials: (none)",
        "  producer:",
        "    produced_count: null",
        "    uptime_seconds: 3 min 20 s",
        '  keys: ["k1"]',
        "  pool:",
        "    usage:",
        "      top5:",
        "        1: 1 min 1 s",
        "      near_worker_ct:",
        "        2: absent",
    ]


def test_a_task_s_elapsed_time_is_its_run_time_else_its_age() -> None:
    running = {
        "worker-0": {"uuid": "u1", "time_pub": 100.0},
        "queued-0": {"uuid": "u2", "time_pub": 150.0},
        "blocked-0": {"uuid": "u3"},
    }
    shown = add_elapsed(
        running,
        task_ages({"worker-0": {"current_task_uuid": "u1", "current_task_age": 7.5}}),
        now=160.0,
    )
    assert [entry.get("elapsed") for entry in shown.values()] == [7.5, 10.0, None]


def test_two_copies_of_one_job_on_two_workers_each_show_their_own_run_time() -> None:
    running = {
        "worker-0": {"uuid": "u1", "time_pub": 100.0},
        "worker-1": {"uuid": "u1", "time_pub": 100.0},
        "worker-2": {"uuid": "u2", "time_pub": 100.0},  # its worker moved on meanwhile
    }
    workers = {
        "worker-0": {"current_task_uuid": "u1", "current_task_age": 50.0},
        "worker-1": {"current_task_uuid": "u1", "current_task_age": 2.0},
        "worker-2": {"current_task_uuid": "u3", "current_task_age": 1.0},
    }
    shown = add_elapsed(running, task_ages(workers), now=160.0)
    assert [entry["elapsed"] for entry in shown.values()] == [50.0, 2.0, 60.0]


def test_status_shows_each_service_s_version_and_says_when_they_differ() -> None:
    replies = [
        {"node_id": f"web-{n}", "version": version, "uptime": 1.0}
        for n, version in enumerate(["0.2.0", "0.1.0", "0.2.0", *["0.2.0"] * 5])
    ]
    old = {"node_id": "old-1", "uptime": 1.0}  # a release that did not say its version
    result = ControlResult("status", replies=[*replies, old])
    assert render(result).splitlines()[:3] == ["old-1:", "  uptime: 1.0 s", "web-0:"]
    assert render(result).splitlines()[3] == "  version: 0.2.0"
    assert mixed_versions(result) == (
        "the services run different versions of dispatcher: 0.1.0: web-1; "
        "0.2.0: web-0, web-2, web-3, web-4, web-5 and 2 more; "
        "no version (an older release): old-1"
    )
    assert mixed_versions(ControlResult("status", replies=replies[2:])) is None
    assert mixed_versions(ControlResult("status", replies=[old, {**old, "node_id": "x"}])) is None
    assert mixed_versions(ControlResult("alive", replies=[old, replies[0]])) is None
    hostile = {"node_id": "evil", "version": "1\x1b[2J\nforged"}
    said = mixed_versions(ControlResult("status", replies=[hostile, replies[0]]))
    assert said is not None
    assert "\n" not in said
    assert "\x1b" not in said


def test_a_silent_service_whose_name_lists_no_channels_may_serve_other_channels() -> None:
    """A service of an older release is waited for on every channel (its connection's name
    says none): on another channel, its silence is no fault, and --expected-replies helps."""
    nodes = [f"vm-{n}" for n in range(6)]
    result = ControlResult("alive", expected=6, expected_nodes=nodes, unlisted_nodes=["vm-3"])
    for node in nodes[:3] + nodes[4:]:
        result.add(json.dumps({"node_id": node}))
    assert shortfall(result) == (
        "5 of 6 expected replies; no answer from vm-3, whose connection's name lists no "
        "channels (as an older release names them): it may serve other channels only; if so, "
        "--expected-replies 5 waits for the others alone"
    )
    result.replies.pop(0)  # vm-0, which says where it listens, is silent too
    result.unlisted_nodes.append("vm-5")
    result.replies.pop()  # and vm-5
    assert shortfall(result) == (
        "3 of 6 expected replies; no answer from vm-0, vm-3, vm-5; of those, vm-3, vm-5 are "
        "services whose connections' names list no channels (as an older release names "
        "them): they may serve other channels only; if so, --expected-replies 4 waits for "
        "the others alone"
    )
    alone = ControlResult("alive", expected=1, expected_nodes=["vm-3"], unlisted_nodes=["vm-3"])
    assert shortfall(alone) == (
        "0 of 1 expected replies; no answer from vm-3, whose connection's name lists no "
        "channels (as an older release names them): it may serve other channels only; if so, "
        "no service found listens there"
    )
    listed = ControlResult("alive", expected=1, expected_nodes=["vm-0"])
    assert shortfall(listed) == "0 of 1 expected replies; no answer from vm-0"
    # The option it names is dispatcherctl's own.
    assert parser().parse_args(["--expected-replies", "5", "alive"]).expected_replies == 5
