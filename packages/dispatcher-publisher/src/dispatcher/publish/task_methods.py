"""The submission methods ``@task`` attaches to a task: ``delay()``, ``apply_async()``, ...

Each submits the task by its registered name, with a signature and a docstring of its own
(what ``help()`` and editors show).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from psycopg import AsyncConnection, Connection

from dispatcher.publish import interception
from dispatcher.publish.arguments import display_signature, shown_signature
from dispatcher.publish.caller_connections import expect_connection
from dispatcher.publish.mistakes import SUBMIT_OPTIONS, check_submit_options
from dispatcher.publish.registry import RegisteredTask
from dispatcher.publish.submission import Submission
from dispatcher.publish.submit_async import asubmit_task
from dispatcher.publish.submit_sync import submit_task


def attach_submission_methods(target: Any, entry: RegisteredTask) -> None:
    """Give *target*, the task *entry*, its ``delay()``, ``apply_async()`` and async twins."""
    task_name = entry.name
    owner = getattr(target, "__qualname__", task_name)

    def delay(*args: Any, **kwargs: Any) -> Submission:
        return submit_task(task_name, args=args, kwargs=kwargs)

    def apply_async(
        args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> Submission:
        if not options.keys() <= SUBMIT_OPTIONS:
            check_submit_options(options, "apply_async")
        if options.get("connection") is not None and interception.current is None:
            expect_connection(options["connection"], Connection, "apply_async", "aapply_async")
        return submit_task(task_name, args=args, kwargs=kwargs, **options)

    async def adelay(*args: Any, **kwargs: Any) -> Submission:
        return await asubmit_task(task_name, args=args, kwargs=kwargs)

    async def aapply_async(
        args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> Submission:
        if not options.keys() <= SUBMIT_OPTIONS:
            check_submit_options(options, "aapply_async")
        if options.get("connection") is not None and interception.current is None:
            expect_connection(
                options["connection"],
                AsyncConnection,
                "aapply_async",
                "apply_async",
            )
        return await asubmit_task(task_name, args=args, kwargs=kwargs, **options)

    arguments = shown_signature(entry)
    described = {
        delay: (arguments, _DELAY_DOC),
        adelay: (arguments, _DELAY_DOC),
        apply_async: (_options_signature(submit_task), _APPLY_ASYNC_DOC),
        aapply_async: (_options_signature(asubmit_task), _APPLY_ASYNC_DOC),
    }
    for method, (signature, doc) in described.items():
        method.__qualname__ = f"{owner}.{method.__name__}"
        method.__doc__ = doc.format(task=task_name)
        if signature is not None:
            method.__signature__ = signature  # type: ignore[attr-defined]
        # On a class, a plain function would become a method bound to instances.
        attribute = staticmethod(method) if inspect.isclass(target) else method
        setattr(target, method.__name__, attribute)


_DELAY_DOC: Final = """Submit the task {task} with these arguments and its default options.

The arguments are those of the task (without the bound object of a ``bind=True`` task);
they are checked against its signature before anything is sent. Returns the
:class:`~dispatcher.publish.Submission` (its ``uuid`` finds or cancels the task).

:raises InvalidSubmission: when an argument is wrong (nothing is sent).
:raises BrokerUnavailable: when the database cannot be reached.
:raises PublishError: when the database refuses the message for good (a missing
    privilege, missing tables).
:raises ConfigError: when the config cannot be read or is invalid; a
    ``NotConfiguredError`` when none was given (``setup()``) and none is found. Neither is
    a ``PublishError``.
"""

_APPLY_ASYNC_DOC: Final = """Submit the task {task} with options overriding its defaults.

*args* and *kwargs* are the task's arguments; the options are keywords, as for
``submit_task()``: *queue*, *uuid*, *timeout* (seconds it may run), *delay* (seconds
before it starts), *on_duplicate*, *bind*, *extra* (more message keys), *connection* (send
inside that transaction), *max_attempts* (durable queues), *processor_options*. Returns the
:class:`~dispatcher.publish.Submission`.

:raises InvalidSubmission: when an option or argument is wrong (nothing is sent).
:raises BrokerUnavailable: when the database cannot be reached.
:raises PublishError: when the database refuses the message for good (a missing
    privilege, missing tables).
:raises ConfigError: when the config cannot be read or is invalid; a
    ``NotConfiguredError`` when none was given (``setup()``) and none is found. Neither is
    a ``PublishError``.
"""


@functools.cache
def _options_signature(submit: Callable[..., Any]) -> inspect.Signature:
    """*submit*'s signature (``submit_task``'s) as ``apply_async``'s: without the task.

    The same for every task: made once.
    """
    signature = inspect.signature(submit)
    parameters = list(signature.parameters.values())[1:]
    positional = {"args", "kwargs"}
    return display_signature(
        signature.replace(
            parameters=[
                p.replace(kind=inspect.Parameter.POSITIONAL_OR_KEYWORD)
                if p.name in positional
                else p
                for p in parameters
            ]
        )
    )
