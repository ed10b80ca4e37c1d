"""dispatcherd's conventions in our service: ``callbacks``, ``errbacks``, bare task names.

The service runs as a subprocess; everything is observed through what the tasks did and what
the service logged.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support.follow_up_tasks import EVIDENCE_VARIABLE
from support.service import Evidence, ServiceProcess, wait_until

StartService = Callable[..., ServiceProcess]
Notify = Callable[[str, str], None]

SERVICE = "support.service_tasks."
OURS = "support.follow_up_tasks."


@pytest.fixture
def config(service_config: dict[str, Any]) -> dict[str, Any]:
    service_config["tasks"]["modules"] = ["support.service_tasks", "support.follow_up_tasks"]
    service_config["service"]["pool"] = {"min_workers": 1, "max_workers": 1}
    return service_config


def step(task: str, path: Path, *args: Any, **options: Any) -> dict[str, Any]:
    """A task message (or follow-up) for one of the test tasks (``record`` by default)."""
    name = task if "." in task else SERVICE + task
    return {"task": name, "args": [str(path), *args], **options}


def labels(evidence: Evidence) -> list[Any]:
    return [r.get("args", [r.get("event") or r.get("label")])[0] for r in evidence.records()]


def test_callbacks_run_after_a_task_that_succeeds_and_errbacks_do_not(
    start_service: StartService,
    config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    start_service(config)
    path = evidence.path
    message = step(
        "record",
        path,
        "task",
        uuid="u-ok",
        callbacks=[step("record", path, "callback 1"), step("record", path, "callback 2")],
        errbacks=[step("record", path, "errback")],
    )
    notify(channel, json.dumps(message))
    notify(channel, json.dumps(step("record", path, "next")))
    records = evidence.wait_for(4)
    assert labels(evidence) == ["task", "callback 1", "callback 2", "next"]
    assert len({r["pid"] for r in records}) == 1  # the same worker, one after the other


def test_errbacks_then_callbacks_run_after_a_task_that_fails(
    start_service: StartService,
    config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service = start_service(config)
    path = evidence.path
    message = step(
        "fail",
        path,
        uuid="u-fails",
        callbacks=[step("record", path, "callback")],
        errbacks=[step("record", path, "errback 1"), step("record", path, "errback 2")],
    )
    notify(channel, json.dumps(message))
    evidence.wait_for(4)
    assert labels(evidence) == ["fail", "errback 1", "errback 2", "callback"]
    service.wait_for_log(r"task support\.service_tasks\.fail \(uuid u-fails\) failed")


def test_a_failing_callback_is_logged_runs_its_errbacks_and_the_others_still_run(
    start_service: StartService,
    config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service = start_service(config, log_level="DEBUG")  # a job's end is logged at DEBUG
    path = evidence.path
    message = step(
        "record",
        path,
        "task",
        uuid="u-callback-fails",
        callbacks=[
            step("fail", path, errbacks=[step("record", path, "its errback")]),
            step("record", path, "after", callbacks=[step("record", path, "nested")]),
        ],
    )
    notify(channel, json.dumps(message))
    notify(channel, json.dumps(step("record", path, "next")))
    evidence.wait_for(6)
    assert labels(evidence) == ["task", "fail", "its errback", "after", "nested", "next"]
    service.wait_for_log(
        r"task support\.service_tasks\.record \(uuid u-callback-fails\): callback "
        r"support\.service_tasks\.fail failed: ValueError: this task always fails"
    )
    service.wait_for_log(r"\(uuid u-callback-fails\) finished ok")  # not "failed"


def test_follow_ups_get_the_uuid_of_their_message_when_bound(
    start_service: StartService,
    config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    start_service(config)
    path = evidence.path
    message = step(
        "record",
        path,
        "task",
        uuid="u-parent",
        callbacks=[
            step(OURS + "bound_record", path, "bound by its registration"),
            step(SERVICE + "follow_up", path, "alive", {}, uuid="ignored"),
        ],
    )
    notify(channel, json.dumps(message))
    task, bound, control = evidence.wait_for(3)
    assert task["args"] == ["task"]
    assert (bound["label"], bound["uuid"]) == ("bound by its registration", "u-parent")
    assert bound["worker_id"] == control["worker"]
    assert control["uuid"] == "u-parent"
    assert isinstance(control["reply"], dict)


def test_a_message_naming_an_unregistered_follow_up_is_refused(
    start_service: StartService,
    config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service = start_service(config)
    path = evidence.path
    message = step(
        "record", path, "never", uuid="u-refused", callbacks=[{"task": "os.system", "args": []}]
    )
    notify(channel, json.dumps(message))
    notify(channel, json.dumps(step("record", path, "next")))
    evidence.wait_for(1)
    service.wait_for_log(
        r"rejected message on channel \S+ \(uuid u-refused\): callbacks\[0\]: "
        r"task 'os\.system' is not registered"
    )
    assert labels(evidence) == ["next"]


def test_a_timeout_stops_the_callbacks_and_a_cancelled_task_has_none(
    start_service: StartService,
    config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service = start_service(config)
    path = evidence.path
    cancelled_task = step(
        "sleep_recording_cancel",
        path,
        30,
        "task",
        uuid="u-task-times-out",
        timeout=0.5,
        callbacks=[step("record", path, "never after a cancel")],
    )
    cancelled_callback = step(
        "record",
        path,
        "quick task",
        uuid="u-callback-times-out",
        timeout=0.5,
        callbacks=[
            step("sleep_recording_cancel", path, 30, "callback"),
            step("record", path, "never after the cancelled callback"),
        ],
    )
    notify(channel, json.dumps(cancelled_task))
    notify(channel, json.dumps(cancelled_callback))
    notify(channel, json.dumps(step("record", path, "next")))
    wait_until(lambda: "next" in labels(evidence), timeout=10)
    events = [(r.get("event"), r.get("label")) for r in evidence.records() if "event" in r]
    assert events == [
        ("start", "task"),
        ("cancelled", "task"),
        ("start", "callback"),
        ("cancelled", "callback"),
    ]
    assert labels(evidence)[-1] == "next"
    assert "never" not in json.dumps(evidence.records())
    service.wait_for_log(r"\(uuid u-callback-times-out\) exceeded its timeout of 0\.5 s")


def test_no_callbacks_after_dispatcher_exit_and_an_exit_in_a_callback_ends_the_worker(
    start_service: StartService,
    config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    start_service(config)
    path = evidence.path
    exits = step("exit_worker", path, callbacks=[step("record", path, "never")])
    exit_in_callback = step(
        "record",
        path,
        "task",
        callbacks=[step("exit_worker", path), step("record", path, "never either")],
    )
    notify(channel, json.dumps(exits))
    notify(channel, json.dumps(step("record", path, "second worker")))
    notify(channel, json.dumps(exit_in_callback))
    notify(channel, json.dumps(step("record", path, "third worker")))
    wait_until(lambda: "third worker" in labels(evidence), timeout=15)
    assert labels(evidence) == ["exit", "second worker", "task", "exit", "third worker"]
    pids = [r["pid"] for r in evidence.records()]
    assert pids[0] != pids[1] == pids[2] == pids[3] != pids[4]


def test_a_bare_registered_task_name_runs(
    start_service: StartService,
    config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service = start_service(config, env={EVIDENCE_VARIABLE: str(evidence.path)})
    notify(channel, OURS + "record_bare")
    notify(channel, OURS + "not_a_task")
    notify(channel, "lambda: 1")
    notify(channel, json.dumps(step("record", evidence.path, "after")))
    evidence.wait_for(2)
    assert [r.get("label") or r["args"][0] for r in evidence.records()] == ["bare", "after"]
    service.wait_for_log(r"task 'support\.follow_up_tasks\.not_a_task' is not registered")
    service.wait_for_log(r"rejected message on channel \S+: not JSON")
