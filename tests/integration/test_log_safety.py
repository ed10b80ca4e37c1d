"""The service log cannot be forged by what publishers send or tasks print."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from typing import Any

from dispatcher.server.log_text import escape
from support.log_lines import FORGED, FORGED_SHOWN, assert_every_line_is_ours
from support.service import Evidence, ServiceProcess, task_message
from support.service_tasks import FORGED_NAME

StartService = Callable[..., ServiceProcess]
Notify = Callable[[str, str], None]

DEFAULT_CAP = 65536


def test_a_forged_uuid_is_shown_escaped_and_starts_no_line(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service = start_service(service_config)
    notify(channel, json.dumps({"task": "not.registered", "uuid": FORGED}))
    notify(channel, task_message("fail", evidence.path, uuid=FORGED))
    notify(channel, task_message("print_lines", evidence.path, "forged", 1, uuid=FORGED))
    evidence.wait_for(2)
    service.wait_for_log(r"rejected message .*" + re.escape(f"(uuid {FORGED_SHOWN})"))
    service.wait_for_log(r"ERROR .*" + re.escape(f"(uuid {FORGED_SHOWN}) failed: ValueError"))
    service.wait_for_log(
        re.escape(f"task output [support.service_tasks.print_lines {FORGED_SHOWN}]")
    )
    log = service.log
    assert not any(line.startswith("CRITICAL") for line in log.splitlines()), log
    assert_every_line_is_ours(log)


def test_a_task_cannot_forge_lines_with_its_logger_or_level_names(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service = start_service(service_config)
    notify(channel, task_message("log_with_forged_names", evidence.path))
    evidence.wait_for(1)
    shown = escape(FORGED_NAME)
    service.wait_for_log(re.escape(f"ERROR worker-0 x{shown}: from a forged logger name"))
    service.wait_for_log(re.escape(f"CRIT{shown} worker-0 support.forged: at a forged level"))
    assert b"\x1b" not in service.log_path.read_bytes()
    forged = [line for line in service.log.splitlines() if "FORGED" in line[:60]]
    assert forged == [], forged


def test_nul_characters_never_reach_the_log(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service = start_service(service_config)
    notify(channel, json.dumps({"task": "support.service_tasks.re\x00cord", "uuid": "n\x00one"}))
    notify(channel, json.dumps({"task": "not.registered", "uuid": "n\x00two"}))
    notify(channel, task_message("fail", evidence.path, uuid="n\x00three"))
    evidence.wait_for(1)
    service.wait_for_log(r"rejected message .*\(uuid n\\x00one\): task: .*re\\x00cord")
    service.wait_for_log(r"rejected message .*\(uuid n\\x00two\)")
    service.wait_for_log(r"ERROR .*\(uuid n\\x00three\) failed")
    raw = service.log_path.read_bytes()
    assert b"\x00" not in raw
    assert_every_line_is_ours(service.log)


def _output_lines(log: str, task_id: str) -> list[str]:
    """The text of the ``task output`` lines of task *task_id* (``<name> <uuid>``)."""
    prefix = f"task output [{task_id}] "
    return [line.split(prefix, 1)[1] for line in log.splitlines() if prefix in line]


def test_ten_mib_of_output_leave_the_cap_in_the_log_and_a_count(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service = start_service(service_config)
    size = 10 * 1024 * 1024
    task_uuid = str(uuid.uuid4())
    notify(channel, task_message("print_bytes", evidence.path, size, uuid=task_uuid))
    task_id = f"support.service_tasks.print_bytes {task_uuid}"
    dropped = f"task output [{task_id}]: {size - DEFAULT_CAP} more bytes dropped"
    service.wait_for_log(re.escape(dropped), timeout=30)
    kept = _output_lines(service.log, task_id)
    assert sum(len(text) for text in kept) == DEFAULT_CAP - DEFAULT_CAP // 1024  # minus "\n"s
    overhead = 150  # time stamp, level, worker, logger, task name and uuid
    assert len(service.log_path.read_bytes()) < DEFAULT_CAP + overhead * (len(kept) + 20)
    assert_every_line_is_ours(service.log)


def test_the_cap_comes_from_the_config(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service_config["worker"] = {"max_output_bytes": 100}
    service = start_service(service_config)
    notify(channel, task_message("print_bytes", evidence.path, 1000, uuid="u-capped"))
    task_id = "support.service_tasks.print_bytes u-capped"
    service.wait_for_log(re.escape(f"task output [{task_id}]: 900 more bytes dropped"))
    assert _output_lines(service.log, task_id) == ["z" * 100]


def test_output_is_attributed_to_its_task_and_uuid(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service_config["service"]["pool"] = {"min_workers": 2, "max_workers": 2}
    service = start_service(service_config)
    notify(channel, task_message("print_lines", evidence.path, "alpha", 40, uuid="u-alpha"))
    notify(channel, task_message("print_lines", evidence.path, "beta", 40, uuid="u-beta"))
    notify(channel, task_message("print_lines", evidence.path, "gamma", 40, uuid="u-gamma"))
    evidence.wait_for(3)
    for label in ("alpha", "beta", "gamma"):
        task_id = f"support.service_tasks.print_lines u-{label}"
        service.wait_for_log(re.escape(f"task output [{task_id}] {label} line 39"))
        lines = _output_lines(service.log, task_id)
        assert sorted(lines) == sorted(f"{label} line {n}" for n in range(40))
    assert_every_line_is_ours(service.log)
