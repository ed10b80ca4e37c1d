"""Tasks that misbehave as processes: fork children, die abruptly, hoard memory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from dispatcher.publish import task


def _record(path: str, **fields: Any) -> None:
    line = json.dumps({"pid": os.getpid(), "time": time.time(), **fields}) + "\n"
    with open(path, "a", encoding="utf-8") as evidence:
        evidence.write(line)


@task()
def spawn_child_and_sleep(path: str, seconds: float) -> None:
    """Start a child process that sleeps long, record both pids, then sleep."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    _record(path, event="start", child=child.pid)
    time.sleep(seconds)


@task()
def fork_then_exit(path: str) -> None:
    """Fork a child that keeps every inherited descriptor open, then end the worker at once."""
    child = os.fork()
    if child == 0:
        time.sleep(600)
        os._exit(0)
    _record(path, event="exiting", child=child)
    os._exit(3)


@task()
def hoard_memory(path: str, megabytes: int) -> None:
    """Allocate (and touch) memory 10 MiB at a time, up to *megabytes*."""
    _record(path, event="start")
    kept = [b"x" * (10 << 20) for _ in range(megabytes // 10)]
    _record(path, event="end", kept=len(kept))


@task()
def spawn_escaping_children(path: str) -> None:
    """Start two children out of the worker's process group: one in a group of its own,
    one in a session of its own; record their pids."""
    grouped = subprocess.Popen(["sleep", "600"], process_group=0)
    alone = subprocess.Popen(["sleep", "600"], start_new_session=True)
    _record(path, event="start", children=[grouped.pid, alone.pid])


@task()
def spawn_daemon(path: str) -> None:
    """Start a daemon (``sleep 600``, in a session of its own, its parent gone at once: a
    double fork), and record its pid."""
    started = subprocess.run(
        ["sh", "-c", "sleep 600 </dev/null >/dev/null 2>&1 & echo $!"],
        start_new_session=True,
        capture_output=True,
        text=True,
        check=True,
    )
    _record(path, event="start", daemon=int(started.stdout))


PARENT_SIGNALS = ("SIGUSR1", "SIGUSR2", "SIGQUIT", "SIGALRM", "SIGPROF", "SIGTTIN", "SIGRTMIN")
"""Signals whose default ends or stops a process, that code written for another server's
workers sends their parent (gunicorn's master reopens its logs on SIGUSR1, adds a worker on
SIGTTIN...)."""


@task()
def signals_its_parent(path: str) -> None:
    """Record its parent and which of :data:`PARENT_SIGNALS` this worker handles by their
    default, then send each to its parent (the fork server)."""
    numbers = {name: getattr(signal, name) for name in PARENT_SIGNALS}
    handled = {name: signal.getsignal(number) == signal.SIG_DFL for name, number in numbers.items()}
    _record(path, event="signalling", parent=os.getppid(), handled=handled)
    for number in numbers.values():
        os.kill(os.getppid(), number)
