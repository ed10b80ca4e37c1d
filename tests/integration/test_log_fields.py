"""The service's log records carry their facts as attributes, and its log can be JSON.

Seen from outside: the standard error of a real ``dispatcher-standalone --log-format json``
(each line parsed as JSON), and a handler an application attaches in the process that runs
``run_service()``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dispatcher.config import reset, setup
from dispatcher.publish import close_connections, submit_task
from dispatcher.server.release import DISTRIBUTION
from support.durable import enqueue, job_message, migrated, queue_config, wait_for_states
from support.queue_rows import unique_schema
from support.service import TASKS, TESTS, Evidence, ServiceProcess, task_message, wait_until

Notify = Callable[[str, str], None]
Conn = psycopg.Connection[Any]

STANDARD_KEYS = {"time", "level", "logger", "message", "process"}


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of *text* as a JSON object; fails on a line that is not one."""
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}\n{text}") from None
        assert isinstance(record, dict), line
        assert set(record) >= STANDARD_KEYS, line
        records.append(record)
    return records


def find(records: list[dict[str, Any]], **wanted: Any) -> list[dict[str, Any]]:
    """The records whose keys have the *wanted* values."""
    return [r for r in records if all(r.get(k, object()) == v for k, v in wanted.items())]


def start_json_service(
    config: dict[str, Any],
    folder: Path,
    services: list[ServiceProcess],
    *args: str,
    log_level: str = "INFO",
) -> ServiceProcess:
    """Start a service in *folder*; it is in *services* (killed at the end) even if it fails."""
    folder.mkdir()
    service = ServiceProcess(config, folder, log_level)
    services.append(service)
    return service.start(*args).wait_ready()


@pytest.fixture
def services() -> Iterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    yield started
    for service in started:
        service.kill_everything()


