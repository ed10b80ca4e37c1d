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
    with pytest.raises(RegistrationError, match=r"already registered for .*<lambda>"):
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
