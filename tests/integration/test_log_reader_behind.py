"""A service whose standard error nobody reads goes on serving, and stops when told.

Its log is a pipe: once the pipe is full, a line written by the event loop would wait for the
reader, and with it dispatching, timeouts, control commands and lease renewals; a line
written by a worker (its task's output) would hold that task, and the next. Lines are
dropped instead, counted, and a line says how many once the reader reads again.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dispatcher.config import Settings
from dispatcher.control import control_with_reply
from support.service import (
    TESTS,
    Evidence,
    ServiceProcess,
    standalone_command,
    wait_until,
)
from support.service import task_message as message

LOUD_FAILURE = "support.service_tasks.fail_at_length"
SLEEP = "support.service_tasks.sleep_recording_cancel"
PRINT = "support.service_tasks.print_bytes"
Notify = Callable[[str, str], None]


class UnreadService(ServiceProcess):
    """A service whose standard output and error are a pipe, read only when the test says."""

    def start(self, *extra_args: str) -> UnreadService:
        self.config_path.write_text(json.dumps(self.config, indent=2))
        env = {**os.environ, "PYTHONPATH": str(TESTS), **self.extra_env}
        env.pop("DISPATCHER_CONFIG_FILE", None)
        read, write = os.pipe()
        os.set_blocking(read, False)
        self._pipe = read
        self._read = bytearray()
        command = [*standalone_command(), "--config", str(self.config_path), *extra_args]
        self.process = subprocess.Popen(
            [*command, "--log-level", self.log_level],
            stdout=write,
            stderr=write,
            env=env,
            cwd=self.folder,
            start_new_session=True,
        )
        os.close(write)
        return self

    @property
    def log(self) -> str:
        """What the service wrote so far: reading it empties the pipe."""
        while True:
            try:
                data = os.read(self._pipe, 1 << 16)
            except BlockingIOError:
                break
            if not data:
                break
            self._read += data
        return self._read.decode(errors="replace")

    def close(self) -> None:
        os.close(self._pipe)


def status() -> dict[str, Any]:
    [reply] = control_with_reply("status", expected_replies=1, timeout=5).replies
    return reply


def test_a_log_nobody_reads_holds_neither_the_loop_nor_the_stop(
    service_config: dict[str, Any],
    configured: Settings,
    notify: Notify,
    channel: str,
    evidence: Evidence,
    tmp_path: Path,
) -> None:
    service_config["service"]["pool"] = {"min_workers": 2, "max_workers": 2}
    service = UnreadService(service_config, tmp_path).start()
    try:
        service.wait_ready()
        # Each failure's log line holds a traceback of 32 KiB: 60 of them fill the pipe, and
        # more than the lines the service keeps waiting (1 Mi characters).
        for _ in range(60):
            notify(channel, message(LOUD_FAILURE, evidence.path, 40, 900))
        wait_until(lambda: status()["log_lines_dropped"] > 0, timeout=20)

        # The loop still serves: a timeout fires, a control command is answered.
        notify(channel, message(SLEEP, evidence.path, 30, "timed", timeout=0.5))
        timed = wait_until(
            lambda: [r for r in evidence.records() if r.get("label") == "timed"][1:], timeout=10
        )
        assert timed[0]["event"] == "cancelled", timed
        [alive] = control_with_reply("alive", expected_replies=1, timeout=5).replies
        assert alive["node_id"]

        # Read again: one line says how many lines were dropped, where they were.
        said = service.wait_for_log(r"WARNING dispatcher\.service: \d+ log lines dropped", 10)
        dropped = int(re.search(r"(\d+) log lines dropped", said[0]).group(1))  # type: ignore[union-attr]
        assert dropped >= 1
        assert status()["log_lines_dropped"] == dropped
        assert "ValueError: 00000" in service.log  # the lines before the drop are whole

        # Full again, with nobody reading: a stop still ends the service in a few seconds.
        for _ in range(60):
            notify(channel, message(LOUD_FAILURE, evidence.path, 40, 900))
        wait_until(lambda: status()["log_lines_dropped"] > dropped, timeout=20)
        started = time.monotonic()
        service.signal(signal.SIGTERM)
        assert service.wait(timeout=15) == 0
        assert time.monotonic() - started < 10
    finally:
        service.kill_everything()
        service.close()


def _dropped_said(log: str) -> list[int]:
    """The numbers of lines that the lines of *log* say were dropped."""
    return [int(n) for n in re.findall(r"WARNING .*?: (\d+) log lines? dropped", log)]


def _ended(finished: dict[str, int], tasks: int) -> dict[str, int] | None:
    """*finished* (tasks by outcome) once *tasks* have ended, or one did not end ``ok``."""
    return finished if set(finished) - {"ok"} or sum(finished.values()) >= tasks else None


def test_a_log_nobody_reads_holds_no_task_of_a_worker(
    service_config: dict[str, Any],
    configured: Settings,
    notify: Notify,
    channel: str,
    evidence: Evidence,
    tmp_path: Path,
) -> None:
    """A worker wrote its task's output to the log before it reported the task's end: once the
    pipe was full, a task that had ended in time ended ``timeout`` (then ``killed``), and the
    next task's timeout ran while its worker still waited for the reader."""
    service_config["service"]["pool"] = {"min_workers": 1, "max_workers": 1}
    service = UnreadService(service_config, tmp_path).start()
    try:
        service.wait_ready()
        # Each task prints 60 KB (under the cap of 64 KiB), logged as about 95 k characters:
        # the first fills the pipe, the 40 are more than a worker lets wait (1.3 Mi).
        for _ in range(40):
            notify(channel, message(PRINT, evidence.path, 60_000, timeout=2))
        # (Until they have all ended, or one has ended otherwise: ``timeout``, ``killed``.)
        ended = wait_until(lambda: _ended(status()["finished"], 40), timeout=60)
        assert ended == {"ok": 40}

        # The same worker runs the next task as any other.
        notify(channel, message(SLEEP, evidence.path, 0.1, "next", timeout=2))
        wait_until(lambda: status()["finished"].get("ok") == 41, timeout=10)
        ran = [r for r in evidence.records() if r.get("event") == "printed" or r.get("label")]
        assert len({r["pid"] for r in ran}) == 1
        assert [r["event"] for r in ran if r.get("label") == "next"] == ["start", "end"]
        assert status()["log_lines_dropped"] > 0

        # Read again: the worker says how many of its lines were dropped, where they were.
        said = service.wait_for_log(r"WARNING worker-\d+ dispatcher\.worker: \d+ log lines", 10)
        assert int(re.search(r": (\d+) log lines", said[0]).group(1)) > 0  # type: ignore[union-attr]
        assert "task output [support.service_tasks.print_bytes " in service.log

        # Every line dropped is counted, the worker's included (with its next task's end).
        notify(channel, message(SLEEP, evidence.path, 0, "last", timeout=2))
        wait_until(lambda: status()["finished"].get("ok") == 42, timeout=10)
        wait_until(lambda: status()["log_lines_dropped"] == sum(_dropped_said(service.log)), 10)
    finally:
        service.kill_everything()
        service.close()
