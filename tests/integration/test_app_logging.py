"""Logging that the application sets up itself, in the workers: its records reach the log at once.

The task module :mod:`support.app_logging_tasks` configures logging when imported (handlers
to standard error and output, formats of its own, on the root logger and an app logger).
Its records are written as it formats them, at their level, while the task runs: neither
held back by the output capture until the task ends, nor re-labelled as its output. The
app's root config stays the app's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support.service import Evidence, ServiceProcess, task_message
from support.worker_process import WorkerProcess

StartService = Callable[..., ServiceProcess]
Notify = Callable[[str, str], None]

TASKS = "support.app_logging_tasks."


@pytest.fixture
def app_config(service_config: dict[str, Any]) -> dict[str, Any]:
    """One worker (tasks run in order, in one process), the app's task module."""
    service_config["tasks"] = {"modules": ["support.app_logging_tasks"]}
    service_config["service"]["pool"] = {"min_workers": 1, "max_workers": 1}
    return service_config


def message(task: str, evidence: Evidence, text: str) -> str:
    return json.dumps({"task": TASKS + task, "args": [str(evidence.path), text]})


def go(evidence: Evidence) -> None:
    """Let the waiting task end."""
    Path(str(evidence.path) + ".go").touch()


def test_app_handlers_write_to_the_log_at_once_in_their_format_and_level(
    start_service: StartService,
    app_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service = start_service(app_config)
    notify(channel, message("log_then_wait", evidence, "hello"))
    (record,) = evidence.wait_for(1)
    pid = record["pid"]
    # While the task still runs: the app's root handler (to standard error) and its own
    # logger's (to standard output), each in the app's format and at the record's level.
    service.wait_for_log(rf"^APP-ROOT WARNING pid={pid} thread=\d+ other\.lib: root: hello$")
    service.wait_for_log(r"^APP-OUT ERROR app_logging\.tasks: out: hello$")
    assert "task output" not in service.log, service.log
    go(evidence)
    # What the task printed still goes through the capture, after the task.
    service.wait_for_log(r"INFO worker-0 dispatcher\.worker: task output \[.*\] printed: hello")
    service.wait_for_log(r"log_then_wait \(uuid .*\) finished ok")
    log = service.log
    assert "Logging error" not in log, log
    # The app's root config is kept: the root's records are not also written by the worker's
    # own handler, nor captured.
    assert not re.search(r"worker-0 other\.lib", log), log
    assert not re.search(r"task output .*(root|out): hello", log), log


def test_records_the_app_formats_cannot_forge_lines(
    start_service: StartService,
    app_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service = start_service(app_config)
    forged = "x\nCRITICAL dispatcher.service: FORGED\r\x1b[2J"
    notify(channel, message("log_a_forgery", evidence, forged))
    evidence.wait_for(1)
    service.wait_for_log(r"log_a_forgery \(uuid .*\) finished ok")
    log = service.log
    pid = evidence.records()[0]["pid"]
    # A line break in a record starts a line of its own, indented, the rest escaped, as the
    # lines of a traceback do.
    forgery = "x\n  | CRITICAL dispatcher.service: FORGED\\r\\x1b[2J\n"
    assert f"\nAPP-ROOT WARNING pid={pid} thread=" in log, log
    assert f" other.lib: forged: {forgery}" in log, log
    assert (
        "\nAPP-OUT ERROR app_logging.tasks: failed\n  | Traceback (most recent call last):" in log
    )
    assert f"\n  | ValueError: {forgery}" in log, log
    assert not any(line.startswith("CRITICAL") for line in log.splitlines()), log
    assert "\x1b" not in log


def test_a_handler_made_in_a_task_writes_to_the_log_directly_from_its_first_line_on(
    start_service: StartService,
    app_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service = start_service(app_config)
    notify(channel, message("make_a_handler_then_wait", evidence, "one"))
    evidence.wait_for(1)
    # Made during the task: once it has written (its first line goes through the capture),
    # the worker points it at the log, while the task runs.
    service.wait_for_log(r"^APP-LATE WARNING app_late: then: one \(redirected: True\)$")
    go(evidence)
    service.wait_for_log(r"make_a_handler_then_wait \(uuid .*\) finished ok")
    Path(str(evidence.path) + ".go").unlink()
    notify(channel, message("log_late_then_wait", evidence, "two"))
    evidence.wait_for(2)
    service.wait_for_log(r"^APP-LATE WARNING app_late: later: two$")
    go(evidence)
    service.wait_for_log(r"log_late_then_wait \(uuid .*\) finished ok")
    assert "Logging error" not in service.log


def test_a_basic_config_a_task_module_runs_when_imported_is_kept(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
) -> None:
    # The fork server is forked from the service's process once it set its own logging up:
    # the service's handler on the root logger must not make the app's basicConfig() a no-op.
    service_config["tasks"] = {"modules": ["support.app_basic_logging_tasks"]}
    service_config["service"]["pool"] = {"min_workers": 1, "max_workers": 1}
    service = start_service(service_config)
    task = "support.app_basic_logging_tasks.log_a_warning"
    notify(channel, json.dumps({"task": task, "args": ["hello"]}))
    service.wait_for_log(r"log_a_warning \(uuid .*\) finished ok")
    service.wait_for_log(r"^APPFMT WARNING myapp\.basic: basic: hello$")
    log = service.log
    # Written once, in the app's format only.
    assert not re.search(r"worker-0 myapp\.basic", log), log
    assert "Logging error" not in log, log


def test_a_basic_config_the_module_of_the_worker_hooks_runs_when_imported_is_kept(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    # The task modules set nothing up; the hooks' module, imported by each worker once it
    # set its own logging up, calls basicConfig().
    service_config["worker"] = {"class": "support.app_basic_logging_tasks.BasicConfigWorker"}
    service_config["service"]["pool"] = {"min_workers": 1, "max_workers": 1}
    service = start_service(service_config)
    notify(channel, task_message("record", evidence.path, 1))
    evidence.wait_for(1)
    service.wait_for_log(r"^APPFMT WARNING myapp\.hooks: before support\.service_tasks\.record$")
    log = service.log
    assert not re.search(r"worker-0 myapp\.hooks", log), log


@pytest.mark.timeout(30)
def test_lines_to_standard_output_and_error_keep_their_order_when_both_are_one_file(
    tmp_path: Path,
) -> None:
    # The worker's standard output and error are one file (2>&1, journald, a container's
    # log): the lines of the app's handlers to each come in the order they were logged.
    with WorkerProcess(tmp_path / "worker.log", "support.app_logging_tasks") as worker:
        worker.run(TASKS + "alternate", 2000)
        log = worker.wait_for_log("step 1999")
    steps = [int(number) for number in re.findall(r": step (\d+)$", log, re.MULTILINE)]
    assert steps == list(range(2000))
