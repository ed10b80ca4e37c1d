"""Tasks written as a dispatcherd user writes them: dispatcherd's ``@task``, nothing of ours.

The compatibility tests (``tests/e2e/dispatcherd_compat/``) publish these with dispatcherd's
publisher (``.delay()``, ``.apply_async()``, ``submit_task``) and with ours, and run them in
our service and in a real dispatcherd service. Each leaves evidence: one JSON line per event
in the file named by its first argument (after the bound object, for bound tasks), with the
pid, the time and which service ran it (``runner``).

Where dispatcherd cannot be imported (our own virtual environment), the decorators are left
out and the functions stay plain ones; :mod:`support.dispatcherd_tasks_ours` registers the
same functions with our ``@task``, under the same names, for the tests of the wire format.
A test of dispatcherd's ``@task`` being honoured by our service runs this module alone, with
dispatcherd importable.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

try:
    from dispatcherd.processors.blocker import Blocker
    from dispatcherd.processors.delayer import Delayer
    from dispatcherd.publish import task
except ImportError:  # dispatcherd is not installed here: plain functions
    Blocker = Delayer = None

    def task(**options: Any) -> Any:  # type: ignore[no-redef]
        return lambda function: function


QUEUE_VARIABLE = "DISPATCHERD_E2E_QUEUE"
"""The environment variable that names the channel of :func:`on_chosen_queue`."""

SERIAL = (Blocker.Params(on_duplicate="serial"),) if Blocker is not None else ()
SHORT_DELAY = (Delayer.Params(delay=0.4),) if Delayer is not None else ()


def runner() -> str:
    """Which service runs this process: ``dispatcher`` (ours), ``dispatcherd``, or neither.

    Ours first: our worker may load dispatcherd's modules too (to honour its ``@task``),
    while dispatcherd's workers never load ours.
    """
    if "dispatcher.server.worker" in sys.modules:
        return "dispatcher"
    if "dispatcherd.worker.task" in sys.modules:
        return "dispatcherd"
    return "none"


def _record(path: str, task_name: str, **fields: Any) -> None:
    line = {"task": task_name, "pid": os.getpid(), "time": time.time(), "runner": runner()}
    with open(path, "a", encoding="utf-8") as evidence:
        evidence.write(json.dumps({**line, **fields}) + "\n")


def _chosen_queue() -> str:
    return os.environ[QUEUE_VARIABLE]


@task()
def record(path: str, *args: Any, **kwargs: Any) -> str:
    """Record the arguments it got."""
    _record(path, "record", args=list(args), kwargs=kwargs)
    return "recorded"


@task(decorate=False)
def undecorated(path: str, *args: Any) -> None:
    """Registered without ``.delay()``/``.apply_async()``: published with ``submit_task``."""
    _record(path, "undecorated", args=list(args))


@task()
class Adder:
    """A class task: dispatcherd (and we) call ``Adder().run(...)``."""

    def run(self, path: str, a: int, b: int) -> int:
        _record(path, "Adder", sum=a + b)
        return a + b


@task(bind=True)
def bound(binder: Any, path: str, label: str = "") -> None:
    """Bound by its registration (``@task(bind=True)``): the message need not say so."""
    _record(path, "bound", uuid=binder.uuid, worker_id=binder.worker_id, label=label)


@task()
def bound_by_message(binder: Any, path: str) -> None:
    """Not bound by its registration: only by a message with ``"bind": true``."""
    _record(path, "bound_by_message", uuid=binder.uuid, worker_id=binder.worker_id)


@task(queue=_chosen_queue)
def on_chosen_queue(path: str) -> None:
    """Its queue is a function, called at each submission (dispatcherd 2026.5.27 honours it)."""
    _record(path, "on_chosen_queue")


@task()
def sleeper(path: str, seconds: float, label: str = "") -> None:
    """Record ``start``, sleep, record ``end``; or ``interrupted`` (and re-raise)."""
    _record(path, "sleeper", event="start", label=label)
    try:
        time.sleep(seconds)
    except BaseException as exc:
        _record(path, "sleeper", event="interrupted", label=label, exception=type(exc).__name__)
        raise
    _record(path, "sleeper", event="end", label=label)


@task(timeout=0.5)
def sleeper_with_timeout(path: str, seconds: float) -> None:
    """As :func:`sleeper`, with a timeout of 0.5 s from its registration (in the message)."""
    sleeper(path, seconds, "with_timeout")


@task(on_duplicate="discard")
def discarded_duplicate(path: str, seconds: float) -> None:
    """``on_duplicate`` the deprecated way: ``@task(on_duplicate=...)``."""
    sleeper(path, seconds, "discard")


@task(processor_options=SERIAL)
def one_at_a_time(path: str, seconds: float) -> None:
    """``on_duplicate: serial`` the current way: a processor option of the registration."""
    sleeper(path, seconds, "serial")


@task(processor_options=SHORT_DELAY)
def delayed(path: str) -> None:
    """Started 0.4 s after it arrives (``delay`` from a processor option of the registration)."""
    _record(path, "delayed")
