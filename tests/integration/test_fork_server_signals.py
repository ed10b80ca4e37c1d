"""A task that signals its parent, the fork server, costs no worker and no other task.

Code written for another server's workers signals its parent, their master there (gunicorn's
reopens its logs on SIGUSR1). Here the parent is the fork server: each such signal ended it,
and every worker with it, the other workers' tasks included; SIGUSR2 had it take the service
for dead and kill them all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from support.process_tasks import PARENT_SIGNALS
from support.service import Evidence, ServiceProcess
from support.service import task_message as message

StartService = Callable[..., ServiceProcess]
Notify = Callable[[str, str], None]


def test_a_task_signalling_its_parent_leaves_the_fork_server_and_the_other_tasks_alone(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    service_config["tasks"]["modules"] = ["support.service_tasks", "support.process_tasks"]
    service_config["service"]["pool"] = {"min_workers": 2, "max_workers": 2}
    service = start_service(service_config)
    notify(channel, message("sleep_then_record", evidence.path, 2, "other", uuid="u-other"))
    [other] = evidence.wait_for(1)
    notify(channel, message("support.process_tasks.signals_its_parent", evidence.path))
    records = evidence.wait_for(3)
    [signalling] = [r for r in records if r.get("event") == "signalling"]
    assert signalling["pid"] != other["pid"]
    assert [(r["event"], r["pid"]) for r in records if r.get("label") == "other"] == [
        ("start", other["pid"]),
        ("end", other["pid"]),
    ]
    # A worker handles them as a process does by default (but for its own: SIGUSR1 and
    # SIGRTMIN cancel its task), not as the fork server does.
    ours = {"SIGUSR1", "SIGRTMIN"}
    assert signalling["handled"] == {name: name not in ours for name in PARENT_SIGNALS}
    notify(channel, message("record", evidence.path, "next"))
    assert evidence.wait_for(4)[-1]["pid"] in {other["pid"], signalling["pid"]}
    service.wait_for_log(r"\(uuid u-other\) finished ok")
    assert "fork server ended" not in service.log
    assert "worker_lost" not in service.log
