"""``@task``: register a function or class as a task and give it ``.delay()``.

The types it returns are in :mod:`~dispatcher.publish.task_types`, the methods it attaches in
:mod:`~dispatcher.publish.task_methods`, its checks in
:mod:`~dispatcher.publish.registration_checks`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final, Literal, ParamSpec, TypeVar, overload

from dispatcher.publish.arguments import bind_problem
from dispatcher.publish.errors import RegistrationError
from dispatcher.publish.json_values import shown
from dispatcher.publish.processor_options import ProcessorOptions
from dispatcher.publish.registration_checks import (
    classmethod_refusal,
    from_processor_options,
    method_problem,
    warn_main_module,
)
from dispatcher.publish.registry import Queue, RegisteredTask, registry
from dispatcher.publish.task_methods import attach_submission_methods
from dispatcher.publish.task_types import (
    BoundTaskDecorator,
    TaskDecorator,
    TaskFunction,
    UndecoratedTaskDecorator,
)
from dispatcher.schema import OnDuplicate

P = ParamSpec("P")
R = TypeVar("R")
C = TypeVar("C", bound=type)


class _Unset:
    """The value of ``task()``'s first parameter when nothing is given there."""

    def __repr__(self) -> str:
        return "<unset>"


_UNSET: Final = _Unset()


