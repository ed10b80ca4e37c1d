"""Claims of the pg_queue broker: given back on a graceful stop, fenced across retries.

Services run as subprocesses; jobs are stored with SQL and their rows read back. A service
cut off from the database goes through a TCP proxy the test takes down and brings back.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import uuid4

import psycopg
import pytest
from psycopg import sql

from dispatcher.schema import QUEUE_WAKEUP_CHANNEL
from support.durable import enqueue, job_message, migrated, queue_config, wait_for_states
from support.proxy import DatabaseProxy
from support.queue_rows import job_row, unique_schema
from support.service import Evidence, ServiceProcess, children, wait_until
from support.service_tasks import open_gate

pytestmark = pytest.mark.timeout(90)

Conn = psycopg.Connection[Any]
CTL = (sys.executable, "-m", "dispatcher.server.ctl")
Start = Callable[..., ServiceProcess]


@pytest.fixture
def schema(pg_conn: Conn) -> str:
    return migrated(pg_conn, unique_schema())


def on_node(config: dict[str, Any], node_id: str) -> dict[str, Any]:
    return {**config, "service": {**config["service"], "node_id": node_id}}


def test_jobs_claimed_ahead_are_given_back_on_a_graceful_stop_and_run_once_elsewhere(
    start_service: Start,
    tmp_path: Path,
    pg_dsn: str,
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    config = queue_config(pg_dsn, schema, channel, prefetch=100)  # 2 workers
    config["service"]["shutdown_grace"] = 30  # the long jobs end when the test says
    first = start_service(on_node(config, "node-a"))
    gates = tmp_path / "gates"
    gates.mkdir()
    running = [job_message("wait_for_own_gate", evidence.path, gates, f"long-{n}") for n in (1, 2)]
    ahead = [job_message("record", evidence.path, n) for n in range(10)]
    uuids = enqueue(pg_conn, schema, channel, running + ahead)
    long_jobs, ahead_jobs = uuids[:2], uuids[2:]
    # Both workers run a long job; the ten others wait in the service, claimed ahead.
    starts = evidence.wait_for(2)
    assert {record["event"] for record in starts} == {"start"}
    assert {row["state"] for row in wait_for_states(pg_conn, schema, uuids, {"running"})} == {
        "running"
    }

    first.signal(signal.SIGTERM)
    given_back = wait_for_states(pg_conn, schema, ahead_jobs, {"queued"})
    for start in starts:  # the long jobs end during the stop
        open_gate(str(gates), start["pid"])
    assert first.wait() == 0
    assert "tasks handed back to their durable queue" in first.log
    assert "abandoned" not in first.log
    # The claim is not counted as an attempt.
    assert [(row["attempts"], row["outcome"]) for row in given_back] == [(0, None)] * 10
    rows = wait_for_states(pg_conn, schema, long_jobs, {"done"})
    assert [(row["attempts"], row["node_id"]) for row in rows] == [(1, "node-a")] * 2
    assert not [record for record in evidence.records() if "args" in record]  # none ran

    start_service(on_node(config, "node-b"))
    rows = wait_for_states(pg_conn, schema, ahead_jobs, {"done"})
    assert [(row["attempts"], row["node_id"]) for row in rows] == [(1, "node-b")] * 10
    ran = Counter(record["args"][0] for record in evidence.records() if "args" in record)
    assert ran == Counter(range(10))  # each exactly once


def test_jobs_given_back_on_a_graceful_stop_keep_their_place_in_the_queue(
    start_service: Start,
    tmp_path: Path,
    pg_dsn: str,
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    """Jobs claimed ahead and given back unstarted went to wait from the time they were given
    back, behind every job stored since: a queue's jobs run oldest first (``run_after``,
    then id), and each stop pushed those a service held to the back of a backlog."""
    config = queue_config(pg_dsn, schema, channel, prefetch=3)
    gates = tmp_path / "gates"
    first, start, uuids = holding_three_ahead(start_service, config, pg_conn, evidence, gates)
    later = [job_message("record", evidence.path, f"later-{n}") for n in range(3)]
    later_jobs = enqueue(pg_conn, schema, channel, later)  # the service holds all it may

    first.signal(signal.SIGTERM)
    wait_for_states(pg_conn, schema, uuids[1:], {"queued"})
    open_gate(str(gates), start["pid"])
    assert first.wait() == 0

    second = queue_config(pg_dsn, schema, channel, prefetch=0)  # one job at a time, in order
    second["service"].update(pool={"min_workers": 1, "max_workers": 1})
    start_service(on_node(second, "node-b"))
    wait_for_states(pg_conn, schema, uuids[1:] + later_jobs, {"done"})
    ran = [record["args"][0] for record in evidence.records() if "args" in record]
    assert ran == [f"held-{n}" for n in range(3)] + [f"later-{n}" for n in range(3)]


def holding_three_ahead(
    start_service: Start,
    config: dict[str, Any],
    conn: Conn,
    evidence: Evidence,
    gates: Path,
) -> tuple[ServiceProcess, dict[str, Any], list[str]]:
    """Start the service ``node-a`` (one worker) on *config*'s queue and store four jobs: a
    long one, which runs until its gate in *gates* opens, and three the service claims ahead
    of it. Returns the service, the long job's start record and the uuids (the long job's
    first), once all four are ``running``."""
    config["service"].update(pool={"min_workers": 1, "max_workers": 1}, shutdown_grace=30)
    service = start_service(on_node(config, "node-a"))
    gates.mkdir()
    long_job = job_message("wait_for_own_gate", evidence.path, gates, "long")
    held = [job_message("record", evidence.path, f"held-{n}") for n in range(3)]
    section = config["brokers"]["pg_queue"]
    uuids = enqueue(conn, section["schema"], section["queues"][0], [long_job, *held])
    [start] = evidence.wait_for(1)
    wait_for_states(conn, section["schema"], uuids, {"running"})
    return service, start, uuids


def claimed_nothing(conn: Conn, node: str) -> bool:
    """Whether the service *node* claimed, and now waits for a wake-up or its next poll."""
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
        " AND state = 'idle' AND query LIKE 'WITH quick AS%%' AND datname = current_database()",
        (f"dispatcher-queue:{node}",),
    ).fetchone()
    return row is not None and row[0] > 0


def test_jobs_given_back_or_taken_back_wake_the_idle_services_at_once(
    start_service: Start,
    tmp_path: Path,
    pg_dsn: str,
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    """A job that becomes ready without being stored (given back on a graceful stop, or
    taken back from a dead service by a sweep) sent no wake-up: the idle services found it
    at their next poll, ``poll_interval`` later (the fallback for lost wake-ups, which a
    fleet sets long to spare the database), although they could have started it at once."""
    poll = 60.0
    config = queue_config(pg_dsn, schema, channel, prefetch=5, poll_interval=poll)
    gates = tmp_path / "gates"
    first, start, uuids = holding_three_ahead(start_service, config, pg_conn, evidence, gates)
    start_service(on_node(config, "node-b"))
    wait_until(lambda: claimed_nothing(pg_conn, "node-b"), 10)  # every ready job is held

    first.signal(signal.SIGTERM)  # the three held are given back to the queue
    rows = wait_for_states(pg_conn, schema, uuids[1:], {"done"}, timeout=poll / 4)
    assert {row["node_id"] for row in rows} == {"node-b"}
    open_gate(str(gates), start["pid"])
    assert first.wait() == 0

    # A job of a service that died: its lease runs out in a moment, and a sweep takes it
    # back while the service that could run it waits for its next poll.
    lost = job_message("record", evidence.path, "lost")
    pg_conn.execute(
        sql.SQL(
            "INSERT INTO {} (uuid, queue, task, message, max_attempts, state, attempts, claims,"
            " node_id, started_at, lease_until)"
            " VALUES (%s, %s, %s, %s, 3, 'running', 1, 1, 'gone', now(), now() + interval '1s')"
        ).format(sql.Identifier(schema, "jobs")),
        [lost["uuid"], channel, lost["task"], json.dumps(lost)],
    )
    (row,) = wait_for_states(pg_conn, schema, [lost["uuid"]], {"done"}, timeout=poll / 4)
    assert (row["node_id"], row["attempts"]) == ("node-b", 2)


def test_a_late_outcome_from_before_a_retry_never_settles_the_new_claim(
    start_service: Start,
    tmp_path: Path,
    pg_dsn: str,
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    # Service A runs the job, then loses the database; its lease runs out and service B
    # sweeps the job to failed (one attempt allowed). An operator retries it: its attempts
    # go back to 0 and B claims it as attempt 1 again. A's job then ends and A, back on
    # the database, reports the outcome of its own attempt 1: it must not count for B's.
    # Each run ends when the test opens its gate (however long the steps before took).
    gates = tmp_path / "gates"
    gates.mkdir()
    proxy = DatabaseProxy(pg_dsn)
    proxy.up()
    try:
        node_a = start_service(on_node(queue_config(proxy.dsn, schema, channel), "node-a"))
        (uuid,) = enqueue(
            pg_conn,
            schema,
            channel,
            [job_message("wait_for_own_gate", evidence.path, str(gates), "twice")],
            max_attempts=1,
        )
        [first_start] = evidence.wait_for(1)
        proxy.down()
        start_service(on_node(queue_config(pg_dsn, schema, channel), "node-b"))
        (swept,) = wait_for_states(pg_conn, schema, [uuid], {"failed"})
        assert (swept["attempts"], swept["outcome"]) == (1, "worker_lost")

        ctl_config = tmp_path / "ctl.yml"
        ctl_config.write_text(json.dumps(queue_config(pg_dsn, schema, channel)))
        retried = subprocess.run(
            [*CTL, "retry", "--uuid", uuid, "--config", str(ctl_config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert retried.returncode == 0, retried.stderr
        second_start = evidence.wait_for(2, timeout=30)[1]
        assert second_start["event"] == "start"
        assert first_start["pid"] != second_start["pid"]
        proxy.up()
        # A reconnects while both runs go on, and its run ends first; its outcome is
        # refused by the fence, and the row stays B's.
        wait_until(lambda: "node-a" in connected_nodes(pg_conn), timeout=20)
        open_gate(str(gates), first_start["pid"])
        first_end = evidence.wait_for(3, timeout=20)[2]
        assert (first_end["event"], first_end["pid"]) == ("end", first_start["pid"])
        node_a.wait_for_log(
            rf"not recorded: the jobs are no longer .*{re.escape(uuid)}", timeout=30
        )
        assert job_row(pg_conn, schema, uuid)["state"] == "running"  # type: ignore[index]
        open_gate(str(gates), second_start["pid"])
        (row,) = wait_for_states(pg_conn, schema, [uuid], {"done"}, timeout=30)
        second_end = evidence.wait_for(4, timeout=20)[3]
    finally:
        proxy.down()
    assert (second_end["event"], second_end["pid"]) == ("end", second_start["pid"])
    assert (row["attempts"], row["node_id"]) == (1, "node-b")
    # Done when B's run ended, not when A's did.
    assert row["finished_at"].timestamp() >= second_end["time"]


def connected_nodes(conn: Conn) -> set[str]:
    """The node ids of the services whose pg_queue working connections are open now."""
    rows = conn.execute(
        "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE %s"
        " AND datname = current_database()",
        ("dispatcher-queue:%",),
    ).fetchall()
    return {name.removeprefix("dispatcher-queue:") for (name,) in rows}


def test_a_row_claimed_again_by_the_service_running_it_is_settled_by_the_running_copy(
    start_service: Start,
    tmp_path: Path,
    pg_dsn: str,
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    # The service runs the job; meanwhile the row is taken from it (as a sweep does when the
    # service is cut off) and retried, and the same service claims it again: attempt 1
    # again. It does not start a second copy: the new claim is adopted, and the running
    # copy's outcome settles it (its receipt names the first claim; the row has the second).
    service = start_service(queue_config(pg_dsn, schema, channel, lease=30))
    gates = tmp_path / "gates"
    gates.mkdir()
    (uuid,) = enqueue(
        pg_conn, schema, channel, [job_message("wait_for_own_gate", evidence.path, gates, "run")]
    )
    [started] = evidence.wait_for(1)
    jobs = sql.Identifier(schema, "jobs")
    pg_conn.execute(
        sql.SQL(
            "UPDATE {} SET state = 'queued', attempts = 0, lease_until = NULL, run_after = now()"
            " WHERE uuid = %s AND state = 'running'"
        ).format(jobs),
        (uuid,),
    )
    pg_conn.execute("SELECT pg_notify(%s, %s)", (QUEUE_WAKEUP_CHANNEL, channel))
    service.wait_for_log(rf"job \d+ \(uuid {uuid}\) claimed again \(attempt 1\) while this")
    row = job_row(pg_conn, schema, uuid)
    assert row is not None
    assert (row["state"], row["attempts"], row["claims"]) == ("running", 1, 2)
    open_gate(str(gates), started["pid"])  # the run ends once the claim is adopted
    (done,) = wait_for_states(pg_conn, schema, [uuid], {"done"})
    records = evidence.records()
    assert [record["event"] for record in records] == ["start", "end"]
    assert done["finished_at"].timestamp() >= records[1]["time"] - 0.5  # by the one run
    assert "outcome not recorded" not in service.log


def test_a_row_id_given_to_another_job_is_settled_by_that_jobs_outcome_only(
    start_service: Start,
    tmp_path: Path,
    pg_dsn: str,
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    # A failover lost the running row of job A, and its id went to a new job B, claimed by
    # the same service with the same numbers while A still runs. A's outcome, which ends
    # first, is refused (it once settled B's row); B's is recorded.
    config = queue_config(pg_dsn, schema, channel, lease=30, poll_interval=0.1)
    config["service"]["pool"] = {"min_workers": 2, "max_workers": 2}
    service = start_service(config)
    gates = tmp_path / "gates"
    gates.mkdir()
    (first,) = enqueue(
        pg_conn, schema, channel, [job_message("wait_for_own_gate", evidence.path, gates, "run")]
    )
    [a_start] = evidence.wait_for(1)
    second = str(uuid4())
    pg_conn.execute(
        sql.SQL(
            "UPDATE {} SET uuid = %s, message = replace(message, uuid, %s), state = 'queued',"
            " attempts = 0, claims = claims - 1, lease_until = NULL, run_after = now()"
            " WHERE uuid = %s AND state = 'running'"
        ).format(sql.Identifier(schema, "jobs")),
        (second, second, first),
    )
    pg_conn.execute("SELECT pg_notify(%s, %s)", (QUEUE_WAKEUP_CHANNEL, channel))
    b_start = evidence.wait_for(2)[1]
    open_gate(str(gates), a_start["pid"])  # A's run ends first
    service.wait_for_log(rf"1 outcome not recorded: .* uuids {first}\b")
    assert job_row(pg_conn, schema, second)["state"] == "running"  # type: ignore[index]
    open_gate(str(gates), b_start["pid"])
    (done,) = wait_for_states(pg_conn, schema, [second], {"done"})
    records = evidence.wait_for(4)
    assert [record["event"] for record in records] == ["start", "start", "end", "end"]
    assert done["attempts"] == 1
    assert done["finished_at"].timestamp() >= records[3]["time"] - 0.5  # by B's own run
    assert "? (job" not in service.log


def test_a_row_gone_back_in_time_is_not_started_twice_by_the_service_running_it(
    start_service: Start,
    tmp_path: Path,
    pg_dsn: str,
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    """A failover that lost the last writes puts the running row back as it was before its
    claim, its claim number too: claimed again by the service running it, it had the same
    numbers as the running copy's, and a second copy started beside the first."""
    config = queue_config(pg_dsn, schema, channel, lease=3, poll_interval=0.1)
    config["service"]["pool"] = {"min_workers": 2, "max_workers": 2}  # one stays free
    service = start_service(config)
    gates = tmp_path / "gates"
    gates.mkdir()
    (uuid,) = enqueue(
        pg_conn, schema, channel, [job_message("wait_for_own_gate", evidence.path, gates, "run")]
    )
    [started] = evidence.wait_for(1)
    jobs = sql.Identifier(schema, "jobs")
    pg_conn.execute(
        sql.SQL(
            "UPDATE {} SET state = 'queued', attempts = attempts - 1, claims = claims - 1,"
            " node_id = NULL, lease_until = NULL, started_at = NULL, run_after = now()"
            " WHERE uuid = %s AND state = 'running'"
        ).format(jobs),
        (uuid,),
    )
    pg_conn.execute("SELECT pg_notify(%s, %s)", (QUEUE_WAKEUP_CHANNEL, channel))
    service.wait_for_log(rf"job \d+ \(uuid {uuid}\) claimed again \(attempt 1\) while this")
    open_gate(str(gates), started["pid"])  # the run ends once the claim is seen
    wait_for_states(pg_conn, schema, [uuid], {"done"})
    row = job_row(pg_conn, schema, uuid)
    assert row is not None
    assert (row["attempts"], row["claims"]) == (1, 1)
    records = evidence.records()
    assert [record["event"] for record in records] == ["start", "end"]  # one copy
    assert "not recorded" not in service.log
    assert "lease ran out meanwhile" not in service.log  # (it did not: the row went back)


