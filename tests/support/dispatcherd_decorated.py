"""Tasks registered with dispatcherd's ``@task`` only, run by our service in the tests.

Importable only where dispatcherd is (the tests put its overlay on ``PYTHONPATH``, see
:attr:`support.dispatcherd.Dispatcherd.overlay`). Each leaves evidence: one JSON line in the
file named by its first argument (after the bound object, for bound tasks).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from dispatcherd.processors.blocker import Blocker
from dispatcherd.publish import task
from dispatcherd.worker.exceptions import DispatcherCancel, DispatcherExit


def _record(path: str, **fields: Any) -> None:
    line = json.dumps({"pid": os.getpid(), "time": time.time(), **fields}) + "\n"
    with open(path, "a", encoding="utf-8") as evidence:
        evidence.write(line)


@task()
def record(path: str, *args: Any, **kwargs: Any) -> str:
    """Record the arguments it got."""
    _record(path, label="record", args=list(args), kwargs=kwargs)
    return "recorded"


@task(bind=True)
def bound(binder: Any, path: str) -> None:
    """Bound by its registration: record what the bound object holds, and a control reply."""
    reply = binder.control("running", {"uuid": binder.uuid})
    _record(
        path,
        label="bound",
        uuid=binder.uuid,
        worker_id=binder.worker_id,
        running=sorted(entry.get("uuid") for entry in reply.values() if isinstance(entry, dict)),
    )


@task()
class Adder:
    """A class task: ``Adder().run(...)`` runs."""

    def run(self, path: str, a: int, b: int) -> int:
        _record(path, label="Adder", sum=a + b)
        return a + b


@task(
    queue="dispatcherd_decorated",
    timeout=30,
    processor_options=(Blocker.Params(on_duplicate="serial"),),
)
def serial_sleep(path: str, seconds: float, label: str) -> None:
    """Options from dispatcherd's registration (queue, timeout, on_duplicate as a processor
    option): record start and end around a sleep."""
    _record(path, label=label, event="start")
    time.sleep(seconds)
    _record(path, label=label, event="end")


@task()
def sleep_catching_their_cancel(path: str, seconds: float) -> None:
    """Catch dispatcherd's ``DispatcherCancel``, as a task written for dispatcherd does."""
    _record(path, label="sleep", event="start")
    try:
        time.sleep(seconds)
    except DispatcherCancel as cancel:
        _record(path, label="sleep", event="cancelled", kind=type(cancel).__name__)
        raise
    _record(path, label="sleep", event="end")


@task()
def exit_their_way(path: str) -> None:
    """Raise dispatcherd's ``DispatcherExit``: the worker ends, the task is done."""
    _record(path, label="exit")
    raise DispatcherExit


@task()
def claimed(path: str) -> None:
    """Its name is registered with our ``@task`` too (:mod:`support.follow_up_tasks`)."""
    _record(path, label="claimed", by="dispatcherd")


def undecorated(path: str) -> None:
    """Not registered: never run."""
    _record(path, label="undecorated")


def make_local() -> Any:
    """A task dispatcherd cannot run either (its name has ``<locals>``): not adopted."""

    @task()
    def local(path: str) -> None:
        _record(path, label="local")

    return local


make_local()