@overload
def task(target: C, /) -> C: ...  # type: ignore[overload-overlap]
@overload
def task(target: Callable[P, R], /) -> TaskFunction[P, R]: ...
@overload
def task(  # type: ignore[overload-overlap]
    *,
    queue: Queue = None,
    name: str | None = None,
    bind: bool = False,
    timeout: float | None = None,
    delay: float | None = None,
    on_duplicate: OnDuplicate | None = None,
    max_attempts: int | None = None,
    decorate: Literal[False],
    processor_options: ProcessorOptions = None,
) -> UndecoratedTaskDecorator: ...
@overload
def task(  # type: ignore[overload-overlap]
    *,
    queue: Queue = None,
    name: str | None = None,
    bind: Literal[True],
    timeout: float | None = None,
    delay: float | None = None,
    on_duplicate: OnDuplicate | None = None,
    max_attempts: int | None = None,
    decorate: Literal[True] = True,
    processor_options: ProcessorOptions = None,
) -> BoundTaskDecorator: ...
@overload
def task(
    *,
    queue: Queue = None,
    name: str | None = None,
    bind: Literal[False] = False,
    timeout: float | None = None,
    delay: float | None = None,
    on_duplicate: OnDuplicate | None = None,
    max_attempts: int | None = None,
    decorate: Literal[True] = True,
    processor_options: ProcessorOptions = None,
) -> TaskDecorator: ...
@overload
def task(
    *,
    queue: Queue = None,
    name: str | None = None,
    bind: bool = False,
    timeout: float | None = None,
    delay: float | None = None,
    on_duplicate: OnDuplicate | None = None,
    max_attempts: int | None = None,
    decorate: bool = True,
    processor_options: ProcessorOptions = None,
) -> TaskDecorator: ...
def task(
    target: object = _UNSET,
    /,
    *,
    queue: Queue = None,
    name: str | None = None,
    bind: bool = False,
    timeout: float | None = None,
    delay: float | None = None,
    on_duplicate: OnDuplicate | None = None,
    max_attempts: int | None = None,
    decorate: bool = True,
    processor_options: ProcessorOptions = None,
) -> Any:
    """Register a function (or a class with a ``run`` method) as a task.

    ``@task`` alone registers it with the default options, as ``@task()`` does; options
    are keywords (``@task(queue="emails")``).
    The task is registered as ``module.qualname``, or *name*. The object is returned
    unchanged (calling it still runs it here), with ``delay()``, ``apply_async()``,
    ``adelay()`` and ``aapply_async()`` attached unless *decorate* is false. The options
    are defaults of every submission; a submission's own options override them:

    - *queue*: the channel to send on, or a function returning it at each submission;
    - *bind*: the task receives first a :class:`BoundTask`, with its uuid and a
      ``control()`` call;
    - *timeout*: seconds the task may run; *delay*: seconds before it starts;
    - *on_duplicate*: ``parallel``, ``discard``, ``serial`` or ``queue_one``;
    - *max_attempts*: for a durable queue (``brokers.pg_queue``), how many times the job may
      be started before it is left failed (1-1000; default: the queue's ``max_attempts``).
      Submitting it to a NOTIFY channel is an error;
    - *processor_options*: dispatcherd's params objects or dicts, setting *delay* and
      *on_duplicate* (an option given both ways must have the same value).

    :raises RegistrationError: when an option is of the wrong type or value, the name is
        invalid or registered for another function, or *processor_options* holds something
        unknown.
    """
    if target is not _UNSET:
        if isinstance(target, classmethod):
            raise classmethod_refusal(target, None)
        if not callable(target) or isinstance(target, str):
            raise RegistrationError(
                f"@task takes its options as keywords, not {shown(target)} as a positional "
                "argument: write @task(queue='...') (or @task alone on a function or class)"
            )
        return task()(target)
    for option, value in (("bind", bind), ("decorate", decorate)):
        if not isinstance(value, bool):
            raise RegistrationError(
                f"@task option {option} must be True or False, not {type(value).__name__} "
                f"{shown(value)}"
            )
    if name is not None and not isinstance(name, str):
        raise RegistrationError(
            f"@task option name must be a string, not {type(name).__name__} {shown(name)}"
        )
    if queue is not None and not (isinstance(queue, str) or callable(queue)):
        raise RegistrationError(f"queue must be a channel name or a function, not {shown(queue)}")
    if processor_options is not None:
        delay, on_duplicate = from_processor_options(processor_options, delay, on_duplicate)

    def register(declared: Any) -> Any:
        if isinstance(declared, classmethod):
            raise classmethod_refusal(declared, name)
        # @task below @staticmethod: the class attribute stays a staticmethod, whose function
        # (what the class gives back) is the task.
        target = declared.__func__ if isinstance(declared, staticmethod) else declared
        if not callable(target):
            raise RegistrationError(f"@task applies to functions and classes, not {target!r}")
        if isinstance(target, type) and not callable(getattr(target, "run", None)):
            raise RegistrationError(
                f"class {target.__qualname__} needs a run() method to be a task"
            )
        qualname = getattr(target, "__qualname__", "")
        if name is None and (not qualname or "<" in qualname):
            raise RegistrationError(
                f"{qualname or target!r} has no importable name (it is defined inside a function "
                "or is a lambda); give it one with @task(name=...)"
            )
        task_name = name if name is not None else f"{target.__module__}.{qualname}"
        problem = bind_problem(target) if bind else method_problem(target, qualname)
        if problem is not None:
            raise RegistrationError(f"cannot register {task_name}: {problem}")
        with _marked(target, task_name):
            entry = registry.register(
                RegisteredTask(
                    name=task_name,
                    target=target,
                    queue=queue,
                    bind=bind,
                    timeout=timeout,
                    delay=delay,
                    on_duplicate=on_duplicate,
                    max_attempts=max_attempts,
                )
            )
        if name is None and target.__module__ == "__main__":
            warn_main_module(entry.name, qualname)
        if decorate:
            attach_submission_methods(target, entry)
        return declared

    return register


@contextmanager
def _marked(target: Any, task_name: str) -> Iterator[None]:
    """Give *target* the task's name (``__dispatcher_task__``) for the registration inside.

    Set first, so that a target that takes no attributes (a bound method, a built-in) is
    refused before anything is registered; put back as it was if the registration fails.
    """
    own = getattr(target, "__dict__", None)
    previous = own.get(_MARK, _UNSET) if isinstance(own, Mapping) else _UNSET
    try:
        target.__dispatcher_task__ = task_name
    except (AttributeError, TypeError):
        raise RegistrationError(
            f"cannot register {task_name}: {_kind(target)} takes no attributes, so neither the "
            "task's name nor delay(): register a function that calls it"
        ) from None
    try:
        yield
    except BaseException:
        if previous is _UNSET:
            delattr(target, _MARK)
        else:
            setattr(target, _MARK, previous)
        raise


_MARK: Final = "__dispatcher_task__"


def _kind(target: object) -> str:
    if inspect.ismethod(target):
        return f"{shown(target)}, a bound method,"
    if inspect.isbuiltin(target):
        return f"{shown(target)}, a built-in function,"
    return f"{shown(target)} ({type(target).__name__})"
