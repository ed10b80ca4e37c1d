"""A rolling deploy on a durable queue: a job of a task that only the new release registers,
claimed by a service of the old one, says how to run it again, and runs once retried."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support.ctl_here import dispatcherctl
from support.durable import Conn, enqueue, job_message, own_schema, queue_config, wait_for_states
from support.service import ServiceProcess

pytestmark = pytest.mark.timeout(90)

NEW_TASK = "support.tasks.add"
"""Registered by the new release only (its ``tasks.modules`` adds ``support.tasks``)."""


def test_a_job_the_old_release_does_not_know_fails_saying_how_to_retry_it_and_then_runs(
    start_service: Callable[..., ServiceProcess], pg_dsn: str, pg_conn: Conn, tmp_path: Path
) -> None:
    with own_schema(pg_dsn) as schema:
        old: dict[str, Any] = queue_config(pg_dsn, schema, "rolling")
        service = start_service(old)
        [uuid] = enqueue(pg_conn, schema, "rolling", [job_message(NEW_TASK, 2, 3)])
        [row] = wait_for_states(pg_conn, schema, [uuid], {"failed"})
        assert row["outcome"] == "rejected"
        # The row and the log line say what happened and what to do, naming the job.
        advice = f"dispatcherctl retry --uuid {uuid}"
        assert advice in row["last_error"], row["last_error"]
        service.wait_for_log(rf"'{NEW_TASK}' is not registered in this service.*retry --uuid")
        assert service.stop() == 0

        new = {**old, "tasks": {"modules": ["support.service_tasks", "support.tasks"]}}
        start_service(new)
        config_path = tmp_path / "ctl.yml"
        config_path.write_text(json.dumps(new))
        done = dispatcherctl(config_path, "retry", "--uuid", uuid)
        assert done.returncode == 0, done.stderr
        [row] = wait_for_states(pg_conn, schema, [uuid], {"done"})
        assert row["result"] == 5
