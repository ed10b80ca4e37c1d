"""A ``worker.class`` that cannot serve: the service stops at start, saying why, no traceback.

The case a team moving from dispatcherd meets first: its worker class still subclasses
dispatcherd's ``TaskWorker`` (AWX's ``worker_cls`` does).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from support.service import ServiceProcess

pytestmark = pytest.mark.timeout(60)

EXIT_TASK_MODULES = 3
"""The exit status of a service whose workers cannot start."""


def refused(
    start_service: Callable[..., ServiceProcess], config: dict[str, Any], worker_class: str
) -> str:
    """Start a service with *worker_class*; return its log once it has stopped, refusing."""
    config["worker"] = {"class": f"support.foreign_workers.{worker_class}"}
    service = start_service(config, wait=False)
    assert service.wait(45) == EXIT_TASK_MODULES, service.log
    log = service.log
    assert "Traceback" not in log
    return log


def test_a_subclass_of_dispatcherds_task_worker_is_refused_with_what_to_do(
    start_service: Callable[..., ServiceProcess], service_config: dict[str, Any]
) -> None:
    log = refused(start_service, service_config, "AppWorker")
    assert (
        "CRITICAL dispatcher.service: workers cannot start, stopping: worker.class "
        "'support.foreign_workers.AppWorker' cannot be used (worker.class in "
    ) in log
    assert (
        "  | error: support.foreign_workers.AppWorker does not subclass "
        "dispatcher.server.BaseWorker\n"
        "  | hint: it subclasses dispatcherd's dispatcherd.worker.task.TaskWorker, whose "
        "workers run another loop: move its hooks (on_start, pre_task, post_task, on_idle, "
        "on_shutdown) to a subclass of dispatcher.server.BaseWorker (its other methods, such "
        "as run_callable, are never called here: wrap each task in pre_task and post_task "
        "instead)\n"
    ) in log


def test_a_class_on_no_base_is_refused(
    start_service: Callable[..., ServiceProcess], service_config: dict[str, Any]
) -> None:
    log = refused(start_service, service_config, "PlainWorker")
    assert (
        "  | error: support.foreign_workers.PlainWorker does not subclass "
        "dispatcher.server.BaseWorker\n"
        "  | hint: subclass dispatcher.server.BaseWorker, whose hooks are on_start, "
        "pre_task, post_task, on_idle and on_shutdown\n"
    ) in log


def test_a_name_that_is_not_a_class_is_refused(
    start_service: Callable[..., ServiceProcess], service_config: dict[str, Any]
) -> None:
    log = refused(start_service, service_config, "NOT_A_CLASS")
    assert "  | error: support.foreign_workers.NOT_A_CLASS is not a class (a str)\n" in log
    log = refused(start_service, service_config, "Missing")
    assert "  | error: module 'support.foreign_workers' has no attribute 'Missing'\n" in log


def test_a_constructor_that_fails_names_its_line(
    start_service: Callable[..., ServiceProcess], service_config: dict[str, Any]
) -> None:
    log = refused(start_service, service_config, "BrokenWorker")
    assert (
        "worker.class 'support.foreign_workers.BrokenWorker' cannot be used (worker.class in "
    ) in log
    assert "  | error: RuntimeError: tracing backend unreachable (simulated)\n" in log
    assert "foreign_workers.py:" in log
