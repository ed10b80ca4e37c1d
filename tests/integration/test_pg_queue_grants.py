"""The grants docs/deployment.md lists for durable queues are enough, run as they are written.

Roles made with exactly the documented grants (nothing else: not the owner, no superuser)
publish a job, run it, store a scheduled task's ticks and purge finished rows.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from dispatcher.config import reset, setup
from dispatcher.publish import close_connections, get_job, submit_task
from support.durable import own_schema, queue_config
from support.paths import REPO
from support.queue_rows import insert_job
from support.service import TASKS, Evidence, ServiceProcess, wait_until
from support.service_tasks import DURABLE_TICKS

Conn = psycopg.Connection[Any]

GUIDE = REPO / "docs" / "deployment.md"
SECTION = "## Roles and grants (durable queues)"


def documented_grants() -> list[str]:
    """The SQL blocks of the guide's section on grants: the services', the scheduling
    services' extra grants, the publishers', the operators' (dispatcherctl's queue commands)."""
    text = GUIDE.read_text(encoding="utf-8")
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sql\n(.*?)```", section, re.DOTALL)


@contextmanager
def role_with(conn: Conn, role: str, grants: str, schema: str, database: str) -> Iterator[str]:
    """A login role granted *grants* (the guide's SQL, for its schema, database and role
    names), dropped at the end."""
    names = {
        "dispatcher": schema,
        "app": database,
        "dispatcher_service": role,
        "app_web": role,
        "app_ops": role,
    }
    pattern = re.compile(r"\b(" + "|".join(names) + r")\b")
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        conn.execute(pattern.sub(lambda m: names[m[1]], grants).encode())
        yield role
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.mark.timeout(60)
def test_the_documented_grants_let_services_and_publishers_do_their_work(
    start_service: Callable[..., ServiceProcess],
    pg_dsn: str,
    pg_conn: Conn,
    channel: str,
    tmp_path: Path,
) -> None:
    service_grants, scheduling_grants, publisher_grants, _ = documented_grants()
    with own_schema(pg_dsn) as schema:
        run_with_the_documented_grants(
            start_service,
            pg_dsn,
            pg_conn,
            schema,
            channel,
            tmp_path,
            (service_grants, scheduling_grants, publisher_grants),
        )


def run_with_the_documented_grants(
    start_service: Callable[..., ServiceProcess],
    pg_dsn: str,
    pg_conn: Conn,
    schema: str,
    channel: str,
    tmp_path: Path,
    grants: tuple[str, str, str],
) -> None:
    """Publish, run, schedule and purge, each as a role with the documented grants only."""
    service_grants, scheduling_grants, publisher_grants = grants
    database = str(conninfo_to_dict(pg_dsn)["dbname"])
    jobs, ticks = Evidence(tmp_path / "jobs.jsonl"), Evidence(tmp_path / "ticks.jsonl")
    old_tick = sql.SQL(
        "INSERT INTO {} (task, tick, created_at) VALUES ('old', 1, now() - interval '2 hours')"
    ).format(sql.Identifier(schema, "schedule_ticks"))
    pg_conn.execute(old_tick)
    with (
        role_with(pg_conn, f"svc_{schema}", service_grants, schema, database) as service,
        role_with(
            pg_conn, f"sch_{schema}", service_grants + scheduling_grants, schema, database
        ) as scheduler,
        role_with(pg_conn, f"pub_{schema}", publisher_grants, schema, database) as publisher,
    ):
        # A service that runs published jobs, keeping finished ones a second.
        runs = queue_config(make_conninfo(pg_dsn, user=service), schema, channel, keep_finished=1)
        # One that stores a scheduled task's runs in its durable queue, and runs them.
        schedules = queue_config(make_conninfo(pg_dsn, user=scheduler), schema, DURABLE_TICKS)
        schedules["producers"] = {
            "scheduled": {TASKS + "tick": {"schedule": 0.5, "args": [str(ticks.path)]}}
        }
        started = [start_service(config, wait=False) for config in (runs, schedules)]
        for running in started:
            running.wait_ready()
        queue = {"conninfo": make_conninfo(pg_dsn, user=publisher), "schema": schema}
        setup({"version": 1, "brokers": {"pg_queue": {**queue, "queues": [channel]}}})
        try:
            submitted = submit_task(TASKS + "record", args=[str(jobs.path), "ran"], queue=channel)
            assert get_job(submitted.uuid) is not None  # the publisher reads its job back
        finally:
            close_connections()
            reset()
        assert [record["args"] for record in jobs.wait_for(1)] == [["ran"]]
        ticks.wait_for(1)
        # Finished (acknowledged), then purged: its row and the old tick are gone.
        gone = sql.SQL(
            "SELECT NOT EXISTS (SELECT FROM {} WHERE uuid = %s)"
            " AND NOT EXISTS (SELECT FROM {} WHERE task = 'old')"
        ).format(sql.Identifier(schema, "jobs"), sql.Identifier(schema, "schedule_ticks"))
        wait_until(lambda: pg_conn.execute(gone, (submitted.uuid,)).fetchone() == (True,), 10)
        for running in started:
            assert running.stop() == 0
            assert "permission denied" not in running.log


def ctl(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatcher.server.ctl", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.timeout(60)
def test_the_documented_operator_grants_let_dispatcherctl_manage_the_queue(
    pg_dsn: str, pg_conn: Conn, tmp_path: Path
) -> None:
    """jobs, cancel-job, retry and purge, as a role with the operators' grants only."""
    *_, operator_grants = documented_grants()
    database = str(conninfo_to_dict(pg_dsn)["dbname"])
    with (
        own_schema(pg_dsn) as schema,
        role_with(pg_conn, f"ops_{schema}", operator_grants, schema, database) as operator,
    ):
        waiting = insert_job(pg_conn, schema, run_after=3600)
        failed = insert_job(pg_conn, schema, state="failed", last_error="boom")
        done = insert_job(pg_conn, schema, state="done", age=120)
        config = tmp_path / "dispatcher.yml"
        queue = {
            "conninfo": make_conninfo(pg_dsn, user=operator),
            "schema": schema,
            "queues": ["jobs"],
        }
        config.write_text(json.dumps({"version": 1, "brokers": {"pg_queue": queue}}))
        for command in (
            ("jobs",),
            ("cancel-job", "--uuid", waiting),
            ("retry", "--uuid", failed),
            ("purge", "--state", "done", "--older-than", "60"),
        ):
            run = ctl(config, *command)
            assert run.returncode == 0, (command, run.stderr)
        states = sql.SQL("SELECT uuid, state FROM {} ORDER BY uuid").format(
            sql.Identifier(schema, "jobs")
        )
        assert dict(pg_conn.execute(states).fetchall()) == {
            waiting: "cancelled",
            failed: "queued",
        }
        assert done not in dict(pg_conn.execute(states).fetchall())
