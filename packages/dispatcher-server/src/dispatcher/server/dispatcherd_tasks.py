"""Tasks registered with dispatcherd's ``@task``, honoured when a worker has dispatcherd loaded.

A task module written for dispatcherd registers its functions and classes with
``dispatcherd.publish.task``, which records each in dispatcherd's registry
(``dispatcherd.registry.registry``): a set of method objects, each holding the function or
class (``fn``), ``bind``, ``queue``, the ``timeout`` among its submission defaults, and
processor options (whose ``to_dict()`` give ``on_duplicate`` or ``delay``). dispatcherd runs
a message whose ``task`` is ``fn.__module__ + "." + fn.__qualname__``.

After a worker has imported ``tasks.modules``, :func:`adopt_dispatcherd_tasks` copies those
registrations into ours, under the same names and with the same options, so that the
service accepts and runs them like tasks registered with our ``@task``. Like ours,
dispatcherd's registry holds every function decorated in the process (in the task modules
and in whatever they import): all are adopted. A name registered with our ``@task`` keeps
our registration.

dispatcherd is never imported here: its modules are read from :data:`sys.modules`, where
they are only if a task module imported dispatcherd. A worker whose task modules do not
use dispatcherd never loads it.

:func:`conventions` gives the exceptions dispatcherd's tasks know: a cancel reaches an
adopted task as an exception that is both our ``DispatcherCancel`` and dispatcherd's (so
that ``except DispatcherCancel`` written for dispatcherd catches it), and dispatcherd's
``DispatcherExit`` ends the worker as ours does.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final
from weakref import WeakKeyDictionary

from dispatcher.publish import (
    DispatcherCancel,
    DispatcherExit,
    RegisteredTask,
    RegistrationError,
    TaskRegistry,
    registry,
)
from dispatcher.publish.registry import generator_problem
from dispatcher.schema import ON_DUPLICATE_MODES, is_valid_channel_name
from dispatcher.server.log_records import get_logger

logger = get_logger("dispatcher.worker")

REGISTRY_MODULE: Final = "dispatcherd.registry"
"""The dispatcherd module holding its registry (``registry``)."""

EXCEPTIONS_MODULE: Final = "dispatcherd.worker.exceptions"
"""The dispatcherd module defining ``DispatcherCancel`` and ``DispatcherExit``."""

_adopted: WeakKeyDictionary[TaskRegistry, set[str]] = WeakKeyDictionary()
"""The names adopted from dispatcherd's registry, by the registry they were adopted into."""

_warned: set[str] = set()
"""Names whose conflict was logged in this process, or in the fork server before the worker
was forked from it (its state is inherited): each is logged once."""


def is_adopted(name: str, into: TaskRegistry = registry) -> bool:
    """Tell whether task *name* was adopted (into *into*) from dispatcherd's registry."""
    return name in _adopted.get(into, ())


def adopt_dispatcherd_tasks(into: TaskRegistry = registry) -> list[str]:
    """Register in *into* each task registered with dispatcherd's ``@task``; return their names.

    Does nothing when dispatcherd is not loaded. A name *into* already holds for another
    function is left to it (with a warning); a registration dispatcherd could not run
    either (a function defined inside another, whose name cannot be imported) is skipped.
    Options our registry refuses (a queue that is not a valid channel name, a timeout over
    a year) are dropped; the task is still adopted. Adopting again is cheap and adds only
    what was registered since.
    """
    if "dispatcherd" not in sys.modules:
        return []
    adopted = []
    try:
        methods = _registered_methods()
    except Exception as exc:
        logger.warning("cannot read dispatcherd's task registry: %s", exc)
        return []
    for method in methods:
        try:
            name = _adopt(method, into)
        except Exception as exc:  # one odd registration must not stop the worker
            logger.warning("cannot adopt dispatcherd task %r: %s", method, exc)
            continue
        if name is not None:
            adopted.append(name)
    return adopted


def _registered_methods() -> list[Any]:
    """A snapshot of the method objects in dispatcherd's default registry."""
    source = getattr(sys.modules.get(REGISTRY_MODULE), "registry", None)
    methods = getattr(source, "registry", None)
    if not isinstance(methods, Iterable):
        return []
    lock = getattr(source, "lock", None)
    if lock is None:
        return list(methods)
    with lock:
        return list(methods)


