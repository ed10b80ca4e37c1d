"""``dispatcherctl top`` against running services: the live view under a pseudo-terminal,
and the one-snapshot output for scripts."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from support.durable import migrated
from support.queue_rows import insert_job, unique_schema
from support.service import Evidence, ServiceProcess
from support.service import task_message as message

StartService = Callable[..., ServiceProcess]
Notify = Callable[[str, str], None]

SLEEPER = "support.service_tasks.sleep_recording_cancel"
ANSI = re.compile(r"\x1b(?:\[[0-9;?]*[ -/]*[@-~]|[()][0-9A-Za-z]|[=>78])")
"""Escape sequences a terminal interprets (rich writes CSI, charset and keypad ones)."""
LEAVE_ALTERNATE_SCREEN = "\x1b[?1049l"
HEADER = "dispatcherctl top:"


def top_command(config: Path, *args: str, before: tuple[str, ...] = ()) -> list[str]:
    """``dispatcherctl [BEFORE...] top --config CONFIG [ARGS...]``."""
    ctl = [sys.executable, "-m", "dispatcher.server.ctl", *before]
    return [*ctl, "top", "--config", str(config), *args]


def running_for(frame: str) -> float:
    """How long the sleeper has run, in seconds, as a screen shows it."""
    [row] = [line for line in frame.splitlines() if "u-top-sleeper" in line]
    found = re.search(r"u-top-sleeper +(\d+(?:\.\d+)?) (ms|s) ", row)
    assert found, row
    return float(found[1]) / (1000 if found[2] == "ms" else 1)


class Terminal:
    """A command running on a pseudo-terminal of *columns* (200) by 60 rows, as under a
    person: the terminal is its controlling one, so that Ctrl-C interrupts it."""

    def __init__(self, command: list[str], columns: int = 200) -> None:
        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 60, columns, 0, 0))
        self.mode_before = termios.tcgetattr(self.slave)
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(columns), "LINES": "60"}
        env.pop("NO_COLOR", None)
        self.process = subprocess.Popen(
            command,
            stdin=self.slave,
            stdout=self.slave,
            stderr=self.slave,
            env=env,
            start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
        self.output = ""

    def mode(self) -> list[Any]:
        return termios.tcgetattr(self.slave)

    @property
    def text(self) -> str:
        """What was written so far, escape sequences left out."""
        return ANSI.sub("", self.output)

    def frames(self) -> list[str]:
        """The screens drawn whole so far (each starts with the header; the last may not be
        whole yet, so it is left out)."""
        return [HEADER + frame for frame in self.text.split(HEADER)[1:-1]]

    def read_for(self, seconds: float) -> None:
        """Read what the command writes, for up to *seconds* (less once it has exited)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.master], [], [], min(left, 0.05))
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # the other side closed (Linux says EIO)
                    return
                self.output += chunk.decode(errors="replace")
            elif self.process.poll() is not None:
                return

    def wait_for(self, condition: Callable[[str], bool], timeout: float) -> None:
        """Read until *condition* holds on :attr:`text`, or fail at the deadline."""
        deadline = time.monotonic() + timeout
        while not condition(self.text):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise AssertionError(f"screen never showed what was expected:\n{self.text}")
            self.read_for(0.1)

    def send(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def wait_exit(self, timeout: float) -> int:
        """Keep reading (so that the command never blocks writing) until it exits."""
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            assert time.monotonic() < deadline, f"still running after {timeout} s"
            self.read_for(0.1)
        self.read_for(0.2)
        return self.process.returncode

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def terminal() -> Iterator[Callable[..., Terminal]]:
    opened: list[Terminal] = []

    def open_terminal(command: list[str], columns: int = 200) -> Terminal:
        opened.append(Terminal(command, columns))
        return opened[-1]

    yield open_terminal
    for each in opened:
        each.close()


@pytest.fixture
def busy_service(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> ServiceProcess:
    """A service with a failed task and a rejected message behind it, and a long task
    running on a worker."""
    service_config["service"]["node_id"] = f"{channel}-top"
    service = start_service(service_config)
    notify(channel, message("no_such_task", uuid="u-top-rejected"))
    service.wait_for_log(r"'support\.service_tasks\.no_such_task' is not registered")
    notify(channel, message("fail", evidence.path, uuid="u-top-failed"))
    service.wait_for_log(r"u-top-failed\) failed")
    notify(channel, message("sleep_recording_cancel", evidence.path, 60, uuid="u-top-sleeper"))
    evidence.wait_for(2)
    return service


@pytest.mark.parametrize("quit_key", [b"q", b"\x03"], ids=["q", "ctrl-c"])
def test_live_view_shows_the_running_task_until_quit_and_restores_the_terminal(
    busy_service: ServiceProcess,
    terminal: Callable[..., Terminal],
    channel: str,
    quit_key: bytes,
) -> None:
    screen = terminal(top_command(busy_service.config_path, "--interval", "0.3"))
    screen.wait_for(lambda text: len(screen.frames()) >= 3, timeout=30)
    first, *_, text = screen.frames()
    assert f"{channel}-top" in text
    [row] = [line for line in text.splitlines() if "u-top-sleeper" in line]
    assert SLEEPER in row
    assert re.search(r"\b0\s+\d+\s+busy\b", row), row  # worker 0, its pid, busy
    assert running_for(text) > running_for(first)  # how long it has run, refreshed
    assert "u-top-failed" in text
    assert "this task always fails" in text
    assert not screen.mode()[3] & termios.ICANON  # keys are read one by one meanwhile
    screen.send(quit_key)
    assert screen.wait_exit(timeout=10) == 0
    assert screen.mode() == screen.mode_before
    assert LEAVE_ALTERNATE_SCREEN in screen.output  # the screen as it was before


def test_on_80_columns_a_worker_takes_one_line_and_uuids_are_whole(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
    terminal: Callable[..., Terminal],
) -> None:
    sleeper, failed = str(uuid.uuid4()), str(uuid.uuid4())
    service = start_service(service_config)
    notify(channel, message("fail", evidence.path, uuid=failed))
    service.wait_for_log(failed + r"\) failed")
    notify(channel, message("sleep_recording_cancel", evidence.path, 60, uuid=sleeper))
    evidence.wait_for(2)
    screen = terminal(top_command(service.config_path, "--interval", "0.3"), columns=80)
    screen.wait_for(lambda text: len(screen.frames()) >= 2, timeout=30)
    lines = screen.frames()[-1].splitlines()
    [row] = [line for line in lines if sleeper in line]  # whole, on one line
    assert re.fullmatch(r"│ 0 +support\.\S*… +" + sleeper + r" +\S.* │", row), row
    after = lines[lines.index(row) + 1]
    assert re.match(r"│ (\d+ |recent failures)", after), after  # the row took one line
    assert any(failed in line for line in lines)
    assert max(map(len, lines)) <= 80
    screen.send(b"q")
    assert screen.wait_exit(timeout=10) == 0


def test_without_a_terminal_it_prints_one_snapshot_and_exits_0(
    busy_service: ServiceProcess, channel: str
) -> None:
    shown = subprocess.run(
        top_command(busy_service.config_path),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count("dispatcherctl top:") == 1
    assert "\x1b" not in shown.stdout
    [row] = [line for line in shown.stdout.splitlines() if "u-top-sleeper" in line]
    assert SLEEPER in row
    assert "busy" in row
    assert f"{channel}-top" in shown.stdout
    assert re.search(r"rejected: unknown_task 1(?!\d)", shown.stdout), shown.stdout
    as_json = subprocess.run(
        top_command(busy_service.config_path, "--once", before=("--json",)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert as_json.returncode == 0, as_json.stderr
    [reply] = json.loads(as_json.stdout)["replies"]
    assert reply["node_id"] == f"{channel}-top"
    [failure] = reply["recent_failures"]
    assert (failure["uuid"], failure["outcome"]) == ("u-top-failed", "error")
    assert failure["error"] == "ValueError: this task always fails"
    [busy] = [w for w in reply["workers"].values() if w["current_task_uuid"] == "u-top-sleeper"]
    assert busy["current_task_age"] > 0


def test_snapshot_shows_the_durable_queues_depth_and_says_no_service_runs(
    pg_conn: psycopg.Connection[Any], pg_dsn: str, channel: str, tmp_path: Path
) -> None:
    schema = migrated(pg_conn, unique_schema())
    for waited in (5, 30, 120):
        insert_job(pg_conn, schema, queue="mail", run_after=-waited)
    insert_job(pg_conn, schema, queue="mail", run_after=600)
    config = tmp_path / "dispatcher.yml"
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
    shown = subprocess.run(
        top_command(config, "--once", before=("--timeout", "0.5")),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert shown.returncode == 1
    said = " ".join(shown.stdout.split())  # as rich wraps it
    assert f"no dispatcher service listening on channel {channel} is connected to the" in said
    [row] = [line for line in shown.stdout.splitlines() if line.startswith("mail ")]
    assert re.fullmatch(r"mail +3 +1 +2 min( \d+ s)? *", row), row  # ready, delayed, oldest


def test_an_interval_that_is_not_a_positive_number_is_refused(tmp_path: Path) -> None:
    refused = subprocess.run(
        top_command(tmp_path / "none.yml", "--interval", "0"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert "--interval: must be between 0.1 and 3600 seconds, got '0'" in refused.stderr
    assert "Traceback" not in refused.stderr
