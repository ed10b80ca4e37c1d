"""dispatcherd's ``dispatcherctl`` (every command) and ``Control`` against our service.

dispatcherd 2026.5.27's own client, in its own environment, with a dispatcherd config file:
the replies must have the shapes its readers read (:mod:`support.dispatcherd_shapes`), and
the ``Control`` replies are read here the way AWX reads them.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from support import dispatcherd_shapes as shapes
from support.dispatcherd import Dispatcherd, Driver
from support.service import Evidence, ServiceProcess, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90, func_only=True)]

StartService = Callable[..., ServiceProcess]
TASKS = "support.dispatcherd_tasks."

COMMANDS = (
    "running",
    "cancel",
    "alive",
    "aio_tasks",
    "workers",
    "producers",
    "metrics",
    "main",
    "status",
    "chunks",
    "set_log_level",
)
"""dispatcherctl's commands: dispatcherd's ``control_tasks.__all__`` (its ``run`` is not one)."""


def dispatcherctl(
    env: Dispatcherd, config: Path, command: str, *options: str
) -> tuple[int, list[dict[str, Any]], str]:
    """Run dispatcherd's ``dispatcherctl``: (exit status, the replies it printed, stderr).

    Its options go after the command: it reads those given before as unset.
    """
    done = subprocess.run(
        [
            *env.script("dispatcherctl"),
            command,
            *options,
            "--config",
            str(config),
            "--log-level",
            "CRITICAL",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    replies = YAML(typ="safe").load(done.stdout) if done.stdout.strip() else None
    assert isinstance(replies, list), (
        f"dispatcherctl printed no list:\n{done.stdout}\n{done.stderr}"
    )
    return done.returncode, replies, done.stderr


def publish(driver: Driver, task: str, *args: Any, **options: Any) -> dict[str, Any]:
    sent = driver.call("publish", task=task, method="apply_async", args=list(args), options=options)
    body: dict[str, Any] = sent["body"]
    return body


def started(evidence: Evidence, label: str) -> bool:
    return any(r.get("event") == "start" and r.get("label") == label for r in evidence.records())


def interrupted(evidence: Evidence, label: str) -> bool:
    return any(
        r.get("event") == "interrupted" and r.get("label") == label for r in evidence.records()
    )


@pytest.fixture
def busy_service(
    start_service: StartService, our_config: dict[str, Any], driver: Driver, evidence: Evidence
) -> ServiceProcess:
    """Our service (one worker) with a task in each place: running, blocked, queued, delayed.

    uuids ``u-running``, ``u-blocked`` (a serial duplicate of the running one), ``u-queued``
    and ``u-delayed`` (for 300 s); published with dispatcherd's publisher.
    """
    our_config["service"]["pool"] = {"min_workers": 1, "max_workers": 1}
    service = start_service(our_config)
    path = str(evidence.path)
    publish(driver, "sleeper", path, 60, "busy", uuid="u-running")
    wait_until(lambda: started(evidence, "busy"), 10)
    serial = [["CompatParams", {"on_duplicate": "serial"}]]
    publish(driver, "sleeper", path, 60, "busy", uuid="u-blocked", processor_options=serial)
    publish(driver, "record", path, "queued", uuid="u-queued")
    publish(
        driver,
        "record",
        path,
        "delayed",
        uuid="u-delayed",
        processor_options=[["Delayer", {"delay": 300}]],
    )
    return service


def places(reply: dict[str, Any]) -> dict[str, str]:
    """``running``/``cancel``: uuid -> the kind of slot it is in (worker, blocked, ...)."""
    return {
        message["uuid"]: slot.split("-")[0]
        for slot, message in shapes.tasks(shapes.body(reply)).items()
    }


ALL_PLACES = {
    "u-running": "worker",
    "u-blocked": "blocked",
    "u-queued": "queued",
    "u-delayed": "delayed",
}

BLOCKED_AS_QUEUED = (
    "differs: our duplicate gate tracks only messages that ask for on_duplicate, so a serial "
    "message whose running twin was sent without it is not held back: it waits in the queue "
    "for a worker (queued-N, 'where': 'queued', and would run beside its twin on a free "
    "one); dispatcherd's Blocker compares it with every running task and lists it as "
    "blocked-N, and its readers count blocked-* apart from queued-*"
)


def placed(reply: dict[str, Any]) -> dict[str, str]:
    """:func:`places`, taking a serial duplicate listed as queued for blocked (see the xfail
    of :func:`test_running_lists_a_held_serial_duplicate_as_blocked`)."""
    found = places(reply)
    if found.get("u-blocked") == "queued":
        found["u-blocked"] = "blocked"
    return found


def wait_for_all_places(env: Dispatcherd, config: Path) -> None:
    seen: list[Any] = []

    def settled() -> bool:
        _, replies, _ = dispatcherctl(env, config, "running")
        seen[:] = replies
        return len(replies) == 1 and placed(replies[0]) == ALL_PLACES

    try:
        wait_until(settled, 15)
    except AssertionError:
        raise AssertionError(f"running did not show {ALL_PLACES}; last replies: {seen}") from None


# -- dispatcherctl, every command --------------------------------------------------------


def test_dispatcherctl_has_the_commands_listed_here(dispatcherd_env: Dispatcherd) -> None:
    done = subprocess.run(
        [
            str(dispatcherd_env.python),
            "-c",
            "from dispatcherd.service import control_tasks; print(' '.join(control_tasks.__all__))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.split() == list(COMMANDS), done.stderr


def test_dispatcherctl_alive(
    start_service: StartService,
    our_config: dict[str, Any],
    dispatcherd_env: Dispatcherd,
    their_config: Path,
    channel: str,
) -> None:
    start_service(our_config)
    status, replies, _ = dispatcherctl(dispatcherd_env, their_config, "alive")
    assert (status, replies) == (0, [{"node_id": channel}])


def test_dispatcherctl_expecting_more_replies_than_services_exits_1(
    start_service: StartService,
    our_config: dict[str, Any],
    dispatcherd_env: Dispatcherd,
    their_config: Path,
    channel: str,
) -> None:
    start_service(our_config)
    status, replies, _ = dispatcherctl(
        dispatcherd_env, their_config, "alive", "--expected-replies", "2"
    )
    assert (status, replies) == (1, [{"node_id": channel}])


def test_dispatcherctl_running_with_and_without_filters(
    busy_service: ServiceProcess, dispatcherd_env: Dispatcherd, their_config: Path
) -> None:
    wait_for_all_places(dispatcherd_env, their_config)
    _, [by_uuid], _ = dispatcherctl(dispatcherd_env, their_config, "running", "--uuid", "u-queued")
    assert places(by_uuid) == {"u-queued": "queued"}
    _, [by_task], _ = dispatcherctl(
        dispatcherd_env, their_config, "running", "--task", TASKS + "record"
    )
    assert places(by_task) == {"u-queued": "queued", "u-delayed": "delayed"}
    _, [both], _ = dispatcherctl(
        dispatcherd_env, their_config, "running", "--task", TASKS + "sleeper", "--uuid", "u-blocked"
    )
    [message] = shapes.body(both).values()
    assert message["args"][1:] == [60, "busy"]
    assert message["on_duplicate"] == "serial"


@pytest.mark.xfail(reason=BLOCKED_AS_QUEUED, strict=False)
def test_running_lists_a_held_serial_duplicate_as_blocked(
    busy_service: ServiceProcess, dispatcherd_env: Dispatcherd, their_config: Path
) -> None:
    wait_for_all_places(dispatcherd_env, their_config)
    _, [reply], _ = dispatcherctl(dispatcherd_env, their_config, "running", "--uuid", "u-blocked")
    assert places(reply) == {"u-blocked": "blocked"}


def test_dispatcherctl_cancel_by_uuid_and_by_task(
    busy_service: ServiceProcess,
    dispatcherd_env: Dispatcherd,
    their_config: Path,
    evidence: Evidence,
) -> None:
    wait_for_all_places(dispatcherd_env, their_config)
    _, [delayed], _ = dispatcherctl(dispatcherd_env, their_config, "cancel", "--uuid", "u-delayed")
    assert places(delayed) == {"u-delayed": "delayed"}
    _, [sleepers], _ = dispatcherctl(
        dispatcherd_env, their_config, "cancel", "--task", TASKS + "sleeper"
    )
    assert placed(sleepers) == {"u-running": "worker", "u-blocked": "blocked"}
    wait_until(lambda: interrupted(evidence, "busy"), 10)
    wait_until(lambda: any(r.get("args") == ["queued"] for r in evidence.records()), 10)
    _, [left], _ = dispatcherctl(dispatcherd_env, their_config, "running")
    assert shapes.body(left) == {}
    assert [r.get("event") for r in evidence.records() if r.get("label") == "busy"] == [
        "start",
        "interrupted",
    ]


def test_dispatcherctl_cancel_without_a_filter_is_refused(
    busy_service: ServiceProcess, dispatcherd_env: Dispatcherd, their_config: Path
) -> None:
    """A documented difference: dispatcherd cancels everything; ours refuses (DESIGN 9)."""
    wait_for_all_places(dispatcherd_env, their_config)
    status, [reply], _ = dispatcherctl(dispatcherd_env, their_config, "cancel")
    assert status == 0
    assert "error" in reply
    _, [still], _ = dispatcherctl(dispatcherd_env, their_config, "running")
    assert placed(still) == ALL_PLACES


def test_dispatcherctl_workers(
    busy_service: ServiceProcess, dispatcherd_env: Dispatcherd, their_config: Path
) -> None:
    _, [reply], _ = dispatcherctl(dispatcherd_env, their_config, "workers")
    workers = shapes.workers(shapes.body(reply))
    [worker] = workers.values()
    assert (worker["current_task"], worker["current_task_uuid"]) == (TASKS + "sleeper", "u-running")
    assert worker["status"] == "ready"
    assert worker["active_cancel"] is False


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("aio_tasks", ("--limit", "1")),
        ("producers", ()),
        ("metrics", ()),
        ("main", ()),
        ("chunks", ()),
        ("set_log_level", ("--level", "WARNING")),
    ],
)
def test_dispatcherctl_reads_the_other_commands(
    start_service: StartService,
    our_config: dict[str, Any],
    dispatcherd_env: Dispatcherd,
    their_config: Path,
    channel: str,
    command: str,
    options: tuple[str, ...],
) -> None:
    service = start_service(our_config)
    status, [reply], _ = dispatcherctl(dispatcherd_env, their_config, command, *options)
    assert status == 0
    assert reply["node_id"] == channel
    data = shapes.check(command, reply)
    if command == "metrics":
        assert data["enabled"] is False
    if command == "main":
        assert data["pid"] == service.pid
    if command == "set_log_level":
        assert data["level"] == "WARNING"
        _, [again], _ = dispatcherctl(dispatcherd_env, their_config, command, "--level", "INFO")
        assert (again["level"], again["previous_level"]) == ("INFO", "WARNING")


def test_dispatcherctl_status(
    busy_service: ServiceProcess, dispatcherd_env: Dispatcherd, their_config: Path
) -> None:
    wait_for_all_places(dispatcherd_env, their_config)
    _, [reply], _ = dispatcherctl(dispatcherd_env, their_config, "status")
    data = shapes.check("status", reply)
    assert {message["uuid"] for message in data["running"].values()} == set(ALL_PLACES)
    assert data["main"]["pid"] == busy_service.pid


# -- dispatcherd's Control, read the way AWX reads it --------------------------------------


def awx_is_running(replies: list[dict[str, Any]], uuid: str) -> bool:
    """Whether a task is still running somewhere: its uuid among the values of any reply."""
    for reply in replies:
        for slot, message in reply.items():
            if slot != "node_id" and isinstance(message, dict) and message.get("uuid") == uuid:
                return True
    return False


def test_awx_finds_the_service_pid_in_status(
    start_service: StartService, our_config: dict[str, Any], driver: Driver
) -> None:
    service = start_service(our_config)
    replies = driver.call("control_with_reply", command="status")
    assert len(replies) == 1
    assert replies[0]["main"]["pid"] == service.pid


def test_awx_polls_running_until_its_task_is_gone(
    start_service: StartService, our_config: dict[str, Any], driver: Driver, evidence: Evidence
) -> None:
    start_service(our_config)
    publish(driver, "sleeper", str(evidence.path), 1.0, "awx", uuid="u-awx")
    wait_until(
        lambda: awx_is_running(driver.call("control_with_reply", command="running"), "u-awx"), 10
    )
    wait_until(
        lambda: not awx_is_running(driver.call("control_with_reply", command="running"), "u-awx"),
        10,
    )
    assert [r["event"] for r in evidence.records()] == ["start", "end"]


def test_awx_cancels_each_task_by_uuid_with_and_without_a_reply(
    start_service: StartService, our_config: dict[str, Any], driver: Driver, evidence: Evidence
) -> None:
    start_service(our_config)
    path = str(evidence.path)
    publish(driver, "sleeper", path, 60, "first", uuid="u-first")
    publish(driver, "sleeper", path, 60, "second", uuid="u-second")
    wait_until(lambda: started(evidence, "first") and started(evidence, "second"), 10)
    results = [driver.call("control_with_reply", command="cancel", data={"uuid": "u-first"})]
    assert len(results[0]) == 1
    [(slot, message)] = shapes.body(results[0][0]).items()
    assert (slot.startswith("worker-"), message["uuid"]) == (True, "u-first")
    driver.call("control", command="cancel", data={"uuid": "u-second"})  # fire and forget
    wait_until(lambda: interrupted(evidence, "first") and interrupted(evidence, "second"), 10)
    [main] = driver.call("control_with_reply", command="main")
    assert main["pool"]["canceled_count"] == 2


def test_async_control_and_a_health_check_on_another_channel(
    start_service: StartService,
    our_config: dict[str, Any],
    driver: Driver,
    channel: str,
    other_channel: str,
) -> None:
    """EDA's health check: ``alive`` on a given channel (an override of the broker's default)."""
    start_service(our_config)
    alive = driver.call(
        "control_with_reply", command="alive", overrides={"default_publish_channel": other_channel}
    )
    assert alive == [{"node_id": channel}]
    assert driver.call("acontrol_with_reply", command="alive") == [{"node_id": channel}]
    driver.call("acontrol", command="alive")  # fire and forget: nothing comes back


def test_run_starts_a_task_and_acknowledges_it(
    start_service: StartService, our_config: dict[str, Any], driver: Driver, evidence: Evidence
) -> None:
    our_config["producers"] = {"control": {}}
    start_service(our_config)
    data = {"task": TASKS + "record", "args": [str(evidence.path), "ran"], "uuid": "u-run"}
    [reply] = driver.call("control_with_reply", command="run", data=data)
    assert reply["ack"]["task"] == TASKS + "record"
    assert reply["ack"]["uuid"] == "u-run"
    assert evidence.wait_for(1)[0]["args"] == ["ran"]


def test_an_unknown_command_gets_an_error(
    start_service: StartService, our_config: dict[str, Any], driver: Driver, channel: str
) -> None:
    start_service(our_config)
    [reply] = driver.call("control_with_reply", command="not-a-command")
    assert reply["node_id"] == channel
    assert isinstance(reply["error"], str)
    assert driver.call("control_with_reply", command="alive") == [{"node_id": channel}]


def test_a_control_message_and_its_reply_over_8_kB(
    start_service: StartService, our_config: dict[str, Any], driver: Driver, evidence: Evidence
) -> None:
    """dispatcherd chunks the request (and the task); we chunk the reply; it reassembles it."""
    start_service(our_config)
    path, label = str(evidence.path), "L" * 9000
    publish(driver, "sleeper", path, 60, label, uuid="u-large")
    wait_until(lambda: started(evidence, label), 10)
    big_filter = {"args": [path, 60, label]}
    [running] = driver.call("control_with_reply", command="running", data=big_filter)
    [(slot, message)] = shapes.body(running).items()
    assert slot.startswith("worker-")
    assert message["args"] == [path, 60, label]
    [cancelled] = driver.call("control_with_reply", command="cancel", data=big_filter)
    assert [m["uuid"] for m in shapes.body(cancelled).values()] == ["u-large"]
    wait_until(lambda: interrupted(evidence, label), 10)
