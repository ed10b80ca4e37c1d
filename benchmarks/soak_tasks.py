"""Tasks of the mixed soak (``soak.py --mixed``), imported by the service's workers.

Each run appends one line to ``runs.log`` in the folder named by ``$SOAK_RECORDS``:
``<event> <kind> <uuid> <wall time> <pid>``, where the event is ``run`` for a task that ends
at once, ``start`` and ``end`` around the sleep of the others. The soak counts these lines
at the end to account for every task and job it published.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from dispatcher.publish import task

RECORDS = Path(os.environ.get("SOAK_RECORDS", "."))


def note(event: str, kind: str, uuid: str) -> None:
    """Append one record line; a single ``write()`` on an ``O_APPEND`` file."""
    line = f"{event} {kind} {uuid} {time.time():.3f} {os.getpid()}\n".encode()
    fd = os.open(RECORDS / "runs.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def attempt_number(uuid: str) -> int:
    """How many times this uuid has been run, this run included (a byte per run)."""
    fd = os.open(RECORDS / "attempts" / uuid, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, b".")
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


@task(bind=True)
def record(dispatcher: Any, kind: str) -> None:
    """Record one run of *kind*."""
    note("run", kind, dispatcher.uuid)


@task(bind=True)
def record_large(dispatcher: Any, kind: str, padding: str) -> None:
    """Record one run of *kind*; *padding* makes the message too large for one NOTIFY."""
    note("run", kind, dispatcher.uuid)


@task(bind=True)
def flaky(dispatcher: Any, kind: str, fails: int) -> None:
    """Record a run; fail the first *fails* attempts of this uuid."""
    note("run", kind, dispatcher.uuid)
    if attempt_number(dispatcher.uuid) <= fails:
        raise RuntimeError(f"soak: planned failure of {dispatcher.uuid}")


@task(bind=True)
def sleeper(dispatcher: Any, kind: str, seconds: float) -> None:
    """Record a start, sleep *seconds*, record an end (a timeout or cancel skips the end)."""
    note("start", kind, dispatcher.uuid)
    time.sleep(seconds)
    note("end", kind, dispatcher.uuid)


@task(bind=True)
def twin(dispatcher: Any, kind: str, key: int, seconds: float) -> None:
    """An ``on_duplicate`` job: identical arguments make identical jobs (*key*)."""
    note("start", kind, dispatcher.uuid)
    time.sleep(seconds)
    note("end", kind, dispatcher.uuid)


@task(bind=True)
def scheduled_tick(dispatcher: Any) -> None:
    """The scheduled task (every second)."""
    note("run", "scheduled", dispatcher.uuid)


@task(bind=True, queue="soak_q")
def scheduled_job(dispatcher: Any) -> None:
    """The scheduled durable task (every second): stored once per tick, in the jobs table."""
    note("run", "scheduled_job", dispatcher.uuid)
