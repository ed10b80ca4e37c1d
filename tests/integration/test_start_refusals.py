"""The service refuses to start, fast and before it listens, when its tasks cannot serve.

Both ways of starting it are checked: ``dispatcher-standalone`` and ``run_service()``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dispatcher.schema import matches_node_id, node_id_of
from support.service import TESTS, ServiceProcess, standalone_command, wait_until

StartService = Callable[..., ServiceProcess]

REFUSAL_SECONDS = 8.0
"""Longest a refusal may take (as in ``test_start_refusals_more``): a bound that catches a
refusal waiting for something (a connection, a worker, a timeout), with room for a loaded
machine; how fast a refusal is belongs to the benchmarks (about 0.3 s here)."""

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


class Refused:
    """How a service run ended: exit status, seconds, output, and whether it connected."""

    def __init__(self, status: int, seconds: float, output: str, connected: bool) -> None:
        self.status = status
        self.seconds = seconds
        self.output = output
        self.connected = connected


def node_connections(pg_dsn: str, node_id: str) -> int:
    """Connections the service *node_id* holds to the database (its listener's among them)."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        return count_node_connections(conn, node_id)


def count_node_connections(conn: psycopg.Connection[Any], node_id: str) -> int:
    """Connections whose ``application_name`` names the service *node_id*, on *conn*."""
    names = conn.execute("SELECT application_name FROM pg_stat_activity").fetchall()
    seen = (node_id_of(name) for (name,) in names)
    return sum(node is not None and matches_node_id(node, node_id) for node in seen)


def run_until_exit(
    start: str, config: dict[str, Any], folder: Path, pg_dsn: str, node_id: str
) -> Refused:
    """Run a service in *folder*; watch the database for its connections until it exits."""
    config_path = folder / "dispatcher.yml"
    config_path.write_text(json.dumps(config))
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    env.pop("DISPATCHER_CONFIG_FILE", None)
    connected = False
    with psycopg.connect(pg_dsn, autocommit=True) as watcher:
        began = time.monotonic()
        process = subprocess.Popen(
            STARTS[start](config_path),
            cwd=folder,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            while process.poll() is None and time.monotonic() - began < 20:
                connected = connected or count_node_connections(watcher, node_id) > 0
                time.sleep(0.01)  # leave the CPU to the service
            seconds = time.monotonic() - began
        finally:
            if process.poll() is None:
                process.kill()
        output, _ = process.communicate(timeout=10)
    return Refused(process.wait(), seconds, output, connected)


@pytest.fixture
def node_id(channel: str) -> str:
    return f"{channel}-node"


@pytest.fixture
def config(service_config: dict[str, Any], node_id: str) -> dict[str, Any]:
    service_config["service"]["node_id"] = node_id
    return service_config


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
    start: str, config: dict[str, Any], project: Path, pg_dsn: str, node_id: str
) -> None:
    del config["tasks"]
    run = run_until_exit(start, config, project, pg_dsn, node_id)
    assert run.status == 2, run.output
    assert "tasks.modules: no task module configured" in run.output
    assert run.seconds < REFUSAL_SECONDS
    assert not run.connected


@pytest.mark.parametrize("start", sorted(STARTS))
def test_a_task_module_that_cannot_be_imported_is_refused_before_listening(
    start: str, config: dict[str, Any], project: Path, pg_dsn: str, node_id: str
) -> None:
    config["tasks"]["modules"] = ["support.service_tasks", "broken_tasks"]
    run = run_until_exit(start, config, project, pg_dsn, node_id)
    assert run.status == 3, run.output
    assert run.seconds < REFUSAL_SECONDS
    assert not run.connected
    assert "cannot start: cannot import task module 'broken_tasks'" in run.output
    assert "error: ModuleNotFoundError: No module named 'a_module_installed_nowhere'" in run.output
    assert f"at: {project / 'broken_tasks.py'}:3" in run.output
    assert f"working directory: {project}" in run.output
    assert "PYTHONPATH" in run.output
    assert "Traceback" not in run.output
    assert " started (pid" not in run.output


def test_an_error_in_a_task_modules_code_names_the_line(
    config: dict[str, Any], project: Path, pg_dsn: str, node_id: str
) -> None:
    config["tasks"]["modules"] = ["failing_tasks"]
    run = run_until_exit("cli", config, project, pg_dsn, node_id)
    assert run.status == 3, run.output
    assert "error: ZeroDivisionError: division by zero" in run.output
    assert f"at: {project / 'failing_tasks.py'}:2" in run.output
    assert "Traceback" not in run.output


@pytest.mark.parametrize("start", sorted(STARTS))
def test_modules_that_register_no_task_are_refused(
    start: str, config: dict[str, Any], project: Path, pg_dsn: str, node_id: str
) -> None:
    config["tasks"]["modules"] = ["no_tasks"]
    run = run_until_exit(start, config, project, pg_dsn, node_id)
    assert run.status == 3, run.output
    assert "(no_tasks) register no task" in run.output
    assert run.seconds < REFUSAL_SECONDS
    assert not run.connected


def test_the_watch_sees_a_service_that_starts(
    start_service: StartService, config: dict[str, Any], pg_dsn: str, node_id: str
) -> None:
    """The check above can fail: a service with good task modules is seen connected."""
    start_service(config)
    wait_until(lambda: node_connections(pg_dsn, node_id) > 0, timeout=10)
