"""Tasks that declare their ``max_attempts``: for services only, never imported by tests.

A test submits them by name, as a publisher that does not import the task does (the
message carries no ``max_attempts``; the row gets the queue's default).
"""

from __future__ import annotations

import json
import os
import time

from dispatcher.publish import task


def _record(path: str, task: str) -> None:
    with open(path, "a", encoding="utf-8") as evidence:
        evidence.write(json.dumps({"pid": os.getpid(), "task": task}) + "\n")


@task(max_attempts=1)
def once(path: str) -> None:
    """Record a run, then fail: a task that must not run twice."""
    _record(path, "once")
    raise RuntimeError("once failed")


@task(max_attempts=5)
def five(path: str) -> None:
    """Record a run, then fail: five attempts, more than the queue's default."""
    _record(path, "five")
    raise RuntimeError("five failed")


@task(max_attempts=1)
def once_slowly(path: str) -> None:
    """Record the start, then run for a minute (the test ends it first)."""
    _record(path, "once_slowly")
    time.sleep(60)
