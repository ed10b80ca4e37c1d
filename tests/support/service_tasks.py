"""Tasks the service runs in the tests. Each leaves evidence in a file the test reads."""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from dispatcher.publish import task


def _record(path: str, **fields: Any) -> None:
    line = json.dumps({"pid": os.getpid(), "time": time.time(), **fields}) + "\n"
    with open(path, "a", encoding="utf-8") as evidence:
        evidence.write(line)


@task()
def record(path: str, *args: Any, **kwargs: Any) -> None:
    """Write the arguments it got (and the pid that ran it) to *path*."""
    _record(path, args=list(args), kwargs=kwargs)


@task()
def sleep_then_record(path: str, seconds: float, label: str = "") -> None:
    """Record the start, sleep, record the end."""
    _record(path, event="start", label=label)
    time.sleep(seconds)
    _record(path, event="end", label=label)


@task()
async def async_record(path: str, value: Any) -> None:
    """An ``async def`` task."""
    await asyncio.sleep(0.01)
    _record(path, args=[value], kind="async")


@task()
def fail(path: str) -> None:
    """Record, then raise."""
    _record(path, event="fail")
    raise ValueError("this task always fails")


@task()
def noop() -> None:
    """Does nothing (for load tests)."""
