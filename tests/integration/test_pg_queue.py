"""The durable pg_queue broker: services as subprocesses, jobs stored with SQL or the SDK.

Hostile and special rows (invalid messages, exact states) are made with SQL; ordinary
submissions go through the SDK, as an application's would. The rows are read back.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from dispatcher.config import Settings, load_settings, reset, setup
from dispatcher.publish import Job, batch, close_connections, get_job, submit_task
from dispatcher.schema import MAX_MESSAGE_BYTES, QUEUE_WAKEUP_CHANNEL, new_uuid, sign
from dispatcher.server.brokers.pg_queue.acks import Acknowledger
from dispatcher.server.brokers.pg_queue.broker import PgQueueBroker
from dispatcher.server.brokers.pg_queue.database import QueueDatabase
from dispatcher.server.brokers.pg_queue.leases import Leases
from dispatcher.server.brokers.pg_queue.migrations import latest_version, migrate
from dispatcher.server.brokers.pg_queue.outcomes import Ack, RetryPolicy
from dispatcher.server.brokers.pg_queue.sql import Statements
from dispatcher.server.producers import run_once_per_tick
from dispatcher.server.stats import ServiceStats
from dispatcher.server.timetables import ScheduleBoard
from support.durable import (
    enqueue,
    job_message,
    jobs,
    migrated,
    queue_config,
    wait_for_states,
)
from support.producer_clock import FakeClock
from support.queue_rows import insert_job, job_row, unique_schema
from support.service import TASKS, Evidence, ServiceProcess, wait_until
from support.service_tasks import DURABLE_TICKS

Conn = psycopg.Connection[Any]
Start = Callable[..., ServiceProcess]


@pytest.fixture
def schema(pg_conn: Conn) -> str:
    """A schema of this test's own, with the queue's tables."""
    return migrated(pg_conn, unique_schema())


@pytest.fixture
def sdk(pg_dsn: str, schema: str, channel: str) -> Iterator[Settings]:
    """This process publishes to the durable queue *channel* with the SDK."""
    queue = {"conninfo": pg_dsn, "schema": schema, "queues": [channel]}
    settings = setup({"version": 1, "brokers": {"pg_queue": queue}})
    yield settings
    close_connections()
    reset()


@pytest.fixture
def config(pg_dsn: str, schema: str, channel: str) -> dict[str, Any]:
    """A service config whose only broker is the durable queue named *channel*."""
    return queue_config(pg_dsn, schema, channel)


def ctl(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatcher.server.ctl", *args, "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_migrate_twice_is_a_no_op_and_print_shows_the_sql(
    tmp_path: Path, pg_dsn: str, pg_conn: Conn, channel: str
) -> None:
    schema = unique_schema()
    path = tmp_path / "dispatcher.yml"
    path.write_text(json.dumps(queue_config(pg_dsn, schema, channel)))
    printed = ctl(path, "migrate", "--print")
    assert printed.returncode == 0, printed.stderr
    assert f'CREATE TABLE "{schema}".jobs' in printed.stdout
    assert printed.stdout.count("BEGIN;") == 1
    assert count_tables(pg_conn, schema) == 0  # --print changes nothing

    first = ctl(path, "migrate")
    assert first.returncode == 0, first.stderr
    assert f'migrated the pg_queue tables in schema "{schema}"' in first.stdout
    latest = latest_version()
    assert f"from version 0 to {latest}" in first.stdout
    second = ctl(path, "migrate")
    assert second.returncode == 0, second.stderr
    assert f"are at version {latest}: nothing to do" in second.stdout
    versions = pg_conn.execute(
        sql.SQL("SELECT version FROM {}.migrations ORDER BY version").format(sql.Identifier(schema))
    ).fetchall()
    assert versions == [(v,) for v in range(1, latest + 1)]
    assert "nothing to do" in ctl(path, "migrate", "--print").stdout


def test_migrate_needs_no_right_to_create_schemas_when_the_schema_exists(
    tmp_path: Path, pg_dsn: str, pg_conn: Conn, channel: str
) -> None:
    # A DBA made the schema for the service's role, which may not create schemas itself.
    schema = unique_schema()
    role = f"owner_{schema}"
    names = {"role": sql.Identifier(role), "schema": sql.Identifier(schema)}
    pg_conn.execute(sql.SQL("CREATE ROLE {role} LOGIN").format(**names))
    try:
        pg_conn.execute(sql.SQL("CREATE SCHEMA {schema} AUTHORIZATION {role}").format(**names))
        path = tmp_path / "dispatcher.yml"
        conninfo = make_conninfo(pg_dsn, user=role)
        path.write_text(json.dumps(queue_config(conninfo, schema, channel)))
        for expected in ("from version 0 to", "nothing to do"):
            done = ctl(path, "migrate")
            assert done.returncode == 0, done.stderr
            assert expected in done.stdout
        assert count_tables(pg_conn, schema) > 0
    finally:
        pg_conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {schema} CASCADE").format(**names))
        pg_conn.execute(sql.SQL("DROP OWNED BY {role}").format(**names))
        pg_conn.execute(sql.SQL("DROP ROLE {role}").format(**names))


def count_tables(conn: Conn, schema: str) -> int:
    row = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s", (schema,)).fetchone()
    return int(row[0]) if row else 0


def test_a_service_refuses_an_unmigrated_database(
    start_service: Start, pg_dsn: str, channel: str
) -> None:
    schema = unique_schema()
    service = start_service(queue_config(pg_dsn, schema, channel), wait=False)
    assert service.wait() == 2
    assert service.log.strip().splitlines() == [
        f'dispatcher-standalone: the pg_queue tables in schema "{schema}" are missing: '
        f"run 'dispatcherctl migrate --config {service.config_path}'"
    ]


def test_a_job_runs_and_its_row_is_done_with_its_result(
    start_service: Start, config: dict[str, Any], sdk: Settings, channel: str, evidence: Evidence
) -> None:
    start_service(config)
    value = {"total": 3, "items": ["a", "é"]}
    submitted = submit_task(TASKS + "give_back", args=[str(evidence.path), value], queue=channel)
    job = wait_until(lambda: finished(submitted.uuid), timeout=20)
    assert (job.state, job.attempts, job.outcome, job.result) == ("done", 1, "ok", value)
    assert job.last_error is None
    assert len(evidence.records()) == 1


def test_a_result_whose_encoding_raises_is_not_kept_and_the_job_is_done_once(
    start_service: Start, config: dict[str, Any], sdk: Settings, channel: str, evidence: Evidence
) -> None:
    start_service(config)
    path = str(evidence.path)
    submitted = [
        submit_task(TASKS + "give_back_unencodable", args=[path, kind], queue=channel)
        for kind in ("dict", "list", "exit")
    ]
    for submission in submitted:
        job = wait_until(lambda s=submission: finished(s.uuid), timeout=20)
        assert (job.state, job.attempts, job.outcome, job.result) == ("done", 1, "ok", None)
        assert job.last_error is not None
        assert job.last_error.startswith("result not kept: "), job.last_error
    assert len(evidence.records()) == 3  # each ran once: never retried


HOSTILE_TEXTS = [
    "quotes \" and ' and \\ backslashes",
    "lines\nand\ttabs\r and \x01\x1f controls",
    "é ü 日本 🚀 \u2028\u2029",
    'a literal \\u0000 escape, and {"json": [1]}',
]


def test_results_and_errors_keep_every_character_through_the_acknowledgement(
    start_service: Start, config: dict[str, Any], sdk: Settings, channel: str, evidence: Evidence
) -> None:
    start_service(config)
    value = {"texts": HOSTILE_TEXTS, "nested": {"k\n": [None, 1.5, -0.0, 2**53]}}
    kept = submit_task(TASKS + "give_back", args=[str(evidence.path), value], queue=channel)
    text = " | ".join([*HOSTILE_TEXTS, "NUL \x00 and lone \udc80 surrogate"])
    failed = submit_task(
        TASKS + "fail_saying", args=[str(evidence.path), text], queue=channel, max_attempts=1
    )
    job = wait_until(lambda: finished(kept.uuid), timeout=20)
    assert (job.state, job.result) == ("done", value)
    job = wait_until(lambda: finished(failed.uuid), timeout=20)
    assert job.state == "failed"
    assert job.last_error is not None
    assert " | ".join(HOSTILE_TEXTS) in job.last_error
    assert "NUL \\x00 and lone \\udc80 surrogate" in job.last_error  # escaped, not lost


def test_a_huge_error_keeps_its_type_its_traceback_and_its_end(
    start_service: Start, config: dict[str, Any], sdk: Settings, channel: str, evidence: Evidence
) -> None:
    service = start_service(config)
    text = "bad input: " + "x" * 40_000 + " END"
    failed = submit_task(
        TASKS + "fail_saying", args=[str(evidence.path), text], queue=channel, max_attempts=1
    )
    job = wait_until(lambda: finished(failed.uuid), timeout=20)
    error = job.last_error
    assert error is not None
    assert error.startswith("ValueError: bad input: xxx"), error[:100]
    assert "Traceback (most recent call last):" in error
    assert "in fail_saying\n    raise ValueError(text)\nValueError: bad input: xxx" in error
    assert re.search(r"\n\[\.\.\. \d+ characters left out \.\.\.\]\n", error)
    assert error.endswith(" END")
    assert len(error) <= 32 * 1024
    # The log: the error's line, then the traceback from its first line.
    [line] = service.wait_for_log(re.escape(f"(uuid {failed.uuid}) failed: ValueError"))
    lines = service.log.splitlines()
    after = lines[lines.index(line) + 1]
    assert after == "  | Traceback (most recent call last):"
    # dispatcherctl jobs: the error's type and start.
    listed = ctl(service.config_path, "jobs").stdout.splitlines()
    [row] = [row for row in listed if failed.uuid in row]
    assert "ValueError: bad input: xxx" in row, row


def test_rows_need_no_signature_where_notify_messages_do(
    start_service: Start, config: dict[str, Any], sdk: Settings, channel: str, evidence: Evidence
) -> None:
    # The table's INSERT privilege guards rows; require_signed guards what anyone may NOTIFY.
    config["security"] = {
        "keys": [{"id": "k1", "secret": "a-long-random-secret"}],
        "require_signed": ["task", "control"],
    }
    start_service(config)
    submitted = submit_task(TASKS + "give_back", args=[str(evidence.path), 7], queue=channel)
    job = wait_until(lambda: finished(submitted.uuid), timeout=20)
    assert (job.state, job.outcome, job.result) == ("done", "ok", 7)


def finished(uuid: str) -> Job | None:
    job = get_job(uuid)
    return job if job is not None and job.finished else None


def test_a_failing_task_is_retried_with_growing_gaps_then_failed(
    start_service: Start,
    pg_dsn: str,
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    service = start_service(queue_config(pg_dsn, schema, channel, retry_backoff=0.5))
    uuids = enqueue(pg_conn, schema, channel, [job_message("fail", evidence.path)], max_attempts=3)
    (row,) = wait_for_states(pg_conn, schema, uuids, {"failed"})
    assert (row["attempts"], row["outcome"]) == (3, "error")
    job = f"{TASKS}fail (uuid {uuids[0]})"
    service.wait_for_log(re.escape(f"{job}: attempt 3 of 3 ended in error; no attempt left"))
    assert f"{job}: attempt 1 of 3 ended in error; retried in 0.5 s" in service.log
    assert f"{job}: attempt 2 of 3 ended in error; retried in 1.0 s" in service.log
    assert row["last_error"].startswith("ValueError: this task always fails\nTraceback")
    times = [record["time"] for record in evidence.records()]
    assert len(times) == 3
    first_gap, second_gap = times[1] - times[0], times[2] - times[1]
    assert first_gap >= 0.5
    assert second_gap >= 1.0
    assert second_gap > first_gap


def test_arguments_that_do_not_fit_the_task_fail_it_at_once_and_its_own_type_errors_retry(
    start_service: Start,
    pg_dsn: str,
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    """No attempt can call a task with arguments its signature refuses: one is enough."""
    start_service(queue_config(pg_dsn, schema, channel, retry_backoff=0.1))
    messages = {
        "too many": job_message("fail", evidence.path, "extra"),
        "bound": job_message("fail", evidence.path, bind=True),  # a task that is not bound
        "keyword": job_message("fail", evidence.path, kwargs={"colour": "red"}),
        "its own": job_message("fail_with_type_error", evidence.path),
    }
    uuids = enqueue(pg_conn, schema, channel, list(messages.values()), max_attempts=3)
    rows = {row["uuid"]: row for row in wait_for_states(pg_conn, schema, uuids, {"failed"})}
    ended = {case: rows[m["uuid"]] for case, m in messages.items()}
    for case in ("too many", "bound", "keyword"):
        row = ended[case]
        assert (row["attempts"], row["outcome"]) == (1, "error"), case
        assert row["last_error"].startswith("TypeError: fail() "), case
        assert "its arguments do not fit it; not retried" in row["last_error"], case
    assert (ended["its own"]["attempts"], ended["its own"]["outcome"]) == (3, "error")
    assert "not retried" not in ended["its own"]["last_error"]
    assert len(evidence.records()) == 3  # only the task's own error ran its code


def test_jobs_stored_while_no_service_runs_all_run_once_one_starts(
    start_service: Start,
    config: dict[str, Any],
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    uuids = enqueue(
        pg_conn, schema, channel, [job_message("record", evidence.path, n) for n in range(20)]
    )
    start_service(config)
    wait_for_states(pg_conn, schema, uuids, {"done"})
    assert sorted(record["args"][0] for record in evidence.records()) == list(range(20))


def test_a_job_whose_service_was_killed_runs_again_elsewhere_after_the_lease(
    start_service: Start,
    config: dict[str, Any],
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    first = start_service(config)
    uuids = enqueue(
        pg_conn, schema, channel, [job_message("sleep_then_record", evidence.path, 1.5)]
    )
    evidence.wait_for(1)
    first.signal(signal.SIGKILL)
    first.wait()
    second = start_service(config)
    (row,) = wait_for_states(pg_conn, schema, uuids, {"done"})
    assert (row["attempts"], row["outcome"]) == (2, "ok")
    assert row["node_id"].endswith(f"-{second.pid}")
    events = [(record["event"], record["pid"]) for record in evidence.records()]
    assert [event for event, _ in events] == ["start", "start", "end"]
    assert events[0][1] != events[1][1] == events[2][1]


def test_a_job_taken_back_while_its_service_runs_it_is_not_started_twice_by_that_service(
    start_service: Start,
    config: dict[str, Any],
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    """Its lease ran out (a partition) and another service's sweep put the row back; the
    same service claims it again while it still runs it: the claim is adopted (the running
    copy's outcome settles it), no second copy starts."""
    start_service(config)
    uuids = enqueue(
        pg_conn, schema, channel, [job_message("sleep_then_record", evidence.path, 1.5)]
    )
    evidence.wait_for(1)
    table = sql.Identifier(schema, "jobs")
    taken_back = pg_conn.execute(  # what a sweep does to a row whose lease ran out
        sql.SQL(
            "UPDATE {} SET state = 'queued', run_after = now(), lease_until = NULL,"
            " outcome = 'worker_lost' WHERE uuid = %s AND state = 'running' RETURNING claims"
        ).format(table),
        uuids,
    ).fetchall()
    assert taken_back == [(1,)]
    pg_conn.execute("SELECT pg_notify(%s, %s)", (QUEUE_WAKEUP_CHANNEL, channel))
    wait_until(lambda: (job_row(pg_conn, schema, uuids[0]) or {})["claims"] == 2, 10)  # again
    wait_for_states(pg_conn, schema, uuids, {"done"})
    row = job_row(pg_conn, schema, uuids[0])
    assert row is not None
    assert (row["outcome"], row["claims"], row["attempts"]) == ("ok", 2, 2)
    events = [record["event"] for record in evidence.records()]
    assert events == ["start", "end"]


def test_serial_jobs_never_overlap_across_three_services(
    start_service: Start,
    config: dict[str, Any],
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    for _ in range(3):
        start_service(config)
    same = [
        job_message("sleep_then_record", evidence.path, 0.2, "same", on_duplicate="serial")
        for _ in range(6)
    ]
    rows = wait_for_states(pg_conn, schema, enqueue(pg_conn, schema, channel, same), {"done"})
    assert all(row["attempts"] == 1 for row in rows)
    events = sorted(evidence.records(), key=lambda record: record["time"])
    assert [record["event"] for record in events] == ["start", "end"] * 6


def test_identical_serial_jobs_at_the_head_of_a_queue_do_not_hold_up_the_others(
    start_service: Start,
    pg_dsn: str,
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    # More identical serial jobs than a claim reads, then others: a claim that reads only
    # twins claims one of them, and the queue must not be taken for drained (a long poll
    # interval would then hold every other job up).
    twins = [
        job_message("sleep_then_record", evidence.path, 5, "twin", on_duplicate="serial")
        for _ in range(10)
    ]
    others = [job_message("record", evidence.path, n) for n in range(3)]
    start_service(queue_config(pg_dsn, schema, channel, poll_interval=60, prefetch=0))
    # A first job, woken by its NOTIFY: the service now waits for the next wake-up.
    first = enqueue(pg_conn, schema, channel, [job_message("record", evidence.path, -1)])
    wait_for_states(pg_conn, schema, first, {"done"}, timeout=20)
    uuids = enqueue(pg_conn, schema, channel, twins + others)[len(twins) :]
    wait_for_states(pg_conn, schema, uuids, {"done"}, timeout=20)
    assert sorted(r["args"][0] for r in evidence.records() if r.get("args")) == [-1, 0, 1, 2]


def test_identical_serial_jobs_run_one_after_another_without_waiting_for_a_poll(
    start_service: Start,
    pg_dsn: str,
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    start_service(queue_config(pg_dsn, schema, channel, poll_interval=60, prefetch=0))
    first = enqueue(pg_conn, schema, channel, [job_message("record", evidence.path, 0)])
    wait_for_states(pg_conn, schema, first, {"done"}, timeout=20)  # the service waits now
    twins = [
        job_message("sleep_then_record", evidence.path, 0.2, "twin", on_duplicate="serial")
        for _ in range(3)
    ]
    # Each twin ends, and the next starts at once: not a poll interval (60 s) later.
    wait_for_states(pg_conn, schema, enqueue(pg_conn, schema, channel, twins), {"done"}, 20)


def test_delayed_jobs_start_when_ready_not_at_the_next_poll(
    start_service: Start,
    pg_dsn: str,
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    start_service(queue_config(pg_dsn, schema, channel, poll_interval=60, prefetch=0))
    delayed = [job_message("record", evidence.path, delay, delay=delay) for delay in (0.3, 0.9)]
    uuids = enqueue(pg_conn, schema, channel, delayed)
    # Each starts at its run_after: not at a NOTIFY (there is none then), nor a poll (60 s).
    rows = wait_for_states(pg_conn, schema, uuids, {"done"}, timeout=20)
    late = [(row["started_at"] - row["run_after"]).total_seconds() for row in rows]
    assert all(0 <= seconds < 0.5 for seconds in late), late


def test_a_parked_job_and_a_retried_cancelled_delayed_one_leave_the_others_running(
    start_service: Start,
    pg_dsn: str,
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    """A job parked for ever (run_after = infinity) failed every claim of its queues; a delayed
    job cancelled while it waited, then retried, was rejected for its delay."""
    service = start_service(queue_config(pg_dsn, schema, channel))
    parked, delayed = enqueue(
        pg_conn,
        schema,
        channel,
        [
            job_message("record", evidence.path, "parked", delay=600),
            job_message("record", evidence.path, "delayed", delay=600),
        ],
    )
    pg_conn.execute(
        sql.SQL("UPDATE {}.jobs SET run_after = 'infinity' WHERE uuid = %s").format(
            sql.Identifier(schema)
        ),
        (parked,),
    )
    [ready] = enqueue(pg_conn, schema, channel, [job_message("record", evidence.path, "ready")])
    wait_for_states(pg_conn, schema, [ready], {"done"})
    config = str(service.config_path)
    for command in ("cancel-job", "retry"):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "dispatcher.server.ctl",
                command,
                "--uuid",
                delayed,
                "--config",
                config,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
    [row] = wait_for_states(pg_conn, schema, [delayed], {"done", "failed"})
    assert (row["state"], row["outcome"]) == ("done", "ok"), row["last_error"]
    assert [r["args"][0] for r in evidence.records()] == ["ready", "delayed"]
    state = sql.SQL("SELECT state FROM {}.jobs WHERE uuid = %s").format(sql.Identifier(schema))
    assert pg_conn.execute(state, (parked,)).fetchall() == [("queued",)]
    assert "cannot claim" not in service.log


def test_a_schedule_on_three_services_runs_once_per_tick(
    start_service: Start, pg_dsn: str, pg_conn: Conn, schema: str, evidence: Evidence
) -> None:
    config = queue_config(pg_dsn, schema, DURABLE_TICKS)
    config["producers"] = {
        "scheduled": {TASKS + "tick": {"schedule": 0.5, "args": [str(evidence.path)]}}
    }
    began = time.time()
    services = [start_service(config, wait=False) for _ in range(3)]
    for service in services:
        service.wait_ready()
    evidence.wait_for(6, timeout=15)
    for service in services:
        assert service.stop() == 0
    elapsed = time.time() - began
    ticks = pg_conn.execute(
        sql.SQL("SELECT tick FROM {}.schedule_ticks ORDER BY tick").format(sql.Identifier(schema))
    ).fetchall()
    rows = jobs(pg_conn, schema)
    # Each tick is recorded under its time and (for older releases) its multiple's number.
    assert 2 * len(rows) == len(ticks) >= 12
    assert len(rows) <= elapsed / 0.5 + 1  # not three per tick
    assert len(evidence.records()) == sum(row["state"] == "done" for row in rows)


def offer_tick(conn: Conn, schema: str, ticks: list[int]) -> bool:
    """Run the services' tick statement as they do; return whether it stored the job."""
    params = {
        "task": TASKS + "tick",
        "ticks": ticks,
        "uuid": new_uuid(),
        "queue": DURABLE_TICKS,
        "message": json.dumps({"task": TASKS + "tick", "args": [], "kwargs": {}}),
        "max_attempts": 1,
        "delay": 0.0,
        "on_duplicate": None,
        "dup_key": None,
        "channel": QUEUE_WAKEUP_CHANNEL,
    }
    return bool(conn.execute(Statements.for_schema(schema).submit_tick, params).fetchall())


class NoCapacity:
    """The service's capacity, for a broker that only stores ticks here."""

    def free(self, ahead: int = 0) -> int:
        return 0

    async def wait_free(self, ahead: int = 0) -> int:
        await anyio.sleep_forever()
        return 0

    def busy_for(self) -> float:
        return 0.0


def test_a_tick_is_stored_whatever_the_databases_clock_says(
    pg_dsn: str, pg_conn: Conn, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database refused a tick once its own clock reached the next tick's time, as the
    service's clock put it: with the database's clock ahead by a period, every tick of the
    schedule was refused (and not offered again)."""
    section = load_settings(queue_config(pg_dsn, schema, DURABLE_TICKS)).brokers.pg_queue
    assert section is not None
    broker = PgQueueBroker(
        section,
        "clock-apart",
        ServiceStats(),
        NoCapacity(),
        listen_name="dispatcher-queue:clock-apart",
        work_name="dispatcher-queue:clock-apart",
        config_file=None,
    )
    task = TASKS + "tick"
    config = load_settings({"version": 1, "producers": {"scheduled": {task: {"schedule": 10}}}})
    clock = FakeClock(monkeypatch, time.time() - 3600)  # this host's clock an hour behind
    stored: list[bool] = []
    done = anyio.Event()

    class Recording:
        queues = broker.queues

        async def submit_tick(self, *args: Any, **options: Any) -> bool:
            stored.append(await broker.submit_tick(*args, **options))
            done.set()
            return stored[-1]

    async def offer_one() -> None:
        entry, board = config.producers.scheduled[task], ScheduleBoard(config)
        try:
            with anyio.fail_after(10):
                async with anyio.create_task_group() as group:
                    group.start_soon(
                        run_once_per_tick, Recording(), DURABLE_TICKS, task, entry, board
                    )
                    await done.wait()
                    group.cancel_scope.cancel()
        finally:
            await broker.close()

    anyio.run(offer_one)
    assert stored == [True]
    assert [row["state"] for row in jobs(pg_conn, schema)] == ["queued"]
    assert clock.now < time.time()


def test_services_of_two_releases_store_an_interval_tick_once(pg_conn: Conn, schema: str) -> None:
    """Older releases number an interval's tick by its multiple (one number), newer ones
    by its time, recording the multiple's number too: whichever comes first, one job."""
    multiple, second = 360_000_000, 1_800_000_000  # period 5, due at 1 800 000 000
    assert offer_tick(pg_conn, schema, [multiple])  # an old release
    assert not offer_tick(pg_conn, schema, [second, multiple])
    assert offer_tick(pg_conn, schema, [second + 5, multiple + 1])
    assert not offer_tick(pg_conn, schema, [multiple + 1])  # old, later
    assert len(jobs(pg_conn, schema)) == 2


def test_a_rolling_change_of_the_period_runs_each_shared_tick_once(
    start_service: Start, pg_dsn: str, pg_conn: Conn, schema: str, evidence: Evidence
) -> None:
    """One service with period 1, one with period 2 (a rolling change of the config): at
    every even second both offer the same run, and it used to be stored twice."""
    services = []
    for period in (1, 2):
        config = queue_config(pg_dsn, schema, DURABLE_TICKS)
        config["producers"] = {
            "scheduled": {TASKS + "tick": {"schedule": period, "args": [str(evidence.path)]}}
        }
        services.append(start_service(config, wait=False))
    for service in services:
        service.wait_ready()
    evidence.wait_for(6, timeout=15)
    for service in services:
        assert service.stop() == 0
    created = [row["created_at"].timestamp() for row in jobs(pg_conn, schema)]
    seconds = [round(moment) for moment in created]
    assert len(seconds) == len(set(seconds)), sorted(seconds)  # one job per second at most


def test_a_scheduled_job_has_the_max_attempts_of_its_task(
    start_service: Start, pg_dsn: str, pg_conn: Conn, schema: str, evidence: Evidence
) -> None:
    config = queue_config(pg_dsn, schema, DURABLE_TICKS)
    config["producers"] = {
        "scheduled": {TASKS + "failing_tick": {"schedule": 0.5, "args": [str(evidence.path)]}}
    }
    service = start_service(config)

    def failed() -> list[dict[str, Any]]:
        return [row for row in jobs(pg_conn, schema) if row["state"] == "failed"]

    wait_until(lambda: len(failed()) >= 2, timeout=15)
    assert service.stop() == 0
    rows = jobs(pg_conn, schema)
    assert {(row["attempts"], row["max_attempts"]) for row in failed()} == {(1, 1)}
    assert all(row["state"] in ("failed", "running", "queued") for row in rows)
    assert not any(row["state"] == "queued" and row["attempts"] > 0 for row in rows)  # no retry


def test_a_delayed_job_survives_a_service_restart(
    start_service: Start,
    config: dict[str, Any],
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    first = start_service(config)
    stored_at = time.time()
    uuids = enqueue(
        pg_conn, schema, channel, [job_message("record", evidence.path, "late", delay=2)]
    )
    assert first.stop() == 0
    start_service(config)
    (row,) = wait_for_states(pg_conn, schema, uuids, {"done"})
    (record,) = evidence.records()
    assert record["time"] >= stored_at + 2
    assert row["attempts"] == 1


def test_invalid_rows_go_to_failed_with_the_reason_and_the_consumer_goes_on(
    start_service: Start,
    config: dict[str, Any],
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    start_service(config)
    hostile = [
        "not json",
        json.dumps({"task": "nobody.registered_this", "uuid": "u-unknown"}),
        json.dumps({"task": 5}),
        json.dumps({"task": TASKS + "record", "pad": "x" * MAX_MESSAGE_BYTES}),
        json.dumps(
            {
                "__dispatcherd_chunk__": "v1",
                "message_id": "m",
                "index": 0,
                "total": 2,
                "payload": "{",
            }
        ),
    ]
    bad = enqueue(pg_conn, schema, channel, hostile)
    good = enqueue(pg_conn, schema, channel, [job_message("record", evidence.path, "after")])
    (_done,) = wait_for_states(pg_conn, schema, good, {"done"})
    rows = wait_for_states(pg_conn, schema, bad, {"failed"})
    reasons = [row["last_error"] for row in rows]
    assert all(row["outcome"] == "rejected" and row["attempts"] == 1 for row in rows)
    assert reasons[0].startswith("not JSON")
    assert "'nobody.registered_this' is not registered" in reasons[1]
    assert "task" in reasons[2]
    assert reasons[3] == f"the message is {len(hostile[3])} bytes, more than {MAX_MESSAGE_BYTES}"
    assert "whole messages" in reasons[4]
    assert [record["args"] for record in evidence.records()] == [["after"]]


def test_a_row_whose_claim_counter_is_at_the_integer_limit_runs_and_stops_nothing(
    start_service: Start,
    config: dict[str, Any],
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    (at_limit,) = enqueue(pg_conn, schema, channel, [job_message("record", evidence.path, 1)])
    pg_conn.execute(
        sql.SQL("UPDATE {} SET claims = 2147483647 WHERE uuid = %s").format(
            sql.Identifier(schema, "jobs")
        ),
        (at_limit,),
    )
    others = enqueue(pg_conn, schema, channel, [job_message("record", evidence.path, 2)])
    start_service(config)
    rows = wait_for_states(pg_conn, schema, [at_limit, *others], {"done"})
    assert [row["attempts"] for row in rows] == [1, 1]
    assert sorted(record["args"][0] for record in evidence.records()) == [1, 2]


def test_a_row_is_run_as_the_uuid_and_task_it_was_stored_under(
    start_service: Start,
    config: dict[str, Any],
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    # Listings, get_job() and a cancel by uuid go by the row's columns: a row written by
    # hand whose message says otherwise fails, and a message without a uuid takes the row's.
    insert = sql.SQL(
        "INSERT INTO {} (uuid, queue, task, message, max_attempts, run_after)"
        " VALUES (%s, %s, %s, %s, 3, now())"
    ).format(sql.Identifier(schema, "jobs"))
    path, bound = str(evidence.path), TASKS + "follow_up"
    stored = {
        "row-task": (
            TASKS + "noop",
            {"task": bound, "uuid": "row-task", "args": [path, "alive", {}]},
        ),
        "row-uuid": (bound, {"task": bound, "uuid": "other", "args": [path, "alive", {}]}),
        "row-none": (bound, {"task": bound, "args": [path, "alive", {}]}),
        "row-unknown": ("myapp.nope", {"task": "myapp.nope", "uuid": "message-uuid"}),
    }
    for uuid, (task, message) in stored.items():
        pg_conn.execute(insert, (uuid, channel, task, json.dumps(message)))
    service = start_service(config)
    rows = wait_for_states(pg_conn, schema, list(stored), {"done", "failed"})
    assert [(row["uuid"], row["state"], row["outcome"]) for row in rows] == [
        ("row-task", "failed", "rejected"),
        ("row-uuid", "failed", "rejected"),
        ("row-none", "done", "ok"),
        ("row-unknown", "failed", "rejected"),
    ]
    # Logged under the row's uuid, which listings show, whatever the message says.
    service.wait_for_log(
        rf"rejected message in queue {channel} \(uuid row-unknown\): task 'myapp.nope' is not "
        "registered"
    )
    assert rows[0]["last_error"] == (
        f"task: the message's {bound!r} is not the {TASKS + 'noop'!r} its row was stored under "
        "(the row's task column)"
    )
    assert rows[1]["last_error"] == (
        "uuid: the message's 'other' is not the 'row-uuid' its row was stored under (the "
        "row's uuid column)"
    )
    assert [record["uuid"] for record in evidence.records()] == ["row-none"]


def test_a_row_whose_columns_miss_its_messages_delay_or_on_duplicate_fails_saying_so(
    start_service: Start,
    config: dict[str, Any],
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    # Rows as a client leaving run_after, on_duplicate and dup_key to their defaults stores
    # them: the delay would be skipped and the twins not kept apart, silently. Each row is
    # ready now: its created_at is its delay (the third value) before its run_after.
    insert = sql.SQL(
        "INSERT INTO {} (uuid, queue, task, message, max_attempts, created_at, run_after,"
        " on_duplicate, dup_key) VALUES (%s, %s, %s, %s, 3,"
        " statement_timestamp() - make_interval(secs => %s), statement_timestamp(), %s, %s)"
    ).format(sql.Identifier(schema, "jobs"))
    record, path = TASKS + "record", str(evidence.path)
    stored = {
        "no-delay": ({"delay": 20}, 0, None),
        "short-delay": ({"delay": 20}, 5, None),
        "before-created": ({"delay": 20}, -3, None),
        "no-mode": ({"on_duplicate": "discard"}, 0, None),
        "other-mode": ({"on_duplicate": "serial"}, 0, "discard"),
        "mode-not-asked": ({}, 0, "discard"),
        "agreeing": ({"delay": 0.0000014, "on_duplicate": "parallel"}, 0.000001, None),
        "control": ({"control": "alive"}, 0, None),
    }
    for uuid, (options, delay, mode) in stored.items():
        message: dict[str, Any] = {"task": record, "uuid": uuid, "args": [path, uuid], **options}
        if "control" in options:
            message = {"control": "alive"}
        key = uuid if mode else None
        pg_conn.execute(insert, (uuid, channel, record, json.dumps(message), delay, mode, key))
    start_service(config)
    rows = wait_for_states(pg_conn, schema, list(stored), {"done", "failed"})
    why = "store run_after = created_at + delay (the row may fall short by up to 1 s, for clocks"
    assert {row["uuid"]: (row["state"], row["last_error"]) for row in rows} == {
        "no-delay": (
            "failed",
            "delay: the message asks for a delay of 20 seconds, but its row's run_after is only"
            f" 0 seconds after its created_at: {why} that differ)",
        ),
        "short-delay": (
            "failed",
            "delay: the message asks for a delay of 20 seconds, but its row's run_after is only"
            f" 5 seconds after its created_at: {why} that differ)",
        ),
        "before-created": (
            "failed",
            "delay: the message asks for a delay of 20 seconds, but its row's run_after is 3"
            f" seconds before its created_at: {why} that differ)",
        ),
        "no-mode": (
            "failed",
            "on_duplicate: the message's 'discard' is not the row's 'parallel' (the row's"
            " on_duplicate and dup_key columns enforce it: NULL for parallel)",
        ),
        "other-mode": (
            "failed",
            "on_duplicate: the message's 'serial' is not the row's 'discard' (the row's"
            " on_duplicate and dup_key columns enforce it: NULL for parallel)",
        ),
        "mode-not-asked": (
            "failed",
            "on_duplicate: the message's 'parallel' is not the row's 'discard' (the row's"
            " on_duplicate and dup_key columns enforce it: NULL for parallel)",
        ),
        "agreeing": ("done", None),
        "control": (
            "failed",
            f"task: a control message is stored under {record!r}, where its row's task column"
            " must be 'control:alive'",
        ),
    }
    assert [r["args"] for r in evidence.records()] == [["agreeing"]]


def test_a_row_stamped_by_clocks_that_differ_runs_when_its_message_asks_no_more_delay(
    start_service: Start,
    config: dict[str, Any],
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    # created_at and run_after from different clocks: clock_timestamp() (as
    # dispatcher_enqueue() stamps created_at) with run_after left to its default now(), the
    # start of the transaction; an application's clock a second ahead of the database's;
    # a client computing run_after on a clock half a second behind the one of created_at.
    jobs = sql.Identifier(schema, "jobs")
    record, path = TASKS + "record", str(evidence.path)

    def message(uuid: str, **options: Any) -> str:
        return json.dumps({"task": record, "uuid": uuid, "args": [path, uuid], **options})

    with pg_conn.transaction():
        pg_conn.execute("SELECT pg_sleep(0.01)")  # clock_timestamp() moves past now()
        pg_conn.execute(
            sql.SQL(
                "INSERT INTO {} (uuid, queue, task, message, max_attempts, created_at)"
                " VALUES (%s, %s, %s, %s, 3, clock_timestamp()),"
                " (%s, %s, %s, %s, 3, clock_timestamp())"
            ).format(jobs),
            (
                *("db-clocks", channel, record, message("db-clocks")),
                *("db-clocks-0", channel, record, message("db-clocks-0", delay=0)),
            ),
        )
    insert = sql.SQL(
        "INSERT INTO {} (uuid, queue, task, message, max_attempts, created_at, run_after)"
        " VALUES (%s, %s, %s, %s, 3, now() + make_interval(secs => %s),"
        " now() + make_interval(secs => %s))"
    ).format(jobs)
    for uuid, options, created, run_after in (
        ("app-ahead", {}, 1, 0),
        ("app-ahead-0", {"delay": 0}, 1, 0),
        ("delay-skewed", {"delay": 2}, 0, 1.5),
    ):
        pg_conn.execute(
            insert, (uuid, channel, record, message(uuid, **options), created, run_after)
        )
    uuids = ["db-clocks", "db-clocks-0", "app-ahead", "app-ahead-0", "delay-skewed"]
    start_service(config)
    rows = wait_for_states(pg_conn, schema, uuids, {"done", "failed"})
    assert {row["uuid"]: (row["state"], row["last_error"]) for row in rows} == {
        uuid: ("done", None) for uuid in uuids
    }
    assert sorted(r["args"][0] for r in evidence.records()) == sorted(uuids)


def test_a_stored_control_message_ends_failed_when_its_reply_is_an_error(
    start_service: Start, config: dict[str, Any], pg_conn: Conn, schema: str, channel: str
) -> None:
    start_service(config)
    stored: list[dict[str, Any] | str] = [
        {"control": "alive"},
        {"control": "no_such_command"},
        {"control": "set_log_level", "control_data": {"level": []}},
    ]
    uuids = enqueue(pg_conn, schema, channel, stored)
    rows = wait_for_states(pg_conn, schema, uuids, {"done", "failed"})
    ended = [(row["state"], row["outcome"]) for row in rows]
    assert ended == [("done", "ok"), ("failed", "rejected"), ("failed", "rejected")]
    assert "unknown command 'no_such_command'" in rows[1]["last_error"]
    assert "invalid control_data for set_log_level" in rows[2]["last_error"]


def test_a_control_row_must_be_signed_where_control_messages_must_be(
    start_service: Start,
    config: dict[str, Any],
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    # INSERT on the jobs table lets a role submit tasks, not run control commands, once
    # require_signed lists control: a hand-written control:run row is refused and runs nothing.
    key = {"id": "k1", "secret": "a-long-random-secret"}
    config["security"] = {"keys": [key], "require_signed": ["control"]}
    config["producers"] = {"control": {}}
    start_service(config)

    def run(label: str) -> dict[str, Any]:
        task = {"task": TASKS + "record", "args": [str(evidence.path), label]}
        return {"control": "run", "control_data": task}

    signed = sign(json.dumps(run("signed")), key["id"], key["secret"].encode(), time.time())
    [unsigned_uuid, signed_uuid] = enqueue(pg_conn, schema, channel, [run("unsigned"), signed])
    # The same signed row again (a role that may read the table and insert copies it).
    [copy_uuid] = enqueue(pg_conn, schema, channel, [signed])
    uuids = [unsigned_uuid, signed_uuid, copy_uuid]
    rows = wait_for_states(pg_conn, schema, uuids, {"done", "failed"})
    assert [(row["state"], row["outcome"]) for row in rows] == [
        ("failed", "rejected"),
        ("done", "ok"),
        ("failed", "rejected"),
    ]
    assert rows[0]["last_error"] == (
        "unsigned control message over pg_queue: this service requires control messages to "
        "be signed (security.require_signed), stored as rows too: INSERT on the jobs table "
        "does not grant control commands"
    )
    assert rows[2]["last_error"].startswith("replayed message: signature ")
    assert [r["args"] for r in evidence.wait_for(1)] == [["signed"]]
    # Task rows still need no signature: the table's INSERT privilege guards them.
    [task_uuid] = enqueue(pg_conn, schema, channel, [job_message("record", evidence.path, "t")])
    wait_for_states(pg_conn, schema, [task_uuid], {"done"})
    assert [r["args"] for r in evidence.records()] == [["signed"], ["t"]]


def test_large_messages_are_claimed_a_few_megabytes_at_a_time_and_all_run(
    start_service: Start, pg_dsn: str, pg_conn: Conn, schema: str, channel: str
) -> None:
    size = 6 * 1024 * 1024
    messages = [{**job_message("noop"), "pad": "x" * size} for _ in range(8)]
    uuids = enqueue(pg_conn, schema, channel, messages)
    start_service(queue_config(pg_dsn, schema, channel, batch_size=100, prefetch=100))
    rows = wait_for_states(pg_conn, schema, uuids, {"done"}, timeout=60)
    # A claim stamps its rows' started_at with its own time: rows claimed together share it.
    claims = Counter(row["started_at"] for row in rows)
    assert len(claims) >= 3
    # Each claim stops at the first row past CLAIM_BYTES (16 MiB): 3 rows of 6 MiB at most.
    assert max(claims.values()) <= 3


def test_a_job_the_service_refuses_waits_a_moment_before_it_is_claimed_again(
    start_service: Start, pg_dsn: str, pg_conn: Conn, schema: str, channel: str, evidence: Evidence
) -> None:
    config = queue_config(pg_dsn, schema, channel, poll_interval=0.05, prefetch=10)
    config["service"]["pool"] = {"min_workers": 1, "max_workers": 1}
    config["service"]["limits"] = {"max_queued": 1}
    messages = [job_message("sleep_then_record", evidence.path, 2) for _ in range(4)]
    uuids = enqueue(pg_conn, schema, channel, messages)
    start_service(config)

    def requeued() -> dict[str, Any] | None:
        for uuid in uuids:
            row = job_row(pg_conn, schema, uuid)
            if row is not None and row["claims"] >= 1 and row["state"] == "queued":
                return row
        return None

    row = wait_until(requeued, timeout=15)
    # Back in the queue, not ready before REFUSED_DELAY (1 s) after the claim it was refused in.
    assert (row["run_after"] - row["started_at"]).total_seconds() >= 1
    assert row["attempts"] == 0


def test_a_job_larger_than_the_service_may_hold_fails_instead_of_coming_back(
    start_service: Start, pg_dsn: str, pg_conn: Conn, schema: str, channel: str
) -> None:
    config = queue_config(pg_dsn, schema, channel)
    config["service"]["limits"] = {"max_held_bytes": 1000}
    (uuid,) = enqueue(pg_conn, schema, channel, [{**job_message("noop"), "pad": "x" * 2000}])
    start_service(config)
    (row,) = wait_for_states(pg_conn, schema, [uuid], {"failed"})
    assert (row["outcome"], row["attempts"]) == ("rejected", 1)
    assert "more than service.limits.max_held_bytes (1000)" in row["last_error"]


def test_three_thousand_jobs_stored_while_no_service_runs_run_exactly_once(
    start_service: Start,
    config: dict[str, Any],
    sdk: Settings,
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    with batch():
        uuids = [
            submit_task(TASKS + "record", args=[str(evidence.path), n], queue=channel).uuid
            for n in range(3000)
        ]
    # They become due once the three services run, so that each gets a share however long
    # each takes to start.
    jobs_table = sql.Identifier(schema, "jobs")
    pg_conn.execute(
        sql.SQL("UPDATE {} SET run_after = now() + interval '1 hour'").format(jobs_table)
    )
    nodes = ("node-a", "node-b", "node-c")
    services = [start_service(with_node_id(config, node), wait=False) for node in nodes]
    for service in services:
        service.wait_ready()
    with pg_conn.transaction():
        pg_conn.execute(sql.SQL("UPDATE {} SET run_after = now()").format(jobs_table))
        pg_conn.execute("SELECT pg_notify(%s, %s)", (QUEUE_WAKEUP_CHANNEL, channel))
    rows = wait_for_states(pg_conn, schema, uuids, {"done"}, timeout=60)
    assert Counter(record["args"][0] for record in evidence.records()) == Counter(range(3000))
    assert all(row["attempts"] == 1 for row in rows)
    ran_on = Counter(row["node_id"] for row in rows)
    assert set(ran_on) == set(nodes), ran_on


def with_node_id(config: dict[str, Any], node_id: str) -> dict[str, Any]:
    return {**config, "service": {**config["service"], "node_id": node_id}}


def test_finished_rows_are_deleted_after_keep_finished(
    start_service: Start,
    pg_dsn: str,
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    start_service(queue_config(pg_dsn, schema, channel, keep_finished=0.5))
    enqueue(pg_conn, schema, channel, [job_message("record", evidence.path, "gone")])
    evidence.wait_for(1)
    wait_until(lambda: not jobs(pg_conn, schema), timeout=10)


def test_finished_rows_of_every_final_state_are_deleted_and_the_others_kept(
    start_service: Start, pg_dsn: str, pg_conn: Conn, schema: str, channel: str
) -> None:
    old = [
        insert_job(pg_conn, schema, queue=channel, state=state, finished=60)
        for state in ("done", "failed", "cancelled")
    ]
    kept = [
        insert_job(pg_conn, schema, queue=channel, run_after=3600),  # waiting
        insert_job(pg_conn, schema, queue=channel, state="running", attempts=1),
    ]
    start_service(queue_config(pg_dsn, schema, channel, keep_finished=2, lease=3))
    wait_until(lambda: len(jobs(pg_conn, schema)) == len(kept), timeout=10)
    assert {row["uuid"] for row in jobs(pg_conn, schema)} == set(kept)
    assert not set(old) & {row["uuid"] for row in jobs(pg_conn, schema)}


@pytest.fixture
def latin1_dsn(pg_dsn: str) -> Iterator[str]:
    """A database of this test's own whose encoding is LATIN1, not UTF8."""
    name = f"latin1_{unique_schema()}"
    create = "CREATE DATABASE {} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL(create).format(sql.Identifier(name)))
    yield make_conninfo(pg_dsn, dbname=name)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def test_an_error_text_the_database_encoding_cannot_hold_is_recorded_escaped(
    latin1_dsn: str,
) -> None:
    schema = unique_schema()
    with psycopg.connect(latin1_dsn, autocommit=True) as conn:
        migrate(conn, schema)
        uuids = [insert_job(conn, schema, state="running", attempts=1) for _ in range(2)]
        query = sql.SQL("SELECT id, claims FROM {}.jobs WHERE uuid = %s").format(
            sql.Identifier(schema)
        )
        ids: list[tuple[int, int]] = [conn.execute(query, (uuid,)).fetchall()[0] for uuid in uuids]

    async def flush() -> None:
        async def nothing(conn: object) -> None:
            pass

        db = QueueDatabase(latin1_dsn, "pg-queue-latin1", nothing)
        statements = Statements.for_schema(schema)
        leases = Leases(db, statements.renew, 30)
        acks = Acknowledger(db, statements.acknowledge, leases, RetryPolicy(), 10, ServiceStats())
        errors = ["caf\u00e9 \u65e5\u672c", "plain"]
        for (row, claim), uuid, error in zip(ids, uuids, errors, strict=True):
            leases.add(row, 1, claim, time.monotonic(), uuid)
            acks.add(Ack(row, 1, claim, "failed", "rejected", error, uuid=uuid))
        try:
            await acks.flush()
        finally:
            await db.close()
        assert acks.pending == 0

    anyio.run(flush)
    with psycopg.connect(latin1_dsn) as conn:
        rows = [job_row(conn, schema, uuid) for uuid in uuids]
    assert [(row["state"], row["last_error"]) for row in rows if row is not None] == [
        ("failed", "caf\\xe9 \\u65e5\\u672c"),  # escaped, not lost; the others unharmed
        ("failed", "plain"),
    ]


def test_a_renewal_given_up_is_cancelled_on_the_server_and_leaves_no_session(
    pg_dsn: str, pg_conn: Conn, schema: str
) -> None:
    """A renewal that the database holds up past its limit (here a table lock; a commit that
    waits for a synchronous standby, which no statement_timeout bounds) is cancelled on the
    server before its connection is closed: before, its session stayed there, and every
    renewal that followed left one more."""
    uuid = insert_job(pg_conn, schema, state="running", attempts=1)
    row, claim = pg_conn.execute(
        sql.SQL("SELECT id, claims FROM {}.jobs WHERE uuid = %s").format(sql.Identifier(schema)),
        (uuid,),
    ).fetchall()[0]
    name = f"pg-queue-renew-{unique_schema()}"[:60]
    with psycopg.connect(pg_dsn) as locker:
        locker.execute(
            sql.SQL("LOCK TABLE {}.jobs IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema))
        )

        async def renew() -> None:
            async def nothing(conn: object) -> None:
                pass

            db = QueueDatabase(pg_dsn, name, nothing)
            leases = Leases(db, Statements.for_schema(schema).renew, 3)  # (a limit of 1 s)
            leases.add(row, 1, claim, time.monotonic(), uuid)
            try:
                with pytest.raises(TimeoutError):
                    await leases.renew()
            finally:
                await db.close()

        anyio.run(renew)
        still = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
        wait_until(lambda: pg_conn.execute(still, (name,)).fetchone() == (0,), timeout=5)
        locker.rollback()


def test_a_service_holds_no_more_jobs_than_its_workers_plus_prefetch(
    start_service: Start, pg_dsn: str, pg_conn: Conn, schema: str, channel: str, evidence: Evidence
) -> None:
    # Jobs sent ahead to a busy worker count as held: they must not make room for more
    # claims (the rows a service holds lose an attempt if it dies).
    config = queue_config(pg_dsn, schema, channel, prefetch=2)
    config["service"]["pool"] = {"min_workers": 1, "max_workers": 1, "hold_ahead_below": 0.1}
    uuids = enqueue(
        pg_conn,
        schema,
        channel,
        [job_message("sleep_then_record", evidence.path, 0.02, f"job-{n}") for n in range(60)],
    )
    start_service(config)
    running = sql.SQL("SELECT uuid FROM {} WHERE state = 'running'").format(
        sql.Identifier(schema, "jobs")
    )
    labels = {uuid: f"job-{n}" for n, uuid in enumerate(uuids)}
    most = 0
    while len(evidence.records()) < 2 * len(uuids):
        claimed = {labels[uuid] for (uuid,) in pg_conn.execute(running).fetchall()}
        # A job that ended stays running in its row until its outcome is recorded (in
        # batches): it no longer counts.
        ended = {r["label"] for r in evidence.records() if r.get("event") == "end"}
        most = max(most, len(claimed - ended))
        time.sleep(0.01)
    assert 1 <= most <= 3  # its one worker's job, plus prefetch
    wait_for_states(pg_conn, schema, uuids, {"done"})


def store_signed(
    conn: Conn, schema: str, queue: str, message: dict[str, Any], envelope: str
) -> str:
    """Store *envelope* (signing *message*) as a job row of *queue*; wake the queue."""
    statement = sql.SQL(
        "INSERT INTO {}.jobs (uuid, queue, task, message, max_attempts) VALUES (%s, %s, %s, %s, 3)"
    ).format(sql.Identifier(schema))
    with conn.transaction():
        conn.execute(statement, (message["uuid"], queue, message["task"], envelope))
        conn.execute("SELECT pg_notify(%s, %s)", (QUEUE_WAKEUP_CHANNEL, queue))
    return str(message["uuid"])


def test_a_signed_row_is_verified_at_every_attempt_but_never_refused_for_its_age_or_retry(
    start_service: Start,
    pg_dsn: str,
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
    tmp_path: Path,
) -> None:
    """A row is written once (a replay takes an INSERT): its retries, and its first run long
    after it was signed (a delay, a backlog, services down), are no replays; a forged row is
    still refused."""
    secret = b"a-long-random-secret"
    config = queue_config(pg_dsn, schema, channel)
    config["security"] = {
        "keys": [{"id": "k1", "secret": secret.decode()}],
        "require_signed": ["task"],
        "max_age": 5,
    }
    service = start_service(config)
    retried = job_message("fail_first", evidence.path)
    late = job_message("record", evidence.path, "late")
    forged = job_message("record", evidence.path, "forged")
    uuids = [
        store_signed(
            pg_conn, schema, channel, retried, sign(json.dumps(retried), "k1", secret, time.time())
        ),
        store_signed(
            pg_conn, schema, channel, late, sign(json.dumps(late), "k1", secret, time.time() - 60)
        ),
        store_signed(
            pg_conn,
            schema,
            channel,
            forged,
            sign(json.dumps(forged), "k1", b"guessed", time.time()),
        ),
    ]
    rows = wait_for_states(pg_conn, schema, uuids, {"done", "failed"})
    states = {row["uuid"]: (row["state"], row["attempts"], row["outcome"]) for row in rows}
    assert states[retried["uuid"]] == ("done", 2, "ok")
    assert states[late["uuid"]] == ("done", 1, "ok")
    assert states[forged["uuid"]] == ("failed", 1, "rejected")
    assert [r["event"] for r in evidence.records() if r.get("event") == "fail_first"] == [
        "fail_first",
        "fail_first",
    ]
    assert [r["args"] for r in evidence.records() if "args" in r] == [["late"]]
    service.wait_for_log(r"bad signature \(key 'k1'\)")
