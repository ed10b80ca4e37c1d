"""dispatcherctl against replies from anyone, a database that is not there, Ctrl-C, a closed
pipe and a terminal that cannot show every character: never a traceback, never a control
sequence reaching the terminal, the same exit status for the same failure in every command.

A fake service (a connection named like a service's, on this test's channel) answers what
a hostile or broken service could.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from argparse import _SubParsersAction
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.ctl_here import dispatcherctl
from support.fake_services import FakeService, silent
from support.postgres import unique_channel as postgres_channel
from support.proxy import SilentServer

HOSTILE = "\x1b[31mred\x1b]0;title\x07\u2028line\nbreak\u202eright-to-left\x00ü中"
"""A text that, written raw, would colour, retitle and break the terminal's lines."""

CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e]")
"""What must never reach the terminal from a reply (newline and tab aside)."""


def ctl(
    config: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run our dispatcherctl with *config*."""
    return subprocess.run(
        [sys.executable, "-m", "dispatcher.server.ctl", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def write_config(path: Path, conninfo: str, channel: str, durable: bool = False) -> Path:
    config: dict[str, Any] = {
        "version": 1,
        "brokers": {"pg_notify": {"conninfo": conninfo, "channels": [channel]}},
    }
    if durable:
        config["brokers"]["pg_queue"] = {"conninfo": conninfo, "queues": ["mail"]}
    path.write_text(json.dumps(config))
    return path


def hostile_reply(node_id: str, message: dict[str, Any]) -> list[str]:
    """Every field a view shows, holding control sequences or absurd numbers."""
    worker = {
        "worker_id": HOSTILE,
        "pid": 1e300,
        "state": HOSTILE,
        "current_task": HOSTILE,
        "current_task_uuid": HOSTILE,
        "current_task_age": 1e300,
        "finished_count": HOSTILE,
        "rss_bytes": 1e300,
    }
    task = {"uuid": HOSTILE, "task": HOSTILE, "args": [HOSTILE], "kwargs": {HOSTILE: HOSTILE}}
    reply = {
        "node_id": node_id,
        HOSTILE: HOSTILE,
        "worker-0": worker | task | {"time_pub": -1e300},
        "uptime": 1e300,
        "finished": {HOSTILE: 1e300},
        "pool": {"count": HOSTILE},
        "workers": {"worker-0": worker},
        "running": {"worker-0": task},
        "recent_failures": [
            {"time": 1e300, "task": HOSTILE, "uuid": HOSTILE, "error": HOSTILE, "outcome": HOSTILE},
            {"time": -1e300, "task": "t", "uuid": "u", "error": "e", "outcome": "error"},
        ],
    }
    junk = ["not json \x1b[2J", json.dumps([HOSTILE]), json.dumps({"node_id": 5})]
    return [*junk, json.dumps(reply)]


@pytest.fixture
def hostile(pg_dsn: str, channel: str, tmp_path: Path) -> Iterator[Path]:
    """A config whose channel has a hostile service on it; yields the config's path."""
    service = FakeService(pg_dsn, channel, "hostile-node", hostile_reply)
    try:
        yield write_config(tmp_path / "dispatcher.json", pg_dsn, channel)
    finally:
        service.stop()


@pytest.mark.parametrize("command", ["alive", "status", "running", "workers", "main"])
def test_hostile_replies_never_reach_the_terminal_raw(hostile: Path, command: str) -> None:
    result = ctl(hostile, command)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("hostile-node:\n")
    assert "\\x1b[31mred" in result.stdout + result.stderr or command == "alive"
    assert not CONTROL_CHARS.search(result.stdout), result.stdout
    assert not CONTROL_CHARS.search(result.stderr), result.stderr
    # The three payloads that are no reply are each said once, on stderr.
    assert result.stderr.count("dispatcherctl: skipped a reply: ") == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert all(len(line) < 2000 for line in result.stdout.splitlines())


def test_hostile_replies_as_json_stay_valid_json(hostile: Path) -> None:
    result = ctl(hostile, "status", "--json")
    assert result.returncode == 0, result.stderr
    [reply] = json.loads(result.stdout)
    assert reply[HOSTILE] == HOSTILE
    assert "\x1b" not in result.stdout
    snapshot = ctl(hostile, "top", "--once", "--json")
    assert snapshot.returncode == 0, snapshot.stderr
    assert json.loads(snapshot.stdout)["replies"][0]["uptime"] == 1e300


def test_top_shows_a_hostile_reply_escaped_and_absurd_dates_plainly(hostile: Path) -> None:
    result = ctl(hostile, "top", "--once")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "hostile-node" in result.stdout
    assert "cannot show this reply" not in result.stdout
    assert "\\x1b[31mred" in result.stdout
    assert not CONTROL_CHARS.search(result.stdout.replace("\x1b", "")), result.stdout
    assert "1e+300" in result.stdout  # the failure's date, beyond any clock


def test_a_terminal_without_unicode_gets_escapes_not_a_traceback(hostile: Path) -> None:
    for command in ("status", "running"):
        result = ctl(hostile, command, env={"PYTHONIOENCODING": "ascii"})
        assert result.returncode == 0, result.stderr
        assert "\\xfc\\u4e2d" in result.stdout  # the u-umlaut and the CJK character


# -- a database that is not there ----------------------------------------------------------------


@pytest.fixture
def nowhere(tmp_path: Path) -> Path:
    """A config whose database refuses connections (a port nothing listens on)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    conninfo = f"host=127.0.0.1 port={port} dbname=test user=postgres"
    return write_config(tmp_path / "dispatcher.json", conninfo, "tasks", durable=True)


@pytest.mark.parametrize(
    "command",
    [
        ["alive"],
        ["running", "--task", "t"],
        ["status", "--json"],
        ["top", "--once"],
        ["top", "--once", "--json"],
        ["submit", "app.tasks.t"],
        ["submit", "app.tasks.t", "--queue", "mail"],
        ["jobs"],
        ["install-sql"],
        ["migrate"],
    ],
    ids=" ".join,
)
def test_an_unreachable_database_exits_1_in_every_command(
    nowhere: Path, command: list[str]
) -> None:
    result = ctl(nowhere, *command)
    assert result.returncode == 1, (result.stdout, result.stderr)
    said = result.stdout + result.stderr
    assert re.search(
        r"cannot .* PostgreSQL at 127\.0\.0\.1, port \d+, .*: Connection refused", said
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "command", [["alive"], ["status"], ["submit", "app.tasks.t"], ["jobs"], ["top", "--once"]]
)
def test_ctrl_c_while_connecting_exits_130_without_a_traceback(
    tmp_path: Path, command: list[str]
) -> None:
    server = SilentServer()
    try:
        conninfo = f"host=127.0.0.1 port={server.port} dbname=test user=postgres"
        config = write_config(tmp_path / "dispatcher.json", conninfo, "tasks", durable=True)
        process = subprocess.Popen(
            [sys.executable, "-m", "dispatcher.server.ctl", *command, "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert server.connected.wait(30), "dispatcherctl never connected"
        process.send_signal(signal.SIGINT)
        started = time.monotonic()
        out, err = process.communicate(timeout=30)
        assert time.monotonic() - started < 5  # not after the 10 s connect timeout
        assert process.returncode == 130, (out, err)
        assert "Traceback" not in err
    finally:
        server.close()


@pytest.mark.parametrize(
    "command", [["install-sql", "--print"], ["top", "--once"], ["top", "--once", "--json"]]
)
def test_a_reader_that_goes_away_ends_it_quietly(
    command: list[str], pg_dsn: str, channel: str, tmp_path: Path
) -> None:
    """Exit 141, as shells report SIGPIPE (rich's own way, for top, was exit 1: "a service
    did not answer")."""
    config = write_config(tmp_path / "dispatcher.json", pg_dsn, channel)
    read, write = os.pipe()
    os.close(read)  # as `dispatcherctl install-sql --print | head -0`
    try:
        result = subprocess.run(
            [sys.executable, "-m", "dispatcher.server.ctl", *command, "--config", str(config)],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write)
    assert (result.returncode, result.stderr) == (141, "")


# -- who is waited for -------------------------------------------------------------------------


def test_older_services_and_long_node_ids_with_colons_are_waited_for(
    pg_dsn: str, channel: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An older version names its connection dispatcher-service:<node_id>, without a digest
    # of its channels: a node id such as "dispatcher:web-1" must not be read as one.
    from support import fake_services

    with monkeypatch.context() as older:
        older.setattr(
            fake_services, "service_application_name", lambda node, _: f"dispatcher-service:{node}"
        )
        started = [FakeService(pg_dsn, channel, "dispatcher:web-1")]
    long_id = "team:billing:" + "x" * 40  # cut short in application_name
    started += [
        FakeService(pg_dsn, channel, long_id),
        FakeService(pg_dsn, postgres_channel(), "elsewhere:1"),  # not on this channel
    ]
    config = write_config(tmp_path / "dispatcher.json", pg_dsn, channel)
    try:
        result = ctl(config, "--timeout", "20", "alive", "--json")
    finally:
        for service in started:
            service.stop()
    assert result.returncode == 0, result.stderr
    assert sorted(reply["node_id"] for reply in json.loads(result.stdout)) == sorted(
        ["dispatcher:web-1", long_id]
    )
    assert result.stderr == ""


def test_an_older_service_on_another_channel_is_said_to_be_maybe_elsewhere(
    pg_dsn: str, channel: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its connection's name lists no channels: it is waited for on every one (as clients
    # always did), and on this one it never answers. It was only "no answer from old-1".
    from support import fake_services

    with monkeypatch.context() as older:
        older.setattr(
            fake_services, "service_application_name", lambda node, _: f"dispatcher-service:{node}"
        )
        started = [FakeService(pg_dsn, postgres_channel(), "old-1")]
    started.append(FakeService(pg_dsn, channel, "new-1"))
    config = write_config(tmp_path / "dispatcher.json", pg_dsn, channel)
    try:
        result = ctl(config, "--timeout", "1", "alive")
        told = ctl(config, "--expected-replies", "1", "alive")
    finally:
        for service in started:
            service.stop()
    assert result.returncode == 1
    assert result.stderr == (
        "dispatcherctl: 1 of 2 expected replies; no answer from old-1, whose connection's name "
        "lists no channels (as an older release names them): it may serve other channels "
        "only; if so, --expected-replies 1 waits for the others alone\n"
    )
    assert (told.returncode, told.stderr) == (0, "")


def test_a_stuck_service_sharing_its_node_id_is_named(
    pg_dsn: str, channel: str, tmp_path: Path
) -> None:
    # Two replicas with one node id, one stuck: "1 of 2 expected replies", naming no one.
    started = [FakeService(pg_dsn, channel, "pod-1"), FakeService(pg_dsn, channel, "pod-1", silent)]
    config = write_config(tmp_path / "dispatcher.json", pg_dsn, channel)
    try:
        result = ctl(config, "--timeout", "1", "alive")
    finally:
        for service in started:
            service.stop()
    assert result.returncode == 1
    assert result.stderr == (
        "dispatcherctl: more than one service has the node id 'pod-1': their replies cannot be "
        "told apart; give each its own (service.node_id, or the DISPATCHER_NODE_ID environment "
        "variable)\n"
        "dispatcherctl: 1 of 2 expected replies; no answer from pod-1\n"
    )


def test_a_service_of_many_channels_elsewhere_is_not_reported_missing(
    pg_dsn: str, channel: str, tmp_path: Path
) -> None:
    # Another team's service listens on 200 channels: the digest of its channels in its
    # connection's name matches any channel. It was waited for until the timeout, then
    # reported missing, and `alive` exited 1.
    crowded = [postgres_channel() for _ in range(200)]
    started = [
        FakeService(pg_dsn, channel, "ours"),
        FakeService(pg_dsn, crowded[0], "theirs", silent, also=crowded[1:]),
    ]
    config = write_config(tmp_path / "dispatcher.json", pg_dsn, channel)
    try:
        began = time.monotonic()
        result = ctl(config, "--timeout", "20", "alive")
        waited = time.monotonic() - began
    finally:
        for service in started:
            service.stop()
    assert result.returncode == 0, result.stderr
    assert waited < 10
    assert "ours:" in result.stdout
    assert "theirs" not in result.stdout
    assert result.stderr == (
        f"dispatcherctl: theirs, which may not listen on channel {channel}, did not answer: it "
        "listens on too many channels for its connection's name to tell, and is not counted "
        "missing\n"
    )


# -- --json ------------------------------------------------------------------------------------

COMMAND_LINES = {
    "alive": [],
    "running": ["--task", "t"],
    "cancel": ["--all"],
    "workers": [],
    "status": [],
    "main": [],
    "aio_tasks": ["--limit", "1"],
    "producers": [],
    "chunks": [],
    "metrics": [],
    "set_log_level": ["debug"],
    "run": ["app.tasks.t"],
    "submit": ["app.tasks.t"],
    "top": ["--once"],
    "install-sql": [],
    "migrate": [],
    "jobs": [],
    "retry": ["--failed"],
    "purge": ["--state", "done", "--older-than", "60"],
    "cancel-job": ["--uuid", "u-waiting"],
}
"""A way to run each command of dispatcherctl."""


def test_every_command_prints_json_with_json_or_refuses_it(
    pg_dsn: str,
    pg_conn: Any,
    channel: str,
    tmp_path: Path,
) -> None:
    """Each command in this process (a child each took minutes in all on a loaded machine);
    one in a child too, for what the entry point adds."""
    from dispatcher.server.ctl_parser import parser
    from support.durable import migrated
    from support.queue_rows import insert_job, unique_schema

    [commands] = [a.choices for a in parser()._actions if isinstance(a, _SubParsersAction)]
    assert set(commands) == set(COMMAND_LINES)  # a new command needs a line here
    schema = migrated(pg_conn, unique_schema())
    insert_job(pg_conn, schema, queue="mail", uuid="u-waiting", run_after=600)
    config = tmp_path / "dispatcher.json"
    config.write_text(
        json.dumps(
            {
                "version": 1,
                "brokers": {
                    "pg_notify": {"conninfo": pg_dsn, "channels": [channel]},
                    "pg_queue": {"conninfo": pg_dsn, "schema": schema, "queues": ["mail"]},
                },
            }
        )
    )
    service = FakeService(pg_dsn, channel, "echo-node")
    try:
        in_a_child = ctl(config, "status", "--json")
        assert in_a_child.returncode == 0, in_a_child.stderr
        here = dispatcherctl(config, "status", "--json", env={"COLUMNS": "200"})
        assert (here.returncode, json.loads(here.stdout)) == (0, json.loads(in_a_child.stdout))
        for command, args in COMMAND_LINES.items():
            result = dispatcherctl(config, command, *args, "--json", env={"COLUMNS": "200"})
            if result.returncode == 2:
                assert result.stderr.endswith(f"{command} has no --json output\n"), result.stderr
                continue
            assert result.returncode == 0, (command, result.stderr)
            shown = json.loads(result.stdout)
            if command in ("retry", "purge"):
                assert shown in ({"retried": 0, "skipped": 0}, {"purged": 0, "state": "done"})
    finally:
        service.stop()


@pytest.mark.parametrize(
    ("conninfo", "said"),
    [
        ("dbname=app\\u0000 host=db user=app password=s3cret", "holds a NUL character"),
        ("dbname=\\ud800 password=s3cret", "is not UTF-8 text"),
    ],
)
@pytest.mark.parametrize("command", [["alive"], ["jobs"]])
def test_a_conninfo_libpq_cannot_take_is_a_config_error(
    tmp_path: Path, conninfo: str, said: str, command: list[str]
) -> None:
    """Not cut short at the NUL (the host and user after it ignored), nor a traceback."""
    path = tmp_path / "dispatcher.yml"
    # YAML's escapes: the file itself is plain ASCII.
    path.write_text(
        "version: 1\nbrokers:\n"
        f'  pg_notify: {{conninfo: "{conninfo}", channels: [a]}}\n'
        "  pg_queue: {queues: [q]}\n"
    )
    result = ctl(path, *command)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"dispatcherctl: {path}: brokers.pg_notify.conninfo: ")
    assert said in result.stderr
    assert "s3cret" not in result.stderr
    assert "Traceback" not in result.stderr
