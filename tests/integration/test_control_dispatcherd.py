"""dispatcherd's clients against our service: its replies read as dispatcherd's are read.

The first tests read the replies with ``support.dispatcherd_readers`` (what AWX and
dispatcherd's tools do with them). The last ones run dispatcherd's own ``dispatcherctl`` and
``Control`` (from dispatcherd's own virtual environment, made once by
``support.dispatcherd``) against a running service, for every command dispatcherd has; they
are skipped, with the reason, where that environment cannot be made.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from dispatcher.config import Settings
from dispatcher.control import control_with_reply
from support.dispatcherd import Driver, environment
from support.dispatcherd_readers import (
    awx_still_running,
    demo_aio_tasks,
    pool_counts,
    running_worker_uuid,
    worker_rows,
)
from support.service import Evidence, ServiceProcess, alive, wait_until
from support.service import task_message as message

TASKS = "support.service_tasks."
StartService = Callable[..., ServiceProcess]
Notify = Callable[[str, str], None]


def dispatcherd_bin() -> Path:
    """The ``bin`` folder of dispatcherd's virtual environment (the test skips without it)."""
    return environment().root / "bin"


def replies(command: str, data: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return control_with_reply(command, data, expected_replies=1, timeout=10).replies


def test_awx_waits_for_a_task_to_finish_by_polling_running(
    start_service: StartService,
    service_config: dict[str, Any],
    configured: Settings,
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    start_service(service_config)
    notify(channel, message("sleep_then_record", evidence.path, 1.0, "awx", uuid="u-awx"))
    evidence.wait_for(1)
    first = replies("running")
    assert [t["uuid"] for t in awx_still_running(first, TASKS + "sleep_then_record")] == ["u-awx"]
    assert running_worker_uuid(first) == "u-awx"
    wait_until(lambda: not awx_still_running(replies("running"), TASKS + "sleep_then_record"), 10)
    assert [r.get("event") for r in evidence.records()] == ["start", "end"]
    assert pool_counts(replies("main")) == (1, 0)


def test_other_commands_read_as_dispatcherd_reads_them(
    start_service: StartService,
    service_config: dict[str, Any],
    configured: Settings,
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service_config["producers"] = {"control": {}}
    start_service(service_config)
    rows = worker_rows(replies("workers"))
    assert [(worker_id, status) for worker_id, _, status in rows] == [(0, "ready")]
    assert all(alive(pid) for _, pid, _ in rows)
    shown = demo_aio_tasks(replies("aio_tasks", {"limit": 2}))
    assert any(line.startswith("broker:pg_notify done=False\n") for line in shown)
    [level] = replies("set_log_level", {"level": 10})
    assert level["level"] == "DEBUG"
    [ack] = replies("run", {"task": TASKS + "record", "args": [str(evidence.path), "ran"]})
    assert ack["ack"]["task"] == TASKS + "record"
    assert evidence.wait_for(1)[0]["args"] == ["ran"]
    [status] = replies("status")
    assert status["workers"].keys() == {"worker-0"}
    assert status["main"]["pool"]["finished_count"] == 1
    assert status["chunks"]["status"]["active_messages"] == 0


# -- dispatcherd's own clients -------------------------------------------------------------


@pytest.fixture
def dispatcherd_config(tmp_path: Path, pg_dsn: str, channel: str) -> Path:
    """A dispatcherd config whose pg_notify broker talks on this test's channel."""
    path = tmp_path / "dispatcherd.yml"
    pg_notify = {
        "config": {"conninfo": pg_dsn},
        "channels": [channel],
        "default_publish_channel": channel,
    }
    path.write_text(json.dumps({"version": 2, "brokers": {"pg_notify": pg_notify}}))
    return path


def dispatcherctl_arguments(config: Path, command: str, *options: str) -> list[str]:
    """dispatcherd's ``dispatcherctl`` command line (options after the command, as it reads
    them), quiet."""
    return [command, *options, "--config", str(config), "--log-level", "ERROR"]


def one_reply(status: int, stdout: str, log: str) -> list[dict[str, Any]]:
    """The replies dispatcherd's ``dispatcherctl`` printed (YAML), checked to be one."""
    assert status == 0, stdout + log
    parsed: list[dict[str, Any]] = YAML(typ="safe").load(stdout)
    assert len(parsed) == 1, stdout
    return parsed


def dispatcherctl(config: Path, command: str, *options: str) -> list[dict[str, Any]]:
    """Run dispatcherd's ``dispatcherctl`` as a command."""
    done = subprocess.run(
        [
            str(dispatcherd_bin() / "dispatcherctl"),
            *dispatcherctl_arguments(config, command, *options),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return one_reply(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def dispatcherd_driver(dispatcherd_config: Path, tmp_path: Path) -> Iterator[Driver]:
    """dispatcherd's code in one process of its environment (made first, or the test
    skipped)."""
    running = Driver(environment(), dispatcherd_config, tmp_path / "driver.log")
    yield running
    running.close()


@pytest.mark.timeout(120)
def test_dispatcherd_dispatcherctl_reads_every_command(
    dispatcherd_driver: Driver,
    start_service: StartService,
    service_config: dict[str, Any],
    dispatcherd_config: Path,
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    """Each command through dispatcherd's ``dispatcherctl`` code in one process (a process
    each took most of the test's time on a loaded machine); the first as the command too."""
    service_config["service"]["node_id"] = channel
    start_service(service_config)
    notify(channel, message("sleep_recording_cancel", evidence.path, 300, uuid="u-dd"))
    notify(channel, message("record", evidence.path, "later", uuid="u-later", delay=60))
    evidence.wait_for(1)

    def ctl(command: str, *options: str) -> dict[str, Any]:
        argv = dispatcherctl_arguments(dispatcherd_config, command, *options)
        done = dispatcherd_driver.call("dispatcherctl", argv=argv)
        [reply] = one_reply(done["status"], done["stdout"], dispatcherd_driver.log.read_text())
        assert reply["node_id"] == channel
        return reply

    assert dispatcherctl(dispatcherd_config, "alive") == [{"node_id": channel}]
    assert ctl("alive") == {"node_id": channel}
    running = ctl("running")
    assert running["worker-0"]["uuid"] == "u-dd"
    assert running["delayed-0"]["uuid"] == "u-later"
    assert ctl("running", "--uuid", "u-later").keys() == {"delayed-0", "node_id"}
    assert ctl("running", "--task", TASKS + "record").keys() == {"delayed-0", "node_id"}
    assert ctl("cancel")["error"].startswith("cancel needs a filter")
    assert ctl("cancel", "--uuid", "u-later")["delayed-0"]["uuid"] == "u-later"
    tasks = ctl("aio_tasks", "--limit", "1")
    assert all({"done", "stack"} <= set(task) for name, task in tasks.items() if name != "node_id")
    workers = ctl("workers")
    assert workers["worker-0"]["current_task_uuid"] == "u-dd"
    assert {"worker_id", "pid", "status", "finished_count", "age"} <= set(workers["worker-0"])
    assert "pg_notify-producer" in ctl("producers")
    assert ctl("metrics")["enabled"] is False
    assert ctl("main")["pool"]["canceled_count"] == 1  # the delayed task
    status = ctl("status")
    assert {"running", "aio_tasks", "workers", "producers", "metrics", "main", "chunks"} <= set(
        status
    )
    assert status["running"]["worker-0"]["uuid"] == "u-dd"
    assert ctl("chunks")["status"]["active_messages"] == 0
    assert ctl("set_log_level", "--level", "WARNING")["level"] == "WARNING"
    assert ctl("cancel", "--uuid", "u-dd")["worker-0"]["uuid"] == "u-dd"
    wait_until(lambda: any(r.get("event") == "cancelled" for r in evidence.records()), 10)


@pytest.mark.timeout(120)
def test_dispatcherd_control_runs_a_task_and_awx_polls_it_to_the_end(
    start_service: StartService,
    service_config: dict[str, Any],
    dispatcherd_config: Path,
    evidence: Evidence,
) -> None:
    dispatcherd_bin()  # made first (or the test skipped), before the service starts
    service_config["producers"] = {"control": {}}
    start_service(service_config)
    script = textwrap.dedent(
        f"""
        import json, time
        from dispatcherd.config import setup
        from dispatcherd.factories import get_control_from_settings

        setup(file_path={str(dispatcherd_config)!r})
        ctl = get_control_from_settings()
        task = {TASKS + "sleep_then_record"!r}
        [ack] = ctl.control_with_reply(
            "run", data={{"task": task, "args": [{str(evidence.path)!r}, 1.0]}}
        )
        seen = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            responses = ctl.control_with_reply("running")
            assert len(responses) == 1
            response = responses[0]
            response.pop("node_id")
            left = [data for data in response.values() if data["task"] == task]
            seen.append(len(left))
            if not left and sum(seen):
                break
            time.sleep(0.1)
        print(json.dumps({{"ack": ack, "seen": seen}}))
        """
    )
    done = subprocess.run(
        [str(dispatcherd_bin() / "python"), "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["ack"]["ack"]["task"] == TASKS + "sleep_then_record"
    assert max(result["seen"]) == 1
    assert result["seen"][-1] == 0
    assert [r.get("event") for r in evidence.records()] == ["start", "end"]
