"""Running ``dispatcher-standalone`` as a subprocess, and watching it from outside."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dispatcher.control.local import socket_request
from support.paths import REPO

TESTS = REPO / "tests"

TASKS = "support.service_tasks."
"""Prefix of the tasks the test services run."""


def task_message(task: str, *args: Any, **options: Any) -> str:
    """A task message (JSON text); a bare *task* name means one of ``support.service_tasks``."""
    name = task if "." in task else TASKS + task
    arguments = [str(arg) if isinstance(arg, Path) else arg for arg in args]
    return json.dumps({"task": name, "args": arguments, **options})


def standalone_command() -> list[str]:
    """The service's command line (``python -m dispatcher.server`` = ``dispatcher-standalone``)."""
    return [sys.executable, "-m", "dispatcher.server"]


def wait_until(condition: Any, timeout: float, interval: float = 0.02) -> Any:
    """Poll *condition* until it returns something truthy; return that, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def children(pid: int) -> set[int]:
    """Every live descendant of process *pid* (read from /proc)."""
    parents = _parents()
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def worker_pids(service_pid: int) -> set[int]:
    """The service's workers: the children of its fork server (a child of the service)."""
    parents = _parents()
    direct = {child for child, parent in parents.items() if parent == service_pid}
    return {child for child, parent in parents.items() if parent in direct}


def direct_children(pid: int) -> set[int]:
    """The live children of process *pid*."""
    return {child for child, parent in _parents().items() if parent == pid}


def zombies(pid: int) -> set[int]:
    """The children of process *pid* that ended and that it has not reaped."""
    return {
        child for child, (state, parent) in _processes().items() if (state, parent) == ("Z", pid)
    }


def _parents() -> dict[int, int]:
    return {pid: parent for pid, (state, parent) in _processes().items() if state != "Z"}


def _processes() -> dict[int, tuple[str, int]]:
    """Every process: its state (``Z``: a zombie) and its parent's pid."""
    found: dict[int, tuple[str, int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            found[int(entry.name)] = (fields[0], int(fields[1]))
    return found


def alive(pid: int) -> bool:
    """Tell whether *pid* exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def vm_rss_bytes(pid: int) -> int:
    """The resident memory of process *pid* (``VmRSS``), in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert match is not None
    return int(match.group(1)) * 1024


def socket_control(service: ServiceProcess, command: str) -> dict[str, Any]:
    """Ask *service* over its socket (``brokers.socket`` in its config); return its reply."""
    path = service.config["brokers"]["socket"]["path"]
    line = socket_request(path, {"control": command, "reply_to": "test"}, timeout=10)
    assert line is not None, f"no reply to {command}"
    return json.loads(line)  # type: ignore[no-any-return]


class Evidence:
    """The file tasks write their evidence to, one JSON object per line."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def records(self) -> list[dict[str, Any]]:
        """The records written whole so far (a task may be writing the last one now)."""
        if not self.path.exists():
            return []
        whole, _, _ = self.path.read_text().rpartition("\n")
        return [json.loads(line) for line in whole.splitlines() if line]

    def wait_for(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        """Wait until at least *count* records exist; return them all."""

        def enough() -> list[dict[str, Any]] | None:
            records = self.records()
            return records if len(records) >= count else None

        return wait_until(enough, timeout)  # type: ignore[no-any-return]


class ServiceProcess:
    """A ``dispatcher-standalone`` process with its own config file and log."""

    def __init__(
        self,
        config: dict[str, Any],
        folder: Path,
        log_level: str = "INFO",
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> None:
        self.config = config
        self.prefix = list(prefix)
        """What the command runs under (``unshare ...``), if anything."""
        self.extra_env = env or {}
        self.folder = folder
        self.config_path = folder / "dispatcher.yml"
        self.log_path = folder / "service.log"
        self.log_level = log_level
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *extra_args: str) -> ServiceProcess:
        # JSON is YAML: the service reads this file as any dispatcher.yml.
        self.config_path.write_text(json.dumps(self.config, indent=2))
        env = {**os.environ, "PYTHONPATH": str(TESTS), "PYTHONUNBUFFERED": "1", **self.extra_env}
        env.pop("DISPATCHER_CONFIG_FILE", None)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    *self.prefix,
                    *standalone_command(),
                    "--config",
                    str(self.config_path),
                    "--log-level",
                    self.log_level,
                    *extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.folder,
                start_new_session=True,  # its own process group, as under a terminal
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, pattern: str, timeout: float = 10, count: int = 1) -> list[str]:
        """Wait until *count* log lines match the regular expression *pattern*."""
        regex = re.compile(pattern)

        def matches() -> list[str]:
            found = [line for line in self.log.splitlines() if regex.search(line)]
            return found if len(found) >= count else []

        try:
            return wait_until(matches, timeout)  # type: ignore[no-any-return]
        except AssertionError:
            raise AssertionError(f"no log line matching {pattern!r}; log:\n{self.log}") from None

    def wait_ready(self, timeout: float = 20) -> ServiceProcess:
        """Wait until the workers report their tasks and the listener listens."""
        self.wait_for_log(r"registered tasks", timeout)
        if self.config.get("brokers", {}).get("pg_notify"):
            self.wait_for_log(r"listening on (channels|no channel)", timeout)
        return self

    def signal(self, number: int) -> None:
        assert self.process is not None
        self.process.send_signal(number)

    def wait(self, timeout: float = 20) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM, then wait for the exit status."""
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill_everything(self) -> None:
        """Clean-up after a test: kill the service and whatever it left."""
        if self.process is None:
            return
        leftovers = children(self.pid)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
