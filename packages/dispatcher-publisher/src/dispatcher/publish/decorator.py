"""``@task``: register a function or class as a task and give it ``.delay()``."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ParamSpec, Protocol, TypeVar, overload

from dispatcher.publish.errors import RegistrationError
from dispatcher.publish.json_values import shown
from dispatcher.publish.messages import ProcessorOptions, processor_option_values
from dispatcher.publish.mistakes import SUBMIT_OPTIONS, check_submit_options
from dispatcher.publish.registry import Queue, RegisteredTask, registry
from dispatcher.publish.submission import Submission
from dispatcher.publish.submit_async import asubmit_task
from dispatcher.publish.submit_sync import submit_task
from dispatcher.schema import OnDuplicate

logger = logging.getLogger("dispatcher.publish")

P = ParamSpec("P")
R_co = TypeVar("R_co", covariant=True)
C = TypeVar("C", bound=type)


class TaskFunction(Protocol[P, R_co]):
    """A function decorated with ``@task``: still callable as before, plus submission methods."""

    __dispatcher_task__: str
    """The name the task is registered under."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co:
        """Run the function here and now, as if it were not a task."""

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> Submission:
        """Submit the task with these arguments and its default options."""

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        queue: Queue = None,
        uuid: str | None = None,
        timeout: float | None = None,
        delay: float | None = None,
        on_duplicate: OnDuplicate | None = None,
        bind: bool | None = None,
        extra: Mapping[str, Any] | None = None,
        connection: Any = None,
        max_attempts: int | None = None,
        processor_options: ProcessorOptions = None,
    ) -> Submission:
        """Submit the task with options that override its defaults (see ``submit_task``)."""

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> Submission:
        """Async ``delay()``."""

    async def aapply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        queue: Queue = None,
        uuid: str | None = None,
        timeout: float | None = None,
        delay: float | None = None,
        on_duplicate: OnDuplicate | None = None,
        bind: bool | None = None,
        extra: Mapping[str, Any] | None = None,
        connection: Any = None,
        max_attempts: int | None = None,
        processor_options: ProcessorOptions = None,
    ) -> Submission:
        """Async ``apply_async()``."""


class TaskDecorator(Protocol):
    """What ``task(...)`` returns: applied to a function or class, registers it."""

    @overload
    def __call__(self, target: C, /) -> C: ...  # type: ignore[overload-overlap]
    @overload
    def __call__(self, target: Callable[P, R_co], /) -> TaskFunction[P, R_co]: ...


def task(
    queue: Queue = None,
    *,
    name: str | None = None,
    bind: bool = False,
    timeout: float | None = None,
    delay: float | None = None,
    on_duplicate: OnDuplicate | None = None,
    max_attempts: int | None = None,
    decorate: bool = True,
    processor_options: ProcessorOptions = None,
) -> TaskDecorator:
    """Register a function (or a class with a ``run`` method) as a task.

    The task is registered as ``module.qualname``, or *name*. The object is returned
    unchanged (calling it still runs it here), with ``delay()``, ``apply_async()``,
    ``adelay()`` and ``aapply_async()`` attached unless *decorate* is false. The options
    are defaults of every submission; a submission's own options override them:

    - *queue*: the channel to send on, or a function returning it at each submission;
    - *bind*: the task receives first an object with its uuid and a ``control()`` call;
    - *timeout*: seconds the task may run; *delay*: seconds before it starts;
    - *on_duplicate*: ``parallel``, ``discard``, ``serial`` or ``queue_one``;
    - *max_attempts*: for a durable queue (``brokers.pg_queue``), how many times the job may
      be started before it is left failed (1-1000; default: the queue's ``max_attempts``).
      Submitting it to a NOTIFY channel is an error;
    - *processor_options*: dispatcherd's params objects or dicts, setting *delay* and
      *on_duplicate* (an option given both ways must have the same value).

    :raises RegistrationError: when the name is invalid or registered for another function,
        or *processor_options* holds something unknown.
    """
    if queue is not None and not (isinstance(queue, str) or callable(queue)):
        raise RegistrationError(f"queue must be a channel name or a function, not {shown(queue)}")
    if processor_options is not None:
        delay, on_duplicate = _from_processor_options(processor_options, delay, on_duplicate)

    def register(target: Any) -> Any:
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
        entry = registry.register(
            RegisteredTask(
                name=name or f"{target.__module__}.{qualname}",
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
            _warn_main_module(entry.name, qualname)
        target.__dispatcher_task__ = entry.name
        if decorate:
            _attach_submission_methods(target, entry.name)
        return target

    return register


def _warn_main_module(task_name: str, qualname: str) -> None:
    """Warn that the task *task_name*, defined in the script being run, cannot run anywhere.

    Its name starts with ``__main__``: no service imports that module, so each one rejects
    the task as not registered. Only a warning: the script may run its tasks itself
    (``dispatcher.testing``), and an explicit ``@task(name=...)`` says nothing here.
    """
    logger.warning(
        "task %r is defined in the script being run: a service runs only tasks of the "
        "modules it imports (tasks.modules), so it will reject this name; define the task "
        "in such a module and import it from there, or submit it by that module's name "
        "(submit_task('myapp.tasks.%s'))",
        task_name,
        qualname,
    )


def _from_processor_options(
    processor_options: ProcessorOptions, delay: float | None, on_duplicate: OnDuplicate | None
) -> tuple[float | None, OnDuplicate | None]:
    try:
        values = processor_option_values(processor_options)
    except ValueError as exc:
        raise RegistrationError(f"processor_options: {exc}") from None
    for key, given in (("delay", delay), ("on_duplicate", on_duplicate)):
        if key in values and given is not None and values[key] != given:
            raise RegistrationError(
                f"processor_options: {key} is {shown(values[key])} there but {shown(given)} as an "
                "option"
            )
    return values.get("delay", delay), values.get("on_duplicate", on_duplicate)


def _attach_submission_methods(target: Any, task_name: str) -> None:
    def delay(*args: Any, **kwargs: Any) -> Submission:
        return submit_task(task_name, args=args, kwargs=kwargs)

    def apply_async(
        args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> Submission:
        if not options.keys() <= SUBMIT_OPTIONS:
            check_submit_options(options, "apply_async")
        return submit_task(task_name, args=args, kwargs=kwargs, **options)

    async def adelay(*args: Any, **kwargs: Any) -> Submission:
        return await asubmit_task(task_name, args=args, kwargs=kwargs)

    async def aapply_async(
        args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> Submission:
        if not options.keys() <= SUBMIT_OPTIONS:
            check_submit_options(options, "aapply_async")
        return await asubmit_task(task_name, args=args, kwargs=kwargs, **options)

    for method in (delay, apply_async, adelay, aapply_async):
        method.__qualname__ = f"{getattr(target, '__qualname__', task_name)}.{method.__name__}"
        # On a class, a plain function would become a method bound to instances.
        attribute = staticmethod(method) if inspect.isclass(target) else method
        setattr(target, method.__name__, attribute)
