"""One worker process (``worker_main``) run on its own, driven over its socket by the test.

Cheaper than a service: no broker, no fork server. The test sends run requests and reads
the ``done`` events; the worker's log (its standard error) goes to a file read at any time.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dispatcher.server.protocol import STOP_LINE, run_line
from support.paths import REPO

_SCRIPT = """
import logging, os, socket, sys
from dispatcher.server.worker import WorkerOptions, worker_main

options = WorkerOptions(
    worker_id=7, modules=tuple(sys.argv[2:]), hooks_class=os.environ.get("TEST_WORKER_HOOKS"),
    idle_timeout=None, log_level=logging.INFO,
)
worker_main(socket.socket(fileno=int(sys.argv[1])), options)
os._exit(0)  # as under the fork server: a thread a task left running is not waited for
"""


LOG_SETTLE_MOST = 2.0
"""Seconds the worker's log is waited for to be still, at most."""


class WorkerProcess:
    """A worker importing *modules*, its log in *log_path*; use as a context manager.

    *hooks* names its ``worker.class``, if any.
    """

    def __init__(self, log_path: Path, *modules: str, hooks: str | None = None) -> None:
        self.log_path = log_path
        ours, theirs = socket.socketpair()
        self._socket = ours
        self._lines = ours.makefile("rb")
        env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "PYTHONUNBUFFERED": "1"}
        env.pop("TEST_WORKER_HOOKS", None)
        if hooks is not None:
            env["TEST_WORKER_HOOKS"] = hooks
        with log_path.open("wb") as log, open(os.devnull, "rb") as null:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _SCRIPT, str(theirs.fileno()), *modules],
                pass_fds=[theirs.fileno()],
                stdin=null,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,  # a group of its own, as under the fork server
            )
        theirs.close()
        self.ready = self.event(timeout=20)
        assert self.ready["event"] == "ready", self.ready

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def log(self) -> str:
        """What the worker has logged so far, once its log has been still for a moment.

        A worker writes its lines from a thread of its own (a task's end is reported before
        its lines are written): the log read right after an event may not hold them yet.
        """
        still, size = 0, -1
        deadline = time.monotonic() + LOG_SETTLE_MOST
        while still < 3 and time.monotonic() < deadline:
            current = self.log_path.stat().st_size
            still = still + 1 if current == size else 0
            size = current
            time.sleep(0.02)
        return self._read_log()

    def _read_log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def event(self, timeout: float = 10) -> dict[str, Any]:
        """The next event the worker sends."""
        self._socket.settimeout(timeout)
        line = self._lines.readline()
        if not line:
            raise EOFError(f"the worker sent no event; its log:\n{self.log}")
        event: dict[str, Any] = json.loads(line)
        return event

    def send(self, task: str, *args: Any, uuid: str = "u", keep_result: bool = False) -> None:
        """Ask the worker to run *task* (its run request only)."""
        message = json.dumps({"task": task, "args": list(args), "uuid": uuid})
        self._socket.sendall(run_line(message, "test", keep_result))

    def run(
        self, task: str, *args: Any, uuid: str = "u", keep_result: bool = False, timeout: float = 10
    ) -> dict[str, Any]:
        """Run *task* with *args*; return its ``done`` event."""
        self.send(task, *args, uuid=uuid, keep_result=keep_result)
        done = self.event(timeout)
        assert (done["event"], done["uuid"]) == ("done", uuid), done
        return done

    def wait_for_log(self, text: str, timeout: float = 10) -> str:
        """Wait until the log holds *text*; return the log."""
        deadline = time.monotonic() + timeout
        while text not in (log := self._read_log()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in the worker's log:\n{log}")
            time.sleep(0.02)
        return log

    def close(self) -> None:
        """Ask it to stop; kill its process group if it does not."""
        with contextlib.suppress(OSError):
            self._socket.sendall(STOP_LINE)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self._lines.close()
        self._socket.close()
