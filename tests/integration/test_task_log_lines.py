"""What the service log says at INFO: one line per task (``service.task_log``), and what
control commands changed."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from dispatcher.config import Settings
from dispatcher.control import control_with_reply
from support.log_lines import FORGED, FORGED_SHOWN, assert_every_line_is_ours
from support.service import Evidence, ServiceProcess, task_message

StartService = Callable[..., ServiceProcess]
Notify = Callable[[str, str], None]

RECORD = "support.service_tasks.record"
FORGED_PATTERN = re.escape(FORGED_SHOWN)


def finished_line(task: str, uuid: str, outcome: str) -> str:
    """The pattern of the INFO line logged when a task ends."""
    return (
        rf"INFO dispatcher\.tasks: task {re.escape(task)} \(uuid {uuid}\) finished {outcome} "
        r"in \d+\.\d ms on worker \d+$"
    )


def line_number(log: str, pattern: str) -> int:
    [number] = [n for n, line in enumerate(log.splitlines()) if re.search(pattern, line)]
    return number


def test_a_task_that_succeeds_leaves_one_info_line_by_default(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service = start_service(service_config)
    notify(channel, task_message("record", evidence.path, uuid="u-ok"))
    service.wait_for_log(finished_line(RECORD, "u-ok", "ok"))
    assert "started on worker" not in service.log
    assert len(re.findall(r"\(uuid u-ok\)", service.log)) == 1


def test_start_and_end_lines_escape_a_hostile_uuid(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service_config["service"]["task_log"] = "start_and_end"
    service = start_service(service_config)
    notify(channel, task_message("record", evidence.path, uuid=FORGED))
    service.wait_for_log(finished_line(RECORD, FORGED_PATTERN, "ok"))
    log = service.log
    start = line_number(
        log,
        rf"INFO dispatcher\.tasks: task {RECORD} \(uuid {FORGED_PATTERN}\) started on worker \d+$",
    )
    assert start < line_number(log, finished_line(RECORD, FORGED_PATTERN, "ok"))
    assert_every_line_is_ours(log)


def test_off_leaves_no_line_for_a_success_but_still_logs_a_failure(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service_config["service"]["task_log"] = "off"
    service_config["service"]["pool"] = {"min_workers": 1, "max_workers": 1}  # one at a time
    service = start_service(service_config)
    notify(channel, task_message("record", evidence.path, uuid="u-quiet"))
    notify(channel, task_message("fail", evidence.path, uuid="u-loud"))
    service.wait_for_log(r"ERROR dispatcher\.tasks: task \S+ \(uuid u-loud\) failed: ValueError")
    assert "u-quiet" not in service.log
    assert not re.search(r"\) finished ", service.log)


def test_control_actions_are_logged_and_queries_are_not(
    start_service: StartService,
    service_config: dict[str, Any],
    configured: Settings,
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service = start_service(service_config)
    notify(channel, task_message("sleep_recording_cancel", evidence.path, 30, uuid="u-sleeper"))
    evidence.wait_for(1)
    for command in ("running", "workers", "status"):
        [reply] = control_with_reply(command, expected_replies=1).replies
        assert "error" not in reply, reply
    [reply] = control_with_reply("cancel", {"uuid": "u-sleeper"}, expected_replies=1).replies
    assert "error" not in reply, reply
    service.wait_for_log(
        r"INFO dispatcher\.control: control cancel \(uuid='u-sleeper'\): cancelled 1 task: "
        r"support\.service_tasks\.sleep_recording_cancel \(uuid u-sleeper, worker-0\)$"
    )
    service.wait_for_log(
        finished_line("support.service_tasks.sleep_recording_cancel", "u-sleeper", "cancelled")
    )
    notify(channel, json.dumps({"control": "set_log_level", "control_data": {"level": "WARNING"}}))
    service.wait_for_log(
        r"WARNING dispatcher\.control: control set_log_level: the dispatcher loggers' level is "
        r"now WARNING \(was INFO\)$"
    )
    [reply] = control_with_reply("cancel", {"task": "no.such.task"}, expected_replies=1).replies
    assert "error" not in reply, reply
    assert not re.search(r"control (running|workers|status)", service.log)
    assert "no.such.task" not in service.log  # at WARNING, that cancel's INFO line is not written
