"""The errors a worker ends a task with when the task's code did not, or could not, run.

A job that names a task this worker's code does not register, and a task that returned a
generator (its body never ran). Their tracebacks hold only the worker's frames: none is
shown (see :func:`~dispatcher.server.worker_tracebacks.traceback_of`).
"""

from __future__ import annotations

import inspect


class NotRegisteredHere(LookupError):
    """A job names a task the worker's code does not register (changed since it was sent)."""


class GeneratorReturned(TypeError):
    """A task returned a generator: its body never ran (a generator function is no task)."""


def refuse_generator(result: object) -> None:
    """Raise :class:`GeneratorReturned` when *result* is a generator (closed first).

    ``@task`` refuses generator functions, but a decorator can hide one, and a function may
    return a generator: ending ``ok`` would pass off a body that never ran as done.
    """
    if inspect.isgenerator(result):
        result.close()  # not started: no code of the task runs
        kind = "a generator"
    elif inspect.isasyncgen(result):
        kind = "an async generator"  # not started: it needs no closing
    else:
        return
    raise GeneratorReturned(
        f"the task returned {kind}: its body never ran; a task must do its work when called "
        "(a plain or async def function that does not yield), returning the values in a list"
    )