def test_jobs_held_ahead_whose_lease_ran_out_meanwhile_are_not_started(
    start_service: Start,
    pg_dsn: str,
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    # Service A holds jobs ahead of its one worker, then stops (SIGSTOP of its main process)
    # for longer than the lease: service B takes the jobs back and runs them. When A goes
    # on, it must not start the jobs it no longer holds.
    config = queue_config(pg_dsn, schema, channel, lease=2, prefetch=10)
    config["service"]["pool"] = {"min_workers": 1, "max_workers": 1}
    first = start_service(on_node(config, "node-a"))
    messages = [job_message("sleep_then_record", evidence.path, 1.5, f"job-{n}") for n in range(4)]
    uuids = enqueue(pg_conn, schema, channel, messages)
    wait_for_states(pg_conn, schema, uuids, {"running"})  # all claimed by A, one started
    evidence.wait_for(1)
    first.signal(signal.SIGSTOP)
    try:
        lapsed = sql.SQL(
            "SELECT bool_and(lease_until < now()) FROM {} WHERE uuid = ANY(%s)"
        ).format(sql.Identifier(schema, "jobs"))
        wait_until(lambda: pg_conn.execute(lapsed, (uuids,)).fetchone() == (True,), timeout=20)
        start_service(on_node(config, "node-b"))  # it sweeps at start, then claims them
        wait_for_states(pg_conn, schema, uuids, {"done"}, timeout=30)
    finally:
        first.signal(signal.SIGCONT)
    first.wait_for_log(r"not started: its broker no longer holds it", timeout=20)
    starts = Counter(r["label"] for r in evidence.records() if r.get("event") == "start")
    assert [starts[f"job-{n}"] for n in range(1, 4)] == [1, 1, 1]  # only B ran them


def test_jobs_already_sent_to_a_frozen_worker_are_not_started_after_their_lease(
    start_service: Start,
    pg_dsn: str,
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    # Service A's one worker runs a job with the next ones sent to it ahead (in its socket),
    # then every process of A stops (SIGSTOP) for longer than the lease: service B takes
    # the jobs back and runs them. When A goes on, its worker reads the jobs sent ahead,
    # and must not start them: they came after the time their lease surely held until.
    # Jobs are sent ahead only when their lease surely outlasts 5 x hold_ahead_below: 1.25 s.
    config = queue_config(pg_dsn, schema, channel, lease=3, prefetch=10)
    config["service"]["pool"] = {"min_workers": 1, "max_workers": 1, "hold_ahead_below": 0.25}
    first = start_service(on_node(config, "node-a"))
    (warm_up,) = enqueue(pg_conn, schema, channel, [job_message("record", evidence.path, "w")])
    wait_for_states(pg_conn, schema, [warm_up], {"done"})  # the task's pace is known: quick
    labels = ["quick", "long", "ahead-1", "ahead-2", "ahead-3"]
    seconds = {"quick": 0.1, "long": 3}
    messages = [
        job_message("sleep_then_record", evidence.path, seconds.get(label, 0), label)
        for label in labels
    ]
    uuids = enqueue(pg_conn, schema, channel, messages)
    wait_until(lambda: any(r.get("label") == "long" for r in evidence.records()), timeout=20)
    assert first.process is not None
    frozen = [first.process.pid, *children(first.process.pid)]
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        lapsed = sql.SQL(
            "SELECT bool_and(lease_until < now()) FROM {} WHERE uuid = ANY(%s)"
        ).format(sql.Identifier(schema, "jobs"))
        wait_until(lambda: pg_conn.execute(lapsed, (uuids[1:],)).fetchone() == (True,), timeout=20)
        start_service(on_node(config, "node-b"))
        wait_for_states(pg_conn, schema, uuids, {"done"}, timeout=30)
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    first.wait_for_log(r"not started: its broker no longer holds it", timeout=20)
    wait_until(lambda: labels_ended(evidence, "long") == 2, timeout=20)  # A's run ended too
    starts = Counter(r["label"] for r in evidence.records() if r.get("event") == "start")
    assert [starts[label] for label in labels[2:]] == [1, 1, 1]  # only B ran them


def labels_ended(evidence: Evidence, label: str) -> int:
    return sum(r.get("label") == label and r.get("event") == "end" for r in evidence.records())