def test_json_log_lines_carry_each_tasks_facts_and_every_line_is_json(
    service_config: dict[str, Any],
    services: list[ServiceProcess],
    tmp_path: Path,
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service = start_json_service(
        service_config, tmp_path / "s", services, "--log-format", "json", log_level="DEBUG"
    )
    notify(channel, task_message("record", evidence.path, uuid="u-ok"))
    notify(channel, task_message("fail", evidence.path, uuid="u-fail"))
    notify(channel, task_message("print_lines", evidence.path, "said", 2, uuid="u-print"))
    notify(channel, task_message("log_with_forged_names", evidence.path, uuid="u-logs"))
    notify(channel, "not json")
    notify(channel, task_message("no_such_task", uuid="u-unknown"))
    evidence.wait_for(4)
    service.wait_for_log(r'"dispatcher_uuid": "u-logs"')
    service.wait_for_log(r'"dispatcher_uuid": "u-unknown"')  # (the last one sent)
    assert service.stop() == 0
    records = json_lines(service.log)

    [ok] = find(records, dispatcher_event="task_finished", dispatcher_uuid="u-ok")
    assert (ok["level"], ok["logger"]) == ("INFO", "dispatcher.tasks")
    assert ok["dispatcher_task"] == TASKS + "record"
    assert ok["dispatcher_outcome"] == "ok"
    assert type(ok["dispatcher_worker"]) is int
    assert 0 <= ok["dispatcher_duration"] < 10
    assert (ok["dispatcher_broker"], ok["dispatcher_queue"]) == ("pg_notify", channel)
    assert "finished ok in" in ok["message"]

    [failed] = find(records, dispatcher_event="task_failed", dispatcher_uuid="u-fail")
    assert (failed["level"], failed["dispatcher_outcome"]) == ("ERROR", "error")
    assert failed["dispatcher_error"].startswith("ValueError: this task always fails")
    traceback = failed["dispatcher_traceback"]
    assert traceback.startswith("Traceback (most recent call last):\n")
    assert traceback.rstrip().endswith("ValueError: this task always fails")
    assert "\n  | Traceback (most recent call last):" in failed["message"]  # readable as text

    [received] = find(records, dispatcher_event="task_received", dispatcher_uuid="u-ok")
    assert received["level"] == "DEBUG"
    assert received["dispatcher_task"] == TASKS + "record"
    assert (received["dispatcher_broker"], received["dispatcher_queue"]) == ("pg_notify", channel)

    [not_json] = find(records, dispatcher_event="message_rejected", dispatcher_reason="not_json")
    assert not_json["dispatcher_queue"] == channel
    [unknown] = find(records, dispatcher_event="message_rejected", dispatcher_uuid="u-unknown")
    assert unknown["dispatcher_reason"] == "unknown_task"

    # The workers' own lines (what a task printed, what task code logged) are JSON too.
    printed = [r for r in records if r["message"].startswith("task output [")]
    assert len(printed) == 2, printed
    assert {type(r.get("dispatcher_worker")) for r in printed} == {int}
    [forged] = [r for r in records if r["message"] == "from a forged logger name"]
    assert forged["logger"].startswith("x")
    assert type(forged["dispatcher_worker"]) is int

    [started] = find(records, dispatcher_event="service_started")
    [stopped] = find(records, dispatcher_event="service_stopped")
    assert started["dispatcher_node"] == stopped["dispatcher_node"]
    # Which code a service of a fleet runs: the version --version prints.
    assert started["message"].endswith(f" workers, dispatcher-server {version(DISTRIBUTION)})")


def test_the_config_chooses_the_format_and_the_command_line_wins(
    service_config: dict[str, Any],
    services: list[ServiceProcess],
    tmp_path: Path,
) -> None:
    service_config["service"]["log_format"] = "json"
    service = start_json_service(service_config, tmp_path / "json", services)
    assert service.stop() == 0
    assert find(json_lines(service.log), dispatcher_event="service_started")

    service = start_json_service(
        service_config, tmp_path / "text", services, "--log-format", "text"
    )
    assert service.stop() == 0
    assert service.log.splitlines()[0][:4].isdigit()  # a time stamp, not JSON
    assert not any(line.startswith("{") for line in service.log.splitlines())


def test_lines_logged_while_the_config_is_read_are_in_the_format_it_names(
    service_config: dict[str, Any],
    services: list[ServiceProcess],
    tmp_path: Path,
) -> None:
    # The seed's unversioned layout: reading it logs that it is translated.
    unversioned = {
        "producers": {"brokers": service_config["brokers"]},
        "tasks": service_config["tasks"],
        "service": {**service_config["service"], "log_format": "json"},
    }
    service = start_json_service(unversioned, tmp_path / "s", services)
    assert service.stop() == 0
    [translating] = [
        r for r in json_lines(service.log) if "translating the unversioned" in r["message"]
    ]
    assert translating["logger"] == "dispatcher.config"


def test_an_unknown_log_format_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dispatcher.server", "--log-format", "xml"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--log-format: invalid choice: 'xml'" in result.stderr


def test_a_durable_jobs_records_name_its_queue_and_attempt(
    pg_dsn: str,
    pg_conn: Conn,
    services: list[ServiceProcess],
    tmp_path: Path,
    channel: str,
    evidence: Evidence,
) -> None:
    schema = migrated(pg_conn, unique_schema())
    config = queue_config(pg_dsn, schema, channel)
    service = start_json_service(config, tmp_path / "s", services, "--log-format", "json")
    [uuid] = enqueue(
        pg_conn, schema, channel, [job_message("fail_first", evidence.path)], max_attempts=2
    )
    wait_for_states(pg_conn, schema, [uuid], {"done"})
    service.wait_for_log(rf'"dispatcher_event": "task_finished".*"dispatcher_uuid": "{uuid}"')
    records = json_lines(service.log)
    [failed] = find(records, dispatcher_event="task_failed", dispatcher_uuid=uuid)
    [finished] = find(records, dispatcher_event="task_finished", dispatcher_uuid=uuid)
    for record, attempt in ((failed, 1), (finished, 2)):
        assert record["dispatcher_attempt"] == attempt
        assert (record["dispatcher_broker"], record["dispatcher_queue"]) == ("pg_queue", channel)


RUN_SERVICE = """
import json, logging, sys

class Keep(logging.Handler):
    def __init__(self, path):
        super().__init__()
        self.file = open(path, "a", encoding="utf-8")

    def emit(self, record):
        fields = {k: v for k, v in vars(record).items() if k.startswith("dispatcher_")}
        line = {"message": record.getMessage(), "level": record.levelname, **fields}
        self.file.write(json.dumps(line, default=repr) + "\\n")
        self.file.flush()

logging.basicConfig(level=logging.INFO, handlers=[Keep(sys.argv[2])])
from dispatcher.config import setup
from dispatcher.server import run_service
setup(file_path=sys.argv[1])
sys.exit(run_service())
"""


def test_run_service_gives_the_applications_handler_the_attributes(
    service_config: dict[str, Any],
    tmp_path: Path,
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service_config["service"]["log_format"] = "json"  # the workers' own lines
    config_path, kept, stderr = (
        tmp_path / "dispatcher.yml",
        tmp_path / "kept.jsonl",
        tmp_path / "err",
    )
    config_path.write_text(json.dumps(service_config))
    env = {**os.environ, "PYTHONPATH": str(TESTS), "PYTHONUNBUFFERED": "1"}
    env.pop("DISPATCHER_CONFIG_FILE", None)
    with stderr.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-c", RUN_SERVICE, str(config_path), str(kept)],
            stderr=err,
            env=env,
            cwd=tmp_path,
            start_new_session=True,
        )
    try:

        def records() -> list[dict[str, Any]]:
            if not kept.exists():
                return []
            return [json.loads(line) for line in kept.read_text().splitlines()]

        wait_until(lambda: [r for r in records() if "listening on" in r["message"]], 20)
        notify(channel, task_message("record", evidence.path, uuid="u-ok"))
        notify(channel, task_message("fail", evidence.path, uuid="u-fail"))
        notify(channel, task_message("print_lines", evidence.path, "said", 2, uuid="u-print"))
        wait_until(lambda: find(records(), dispatcher_uuid="u-print"), 20)
        wait_until(lambda: find(records(), dispatcher_uuid="u-fail"), 20)
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    found = records()
    [ok] = find(found, dispatcher_event="task_finished", dispatcher_uuid="u-ok")
    assert ok["dispatcher_task"] == TASKS + "record"
    assert (ok["dispatcher_outcome"], ok["dispatcher_queue"]) == ("ok", channel)
    [failed] = find(found, dispatcher_event="task_failed", dispatcher_uuid="u-fail")
    assert "\n" in failed["dispatcher_traceback"]  # whole, for a structured handler
    assert not find(found, dispatcher_event="task_received")  # DEBUG only
    # What the workers wrote to the service's standard error follows service.log_format.
    printed = [r for r in json_lines(stderr.read_text()) if "task output [" in r["message"]]
    assert len(printed) == 2


def test_the_publisher_logs_each_submission_at_debug(
    pg_dsn: str, channel: str, caplog: pytest.LogCaptureFixture
) -> None:
    setup(
        {
            "version": 1,
            "brokers": {"pg_notify": {"conninfo": pg_dsn, "channels": [channel]}},
        }
    )
    try:
        with caplog.at_level("INFO", logger="dispatcher.publish"):
            submit_task("myapp.tasks.quiet", queue=channel)
        assert not caplog.records
        with caplog.at_level("DEBUG", logger="dispatcher.publish"):
            submission = submit_task("myapp.tasks.work", queue=channel)
    finally:
        close_connections()
        reset()
    [record] = caplog.records
    assert record.levelname == "DEBUG"
    fields = {k: v for k, v in vars(record).items() if k.startswith("dispatcher_")}
    assert fields == {
        "dispatcher_event": "task_submitted",
        "dispatcher_task": "myapp.tasks.work",
        "dispatcher_uuid": submission.uuid,
        "dispatcher_broker": "pg_notify",
        "dispatcher_queue": channel,
    }
    assert submission.uuid in record.getMessage()
