"""What ``@task`` takes as a task: one target per name, and the callables it refuses.

A refused registration raises ``RegistrationError`` saying why, and leaves the registry as it
was: the name stays free for the next attempt.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatcher.publish import BoundTask, RegistrationError, registry, submit_task, task
from dispatcher.testing import eager

PREFIX = "tests_task_targets."


@pytest.fixture(autouse=True)
def _forget_the_tests_tasks() -> Iterator[None]:
    yield
    for name in registry.names():
        if name.startswith(PREFIX):
            registry.unregister(name)


def test_two_lambdas_under_one_name_are_refused() -> None:
    first = task(name=PREFIX + "hook")(lambda: "first")
    line = first.__code__.co_firstlineno
    with pytest.raises(
        RegistrationError,
        match=rf"already registered for .*<lambda> \(line {line}\); cannot register "
        rf".*<lambda> \(line {line + 7}\) under it",
    ):
        task(name=PREFIX + "hook")(lambda: "second")
    with eager() as mode:
        submission = first.delay()
    assert mode.run_of(submission).result == "first"


def test_two_closures_of_one_factory_under_one_name_are_refused() -> None:
    def make(value: str) -> Callable[[], str]:
        def hook() -> str:
            return value

        return task(name=PREFIX + "closure")(hook)

    first = make("first")
    with pytest.raises(RegistrationError, match=r"already registered for .*make\.<locals>\.hook"):
        make("second")
    with eager() as mode:
        submission = submit_task(PREFIX + "closure")
    assert mode.run_of(submission).result == "first"
    assert registry.find(first) is not None


MODULE = f"""
from dispatcher.publish import task

hook = task(name="{PREFIX}hook")(lambda: "hook")


@task(name="{PREFIX}plain")
def plain() -> str:
    return "plain"


def _make():
    @task(name="{PREFIX}local")
    def local() -> str:
        return "local"

    return local


local = _make()
"""


@pytest.mark.parametrize("again", ["reload", "import"])
def test_a_module_imported_again_registers_its_tasks_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, again: str
) -> None:
    (tmp_path / "tests_task_targets_module.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tests_task_targets_module", raising=False)
    module = importlib.import_module("tests_task_targets_module")
    try:
        if again == "reload":
            module = importlib.reload(module)
        else:
            del sys.modules["tests_task_targets_module"]
            module = importlib.import_module("tests_task_targets_module")
    finally:
        sys.modules.pop("tests_task_targets_module", None)
    with eager() as mode:
        submissions = [module.hook.delay(), module.plain.delay(), module.local.delay()]
    assert [mode.run_of(s).result for s in submissions] == ["hook", "plain", "local"]


def test_a_staticmethod_is_a_task_whichever_decorator_is_above() -> None:
    class Holder:
        @staticmethod
        @task(name=PREFIX + "static_below")
        def static_below(x: int) -> int:
            return x + 1

        @task(name=PREFIX + "static_above")
        @staticmethod
        def static_above(x: int) -> int:
            return x * 2

    with eager() as mode:
        submissions = [
            Holder.static_below.delay(1),
            Holder.static_above.delay(3),
            submit_task(Holder.static_above, args=[4]),
        ]
    assert [mode.run_of(s).result for s in submissions] == [2, 6, 8]
    assert Holder().static_above(5) == 10  # still a staticmethod


def test_a_classmethod_is_refused_saying_what_to_write_instead() -> None:
    for decorator in (task(name=PREFIX + "cm"), task):
        with pytest.raises(RegistrationError, match="a classmethod cannot be a task") as refused:

            class Owner:
                @decorator
                @classmethod
                def build(cls, x: int) -> int:
                    return x

        assert "@staticmethod above @task" in str(refused.value)
    assert PREFIX + "cm" not in registry


@pytest.mark.parametrize("first", ["self", "cls"])
def test_a_method_defined_in_a_class_body_is_refused(first: str) -> None:
    source = f"""
class Owner:
    @task(name="{PREFIX}method")
    def work({first}, x: int) -> int:
        return x
"""
    with pytest.raises(RegistrationError) as refused:
        exec(source, {"task": task})
    assert str(refused.value).startswith(
        f"cannot register {PREFIX}method: Owner.work is a method (its first parameter is "
        f"{first}): a worker calls a task with the submitted arguments only"
    )
    assert PREFIX + "method" not in registry


class Service:
    def run(self, x: int) -> int:
        return x


@pytest.mark.parametrize("decorate", [True, False])
@pytest.mark.parametrize(
    ("target", "kind"), [(Service().run, "a bound method"), (len, "a built-in function")]
)
def test_a_callable_that_takes_no_attributes_is_refused_and_not_registered(
    target: Callable[..., Any], kind: str, decorate: bool
) -> None:
    with pytest.raises(RegistrationError) as refused:
        task(name=PREFIX + "unmarkable", decorate=decorate)(target)
    assert str(refused.value).startswith(f"cannot register {PREFIX}unmarkable: ")
    assert f", {kind}, takes no attributes" in str(refused.value)
    assert str(refused.value).endswith("register a function that calls it")
    assert PREFIX + "unmarkable" not in registry

    def wrapper(x: int) -> int:
        return 0

    task(name=PREFIX + "unmarkable")(wrapper)  # the name is free
    assert registry.find(wrapper) is not None


def test_a_refused_registration_leaves_the_target_as_it_was() -> None:
    def first() -> None: ...

    def second() -> None: ...

    task(name=PREFIX + "taken")(first)
    with pytest.raises(RegistrationError, match="already registered"):
        task(name=PREFIX + "taken")(second)
    assert not hasattr(second, "__dispatcher_task__")
    with pytest.raises(RegistrationError, match="is not a valid task name"):
        task(name="not valid")(first)
    assert first.__dispatcher_task__ == PREFIX + "taken"  # type: ignore[attr-defined]


def cleanup() -> None: ...


def keyword_only(*, dispatcher: BoundTask) -> None: ...


class NoBoundSlot:
    def run(self) -> None: ...


@pytest.mark.parametrize(
    ("target", "function"), [(cleanup, "it"), (keyword_only, "it"), (NoBoundSlot, "its run()")]
)
def test_bind_without_a_parameter_for_the_bound_task_is_refused(
    target: Callable[..., Any], function: str
) -> None:
    with pytest.raises(RegistrationError) as refused:
        task(name=PREFIX + "bound", bind=True)(target)
    assert str(refused.value) == (
        f"cannot register {PREFIX}bound: bind=True passes the bound task as the first "
        f"argument, but {function} takes no positional argument for it: add a first "
        "parameter (dispatcher: BoundTask), or leave bind out"
    )
    assert PREFIX + "bound" not in registry


def test_bind_with_a_parameter_for_the_bound_task_is_taken() -> None:
    def first(dispatcher: BoundTask) -> str:
        return dispatcher.uuid

    def variadic(*args: Any) -> int:
        return len(args)

    for target in (first, variadic):
        task(name=PREFIX + target.__name__, bind=True)(target)


def test_an_empty_name_is_refused_as_an_invalid_one() -> None:
    def work() -> None: ...

    with pytest.raises(RegistrationError, match=r"^'' is not a valid task name"):
        task(name="")(work)
    assert registry.find(work) is None
