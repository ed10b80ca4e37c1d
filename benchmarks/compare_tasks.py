"""Tasks for the side-by-side benchmark (``compare.py``), importable by both services.

dispatcher runs only the functions registered with its ``@task``; dispatcherd imports a task
by its dotted path and needs no registration. So the functions are registered when
``dispatcher.publish`` is importable (in dispatcher's environment) and stay plain functions
otherwise (in dispatcherd's). Both services find them as ``compare_tasks.<name>``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

Function = TypeVar("Function", bound=Callable[..., Any])

try:
    from dispatcher.publish import task as _dispatcher_task
except ImportError:  # dispatcherd's environment: a task is found by its dotted path

    def register(function: Function) -> Function:
        return function

else:

    def register(function: Function) -> Function:
        _dispatcher_task()(function)
        return function


def _append(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


@register
def tick(path: str) -> None:
    """Append one byte to *path*: the benchmark counts bytes to know how many ran."""
    _append(path, b".")


@register
def stamp(path: str, sent: float) -> None:
    """Append how long ago (publisher's clock, seconds) the message was sent."""
    _append(path, f"{time.time() - sent!r}\n".encode())


@register
def started(path: str) -> None:
    """Append the time (seconds since the epoch) at which this task started."""
    _append(path, f"{time.time()!r}\n".encode())
