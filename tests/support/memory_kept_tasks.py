"""A task that ends ``ok`` and leaves its worker above ``worker.max_memory`` after its end.

Importing this module makes its worker slow to log a task's output once it has reported the
task's end (as a busy machine can be), and has the worker take the memory the task asked for
just then (the task's own allocation would race the memory check, every 0.1 s, while the
task runs): the check finds the worker idle, over the limit, while that output waits.
"""

from __future__ import annotations

import time

from dispatcher.publish import task
from dispatcher.server.capture import OutputCapture

LOG_DELAY = 1.0
"""Seconds the worker waits before it logs the output of a task that ended."""

_kept: list[bytes] = []
_to_keep = 0
"""MiB to take once the task has reported its end."""
_original_log_ended = OutputCapture.log_ended
_delaying = False


def _slow_log_ended(capture: OutputCapture) -> None:
    global _delaying, _to_keep
    if not _delaying and capture._ended is not None:
        _delaying = True  # a SIGTERM handler's call, coming in during the wait, waits not
        try:
            _kept.append(b"x" * (_to_keep << 20))
            _to_keep = 0
            time.sleep(LOG_DELAY)
        finally:
            _delaying = False
    _original_log_ended(capture)


OutputCapture.log_ended = _slow_log_ended  # type: ignore[method-assign]


@task()
def keep_memory_and_print(megabytes: int, lines: int) -> str:
    """Have the worker keep *megabytes* MiB once this task has ended; print *lines* lines."""
    global _to_keep
    _to_keep = megabytes
    for number in range(lines):
        print("kept line", number)
    return "kept"
