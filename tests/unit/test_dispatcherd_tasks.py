"""Adopting dispatcherd's ``@task`` registrations, with a stand-in for dispatcherd's modules.

The stand-ins hold what the adoption reads from dispatcherd's registry (a set of method
objects with ``fn``, ``bind``, ``queue``, ``submission_defaults``, ``processor_options`` and
``serialize_task()``) and its exceptions module. dispatcherd itself, in a worker of a real
service, is tested in ``tests/integration/test_dispatcherd_registrations.py``.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from dispatcher.publish import DispatcherCancel, DispatcherExit, RegisteredTask, TaskRegistry
from dispatcher.server import dispatcherd_tasks
from dispatcher.server.dispatcherd_tasks import (
    OURS,
    adopt_dispatcherd_tasks,
    conventions,
    is_adopted,
)


class Method:
    """What dispatcherd's registry holds for one registration (the parts read)."""

    def __init__(
        self,
        fn: Callable[..., Any] | type,
        *,
        bind: bool = False,
        queue: Any = None,
        processor_options: tuple[Any, ...] = (),
        **submission_defaults: Any,
    ) -> None:
        self.fn = fn
        self.bind = bind
        self.queue = queue
        self.processor_options = processor_options
        self.submission_defaults = submission_defaults

    def serialize_task(self) -> str:
        return f"{self.fn.__module__}.{self.fn.__qualname__}"


@dataclass
class Option:
    """A processor option: its ``to_dict()`` goes into every message dispatcherd publishes."""

    values: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return self.values


class TheirRegistry:
    def __init__(self) -> None:
        self.registry: set[Method] = set()
        self.lock = threading.Lock()


@pytest.fixture
def theirs(monkeypatch: pytest.MonkeyPatch) -> TheirRegistry:
    """dispatcherd, as loaded by a task module: its package and its registry module."""
    registry = TheirRegistry()
    module = types.ModuleType("dispatcherd.registry")
    module.registry = registry  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "dispatcherd", types.ModuleType("dispatcherd"))
    monkeypatch.setitem(sys.modules, "dispatcherd.registry", module)
    monkeypatch.setattr(dispatcherd_tasks, "_warned", set())  # conflicts logged in this test
    return registry


@pytest.fixture
def ours() -> TaskRegistry:
    return TaskRegistry()


def send_email(to: str) -> str:
    return to


def bound_task(dispatcher: Any) -> str:
    return str(dispatcher.uuid)


def chosen_queue() -> str:
    return "emails"


class Report:
    def run(self, n: int) -> int:
        return n


def name_of(target: Any) -> str:
    return f"{target.__module__}.{target.__qualname__}"


def test_nothing_is_adopted_when_dispatcherd_is_not_loaded(
    monkeypatch: pytest.MonkeyPatch, ours: TaskRegistry
) -> None:
    monkeypatch.delitem(sys.modules, "dispatcherd", raising=False)
    assert adopt_dispatcherd_tasks(ours) == []
    assert len(ours) == 0


def test_a_function_is_adopted_under_dispatcherds_name_with_its_options(
    theirs: TheirRegistry, ours: TaskRegistry
) -> None:
    theirs.registry.add(
        Method(
            send_email,
            queue="emails",
            timeout=30,
            processor_options=(Option({"on_duplicate": "serial"}), Option({"delay": 2})),
        )
    )
    theirs.registry.add(Method(bound_task, bind=True, queue=chosen_queue))
    theirs.registry.add(Method(Report))
    names = adopt_dispatcherd_tasks(ours)
    assert sorted(names) == sorted(name_of(t) for t in (send_email, bound_task, Report))
    entry = ours.get(name_of(send_email))
    assert entry == RegisteredTask(
        name=name_of(send_email),
        target=send_email,
        queue="emails",
        timeout=30.0,
        delay=2.0,
        on_duplicate="serial",
    )
    bound = ours.get(name_of(bound_task))
    assert bound is not None
    assert (bound.bind, bound.queue) == (True, chosen_queue)
    report = ours.get(name_of(Report))
    assert report is not None
    assert report.is_class
    assert all(is_adopted(name, ours) for name in names)
    assert adopt_dispatcherd_tasks(ours) == []  # adopting again adds nothing


def test_falsy_options_mean_none_as_in_dispatcherd(
    theirs: TheirRegistry, ours: TaskRegistry
) -> None:
    theirs.registry.add(Method(send_email, timeout=0, processor_options=(Option({"delay": 0.0}),)))
    adopt_dispatcherd_tasks(ours)
    assert ours.get(name_of(send_email)) == RegisteredTask(name_of(send_email), send_email)


def test_options_we_refuse_are_dropped_and_the_task_is_still_adopted(
    theirs: TheirRegistry, ours: TaskRegistry
) -> None:
    theirs.registry.add(
        Method(
            send_email,
            queue="not a channel!",
            timeout=10**9,
            processor_options=(Option({"on_duplicate": "run_once"}),),
        )
    )
    assert adopt_dispatcherd_tasks(ours) == [name_of(send_email)]
    assert ours.get(name_of(send_email)) == RegisteredTask(name_of(send_email), send_email)


