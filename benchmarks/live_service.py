"""A dispatcher service run as a subprocess for the long benchmarks, watched from outside.

The service listens on one channel of its own over pg_notify and on a unix socket in its
folder; its workers import ``bench_tasks``. What the benchmarks read: the ``status`` and
``alive`` control commands (over the socket, so no database round trip), the resident
memory of the main process and of its descendants (from /proc), and the size of its log.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

from dispatcher.control.local import socket_request
from dispatcher.publish import BrokerUnavailable
from dispatcher.schema import service_application_name

HERE = Path(__file__).resolve().parent
DEFAULT_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


def compile_dispatcher() -> None:
    """Write the bytecode of the dispatcher packages, as installing their wheels does.

    Editable installs (this repository's environments) leave it to the first import, which
    does not write it when ``PYTHONDONTWRITEBYTECODE`` is set: every service started would
    then compile about a hundred modules (0.1 s) before its first task, which a deployed
    service never does, and which the services compared with (installed from wheels) never
    pay either.
    """
    import compileall

    import dispatcher

    for folder in dispatcher.__path__:
        compileall.compile_dir(folder, quiet=1)


def rss_bytes(pid: int) -> int | None:
    """Resident memory of process *pid* (``VmRSS``), or ``None`` if it is gone."""
    return _status_field(pid, "VmRSS")


def peak_rss_bytes(pid: int) -> int | None:
    """Highest resident memory process *pid* has had (``VmHWM``), or ``None``."""
    return _status_field(pid, "VmHWM")


def _status_field(pid: int, name: str) -> int | None:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(f"{name}:"):
            return int(line.split()[1]) * 1024
    return None


def descendants(pid: int) -> set[int]:
    """Every live descendant of process *pid* (read from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def parent_pid(pid: int) -> int | None:
    """The parent of process *pid*, or ``None`` if it is gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def mib(size: float | None) -> str:
    return "gone" if size is None else f"{size / 2**20:.1f} MiB"


class LiveService:
    """``dispatcher-standalone`` in *folder*, on its own channel, with *workers* workers."""

    def __init__(self, folder: Path, dsn: str, workers: int, log_level: str = "INFO") -> None:
        self.folder = folder
        self.dsn = dsn
        self.channel = f"bench_{uuid.uuid4().hex[:12]}"
        self.socket_path = folder / "dispatcher.sock"
        self.log_path = folder / "service.log"
        self.log_level = log_level
        self.config: dict[str, Any] = {
            "version": 1,
            "brokers": {
                "pg_notify": {"conninfo": dsn, "channels": [self.channel]},
                "socket": {"path": str(self.socket_path)},
            },
            "tasks": {"modules": ["bench_tasks"]},
            "service": {
                "node_id": self.channel,
                "pool": {"min_workers": workers, "max_workers": workers},
            },
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.options: list[str] = []  # more options of dispatcher-standalone (--reload)
        self.python_path: list[Path] = []  # folders of task modules, before the benchmarks'

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 60) -> LiveService:
        """Start the service; return once it answers on its socket and LISTENs."""
        config_path = self.folder / "dispatcher.yml"
        config_path.write_text(json.dumps(self.config, indent=2))  # JSON is YAML
        command = [
            *(sys.executable, "-m", "dispatcher.server"),
            *("--log-level", self.log_level, "--config", str(config_path)),
            *self.options,
        ]
        # The benchmarks' tasks, after the caller's path: PYTHONPATH naming another
        # checkout's sources measures that code (an A/B against an older commit).
        given = os.environ.get("PYTHONPATH")
        path = (given, *map(str, self.python_path), str(HERE))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path))}
        env.pop("DISPATCHER_CONFIG_FILE", None)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.folder
            )
        deadline = time.monotonic() + timeout
        while not (self.answers_alive() and self._listening()):
            if not self.running():
                raise SystemExit(f"the service exited at start; its log:\n{self.log_text()}")
            if time.monotonic() > deadline:
                raise SystemExit(f"the service did not start in {timeout} s:\n{self.log_text()}")
            time.sleep(0.05)
        return self

    def _listening(self) -> bool:
        query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute(
                query, (service_application_name(self.channel, [self.channel]),)
            ).fetchone()
        return row == (1,)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def control(
        self, command: str, timeout: float = 10, data: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """Run a control command over the socket; return its reply, or ``None``."""
        request: dict[str, Any] = {"control": command, "reply_to": "benchmark"}
        if data is not None:
            request["control_data"] = data
        try:
            reply = socket_request(str(self.socket_path), request, timeout)
        except BrokerUnavailable:
            return None
        if reply is None:
            return None
        try:
            decoded = json.loads(reply)
        except ValueError:
            return None
        return decoded if isinstance(decoded, dict) else None

    def status(self) -> dict[str, Any]:
        """The ``status`` reply; raise SystemExit if the service does not give one."""
        reply = self.control("status")
        if reply is None or "error" in reply:
            raise SystemExit(f"no status from the service: {reply}")
        return reply

    def answers_alive(self) -> bool:
        reply = self.control("alive", timeout=5)
        return reply is not None and "error" not in reply

    def finished(self) -> int:
        """Tasks finished so far, whatever their outcome."""
        return sum(self.status()["finished"].values())

    def log_bytes(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM, wait; kill whatever is left. Return the exit status (None if killed)."""
        if self.process is None:
            return None
        leftovers = descendants(self.pid)
        status: int | None = None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                status = self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        else:
            status = self.process.returncode
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return status
