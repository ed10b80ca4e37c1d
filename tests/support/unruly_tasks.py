"""Tasks that end in ways a task should not: raising what is not an ``Exception``. Each leaves
evidence before it misbehaves."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from dispatcher.publish import task


def _record(path: str, **fields: Any) -> None:
    line = json.dumps({"pid": os.getpid(), "time": time.time(), **fields}) + "\n"
    with open(path, "a", encoding="utf-8") as evidence:
        evidence.write(line)


class Unruly(BaseException):
    """A ``BaseException`` of the task's own."""


RAISED: dict[str, type[BaseException]] = {
    "SystemExit": SystemExit,
    "KeyboardInterrupt": KeyboardInterrupt,
    "GeneratorExit": GeneratorExit,
    "Unruly": Unruly,
}


@task()
def raise_base(path: str, kind: str, text: str) -> None:
    """Record, then raise the ``BaseException`` named *kind* saying *text*."""
    _record(path, event="raise", kind=kind)
    raise RAISED[kind](text)


@task()
async def async_raise_base(path: str, kind: str, text: str) -> None:
    """:func:`raise_base` as an ``async def`` task."""
    _record(path, event="raise", kind=kind, run="async")
    raise RAISED[kind](text)
