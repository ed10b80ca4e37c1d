"""A log line keeps its own words whole, and a valid task name whole: only outside values are cut.

A task's name may be 255 characters long (the schemas' ``maxLength``): the lines about its
jobs name it whole, with their uuid and what became of the job after it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import psycopg

from support.durable import enqueue, job_message, migrated, queue_config, wait_for_states
from support.queue_rows import unique_schema
from support.service import Evidence, ServiceProcess
from support.service_tasks import LONG_NAME

StartService = Callable[..., ServiceProcess]
Notify = Callable[[str, str], None]


def test_the_longest_task_name_is_named_whole_in_the_lines_of_its_task(
    start_service: StartService,
    service_config: dict[str, Any],
    notify: Notify,
    channel: str,
    evidence: Evidence,
) -> None:
    assert len(LONG_NAME) == 255
    service = start_service(service_config, log_level="DEBUG")
    notify(channel, json.dumps({"task": LONG_NAME, "uuid": "u-long", "args": [str(evidence.path)]}))
    service.wait_for_log(
        re.escape(f"ERROR dispatcher.tasks: task {LONG_NAME} (uuid u-long) failed: ValueError")
    )
    assert "more characters" not in service.log, service.log


def test_a_durable_jobs_attempt_lines_keep_the_name_uuid_and_verdict(
    start_service: StartService,
    pg_dsn: str,
    pg_conn: psycopg.Connection[Any],
    channel: str,
    evidence: Evidence,
) -> None:
    schema = migrated(pg_conn, unique_schema())
    service = start_service(queue_config(pg_dsn, schema, channel))
    messages = [job_message(LONG_NAME, evidence.path)]
    (uuid,) = enqueue(pg_conn, schema, channel, messages, max_attempts=2)
    wait_for_states(pg_conn, schema, [uuid], {"failed"})
    job = f"task {LONG_NAME} (uuid {uuid})"
    service.wait_for_log(
        re.escape(
            f"WARNING dispatcher.pg_queue: {job}: attempt 2 of 2 ended in error; "
            "no attempt left: the job is failed"
        )
        + "$"
    )
    first = f"INFO dispatcher.pg_queue: {job}: attempt 1 of 2 ended in error; retried in 0.2 s"
    assert first + "\n" in service.log, service.log
