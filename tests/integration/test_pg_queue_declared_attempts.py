"""``@task(max_attempts=...)`` holds for jobs submitted by name, by publishers that never
imported the task: the service, which imports it, applies it to rows with the queue's default.

The tasks (``support.declared_attempts``) are never imported by this process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from support.durable import enqueue, job_message, migrated, queue_config, wait_for_states
from support.queue_rows import unique_schema
from support.service import Evidence, ServiceProcess

pytestmark = pytest.mark.timeout(60)

Conn = psycopg.Connection[Any]
Start = Callable[..., ServiceProcess]
TASKS = "support.declared_attempts."


@pytest.fixture
def schema(pg_conn: Conn) -> Iterator[str]:
    name = migrated(pg_conn, unique_schema())
    yield name
    pg_conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def service(start_service: Start, pg_dsn: str, schema: str, channel: str) -> ServiceProcess:
    config = queue_config(pg_dsn, schema, channel, retry_backoff=0.01, retry_backoff_max=0.02)
    config["tasks"]["modules"] = ["support.declared_attempts"]
    return start_service(config)


def runs(evidence: Evidence, task: str) -> int:
    return sum(1 for record in evidence.records() if record["task"] == task)


def test_a_task_declared_with_one_attempt_submitted_by_name_runs_once(
    service: ServiceProcess, pg_conn: Conn, schema: str, channel: str, evidence: Evidence
) -> None:
    # As dispatcher_enqueue() or a publisher without the task stores it: the queue's default.
    (uuid,) = enqueue(pg_conn, schema, channel, [job_message(TASKS + "once", str(evidence.path))])
    (row,) = wait_for_states(pg_conn, schema, [uuid], {"failed"})
    assert (row["attempts"], row["max_attempts"]) == (1, 1)
    assert runs(evidence, "once") == 1
    service.wait_for_log(r"attempt 1 of 1 ended in error; no attempt left: the job is failed")


def test_a_task_declared_with_more_attempts_than_the_queue_default_gets_them_all(
    service: ServiceProcess, pg_conn: Conn, schema: str, channel: str, evidence: Evidence
) -> None:
    (uuid,) = enqueue(pg_conn, schema, channel, [job_message(TASKS + "five", str(evidence.path))])
    (row,) = wait_for_states(pg_conn, schema, [uuid], {"failed"})
    assert (row["attempts"], row["max_attempts"]) == (5, 5)
    assert runs(evidence, "five") == 5


def test_a_value_given_for_the_job_wins_over_the_declared_one(
    service: ServiceProcess, pg_conn: Conn, schema: str, channel: str, evidence: Evidence
) -> None:
    message = job_message(TASKS + "five", str(evidence.path))
    (uuid,) = enqueue(pg_conn, schema, channel, [message], max_attempts=2)
    (row,) = wait_for_states(pg_conn, schema, [uuid], {"failed"})
    assert (row["attempts"], row["max_attempts"]) == (2, 2)
    assert runs(evidence, "five") == 2


def test_dispatcherctl_submit_by_name_gets_the_declared_limit(
    service: ServiceProcess,
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
    tmp_path: Path,
) -> None:
    config = tmp_path / "publisher.yml"
    config.write_text(json.dumps(service.config))
    arguments = [TASKS + "once", "--queue", channel, "--args", json.dumps([str(evidence.path)])]
    submitted = subprocess.run(
        [
            sys.executable,
            "-m",
            "dispatcher.server.ctl",
            "--config",
            str(config),
            "submit",
            *arguments,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,  # not where the tasks can be imported from
    )
    assert submitted.returncode == 0, submitted.stderr
    query = sql.SQL("SELECT uuid FROM {}.jobs").format(sql.Identifier(schema))
    (uuid,) = [row[0] for row in pg_conn.execute(query).fetchall()]
    (row,) = wait_for_states(pg_conn, schema, [uuid], {"failed"})
    assert (row["attempts"], row["max_attempts"]) == (1, 1)
    assert runs(evidence, "once") == 1


def test_the_declared_limit_is_on_the_row_from_its_claim_so_a_lost_lease_does_not_retry_it(
    service: ServiceProcess, pg_conn: Conn, schema: str, channel: str, evidence: Evidence
) -> None:
    message = job_message(TASKS + "once_slowly", str(evidence.path))
    (uuid,) = enqueue(pg_conn, schema, channel, [message])
    evidence.wait_for(1)
    (row,) = wait_for_states(pg_conn, schema, [uuid], {"running"})
    # What dispatcherctl jobs and get_job() show, and what a sweep of the row would go by.
    assert (row["attempts"], row["max_attempts"]) == (1, 1)


def test_a_row_claimed_while_the_first_worker_starts_holds_the_declared_limit(
    start_service: Start, pg_dsn: str, pg_conn: Conn, schema: str, channel: str, evidence: Evidence
) -> None:
    # Stored before the service starts: waiting for it, not for a wake-up.
    message = job_message(TASKS + "once_slowly", str(evidence.path))
    (uuid,) = enqueue(pg_conn, schema, channel, [message])
    config = queue_config(pg_dsn, schema, channel, lease=1)
    config["tasks"]["modules"] = ["support.declared_attempts"]
    first = start_service(
        {**config, "worker": {"class": "support.service_hooks.SlowStartWorker"}}, wait=False
    )
    evidence.wait_for(1)
    (row,) = wait_for_states(pg_conn, schema, [uuid], {"running"})
    assert (row["attempts"], row["max_attempts"]) == (1, 1)
    first.kill_everything()  # the service dies while it runs the job: its lease runs out
    second = start_service(config)
    (row,) = wait_for_states(pg_conn, schema, [uuid], {"failed"})
    assert (row["attempts"], row["max_attempts"], row["outcome"]) == (1, 1, "worker_lost")
    assert runs(evidence, "once_slowly") == 1
    second.wait_for_log(r"the leases? of 1 job ran out")


def test_a_lost_lease_of_a_row_holding_the_queue_default_goes_by_the_declared_limit(
    start_service: Start, pg_dsn: str, pg_conn: Conn, schema: str, channel: str, evidence: Evidence
) -> None:
    # Claimed by a service that did not know the declared limit: the row holds the default.
    message = job_message(TASKS + "once", str(evidence.path))
    (uuid,) = enqueue(pg_conn, schema, channel, [message])
    pg_conn.execute(
        sql.SQL(
            "UPDATE {}.jobs SET state = 'running', attempts = 1, claims = 1, node_id = 'gone',"
            " started_at = now(), lease_until = now() - interval '1 minute' WHERE uuid = %s"
        ).format(sql.Identifier(schema)),
        [uuid],
    )
    config = queue_config(pg_dsn, schema, channel)
    config["tasks"]["modules"] = ["support.declared_attempts"]
    start_service(config)
    (row,) = wait_for_states(pg_conn, schema, [uuid], {"failed"})
    assert (row["attempts"], row["max_attempts"], row["outcome"]) == (1, 1, "worker_lost")
    assert runs(evidence, "once") == 0
