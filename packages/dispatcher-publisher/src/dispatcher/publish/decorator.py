"""``@task``: register a function or class as a task and give it ``.delay()``."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Concatenate, Final, Literal, ParamSpec, Protocol, TypeVar, overload

from psycopg import AsyncConnection, Connection

from dispatcher.publish import interception
from dispatcher.publish.arguments import bind_problem, display_signature, shown_signature
from dispatcher.publish.caller_connections import expect_connection
from dispatcher.publish.errors import RegistrationError
from dispatcher.publish.json_values import shown
from dispatcher.publish.mistakes import SUBMIT_OPTIONS, check_submit_options
from dispatcher.publish.processor_options import ProcessorOptions, processor_option_values
from dispatcher.publish.registry import Queue, RegisteredTask, registry
from dispatcher.publish.submission import Submission
from dispatcher.publish.submit_async import asubmit_task
from dispatcher.publish.submit_sync import submit_task
from dispatcher.schema import OnDuplicate

logger = logging.getLogger("dispatcher.publish")

P = ParamSpec("P")
R_co = TypeVar("R_co", covariant=True)
R = TypeVar("R")
C = TypeVar("C", bound=type)
T = TypeVar("T")


class BoundTask(Protocol):
    """What a ``@task(bind=True)`` task receives first, to annotate its first parameter with.

    The service passes its worker's object, :mod:`dispatcher.testing` an in-memory one; both
    have these attributes::

        @task(bind=True)
        def import_all(dispatcher: BoundTask, feeds: list[str]) -> None:
            for feed in feeds:
                dispatcher.control("run", {"task": "myapp.tasks.import_feed", "args": [feed]})
    """

    uuid: str
    """The uuid of the message being run."""
    worker_id: int
    """The id of the worker running it."""

    def control(self, command: str, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Run a control command in the task's own service and return its reply."""
        ...


class SubmissionMethods(Protocol[P]):
    """What ``@task`` adds to a function: its name and the submission methods.

    The part :class:`TaskFunction` and :class:`BoundTaskFunction` share: a parameter of
    this type takes either.
    """

    __dispatcher_task__: str
    """The name the task is registered under."""
    __name__: str
    __qualname__: str
    __module__: str
    __doc__: str | None

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> Submission:
        """Submit the task with these arguments and its default options."""
        ...

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
        connection: Connection[Any] | None = None,
        max_attempts: int | None = None,
        processor_options: ProcessorOptions = None,
    ) -> Submission:
        """Submit the task with options that override its defaults (see ``submit_task``)."""
        ...

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> Submission:
        """Async ``delay()``."""
        ...

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
        connection: AsyncConnection[Any] | None = None,
        max_attempts: int | None = None,
        processor_options: ProcessorOptions = None,
    ) -> Submission:
        """Async ``apply_async()`` (*connection*: an ``AsyncConnection``)."""
        ...


class TaskFunction(SubmissionMethods[P], Protocol[P, R_co]):
    """A function decorated with ``@task``: still callable as before, plus submission methods."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co:
        """Run the function here and now, as if it were not a task."""
        ...


class BoundTaskFunction(SubmissionMethods[P], Protocol[P, R_co]):
    """A function decorated with ``@task(bind=True)``.

    Its submission methods take the task's arguments without the first parameter, which
    the worker fills with a :class:`BoundTask`; calling the function itself still takes it.
    """

    def __call__(self, bound: Any, /, *args: P.args, **kwargs: P.kwargs) -> R_co:
        """Run the function here and now, passing *bound* as the bound object."""
        ...


class TaskDecorator(Protocol):
    """What ``task(...)`` returns: applied to a function or class, registers it."""

    @overload
    def __call__(self, target: C, /) -> C: ...  # type: ignore[overload-overlap]
    @overload
    def __call__(self, target: Callable[P, R], /) -> TaskFunction[P, R]: ...


class BoundTaskDecorator(Protocol):
    """What ``task(bind=True, ...)`` returns: its functions take a :class:`BoundTask` first."""

    @overload
    def __call__(self, target: C, /) -> C: ...  # type: ignore[overload-overlap]
    @overload
    def __call__(self, target: Callable[Concatenate[Any, P], R], /) -> BoundTaskFunction[P, R]: ...


class UndecoratedTaskDecorator(Protocol):
    """What ``task(decorate=False, ...)`` returns: it registers its target and returns it as is."""

    def __call__(self, target: T, /) -> T:
        """Register *target*; return it unchanged."""
        ...


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
            raise _classmethod_refusal(target, None)
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
        delay, on_duplicate = _from_processor_options(processor_options, delay, on_duplicate)

    def register(declared: Any) -> Any:
        if isinstance(declared, classmethod):
            raise _classmethod_refusal(declared, name)
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
        problem = bind_problem(target) if bind else _method_problem(target, qualname)
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
            _warn_main_module(entry.name, qualname)
        if decorate:
            _attach_submission_methods(target, entry)
        return declared

    return register


def _classmethod_refusal(
    declared: classmethod[Any, Any, Any], name: str | None
) -> RegistrationError:
    function = declared.__func__
    task_name = name if name is not None else f"{function.__module__}.{function.__qualname__}"
    return RegistrationError(
        f"cannot register {task_name}: a classmethod cannot be a task (a worker calls a task "
        "with the submitted arguments only, and nothing would fill cls): make it a "
        "module-level function, or a @staticmethod (@staticmethod above @task)"
    )


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


def _method_problem(target: object, qualname: str) -> str | None:
    """Say why *target* is no task if it is a method defined in a class body; else ``None``.

    Such a method's first parameter (``self``, ``cls``) is what calling it through an
    instance or the class fills in; a worker calls a task with the submitted arguments only.
    """
    if not inspect.isfunction(target):
        return None
    owner = qualname.rpartition(".")[0]
    if not owner or owner.endswith("<locals>"):
        return None  # a module-level function, or one defined in a function
    code = target.__code__
    first = code.co_varnames[0] if code.co_argcount else None
    if first not in ("self", "cls"):
        return None
    return (
        f"{qualname} is a method (its first parameter is {first}): a worker calls a task with "
        f"the submitted arguments only, and nothing would fill {first}; make it a module-level "
        "function, or a @staticmethod (@staticmethod above @task), or register the class "
        "itself with a run() method"
    )


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


def _attach_submission_methods(target: Any, entry: RegisteredTask) -> None:
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
