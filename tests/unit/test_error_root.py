"""One exception root: every public error derives from DispatcherError."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from collections.abc import Iterator
from types import ModuleType

import pytest

import dispatcher.config
import dispatcher.control
import dispatcher.publish
import dispatcher.schema
from dispatcher.publish import DispatcherCancel, DispatcherExit
from dispatcher.schema import DispatcherError
from support.paths import REPO

PUBLIC_PACKAGES = [
    "dispatcher.schema",
    "dispatcher.publish",
    "dispatcher.config",
    "dispatcher.control",
    "dispatcher.server",
]

SIGNALS = {DispatcherCancel, DispatcherExit}
"""Control-flow signals for tasks, not errors: BaseException, outside the root on purpose."""


def _exported_exceptions(module_name: str) -> Iterator[tuple[str, type[BaseException]]]:
    module = importlib.import_module(module_name)
    for name in getattr(module, "__all__", ()):
        value = getattr(module, name)
        if inspect.isclass(value) and issubclass(value, BaseException):
            yield f"{module_name}.{name}", value


def _submodules(package: ModuleType) -> Iterator[ModuleType]:
    yield package
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        yield importlib.import_module(info.name)


@pytest.mark.parametrize("module_name", PUBLIC_PACKAGES)
def test_every_exported_exception_derives_from_dispatcher_error(module_name: str) -> None:
    outside = [
        name
        for name, cls in _exported_exceptions(module_name)
        if cls not in SIGNALS and not issubclass(cls, DispatcherError)
    ]
    assert outside == []


def test_the_public_packages_export_errors() -> None:
    exported = {
        name.rsplit(".", 1)[1]
        for package in PUBLIC_PACKAGES
        for name, _ in _exported_exceptions(package)
    }
    assert {
        "ConfigError",
        "DecodeError",
        "InvalidSubmission",
        "PublishError",
        "RegistrationError",
        "SchemaValidationError",
        "SignatureError",
    } <= exported


@pytest.mark.parametrize(
    "package",
    [dispatcher.schema, dispatcher.publish, dispatcher.config, dispatcher.control],
    ids=lambda package: package.__name__,
)
def test_every_exception_defined_by_the_publisher_side_derives_from_dispatcher_error(
    package: ModuleType,
) -> None:
    outside = [
        f"{module.__name__}.{name}"
        for module in _submodules(package)
        for name, cls in vars(module).items()
        if inspect.isclass(cls)
        and cls.__module__ == module.__name__
        and issubclass(cls, BaseException)
        and cls not in SIGNALS
        and not issubclass(cls, DispatcherError)
    ]
    assert outside == []


def test_dispatcher_error_is_one_class_exported_three_times() -> None:
    assert dispatcher.publish.DispatcherError is DispatcherError
    assert dispatcher.config.DispatcherError is DispatcherError
    assert issubclass(DispatcherError, Exception)


def test_errors_keep_their_built_in_bases() -> None:
    from dispatcher.control.result import InvalidReply
    from dispatcher.schema import ChunkError

    for cls in (
        dispatcher.schema.SchemaValidationError,
        dispatcher.schema.DecodeError,
        dispatcher.schema.SignatureError,
        ChunkError,
        dispatcher.publish.InvalidSubmission,
        dispatcher.publish.RegistrationError,
        InvalidReply,
    ):
        assert issubclass(cls, ValueError), cls
        assert issubclass(cls, DispatcherError), cls
    assert issubclass(dispatcher.publish.BrokerUnavailable, dispatcher.publish.PublishError)
    assert issubclass(dispatcher.config.NotConfiguredError, dispatcher.config.ConfigError)


def test_task_signals_are_not_errors() -> None:
    for signal in SIGNALS:
        assert not issubclass(signal, Exception)
        assert not issubclass(signal, DispatcherError)


def test_one_except_clause_catches_a_config_error() -> None:
    with pytest.raises(DispatcherError, match="unknown key"):
        dispatcher.config.load_settings({"version": 1, "nope": 1})


def test_argument_errors_of_the_sdk_are_dispatcher_errors_and_their_builtin() -> None:
    import asyncio
    from typing import Any

    from dispatcher.config import setup
    from dispatcher.publish import (
        InvalidArgumentType,
        InvalidArgumentValue,
        batch,
        get_job,
        jobs,
        submit_task,
    )
    from dispatcher.schema import load_schema, split_message
    from dispatcher.testing import NotRecorded, captured, eager
    from support import tasks

    wrong: Any = 5
    calls: list[tuple[Any, type[BaseException]]] = [
        (lambda: get_job(wrong), TypeError),
        (lambda: jobs(state=wrong), ValueError),
        (lambda: jobs(state="bogus"), ValueError),  # type: ignore[arg-type]
        (lambda: submit_task(tasks.add, args=[1, 2], queue="q", connection=wrong), TypeError),
        (lambda: tasks.add.apply_async(args=[1, 2], countdown=3), TypeError),  # type: ignore[call-arg]
        (lambda: asyncio.run(tasks.add.aapply_async(args=[1], connection=wrong)), TypeError),
        (lambda: batch(connection=wrong).__enter__(), TypeError),
        (lambda: setup({"version": 1}, "dispatcher.yml"), TypeError),
        (lambda: load_schema(wrong), ValueError),
        (lambda: split_message("x" * 100, limit=10), ValueError),
    ]
    for call, builtin in calls:
        with pytest.raises(builtin) as raised:
            call()
        assert isinstance(raised.value, DispatcherError), raised.value
        assert isinstance(raised.value, InvalidArgumentType | InvalidArgumentValue)
    with eager() as mode, pytest.raises(LookupError) as raised:
        mode.run_of("no-such-uuid")
    assert isinstance(raised.value, NotRecorded | DispatcherError)
    with captured() as capture, pytest.raises(LookupError) as raised:
        capture.run()
    assert isinstance(raised.value, DispatcherError)


def test_the_error_table_of_the_publishing_docs_lists_every_exported_error() -> None:
    text = (REPO / "docs" / "publishing.md").read_text()
    table = text[text.index("| error | raised when |") :].split("\n\n", 1)[0]
    listed = set(re.findall(r"^\| `dispatcher\.[a-z_.]+\.([A-Za-z]+)` \|", table, re.MULTILINE))
    exported = {
        cls.__name__
        for package in [*PUBLIC_PACKAGES, "dispatcher.testing", "dispatcher.contrib.django"]
        for _, cls in _exported_exceptions(package)
        if cls not in SIGNALS and cls is not DispatcherError
    }
    assert exported - listed == set()
