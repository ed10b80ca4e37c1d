"""The registry of tasks: which names may run, and their default options."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import CodeType
from typing import Any, Final

from dispatcher.publish.errors import RegistrationError
from dispatcher.publish.json_values import shown
from dispatcher.schema import CHANNEL_NAME_RULE, OnDuplicate, is_valid_channel_name, validator

Queue = str | Callable[[], str] | None
"""A channel name, or a function returning one at each submission."""

MAX_ATTEMPTS_LIMIT: Final = 1000
"""The most attempts a durable job may be given (the table's constraint says the same)."""


def check_max_attempts(value: object) -> str | None:
    """Say what is wrong with *value* as a job's ``max_attempts``; ``None`` when it is fine."""
    if not isinstance(value, int) or isinstance(value, bool):
        return f"expected an integer, got {type(value).__name__} {shown(value)}"
    if not 1 <= value <= MAX_ATTEMPTS_LIMIT:
        return f"must be between 1 and {MAX_ATTEMPTS_LIMIT}, got {shown(value)}"
    return None


@dataclass(frozen=True)
class RegisteredTask:
    """A function (or a class with ``run``) registered with ``@task``, and its defaults."""

    name: str
    """The name messages use: ``module.qualname`` unless given at registration."""
    target: Callable[..., Any]
    """What runs: the function, or the class (instantiated, then ``run`` is called)."""
    queue: Queue = None
    bind: bool = False
    timeout: float | None = None
    delay: float | None = None
    on_duplicate: OnDuplicate | None = None
    max_attempts: int | None = None
    """Starts of the job before it is left failed, for durable queues (``None``: the queue's)."""

    @property
    def is_class(self) -> bool:
        """Tell whether the target is a class whose instances' ``run`` method is the task."""
        return isinstance(self.target, type)


class TaskRegistry:
    """Task names and what they run. Thread-safe."""

    def __init__(self) -> None:
        # Re-entrant: a signal handler (or a __del__) may register (importing a module of
        # tasks) while its thread does.
        self._lock = threading.RLock()
        self._by_name: dict[str, RegisteredTask] = {}

    def register(self, entry: RegisteredTask) -> RegisteredTask:
        """Add *entry*; return it.

        Registering the same target again (the object itself, or the same definition made
        anew when its module is reloaded or imported again) replaces the entry; a different
        target under a taken name is an error (see :func:`_same_target`).

        :raises RegistrationError: when the name is invalid or taken by another target, or
            the target is a generator function (see :func:`generator_problem`).
        """
        if not validator("task-message").is_valid({"task": entry.name}):
            raise RegistrationError(
                f"{entry.name!r} is not a valid task name: use dotted Python identifiers in "
                "ASCII such as 'myapp.tasks.send_email', at most 255 characters"
            )
        problem = generator_problem(entry.target)
        if problem is not None:
            raise RegistrationError(f"cannot register {entry.name}: {problem}")
        _check_defaults(entry)
        with self._lock:
            existing = self._by_name.get(entry.name)
            if existing is not None and not _same_target(existing.target, entry.target):
                raise RegistrationError(
                    f"task name {entry.name!r} is already registered for "
                    f"{_describe(existing.target)}; cannot register {_describe(entry.target)} "
                    "under it too"
                )
            self._by_name[entry.name] = entry
        return entry

    def get(self, name: str) -> RegisteredTask | None:
        """Return the task registered as *name*, or ``None``."""
        return self._by_name.get(name)

    def find(self, target: object) -> RegisteredTask | None:
        """Return the entry whose target is *target* (the object itself), or ``None``."""
        name = getattr(target, "__dispatcher_task__", None)
        entry = self._by_name.get(name) if isinstance(name, str) else None
        return entry if entry is not None and entry.target is target else None

    def unregister(self, name: str) -> None:
        """Remove the task registered as *name*, if any."""
        with self._lock:
            self._by_name.pop(name, None)

    def names(self) -> frozenset[str]:
        """Return the names of every registered task."""
        return frozenset(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[RegisteredTask]:
        return iter(list(self._by_name.values()))

    def __len__(self) -> int:
        return len(self._by_name)


def generator_problem(target: object) -> str | None:
    """Say why *target* cannot be a task if it is a generator function; ``None`` otherwise.

    Called, a generator function (or an ``async`` one) returns a generator without running
    any of its body: as a task, it would end ``ok`` having done nothing. The same goes for
    a class whose ``run`` method is one. (``async def`` functions that do not yield are
    tasks: the worker awaits them.)
    """
    function = getattr(target, "run", None) if isinstance(target, type) else target
    if inspect.isasyncgenfunction(function):
        kind = "an async generator function"
    elif inspect.isgeneratorfunction(function):
        kind = "a generator function"
    else:
        return None
    what = "its run() method is" if isinstance(target, type) else "it is"
    return (
        f"{what} {kind} (it yields), whose body a worker would never run: "
        "return the values (in a list) instead"
    )


def _check_defaults(entry: RegisteredTask) -> None:
    """Refuse at registration the defaults every submission would be refused for."""
    if isinstance(entry.queue, str) and not is_valid_channel_name(entry.queue):
        raise RegistrationError(
            f"cannot register {entry.name}: queue: {shown(entry.queue)} is not a valid channel "
            f"name ({CHANNEL_NAME_RULE})"
        )
    if entry.max_attempts is not None:
        problem = check_max_attempts(entry.max_attempts)
        if problem is not None:
            raise RegistrationError(f"cannot register {entry.name}: max_attempts: {problem}")
    options = {"timeout": entry.timeout, "delay": entry.delay, "on_duplicate": entry.on_duplicate}
    trial = {"task": entry.name, **{k: v for k, v in options.items() if v is not None}}
    checker = validator("task-message")
    if not checker.is_valid(trial):
        reasons = "; ".join(str(problem) for problem in checker.problems(trial))
        raise RegistrationError(
            f"cannot register {entry.name}: {reasons or 'a default the task message refuses'}"
        )


def _same_target(registered: object, target: object) -> bool:
    """Tell whether *target* may replace *registered* under its name: the same task again.

    It is when it is the object itself, or the same definition made anew: a module
    re-imported (``importlib.reload``, or imported again once out of ``sys.modules``) makes
    its functions and classes again, the same ``module.qualname``, as different objects.
    A qualname with ``<`` in it (``<lambda>``, ``f.<locals>.g``) is no such identity: every
    lambda of a module has the same, and so has every closure one function makes. Two such
    functions are the same definition only when they are different compilations of code at
    the same place (a re-import compiles the module again; two closures of one factory share
    their code object, and two lambdas of a module are at different places).
    """
    if registered is target:
        return True
    origin = _origin(target)
    if _origin(registered) != origin:
        return False
    if "<" not in origin[1]:
        return True
    code, other = getattr(registered, "__code__", None), getattr(target, "__code__", None)
    if not isinstance(code, CodeType) or not isinstance(other, CodeType) or code is other:
        return False
    return _place(code) == _place(other)


def _place(code: CodeType) -> tuple[object, ...]:
    """Where *code* was written: its file, and the lines and columns of its instructions."""
    return code.co_filename, code.co_firstlineno, tuple(code.co_positions())


def _origin(target: object) -> tuple[str, str]:
    return getattr(target, "__module__", ""), getattr(target, "__qualname__", repr(target))


def _describe(target: object) -> str:
    module, qualname = _origin(target)
    code = getattr(target, "__code__", None)
    if "<" in qualname and isinstance(code, CodeType):  # which lambda, which closure
        return f"{module}.{qualname} (line {code.co_firstlineno})"
    return f"{module}.{qualname}"


registry = TaskRegistry()
"""The registry ``@task`` adds to, and the service runs tasks from."""
