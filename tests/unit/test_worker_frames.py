"""The worker's own modules, whose frames a task's traceback leaves out, are all named.

A task's traceback starts at the task's code and skips the worker's frames between the
task's (``worker_frames.RUNNER_FILES``); a module of the worker's left out of that list
would show its frames in every task's traceback, and count a task's ``TypeError`` raised
there as its own.
"""

from __future__ import annotations

import os

from dispatcher.server import worker
from dispatcher.server.worker_frames import RUNNER_FILES, RUNNER_MODULES, is_runner_frame
from dispatcher.server.worker_loop import TaskLoop
from dispatcher.server.worker_runner import TaskRunner
from support.imports import module_graph, modules

WORKER = "dispatcher.server.worker"

BETWEEN_TASKS = {"dispatcher.server.worker_signals", "dispatcher.server.worker_places"}
"""Modules of the worker's that run only between tasks, never under a task's code."""


def _worker_modules() -> set[str]:
    """The modules named ``worker`` or ``worker_*`` that the worker's entry point imports."""
    graph = module_graph(modules())
    reached: set[str] = set()
    todo = [WORKER]
    while todo:
        name = todo.pop()
        if name in reached or not (name == WORKER or name.startswith(WORKER + "_")):
            continue
        reached.add(name)
        todo.extend(graph[name])
    return reached


def test_every_module_of_the_worker_is_named_as_its_own() -> None:
    named = {f"dispatcher.server.{name}" for name in RUNNER_MODULES}
    assert _worker_modules() - BETWEEN_TASKS == named


def test_the_files_named_are_the_modules_files() -> None:
    assert all(os.path.isfile(path) for path in RUNNER_FILES)
    for code in (worker.worker_main.__code__, TaskRunner.run.__code__, TaskLoop.run.__code__):
        assert is_runner_frame(code.co_filename), code
    assert not is_runner_frame(__file__)
