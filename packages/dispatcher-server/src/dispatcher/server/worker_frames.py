"""Whose code a frame in a worker runs: the worker's own, or asyncio's event loop.

A task's traceback leaves out the worker's frames that lead to the task's code
(:mod:`dispatcher.server.worker_tracebacks`), and a cancel that lands in the code of the
event loop of ``async def`` tasks has that loop replaced: both ask here. The worker's code
is every module named in :data:`RUNNER_MODULES`, in this package.
"""

from __future__ import annotations

import asyncio
import os
import selectors
from types import FrameType
from typing import Final

RUNNER_MODULES: Final = (
    "worker",
    "worker_bound",
    "worker_cancel",
    "worker_follow_ups",
    "worker_forks",
    "worker_frames",
    "worker_loop",
    "worker_loop_keeper",
    "worker_refusals",
    "worker_runner",
    "worker_start",
    "worker_tracebacks",
)
"""The modules of the worker's own code, between the service and a task's code: a frame of
one of them is never the task's (the :mod:`~dispatcher.server.worker_signals` it uses only
between tasks are not among them)."""

_HERE: Final = os.path.dirname(os.path.abspath(__file__))

RUNNER_FILES: Final = frozenset(os.path.join(_HERE, f"{name}.py") for name in RUNNER_MODULES)
"""The files of :data:`RUNNER_MODULES`, as ``os.path.abspath()`` writes them."""

ASYNCIO_DIR: Final = os.path.dirname(os.path.abspath(asyncio.__file__))
"""The folder of asyncio's own modules."""

_SELECTORS_FILE: Final = os.path.abspath(selectors.__file__)


def is_runner_frame(filename: str) -> bool:
    """Whether a frame of the file *filename* is the worker's code or asyncio's."""
    path = os.path.abspath(filename)
    return path in RUNNER_FILES or os.path.dirname(path) == ASYNCIO_DIR


def in_event_loop_code(frame: FrameType | None) -> bool:
    """Whether *frame*, the innermost frame of a step of a coroutine, is asyncio's own code."""
    if frame is None:
        return False
    path = os.path.abspath(frame.f_code.co_filename)
    return os.path.dirname(path) == ASYNCIO_DIR or path == _SELECTORS_FILE
