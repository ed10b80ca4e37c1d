"""dispatcherctl as people use it: who it waits for, exit statuses, output, submit.

Two services share the test database: ours, on this module's channel, and another team's,
on a channel of its own (with ``producers.control``, which ours does without).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from support import postgres
from support.service import TASKS, Evidence, ServiceProcess


def ctl(
    config: Path | None,
    *args: str,
    cwd: Path | None = None,
    python_options: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Run our dispatcherctl (with *config* when given; *python_options* for Python)."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_CONFIG_FILE")}
    options = ["--config", str(config)] if config is not None else []
    return subprocess.run(
        [sys.executable, *python_options, "-m", "dispatcher.server.ctl", *args, *options],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=cwd,
    )


def service_config(dsn: str, channel: str, node_id: str) -> dict[str, Any]:
    return {
        "version": 1,
        "brokers": {
            "pg_notify": {
                "conninfo": dsn,
                "channels": [channel],
                "default_publish_channel": channel,
            }
        },
        "tasks": {"modules": ["support.service_tasks"]},
        "service": {
            "node_id": node_id,
            "pool": {"min_workers": 1, "max_workers": 2},
            "shutdown_grace": 5,
        },
    }


@pytest.fixture(scope="module")
def services(
    pg_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    """Ours, and another team's in the same database on another channel."""
    ours_channel, theirs_channel = postgres.unique_channel("ours"), postgres.unique_channel()
    theirs_config = service_config(pg_dsn, theirs_channel, f"{theirs_channel}-theirs")
    theirs_config["producers"] = {"control": {}}
    started = [
        ServiceProcess(
            service_config(pg_dsn, ours_channel, f"{ours_channel}-ours"),
            tmp_path_factory.mktemp("ours"),
        ).start(),
        ServiceProcess(theirs_config, tmp_path_factory.mktemp("theirs")).start(),
    ]
    try:
        for service in started:
            service.wait_ready()
        yield started[0], started[1]
    finally:
        for service in started:
            service.kill_everything()


@pytest.fixture
def ours(services: tuple[ServiceProcess, ServiceProcess]) -> ServiceProcess:
    return services[0]


@pytest.fixture
def theirs(services: tuple[ServiceProcess, ServiceProcess]) -> ServiceProcess:
    return services[1]


def node_of(service: ServiceProcess) -> str:
    return str(service.config["service"]["node_id"])


def test_a_service_on_another_channel_is_not_waited_for(
    ours: ServiceProcess, theirs: ServiceProcess
) -> None:
    started = time.monotonic()
    result = ctl(ours.config_path, "--timeout", "30", "alive")
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{node_of(ours)}:\n  ok\n")
    assert node_of(theirs) not in result.stdout + result.stderr
    assert "(1 of 1 replies: one per dispatcher service listening on channel " in result.stdout
    assert took < 20  # waiting for the other service too would take the whole 30 s
    # Theirs is found from its own config just the same.
    other = ctl(theirs.config_path, "--timeout", "30", "alive", "--json")
    assert other.returncode == 0, other.stderr
    assert json.loads(other.stdout) == [{"node_id": node_of(theirs)}]


def test_an_error_reply_exits_3(ours: ServiceProcess) -> None:
    result = ctl(ours.config_path, "run", "nope")
    assert result.returncode == 3
    assert result.stdout.startswith(f"{node_of(ours)}:\n  error: ")
    assert result.stderr == f"dispatcherctl: error reply from {node_of(ours)}\n"
    as_json = ctl(ours.config_path, "run", "nope", "--json")
    assert as_json.returncode == 3
    assert "error" in json.loads(as_json.stdout)[0]


def test_human_output_has_units_and_json_words(
    ours: ServiceProcess, theirs: ServiceProcess
) -> None:
    workers = ctl(ours.config_path, "workers")
    assert workers.returncode == 0, workers.stderr
    [title, row] = workers.stdout.splitlines()[1:3]
    assert title.split()[:4] == ["worker_id", "pid", "state", "age"]
    assert re.search(r"  \d+(\.\d)? (ms|s|min)  ", row), row  # the worker's age
    assert re.search(r"\d+\.\d MiB$", row), row  # its memory
    status = ctl(ours.config_path, "status")
    assert status.returncode == 0, status.stderr
    assert re.search(r"^  uptime: \d+(\.\d)? (ms|s|min)", status.stdout, re.MULTILINE)
    assert "    enabled: false\n" in status.stdout  # metrics
    producers = ctl(theirs.config_path, "producers")
    assert "    produced_count: null\n" in producers.stdout  # control-producer's
    for shown in (workers.stdout, status.stdout, producers.stdout):
        assert not re.search(r"\b(True|False|None)\b", shown)
        assert "{" not in shown  # objects are blocks of their own, not inline JSON


