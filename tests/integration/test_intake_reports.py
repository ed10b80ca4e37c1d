"""What the service says about what it received: ``status`` counts, unknown-task hints."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from dispatcher.config import Settings
from dispatcher.control import control_with_reply
from support.service import Evidence, ServiceProcess, task_message

StartService = Callable[..., ServiceProcess]
Notify = Callable[[str, str], None]


def test_status_counts_task_and_control_messages_apart(
    start_service: StartService,
    service_config: dict[str, Any],
    configured: Settings,
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    start_service(service_config)
    for n in range(2):
        notify(channel, task_message("record", evidence.path, n))
    for _ in range(3):
        notify(channel, json.dumps({"control": "alive"}))
    evidence.wait_for(2)
    [status] = control_with_reply("status", expected_replies=1).replies
    # The status command is a control message too: 3 alive + itself.
    assert (status["received"], status["received_control"]) == (2, 4)
    assert (status["main"]["received_count"], status["main"]["control_count"]) == (2, 4)


def test_an_unknown_task_close_to_a_registered_one_gets_a_suggestion(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
) -> None:
    service = start_service(service_config)
    notify(channel, json.dumps({"task": "support.service_tasks.recrod", "uuid": "u-typo"}))
    notify(channel, json.dumps({"task": "elsewhere.entirely", "uuid": "u-far"}))
    [typo] = service.wait_for_log(r"\(uuid u-typo\)")
    assert typo.endswith(
        "task 'support.service_tasks.recrod' is not registered "
        "(did you mean 'support.service_tasks.record'?)"
    )
    [far] = service.wait_for_log(r"\(uuid u-far\)")
    assert far.endswith("task 'elsewhere.entirely' is not registered")
    assert not re.search(r"did you mean.*elsewhere", service.log)


def test_a_rejection_names_every_wrong_field_however_long_one_value_is(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
) -> None:
    service = start_service(service_config)
    record = "support.service_tasks.record"
    long_bind = {"task": record, "uuid": "u-long", "bind": "x" * 3000, "timeout": -1}
    notify(channel, json.dumps({**long_bind, "delay": "soon"}))
    many = {"task": record, "uuid": "u-many", "args": [1], "kwargs": [1], "timeout": "t"}
    many |= {"delay": -5, "on_duplicate": "x", "bind": 1, "callbacks": 5, "time_pub": -1}
    notify(channel, json.dumps(many))
    [long] = service.wait_for_log(r"rejected message .*\(uuid u-long\)")
    cut = f"bind: expected boolean, got string '{'x' * 80}...' (2920 more characters)"
    assert long.endswith(
        f"{cut}; delay: expected number, got string 'soon'; timeout: must be at least 0, got -1"
    ), long
    [line] = service.wait_for_log(r"rejected message .*\(uuid u-many\)")
    for field in ("bind", "callbacks", "delay", "kwargs", "on_duplicate", "time_pub", "timeout"):
        assert f"{field}: " in line, (field, line)
    assert "more characters" not in line
