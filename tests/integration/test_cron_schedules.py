"""Cron schedules in a real service: runs, next runs in ``dispatcherctl producers``, once per tick."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from support.durable import jobs, migrated, queue_config
from support.queue_rows import unique_schema
from support.service import TASKS, TESTS, Evidence, ServiceProcess
from support.service_tasks import DURABLE_TICKS

Conn = psycopg.Connection[Any]
Start = Callable[..., ServiceProcess]

EVERY_SECOND = "* * * * * *"


def ctl(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatcher.server.ctl", *args, "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_cron_schedule_runs_and_dispatcherctl_shows_its_next_runs(
    start_service: Start, service_config: dict[str, Any], evidence: Evidence
) -> None:
    task = TASKS + "record"
    service_config["producers"] = {
        "scheduled": {
            task: {
                "schedule": EVERY_SECOND,
                "timezone": "Asia/Kolkata",
                "args": [str(evidence.path), "cron"],
            }
        }
    }
    service = start_service(service_config)
    records = evidence.wait_for(2, timeout=15)
    assert {tuple(record["args"]) for record in records} == {("cron",)}

    asked_at = time.time()
    done = ctl(service.config_path, "producers", "--json")
    assert done.returncode == 0, done.stderr
    [reply] = json.loads(done.stdout)
    schedule = reply["scheduled-producer"]["schedules"][task]
    assert (schedule["schedule"], schedule["timezone"]) == (EVERY_SECOND, "Asia/Kolkata")
    runs = [datetime.fromisoformat(run) for run in schedule["next_runs"]]
    assert len(runs) == 3
    assert all(run.utcoffset() == timedelta(hours=5, minutes=30) for run in runs)
    assert [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(runs)] == [
        1,
        1,
    ]
    assert asked_at - 2 < runs[0].timestamp() < time.time() + 2

    shown = ctl(service.config_path, "producers")
    assert shown.returncode == 0, shown.stderr
    assert "next_runs" in shown.stdout
    assert "+05:30" in shown.stdout


def test_a_cron_schedule_on_two_services_is_stored_once_per_tick(
    start_service: Start, pg_dsn: str, pg_conn: Conn, evidence: Evidence
) -> None:
    schema = migrated(pg_conn, unique_schema())
    config = queue_config(pg_dsn, schema, DURABLE_TICKS)
    config["producers"] = {
        "scheduled": {TASKS + "tick": {"schedule": EVERY_SECOND, "args": [str(evidence.path)]}}
    }
    began = time.time()
    services = [start_service(config, wait=False) for _ in range(2)]
    for service in services:
        service.wait_ready()
    evidence.wait_for(4, timeout=15)
    for service in services:
        assert service.stop() == 0
    ended = time.time()
    ticks = [
        tick
        for (tick,) in pg_conn.execute(
            sql.SQL("SELECT tick FROM {}.schedule_ticks ORDER BY tick").format(
                sql.Identifier(schema)
            )
        ).fetchall()
    ]
    # A cron run's tick is its time in seconds since the epoch: the same on every host.
    assert all(began < tick < ended + 1 for tick in ticks)
    assert len(jobs(pg_conn, schema)) == len(ticks) >= 4  # one job per tick, not two
    assert len(ticks) <= ended - began + 1


def test_without_croniter_a_cron_schedule_is_refused_in_one_line(tmp_path: Path) -> None:
    config_path = tmp_path / "dispatcher.yml"
    config = {
        "version": 1,
        "tasks": {"modules": ["support.service_tasks"]},
        "producers": {"scheduled": {TASKS + "record": {"schedule": "0 3 * * *"}}},
    }
    config_path.write_text(json.dumps(config))
    without_croniter = (
        "import sys; sys.modules['croniter'] = None; "
        "from dispatcher.server.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", without_croniter, "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(TESTS)},
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"dispatcher-standalone: {config_path}: producers.scheduled['{TASKS}record'].schedule: "
        'a cron schedule needs croniter: pip install "dispatcher-server[cron]"'
    )