def test_our_registration_keeps_its_name(
    theirs: TheirRegistry, ours: TaskRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    ours.register(RegisteredTask(name=name_of(send_email), target=bound_task))
    theirs.registry.add(Method(send_email))
    with caplog.at_level(logging.WARNING, logger="dispatcher.worker"):
        assert adopt_dispatcherd_tasks(ours) == []
    entry = ours.get(name_of(send_email))
    assert entry is not None
    assert entry.target is bound_task
    assert not is_adopted(name_of(send_email), ours)
    [warning] = caplog.records
    assert "not adopted: the name is registered with our @task" in warning.getMessage()
    with caplog.at_level(logging.WARNING, logger="dispatcher.worker"):
        adopt_dispatcherd_tasks(ours)
    assert len(caplog.records) == 1  # said once (workers forked later do not say it again)


def test_a_function_decorated_with_both_is_left_as_ours(
    theirs: TheirRegistry, ours: TaskRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    ours.register(RegisteredTask(name=name_of(send_email), target=send_email, bind=True))
    theirs.registry.add(Method(send_email))
    with caplog.at_level(logging.DEBUG, logger="dispatcher.worker"):
        assert adopt_dispatcherd_tasks(ours) == []
    entry = ours.get(name_of(send_email))
    assert entry is not None
    assert entry.bind  # our registration's options, not dispatcherd's
    assert caplog.records == []


def test_a_function_defined_inside_another_is_skipped(
    theirs: TheirRegistry, ours: TaskRegistry
) -> None:
    def local() -> None: ...

    theirs.registry.add(Method(local))
    theirs.registry.add(Method(send_email))
    assert adopt_dispatcherd_tasks(ours) == [name_of(send_email)]
    assert "<locals>" not in " ".join(ours.names())


def test_an_odd_registration_is_skipped_and_the_others_adopted(
    theirs: TheirRegistry, ours: TaskRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    broken = Method(bound_task)
    broken.serialize_task = lambda: 1 / 0  # type: ignore[method-assign]
    not_callable = Method(send_email)
    not_callable.fn = 42  # type: ignore[assignment]
    theirs.registry.update({broken, Method(send_email), not_callable})
    with caplog.at_level(logging.WARNING, logger="dispatcher.worker"):
        assert adopt_dispatcherd_tasks(ours) == [name_of(send_email)]
    assert any("cannot adopt dispatcherd task" in r.getMessage() for r in caplog.records)


def test_a_registry_that_is_not_dispatcherds_is_ignored(
    monkeypatch: pytest.MonkeyPatch, ours: TaskRegistry
) -> None:
    monkeypatch.setitem(sys.modules, "dispatcherd", types.ModuleType("dispatcherd"))
    monkeypatch.setitem(sys.modules, "dispatcherd.registry", types.ModuleType("x"))
    assert adopt_dispatcherd_tasks(ours) == []


# --- the exceptions -------------------------------------------------------------------------


@pytest.fixture
def their_exceptions(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType("dispatcherd.worker.exceptions")

    class TheirCancel(Exception):
        pass

    class TheirExit(Exception):
        pass

    module.DispatcherCancel = TheirCancel  # type: ignore[attr-defined]
    module.DispatcherExit = TheirExit  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "dispatcherd.worker.exceptions", module)
    return module


def test_without_dispatcherd_the_exceptions_are_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "dispatcherd.worker.exceptions", raising=False)
    assert conventions() == OURS
    assert OURS.cancel is DispatcherCancel
    assert OURS.exits == (DispatcherExit,)


def test_a_cancel_is_both_ours_and_dispatcherds(their_exceptions: types.ModuleType) -> None:
    found = conventions()
    theirs = their_exceptions.DispatcherCancel
    assert issubclass(found.cancel, DispatcherCancel)
    assert issubclass(found.cancel, theirs)
    assert found.cancels == (DispatcherCancel, theirs)
    assert found.exits == (DispatcherExit, their_exceptions.DispatcherExit)
    with pytest.raises(theirs):  # a task's `except DispatcherCancel` (dispatcherd's) sees it
        raise found.cancel


def test_dispatcherd_is_not_imported_by_the_worker_modules() -> None:
    """Loading our worker (and the adoption) imports no dispatcherd, installed or not."""
    code = (
        "import sys, dispatcher.server.worker, dispatcher.server.forkserver\n"
        "from dispatcher.server.dispatcherd_tasks import adopt_dispatcherd_tasks\n"
        "adopt_dispatcherd_tasks()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'dispatcherd'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


def numbers() -> Any:
    yield 1


async def async_numbers() -> Any:
    yield 1


class Counting:
    def run(self) -> Any:
        yield 1


def test_a_generator_function_is_not_adopted_and_says_why(
    theirs: TheirRegistry, ours: TaskRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    for target in (numbers, async_numbers, Counting):
        theirs.registry.add(Method(target))
    with caplog.at_level(logging.WARNING, logger="dispatcher.worker"):
        assert adopt_dispatcherd_tasks(ours) == []
        adopt_dispatcherd_tasks(ours)  # said once
    assert len(ours) == 0
    assert sorted(r.getMessage() for r in caplog.records) == [
        f"dispatcherd task {name_of(Counting)} not adopted: its run() method is a generator "
        "function (it yields), whose body a worker would never run: return the values (in a "
        "list) instead",
        f"dispatcherd task {name_of(async_numbers)} not adopted: it is an async generator "
        "function (it yields), whose body a worker would never run: return the values (in a "
        "list) instead",
        f"dispatcherd task {name_of(numbers)} not adopted: it is a generator function (it "
        "yields), whose body a worker would never run: return the values (in a list) instead",
    ]
