"""A cancel that needs force (the task ignores it) still ends the task ``cancelled``.

Only a timeout forced home ends a task ``killed``: an operator's cancel is final, so a
durable job cancelled that way is not run again.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from dispatcher.config import Settings
from dispatcher.control import control_with_reply, entries
from support.durable import enqueue, job_message, own_schema, queue_config, wait_for_states
from support.service import Evidence, ServiceProcess, wait_until
from support.service import task_message as message

StartService = Callable[..., ServiceProcess]
Notify = Callable[[str, str], None]
FORCED = r"task support\.service_tasks\.stubborn_sleep \(uuid {}\) ended as cancelled with its"


def ctl(config: Path, *args: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "dispatcher.server.ctl", *args, "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def started(evidence: Evidence) -> bool:
    return any(record.get("event") == "start" for record in evidence.records())


def test_a_cancel_that_needs_force_ends_the_task_cancelled(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
    configured: Settings,
) -> None:
    service_config["service"].update(cancel_grace=0.5, pool={"min_workers": 1, "max_workers": 1})
    service = start_service(service_config)
    notify(channel, message("stubborn_sleep", evidence.path, 30, uuid="u-stubborn"))
    wait_until(lambda: started(evidence), timeout=10)
    [reply] = control_with_reply("cancel", {"uuid": "u-stubborn"}, expected_replies=1).replies
    assert [task["uuid"] for task in entries(reply).values()] == ["u-stubborn"]
    service.wait_for_log(FORCED.format("u-stubborn"))
    [status] = wait_until(
        lambda: (found := ctl(service.config_path, "status"))[0]["finished"] and found, timeout=10
    )
    assert status["finished"] == {"cancelled": 1}
    assert status["recent_failures"] == []  # a cancel asked for is no failure


def test_a_durable_job_cancelled_by_force_is_not_run_again(
    start_service: StartService, pg_dsn: str, channel: str, evidence: Evidence, tmp_path: Path
) -> None:
    with own_schema(pg_dsn) as schema, psycopg.connect(pg_dsn, autocommit=True) as conn:
        config = queue_config(pg_dsn, schema, channel, max_attempts=3)
        config["brokers"]["socket"] = {"path": str(tmp_path / "control.sock")}
        config["service"].update(cancel_grace=0.5)
        service = start_service(config)
        [uuid] = enqueue(conn, schema, channel, [job_message("stubborn_sleep", evidence.path, 30)])
        wait_until(lambda: started(evidence), timeout=10)
        [reply] = ctl(service.config_path, "cancel", "--uuid", uuid)
        assert uuid in json.dumps(reply)
        service.wait_for_log(FORCED.format(uuid))
        [row] = wait_for_states(conn, schema, [uuid], {"cancelled", "queued", "failed", "done"})
        assert (row["state"], row["attempts"], row["outcome"]) == ("cancelled", 1, "cancelled")
        assert "retried" not in service.log
        assert [r["event"] for r in evidence.records()].count("start") == 1
