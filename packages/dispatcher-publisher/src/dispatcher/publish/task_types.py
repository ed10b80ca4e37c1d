"""The types of what ``@task`` gives: the decorated functions, the decorators, ``BoundTask``.

Protocols only, for annotations: :func:`dispatcher.publish.task` (in
:mod:`~dispatcher.publish.decorator`) returns objects of these types.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar, overload

from psycopg import AsyncConnection, Connection

from dispatcher.publish.processor_options import ProcessorOptions
from dispatcher.publish.registry import Queue
from dispatcher.publish.submission import Submission
from dispatcher.schema import OnDuplicate

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
