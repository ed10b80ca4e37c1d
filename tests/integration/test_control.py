"""Control over pg_notify: the client API and dispatcherctl against running services."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dispatcher.config import Settings
from dispatcher.control import control_with_reply, entries
from dispatcher.publish import submit_task
from support.service import Evidence, ServiceProcess, alive, wait_until
from support.service import task_message as message

TASKS = "support.service_tasks."
StartService = Callable[..., ServiceProcess]
Notify = Callable[[str, str], None]


def ctl(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatcher.server.ctl", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def two_services(
    start_service: StartService, service_config: dict[str, Any], channel: str
) -> list[ServiceProcess]:
    services = []
    for n in range(2):
        config = json.loads(json.dumps(service_config))
        config["service"]["node_id"] = f"{channel}-node-{n}"
        services.append(start_service(config))
    return services


def test_alive_from_two_services_without_expected_replies(
    two_services: list[ServiceProcess], channel: str
) -> None:
    result = ctl(two_services[0].config_path, "alive", "--json")
    assert result.returncode == 0, result.stderr
    assert sorted(r["node_id"] for r in json.loads(result.stdout)) == [
        f"{channel}-node-0",
        f"{channel}-node-1",
    ]


def test_replicas_of_one_config_take_their_node_ids_from_the_environment(
    start_service: StartService, service_config: dict[str, Any], channel: str
) -> None:
    # Replicas reading one config (a Kubernetes ConfigMap) could not be given node ids of
    # their own: the node id came only from the file, or from the host name and pid.
    pods = [f"{channel}-pod-a", f"{channel}-pod-b"]
    services = [start_service(service_config, env={"DISPATCHER_NODE_ID": pod}) for pod in pods]
    result = ctl(services[0].config_path, "alive", "--json")
    assert result.returncode == 0, result.stderr
    assert sorted(r["node_id"] for r in json.loads(result.stdout)) == pods
    services[0].wait_for_log(rf"dispatcher service {pods[0]} started")


def test_a_node_id_from_the_environment_that_is_not_one_is_refused(
    start_service: StartService, service_config: dict[str, Any]
) -> None:
    service = start_service(service_config, wait=False, env={"DISPATCHER_NODE_ID": "pod a"})
    assert service.wait() == 2
    assert (
        "dispatcher-standalone: $DISPATCHER_NODE_ID: 'pod a' is not a valid node id: it must be "
        "1-63 bytes of ASCII letters, digits, '_', '.', '-' or ':'" in service.log
    )


def test_expecting_more_replies_than_services_exits_1(
    two_services: list[ServiceProcess],
) -> None:
    result = ctl(
        two_services[0].config_path, "--expected-replies", "3", "--timeout", "0.5", "alive"
    )
    assert result.returncode == 1
    assert "2 of 3 expected replies" in result.stderr


def test_running_then_cancel_by_uuid(
    start_service: StartService,
    service_config: dict[str, Any],
    configured: Settings,
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service = start_service(service_config)
    notify(channel, message("sleep_recording_cancel", evidence.path, 30, uuid="u-sleeper"))
    evidence.wait_for(1)
    listing = ctl(service.config_path, "running", "--uuid", "u-sleeper", "--json")
    assert listing.returncode == 0, listing.stderr
    [reply] = json.loads(listing.stdout)
    [(slot, task)] = entries(reply).items()
    assert (slot, task["uuid"], task["where"]) == ("worker-0", "u-sleeper", "worker-0")
    assert task["channel"] == channel  # the channel it came on, as dispatcherd says it
    refused = ctl(service.config_path, "cancel")
    assert refused.returncode == 2
    assert "cancel needs --uuid, --task, --args, --kwargs or --all" in refused.stderr
    [unfiltered] = control_with_reply("cancel", {}, expected_replies=1).replies
    assert unfiltered["error"].startswith("cancel needs a filter")
    cancelled = ctl(service.config_path, "cancel", "--uuid", "u-sleeper")
    assert cancelled.returncode == 0, cancelled.stderr
    assert "u-sleeper" in cancelled.stdout
    wait_until(lambda: any(r.get("event") == "cancelled" for r in evidence.records()), timeout=5)
    status = json.loads(ctl(service.config_path, "status", "--json").stdout)[0]
    assert status["finished"] == {"cancelled": 1}


def test_cancel_without_a_filter_cancels_everything_when_configured(
    start_service: StartService,
    service_config: dict[str, Any],
    configured: Settings,
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service_config["service"]["control"] = {"cancel_without_filter": "all"}
    start_service(service_config)
    notify(channel, message("sleep_recording_cancel", evidence.path, 30, uuid="u-a"))
    notify(channel, message("record", evidence.path, "never", uuid="u-b", delay=60))
    evidence.wait_for(1)
    [reply] = control_with_reply("cancel", {"uuid": ""}, expected_replies=1).replies
    assert sorted((key, t["uuid"]) for key, t in entries(reply).items()) == [
        ("delayed-0", "u-b"),
        ("worker-0", "u-a"),
    ]
    wait_until(lambda: any(r.get("event") == "cancelled" for r in evidence.records()), timeout=5)
    [after] = control_with_reply("running", expected_replies=1).replies
    assert entries(after) == {}


def test_workers_shows_pids_that_exist(
    start_service: StartService, service_config: dict[str, Any]
) -> None:
    service_config["service"]["pool"] = {"min_workers": 2, "max_workers": 2}
    service = start_service(service_config)
    result = ctl(service.config_path, "workers", "--json")
    [reply] = json.loads(result.stdout)
    pids = [worker["pid"] for worker in entries(reply).values()]
    assert sorted(entries(reply)) == ["worker-0", "worker-1"]
    assert len(pids) == 2
    assert all(alive(pid) for pid in pids)
    table = ctl(service.config_path, "workers")
    assert table.returncode == 0
    assert "pid" in table.stdout.splitlines()[1]


def test_unknown_command_and_bad_control_data_get_error_replies(
    start_service: StartService,
    service_config: dict[str, Any],
    configured: Settings,
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service = start_service(service_config)
    [unknown] = control_with_reply("no_such_command", expected_replies=1).replies
    assert unknown["error"].startswith(
        "unknown command 'no_such_command' (commands: aio_tasks, alive, "
    )
    [bad] = control_with_reply("running", {"uuid": 5}, expected_replies=1).replies
    assert (
        bad["error"]
        == "invalid control_data for running: control_data.uuid: expected string or null, got integer 5"
    )
    [extra] = control_with_reply("workers", {"verbose": True}, expected_replies=1).replies
    assert "control_data.verbose: unknown key" in extra["error"]
    notify(channel, message("record", evidence.path, "still serving"))
    assert evidence.wait_for(1)[0]["args"] == ["still serving"]
    assert service.process is not None
    assert service.process.poll() is None


def test_reply_over_8000_bytes_arrives_whole(
    start_service: StartService,
    service_config: dict[str, Any],
    configured: Settings,
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    start_service(service_config)
    big = "x" * 20_000
    submit_task(TASKS + "sleep_recording_cancel", args=[str(evidence.path), 30, big], uuid="u-big")
    evidence.wait_for(1)
    [reply] = control_with_reply("running", {"uuid": "u-big"}, expected_replies=1).replies
    [task] = entries(reply).values()
    assert task["args"][2] == big


def test_set_log_level(start_service: StartService, service_config: dict[str, Any]) -> None:
    service = start_service(service_config)
    result = ctl(service.config_path, "set_log_level", "debug", "--json")
    [reply] = json.loads(result.stdout)
    assert (reply["level"], reply["previous_level"]) == ("DEBUG", "INFO")


def test_socket_broker_answers_with_the_database_stopped(
    start_service: StartService,
    service_config: dict[str, Any],
    pg_dsn: str,
    tmp_path: Path,
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    import os
    import stat

    from support.proxy import DatabaseProxy

    proxy = DatabaseProxy(pg_dsn)  # never brought up: the database is "stopped"
    socket_path = tmp_path / "dispatcher.sock"
    service_config["brokers"]["pg_notify"]["conninfo"] = proxy.dsn
    service_config["brokers"]["socket"] = {"path": str(socket_path)}
    service_config["service"]["node_id"] = "socket-node"
    service = start_service(service_config, wait=False)
    service.wait_for_log(r"registered tasks")
    service.wait_for_log(r"listening on socket")
    assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o600
    result = ctl(service.config_path, "alive", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [{"node_id": "socket-node"}]
    # Tasks arrive over the socket too.
    import socket as sockets

    with sockets.socket(sockets.AF_UNIX) as client:
        client.connect(str(socket_path))
        client.sendall((message("record", evidence.path, "via socket") + "\n").encode())
    assert evidence.wait_for(1)[0]["args"] == ["via socket"]
    assert service.stop() == 0
    assert not socket_path.exists()


def test_dispatcherctl_shows_why_a_service_with_too_many_socket_clients_refused_it(
    start_service: StartService, service_config: dict[str, Any], tmp_path: Path
) -> None:
    import socket as sockets

    socket_path = tmp_path / "dispatcher.sock"
    service_config["brokers"]["socket"] = {"path": str(socket_path)}
    service_config["service"]["node_id"] = "busy-node"
    service = start_service(service_config)
    service.wait_for_log(r"listening on socket")
    idle = []
    try:
        for _ in range(64):  # connected, never sending a line
            client = sockets.socket(sockets.AF_UNIX)
            idle.append(client)
            client.connect(str(socket_path))
        result = ctl(service.config_path, "alive")
    finally:
        for client in idle:
            client.close()
    assert result.returncode == 3, result.stderr
    assert result.stdout.splitlines()[:2] == [
        "busy-node:",
        "  error: the service has too many socket clients (64 connected, the most it serves "
        "at once); try again shortly",
    ]
    assert result.stderr == "dispatcherctl: error reply from busy-node\n"
    wait_until(lambda: ctl(service.config_path, "alive").returncode == 0, timeout=10)


@pytest.mark.parametrize(
    ("command", "shape"),
    [
        (["status"], list),
        (["alive"], list),
        (["workers"], list),
        (["running"], list),
        (["cancel", "--uuid", "u-none"], list),
        (["aio_tasks"], list),
        (["run", "support.service_tasks.noop"], list),
        (["jobs"], list),  # no durable queue configured
        (["retry", "--failed"], dict),
        (["purge", "--state", "done", "--older-than", "1"], dict),
        (["cancel-job", "--uuid", "u-none"], dict),
        (["submit", "app.tasks.t", "--queue", "nowhere"], dict),
        (["top", "--once"], dict),
    ],
)
@pytest.mark.parametrize("config_file", ["good", "missing"])
def test_json_output_is_json_whatever_the_outcome(
    tmp_path: Path,
    pg_dsn: str,
    channel: str,
    command: list[str],
    shape: type[object],
    config_file: str,
) -> None:
    """No service listening, a command refused, a config that cannot be read: stdout holds
    the output's shape, empty (the reason is on stderr and in the exit status)."""
    config = tmp_path / "dispatcher.yml"
    if config_file == "good":
        settings = {
            "version": 1,
            "brokers": {"pg_notify": {"conninfo": pg_dsn, "channels": [channel]}},
        }
        config.write_text(json.dumps(settings))
    result = ctl(config, *command, "--json")
    assert isinstance(json.loads(result.stdout), shape), (result.stdout, result.stderr)
    if shape is list:
        assert result.returncode != 0 or json.loads(result.stdout) == []
    assert result.stderr


def test_dispatcherctl_says_when_no_service_is_running(
    tmp_path: Path, pg_dsn: str, channel: str
) -> None:
    config = tmp_path / "dispatcher.yml"
    config.write_text(
        json.dumps(
            {"version": 1, "brokers": {"pg_notify": {"conninfo": pg_dsn, "channels": [channel]}}}
        )
    )
    result = ctl(config, "alive")
    assert result.returncode == 1
    assert result.stderr == (
        f"dispatcherctl: no dispatcher service listening on channel {channel} is connected to "
        "the database (dispatcherd services cannot be found there: pass --expected-replies N "
        "to wait for N replies)\n"
    )
