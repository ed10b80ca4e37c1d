"""The mixed soak (``hatch run bench-soak --mixed``): a long run of everything at once.

A service of ``--workers`` workers (recycled every ``--max-tasks-per-worker`` tasks, with
``--reload`` so that its task module can change under it, metrics on) serves a pg_notify
channel, a socket and a durable queue in a database of its own (created, migrated, and
dropped at the end). ``soak_load`` publishes a moderate mix to it (see there) while a
scheduled task runs every second. Every ``--sample-every`` seconds the soak samples what
could grow over weeks (``soak_probes``): memory, fds and threads of the main process, its
children's memory, its database connections, every number of ``status``, the size of
``/metrics``, the durable tables' rows. At the end it waits for the work to drain, stops
the service, accounts for every submission (``soak_ledger``) and prints the samples per
minute and what changed between the end of the warm-up and the end. Exit status 1 when a
submission did not run as it should, a side action failed, or the service died.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from durable import drop_database, fresh_database
from live_service import HERE, LiveService
from soak_ledger import Ledger, account
from soak_load import QUEUE, TASKS, MixedLoad
from soak_probes import database_numbers, metrics_numbers, process_numbers, status_numbers

from dispatcher.config import setup
from dispatcher.publish import close_connections

PER_MINUTE = (
    "main.rss", "main.uss", "main.fds", "main.threads", "fork_servers", "workers.rss",
    "pg.connections", "queued", "blocked", "delayed", "aio_tasks.len", "pg.jobs.queued",
    "pg.jobs.running", "pg.jobs.done", "pg.jobs.failed", "pg.jobs.cancelled",
    "pg.schedule_ticks", "pg.jobs_bytes", "pg.jobs_dead", "metrics.lines",
)  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def mixed_service(folder: Path, dsn: str, options: argparse.Namespace) -> LiveService:
    code = folder / "code"
    code.mkdir()
    shutil.copy(HERE / f"{TASKS}.py", code / f"{TASKS}.py")
    service = LiveService(folder, dsn, options.workers, log_level=options.log_level)
    service.python_path = [code]
    service.options = ["--reload"]
    service.config["brokers"]["pg_queue"] = {
        "conninfo": dsn,
        "queues": [QUEUE],
        "keep_finished": options.keep_finished,
        "retry_backoff": 0.5,
    }
    service.config["tasks"]["modules"] = [TASKS]
    service.config["service"]["pool"]["max_tasks_per_worker"] = options.max_tasks_per_worker
    service.config["service"]["metrics"] = {"host": "127.0.0.1", "port": free_port()}
    service.config["producers"] = {
        "scheduled": {
            f"{TASKS}.scheduled_tick": {"schedule": 1},
            f"{TASKS}.scheduled_job": {"schedule": 1},
        },
        "control": {},
    }
    return service


def migrate(folder: Path, dsn: str) -> None:
    path = folder / "migrate.yml"
    path.write_text(
        json.dumps({"version": 1, "brokers": {"pg_queue": {"conninfo": dsn, "queues": [QUEUE]}}})
    )
    command = [sys.executable, "-m", "dispatcher.server.ctl", "migrate", "--config", str(path)]
    subprocess.run(command, check=True, capture_output=True, timeout=120)


def run_mixed(options: argparse.Namespace, folder: Path) -> int:
    """Create the database, run the soak, drop the database."""
    name = f"soak_{uuid.uuid4().hex[:10]}"
    dsn = fresh_database(options.dsn, name)
    try:
        migrate(folder, dsn)
        (folder / "records" / "attempts").mkdir(parents=True)
        os.environ["SOAK_RECORDS"] = str(folder / "records")
        service = mixed_service(folder, dsn, options)
        setup(
            {
                "version": 1,
                "brokers": {
                    "pg_notify": {"conninfo": dsn, "channels": [service.channel]},
                    "pg_queue": {"conninfo": dsn, "queues": [QUEUE]},
                },
                "publish": {"default_control_broker": "pg_notify"},
            }
        )
        try:
            service.start()
            return soak(service, dsn, options, folder)
        finally:
            close_connections()
            service.stop()
    finally:
        drop_database(options.dsn, name)


def sample(service: LiveService, dsn: str, metrics_url: str) -> dict[str, float]:
    numbers = process_numbers(service.pid)
    status = service.control("status", timeout=30)
    numbers.update(status_numbers(status) if status else {"status.failed": 1})
    numbers.update(database_numbers(dsn, service.channel, "dispatcher"))
    numbers.update(metrics_numbers(metrics_url))
    return numbers


def soak(service: LiveService, dsn: str, options: argparse.Namespace, folder: Path) -> int:
    ledger = Ledger()
    load = MixedLoad(service, ledger, dsn, options.rate)
    metrics = service.config["service"]["metrics"]
    metrics_url = f"http://{metrics['host']}:{metrics['port']}/metrics"
    samples: list[tuple[float, dict[str, float]]] = []
    out = (folder / "samples.jsonl").open("w")
    reload_file = folder / "code" / f"{TASKS}.py"
    load.start_side_actions(folder / "dispatcher.yml", reload_file)
    started = time.monotonic()
    next_sample = started
    print(f"mixed soak: {options.duration:.0f} s, {options.rate:.0f} pg_notify tasks/s and more")
    with psycopg.connect(dsn, autocommit=True, application_name="soak-probe") as conn:
        row = conn.execute("SHOW autovacuum").fetchone()
    print(f"  the server's autovacuum is {row[0] if row else '?'} (off: the jobs table grows)")
    while (elapsed := time.monotonic() - started) < options.duration:
        load.tick(elapsed)
        if time.monotonic() >= next_sample:
            numbers = sample(service, dsn, metrics_url)
            samples.append((elapsed, numbers))
            out.write(json.dumps({"t": elapsed, **numbers}) + "\n")
            out.flush()
            next_sample += options.sample_every
            if not service.running():
                print("the service exited during the soak")
                return 1
            if len(samples) % max(1, int(60 / options.sample_every)) == 1:
                print(f"  {elapsed:5.0f} s " + line(numbers), flush=True)
        time.sleep(0.1)
    load.stopping.set()
    drained = drain(service, dsn)
    final = sample(service, dsn, metrics_url)
    samples.append((time.monotonic() - started, final))
    out.write(json.dumps({"t": samples[-1][0], **final}) + "\n")
    out.close()
    print(f"  final   {line(final)}  (drained: {drained})")
    status = service.stop()
    print(f"service stopped with exit status {status}; side actions {load.counts}")
    unexpected = load.unexpected_errors()
    lost = len(load.errors) - len(unexpected)
    print(f"  {lost} control commands over pg_notify lost near a termination (at most once)")
    for error in unexpected[:20]:
        print(f"  side action error: {error}")
    ledger.save(folder / "ledger.jsonl")
    problems = account(ledger, folder / "records" / "runs.log", stored_ticks(dsn))
    report_changes(samples, options.warm_up)
    if options.keep:
        print(f"kept: {folder}")
    return 1 if problems or unexpected or status != 0 else 0


def stored_ticks(dsn: str) -> dict[str, int]:
    """The ticks of the durable scheduled task recorded in the table (kept an hour)."""
    query = "SELECT count(*) FROM dispatcher.schedule_ticks WHERE task = %s"
    with psycopg.connect(dsn, autocommit=True, application_name="soak-probe") as conn:
        row = conn.execute(query, (f"{TASKS}.scheduled_job",)).fetchone()
    return {"scheduled_job": row[0] if row else -1}


def line(numbers: dict[str, float]) -> str:
    parts = []
    for key in PER_MINUTE:
        value = numbers.get(key)
        if value is None:
            continue
        shown = f"{value / 2**20:.1f}M" if key.endswith(("rss", "uss", "bytes")) else f"{value:g}"
        parts.append(f"{key}={shown}")
    return " ".join(parts)


def drain(service: LiveService, dsn: str, timeout: float = 120) -> bool:
    """Wait until nothing waits or runs, in the service and in the table."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = service.control("status", timeout=30) or {}
        numbers = database_numbers(dsn, service.channel, "dispatcher")
        held = sum(status.get(k, 1) or 0 for k in ("queued", "blocked", "delayed"))
        busy = any(w.get("current_task") for w in (status.get("workers") or {}).values()
                   if isinstance(w, dict))  # fmt: skip
        if (
            not held
            and not busy
            and not numbers.get("pg.jobs.queued")
            and not numbers.get("pg.jobs.running")
        ):
            time.sleep(2)  # the last outcomes reach their files
            return True
        time.sleep(1)
    return False


def report_changes(samples: list[tuple[float, dict[str, Any]]], warm_up: float) -> None:
    """Every sampled number that changed between the end of the warm-up and the end."""
    after = [numbers for elapsed, numbers in samples if elapsed >= warm_up]
    if len(after) < 2:
        return
    first, last = after[0], after[-1]
    print(f"changed after the warm-up ({warm_up:.0f} s), first -> last (highest):")
    for key in sorted(first.keys() | last.keys()):
        a, b = first.get(key), last.get(key)
        if a == b:
            continue
        top = max((numbers.get(key, 0) for numbers in after), default=0)
        print(f"  {key}: {a} -> {b} ({top})")