def test_running_shows_how_long_each_task_has_run(ours: ServiceProcess, tmp_path: Path) -> None:
    evidence = Evidence(tmp_path / "evidence.jsonl")
    submitted = ctl(
        ours.config_path,
        "submit",
        TASKS + "sleep_recording_cancel",
        "--args",
        json.dumps([str(evidence.path), 30, "x" * 100]),
        "--uuid",
        "u-sleeper",
    )
    assert submitted.returncode == 0, submitted.stderr
    try:
        evidence.wait_for(1)
        result = ctl(ours.config_path, "running")
        assert result.returncode == 0, result.stderr
        [title, row] = result.stdout.splitlines()[1:3]
        assert title.split() == ["slot", "uuid", "task", "elapsed", "args", "kwargs"]
        assert row.split()[:3] == ["worker-0", "u-sleeper", TASKS + "sleep_recording_cancel"]
        as_json = ctl(ours.config_path, "running", "--json")
        [reply] = json.loads(as_json.stdout)
        assert reply["worker-0"]["where"] == "worker-0"  # --json keeps it
        assert re.search(r"  \d+(\.\d)? (ms|s)  ", row), row
        assert "x" * 100 not in row  # long arguments are cut short
        assert "…  {}" in row
    finally:
        ctl(ours.config_path, "cancel", "--uuid", "u-sleeper")


def test_submit_publishes_a_task_that_runs(ours: ServiceProcess, tmp_path: Path) -> None:
    evidence = Evidence(tmp_path / "evidence.jsonl")
    result = ctl(
        ours.config_path,
        "submit",
        TASKS + "record",
        "--args",
        json.dumps([str(evidence.path), "submitted"]),
        "--kwargs",
        '{"n": 1}',
    )
    assert result.returncode == 0, result.stderr
    [uuid_line, task_line, queue_line] = result.stdout.splitlines()
    channel = ours.config["brokers"]["pg_notify"]["channels"][0]
    assert task_line == f"task: {TASKS}record"
    assert queue_line == f"queue: {channel} (pg_notify channel)"
    [record] = evidence.wait_for(1)
    assert (record["args"], record["kwargs"]) == (["submitted"], {"n": 1})
    assert uuid_line.startswith("uuid: ")
    as_json = ctl(ours.config_path, "submit", TASKS + "noop", "--json", "--uuid", "u-json")
    assert as_json.returncode == 0, as_json.stderr
    shown = json.loads(as_json.stdout)
    assert (shown["uuid"], shown["queue"], shown["durable"]) == ("u-json", channel, False)


def test_submit_closes_its_connection_before_it_exits(ours: ServiceProcess, tmp_path: Path) -> None:
    """Python's development mode says so of a connection still open at exit (a
    ResourceWarning, on standard error)."""
    evidence = Evidence(tmp_path / "evidence.jsonl")
    args = json.dumps([str(evidence.path), "submitted"])
    result = ctl(
        ours.config_path, "submit", TASKS + "record", "--args", args, python_options=["-X", "dev"]
    )
    assert (result.returncode, result.stderr) == (0, "")
    evidence.wait_for(1)


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (["--args", "[1,"], "argument --args: not JSON (Expecting value"),
        (["--kwargs", "[1]"], "argument --kwargs: expected a JSON object, got '[1]'"),
        (["--queue", "nowhere"], "dispatcherctl: unknown queue 'nowhere': "),
        (["--max-attempts", "3"], "max_attempts: applies to durable queues only"),
    ],
)
def test_submit_refuses_bad_options_saying_why(
    ours: ServiceProcess, options: list[str], said: str
) -> None:
    result = ctl(ours.config_path, "submit", TASKS + "noop", *options)
    assert result.returncode == 2
    assert said in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("brokers", "said"),
    [
        (
            {"pg_queue": {"conninfo": "dbname=app", "queues": ["default", "payments"]}},
            " (brokers.pg_queue has a default only when it lists one queue, in {config}); "
            "the queues of {config}: default, payments",
        ),
        (
            {"pg_notify": {"conninfo": "dbname=app", "channels": ["a", "b"]}},
            ", or set brokers.pg_notify.default_publish_channel in {config}; "
            "the queues of {config}: a, b",
        ),
    ],
)
def test_submit_without_a_default_queue_says_to_pass_queue_naming_them(
    tmp_path: Path, brokers: dict[str, Any], said: str
) -> None:
    # The SDK's advice (queue=..., @task(queue=...)) is Python's: the command line has --queue.
    config = tmp_path / "queues.yml"
    config.write_text(json.dumps({"version": 1, "brokers": brokers}))
    result = ctl(config, "submit", "myapp.tasks.slow", "--args", "[0]")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "dispatcherctl: cannot submit myapp.tasks.slow: no channel to send it on: "
        f"pass --queue Q{said.format(config=config)}\n"
    )


def test_version() -> None:
    result = ctl(None, "--version")
    assert result.returncode == 0
    assert result.stdout == f"dispatcherctl {metadata.version('dispatcher-server')}\n"


def test_without_a_config_it_says_to_pass_one(tmp_path: Path) -> None:
    result = ctl(None, "alive", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (  # as dispatcher-standalone says it, with where it looked
        "dispatcherctl: no config file found: pass --config FILE, or set DISPATCHER_CONFIG_FILE "
        "(or DISPATCHERD_CONFIG_FILE), or create dispatcher.yml in the working directory "
        f"({tmp_path})\n"
    )


@pytest.mark.parametrize("json_output", [False, True])
def test_a_reader_that_stops_after_the_first_line_leaves_the_exit_status_alone(
    ours: ServiceProcess, json_output: bool
) -> None:
    """``dispatcherctl status | head -1``: the output is in the pipe before head goes."""
    command = [sys.executable, "-m", "dispatcher.server.ctl", "status"]
    command += ["--config", str(ours.config_path), *(["--json"] if json_output else [])]
    for _ in range(4):
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
            assert process.stdout is not None
            assert process.stderr is not None
            assert process.stdout.readline()
            process.stdout.close()
            assert process.wait(60) == 0, process.stderr.read()