def _adopt(method: Any, into: TaskRegistry) -> str | None:
    """Register one dispatcherd method in *into*; its name, or ``None`` when skipped."""
    target = getattr(method, "fn", None)
    if not callable(target):
        return None
    name = _name_of(method, target)
    existing = into.get(name)
    if existing is not None and existing.target is target:
        return None  # adopted already, or registered with our @task too
    adopted = _adopted.setdefault(into, set())
    if existing is not None and name not in adopted:
        if name in _warned:
            return None
        _warned.add(name)
        logger.warning(
            "dispatcherd task %s not adopted: the name is registered with our @task for %s.%s",
            name,
            getattr(existing.target, "__module__", "?"),
            getattr(existing.target, "__qualname__", "?"),
        )
        return None
    problem = generator_problem(target)
    if problem is not None:
        if name not in _warned:
            _warned.add(name)
            logger.warning("dispatcherd task %s not adopted: %s", name, problem)
        return None
    bind = bool(getattr(method, "bind", False))
    options = _options(method)
    for entry in (
        RegisteredTask(name=name, target=target, bind=bind, **options),
        RegisteredTask(name=name, target=target, bind=bind),
    ):
        try:
            into.register(entry)
        except RegistrationError as exc:
            logger.debug("dispatcherd task %s: %s", name, exc)
            continue
        adopted.add(name)
        return name
    return None


def _name_of(method: Any, target: Any) -> str:
    """The name dispatcherd publishes *method* under (``module.qualname``)."""
    serialize = getattr(method, "serialize_task", None)
    if callable(serialize):
        name = serialize()
        if isinstance(name, str):
            return name
    return f"{target.__module__}.{target.__qualname__}"


def _options(method: Any) -> dict[str, Any]:
    """Our registration options from a dispatcherd method's (those that mean the same)."""
    options: dict[str, Any] = {}
    queue = getattr(method, "queue", None)
    if (isinstance(queue, str) and is_valid_channel_name(queue)) or callable(queue):
        options["queue"] = queue  # a function is called at each submission, as dispatcherd
    defaults = getattr(method, "submission_defaults", None)
    timeout = _seconds(defaults.get("timeout") if isinstance(defaults, dict) else None)
    if timeout is not None:
        options["timeout"] = timeout
    processed: dict[str, Any] = {}
    for part in getattr(method, "processor_options", None) or ():
        to_dict = getattr(part, "to_dict", None)
        values = to_dict() if callable(to_dict) else None
        if isinstance(values, dict):
            processed.update(values)
    on_duplicate = processed.get("on_duplicate")
    if on_duplicate in ON_DUPLICATE_MODES:
        options["on_duplicate"] = on_duplicate
    delay = _seconds(processed.get("delay"))
    if delay is not None:
        options["delay"] = delay
    return options


def _seconds(value: object) -> float | None:
    """*value* as seconds, if it is a positive number (dispatcherd ignores falsy ones)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


@dataclass(frozen=True)
class Conventions:
    """The exceptions a worker raises and recognises, dispatcherd's among them if loaded."""

    cancel: type[BaseException]
    """What a cancel raises in a task adopted from dispatcherd."""
    cancels: tuple[type[BaseException], ...]
    """What ends a task as cancelled."""
    exits: tuple[type[BaseException], ...]
    """What ends a task and asks its worker to exit."""


OURS: Final = Conventions(DispatcherCancel, (DispatcherCancel,), (DispatcherExit,))
"""The conventions of a worker without dispatcherd."""


def conventions() -> Conventions:
    """The exceptions of this worker: ours, plus dispatcherd's when it is loaded."""
    module = sys.modules.get(EXCEPTIONS_MODULE)
    their_cancel = getattr(module, "DispatcherCancel", None)
    their_exit = getattr(module, "DispatcherExit", None)
    if not (_is_exception_class(their_cancel) and _is_exception_class(their_exit)):
        return OURS
    assert isinstance(their_cancel, type)
    assert isinstance(their_exit, type)
    try:
        both = type(
            "DispatcherCancel",
            (DispatcherCancel, their_cancel),
            {
                "__module__": __name__,
                "__doc__": "A cancel, for a task written for dispatcher or for dispatcherd.",
            },
        )
    except TypeError:  # bases that cannot be combined: dispatcherd's is then only recognised
        both = DispatcherCancel
    return Conventions(both, (DispatcherCancel, their_cancel), (DispatcherExit, their_exit))


def _is_exception_class(value: object) -> bool:
    return isinstance(value, type) and issubclass(value, BaseException)
