"""What a worker reports of a task that raised: its traceback and its error, cut to size.

The traceback starts at the task's own code, without the worker's frames that lead there
(see :mod:`dispatcher.server.worker_frames`); an error whose arguments do not fit the task
is said to be final (no later attempt can end otherwise).
"""

from __future__ import annotations

import os
import traceback
from typing import Final

from dispatcher.server.log_text import cut_middle, describe_exception
from dispatcher.server.worker_frames import RUNNER_FILES, is_runner_frame
from dispatcher.server.worker_refusals import GeneratorReturned, NotRegisteredHere

MAX_REPORTED_CHARS: Final = 32 * 1024
"""Longest error text, and traceback, that a worker reports for a task (an exception's
message can be as large as the task makes it; the service logs and stores what it gets)."""


def task_traceback(exc: BaseException) -> str:
    """The traceback of *exc*, raised by a task, from the task's own code on.

    The frames of the worker's code (and of the asyncio runner between it and an ``async def``
    task) that lead to the task are left out: they are the same for every task and tell its
    author nothing. So are the worker's frames between the task's (see :func:`_drop_steps`),
    where an exception came through a future it awaited (``asyncio.gather()``). Chained
    exceptions are shown whole but for those. When every frame is the worker's (the task was never
    reached), the traceback is shown whole.
    """
    first = exc.__traceback__
    while first is not None and is_runner_frame(first.tb_frame.f_code.co_filename):
        first = first.tb_next
    shown = first if first is not None else exc.__traceback__
    try:
        rendered = traceback.TracebackException(type(exc), exc, shown, compact=True)
        _drop_steps(rendered)
        return "".join(rendered.format())
    except BaseException as failure:  # the task's exception fails its own rendering (notes)
        return f"(its traceback could not be shown: {describe_exception(failure)})"


def _drop_steps(rendered: traceback.TracebackException) -> None:
    """Leave the worker's frames between the task's own out of *rendered*, and its chain.

    Those are the steps of :class:`~dispatcher.server.worker_cancel.CancelTranslator`, and
    the worker's way back into the task's code: its frames (``_call``, the loop's ``run``)
    and those of asyncio's event loop that follow them (where an exception the loop lets
    through, ``KeyboardInterrupt`` from a gathered child, came out of the loop and was
    raised again in the task).
    """
    seen: set[int] = set()
    waiting = [rendered]
    while waiting:
        one = waiting.pop()
        if id(one) in seen:
            continue
        seen.add(id(one))
        if any(is_runner_frame(frame.filename) for frame in one.stack):
            one.stack = traceback.StackSummary.from_list(_tasks_frames(one.stack))
        waiting.extend(e for e in (one.__cause__, one.__context__) if e is not None)
        waiting.extend(one.exceptions or ())


def _tasks_frames(stack: list[traceback.FrameSummary]) -> list[traceback.FrameSummary]:
    """*stack* without the worker's steps, nor its frames that lead back to the task's code.

    asyncio's frames right after such a frame of the worker's are its event loop's: out too.
    """
    kept: list[traceback.FrameSummary] = []
    at = 0
    while at < len(stack):
        frame = stack[at]
        if os.path.abspath(frame.filename) in RUNNER_FILES:
            end = at + 1
            while end < len(stack) and is_runner_frame(stack[end].filename):
                end += 1
            if end < len(stack):  # (the task's code follows)
                at = end
                continue
        if not _is_step(frame):
            kept.append(frame)
        at += 1
    return kept


def _is_step(frame: traceback.FrameSummary) -> bool:
    return frame.name == "__await__" and os.path.abspath(frame.filename) in RUNNER_FILES


def traceback_of(exc: BaseException) -> str:
    """The traceback to show for *exc*: none where the worker's own frames are all it holds.

    That is when the worker found no task, or when the task returned a generator.
    """
    if isinstance(exc, NotRegisteredHere | GeneratorReturned):
        return ""
    return task_traceback(exc)


NOT_RETRIED: Final = "the task's code never ran: its arguments do not fit it; not retried"


def does_not_fit(exc: BaseException) -> bool:
    """Whether *exc* says the message's arguments do not fit the task's signature.

    That is a ``TypeError`` raised before any frame of the task's own code (by the call
    itself): no later attempt of the same message can end otherwise.
    """
    if type(exc) is not TypeError:
        return False
    frame = exc.__traceback__
    while frame is not None:
        if not is_runner_frame(frame.tb_frame.f_code.co_filename):
            return False
        frame = frame.tb_next
    return True


def capped(text: str, whole: bool = False) -> str:
    """*text*, cut to :data:`MAX_REPORTED_CHARS`, saying how much was left out and where.

    An error's message keeps its start (its type, what went wrong); a traceback (*whole*)
    its start and its end, the frames and what was raised, cutting the middle.
    """
    if whole:
        return cut_middle(text, MAX_REPORTED_CHARS)
    cut = len(text) - MAX_REPORTED_CHARS
    if cut <= 0:
        return text
    return f"{text[:MAX_REPORTED_CHARS]}... ({cut} more characters)"
