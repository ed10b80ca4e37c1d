"""The service refuses to start, before it connects or starts a worker, when its tasks cannot serve.

Both ways of starting it are checked: ``dispatcher-standalone`` and ``run_service()``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support.proxy import DatabaseProxy
from support.service import TESTS, Evidence, ServiceProcess, standalone_command, wait_until

StartService = Callable[..., ServiceProcess]

HANG_SECONDS = 45.0
"""Longest a refusal may take before it is taken for a hang (as in ``test_start_refusals_more``).

Not how fast a refusal is (about 0.3 s on a quiet machine, 10 s seen on one loaded five times
over: that belongs to the benchmarks); that it waits for nothing is checked by what it did:
no connection to the database, no worker started."""

RUN_SERVICE = (
    "import sys\n"
    "from dispatcher.config import setup\n"
    "from dispatcher.server import run_service\n"
    "setup(file_path=sys.argv[1])\n"
    "sys.exit(run_service())\n"
)

STARTS = {
    "cli": lambda config: [*standalone_command(), "--config", str(config)],
    "run_service": lambda config: [sys.executable, "-c", RUN_SERVICE, str(config)],
}


class Watch:
    """What a service run does that a refusal must not: connect, start workers.

    Its connections go through a proxy of the test database, which counts them (an attempt
    included, however short); its workers are of a class that writes a line as each starts.
    """

    def __init__(self, config: dict[str, Any], folder: Path, pg_dsn: str) -> None:
        self.proxy = DatabaseProxy(pg_dsn)
        self.proxy.up()
        config["brokers"]["pg_notify"]["conninfo"] = self.proxy.dsn
        config["worker"] = {"class": "support.service_hooks.RecordingWorker"}
        self.hooks = Evidence(folder / "hooks.jsonl")
        self.env = {"DISPATCHER_TEST_HOOKS_FILE": str(self.hooks.path)}
        """What the service's environment needs for its workers to write their lines."""

    @property
    def connections(self) -> int:
        """The connections to the database the service opened, or tried to."""
        return self.proxy.accepted

    @property
    def workers_started(self) -> int:
        """The workers the service started."""
        return sum(record["hook"] == "on_start" for record in self.hooks.records())


class Refused:
    """How a service run ended: exit status, output, and what it did meanwhile."""

    def __init__(self, status: int, output: str, connections: int, workers_started: int) -> None:
        self.status = status
        self.output = output
        self.connections = connections
        self.workers_started = workers_started


def run_until_exit(start: str, config: dict[str, Any], folder: Path, pg_dsn: str) -> Refused:
    """Run a service in *folder*, watched (see :class:`Watch`), until it exits."""
    watch = Watch(config, folder, pg_dsn)
    try:
        config_path = folder / "dispatcher.yml"
        config_path.write_text(json.dumps(config))
        env = {**os.environ, "PYTHONPATH": str(TESTS), **watch.env}
        env.pop("DISPATCHER_CONFIG_FILE", None)
        with subprocess.Popen(
            STARTS[start](config_path),
            cwd=folder,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as process:
            try:
                output, _ = process.communicate(timeout=HANG_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                output, _ = process.communicate()
                output += f"\n(killed: still running after {HANG_SECONDS:g} s)"
        return Refused(process.returncode, output, watch.connections, watch.workers_started)
    finally:
        watch.proxy.down()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The service's working directory, holding the task modules of these tests."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "broken_tasks.py").write_text(
        "from dispatcher.publish import task\n\nimport a_module_installed_nowhere\n"
    )
    (folder / "failing_tasks.py").write_text("LIMIT = 10\nRATE = LIMIT / 0\n")
    (folder / "no_tasks.py").write_text("def not_a_task() -> None:\n    pass\n")
    return folder


@pytest.mark.parametrize("start", sorted(STARTS))
def test_no_task_module_is_refused_with_status_2(
    start: str, service_config: dict[str, Any], project: Path, pg_dsn: str
) -> None:
    del service_config["tasks"]
    run = run_until_exit(start, service_config, project, pg_dsn)
    assert run.status == 2, run.output
    assert "tasks.modules: no task module configured" in run.output
    assert run.connections == 0
    assert run.workers_started == 0


@pytest.mark.parametrize("start", sorted(STARTS))
def test_a_task_module_that_cannot_be_imported_is_refused_before_listening(
    start: str, service_config: dict[str, Any], project: Path, pg_dsn: str
) -> None:
    service_config["tasks"]["modules"] = ["support.service_tasks", "broken_tasks"]
    run = run_until_exit(start, service_config, project, pg_dsn)
    assert run.status == 3, run.output
    assert run.connections == 0
    assert run.workers_started == 0
    assert "cannot start: cannot import task module 'broken_tasks'" in run.output
    assert "error: ModuleNotFoundError: No module named 'a_module_installed_nowhere'" in run.output
    assert f"at: {project / 'broken_tasks.py'}:3" in run.output
    assert f"working directory: {project}" in run.output
    assert "PYTHONPATH" in run.output
    assert "Traceback" not in run.output
    assert " started (pid" not in run.output


def test_an_error_in_a_task_modules_code_names_the_line(
    service_config: dict[str, Any], project: Path, pg_dsn: str
) -> None:
    service_config["tasks"]["modules"] = ["failing_tasks"]
    run = run_until_exit("cli", service_config, project, pg_dsn)
    assert run.status == 3, run.output
    assert "error: ZeroDivisionError: division by zero" in run.output
    assert f"at: {project / 'failing_tasks.py'}:2" in run.output
    assert "Traceback" not in run.output


@pytest.mark.parametrize("start", sorted(STARTS))
def test_modules_that_register_no_task_are_refused(
    start: str, service_config: dict[str, Any], project: Path, pg_dsn: str
) -> None:
    service_config["tasks"]["modules"] = ["no_tasks"]
    run = run_until_exit(start, service_config, project, pg_dsn)
    assert run.status == 3, run.output
    assert "(no_tasks) register no task" in run.output
    assert run.connections == 0
    assert run.workers_started == 0


def test_the_watch_sees_a_service_that_starts(
    start_service: StartService, service_config: dict[str, Any], tmp_path: Path, pg_dsn: str
) -> None:
    """The checks above can fail: a service with good task modules is seen connecting and
    starting its workers."""
    watch = Watch(service_config, tmp_path, pg_dsn)
    try:
        start_service(service_config, env=watch.env)
        wait_until(lambda: watch.connections > 0 and watch.workers_started > 0, timeout=30)
    finally:
        watch.proxy.down()
