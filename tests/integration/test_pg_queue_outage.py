"""The pg_queue broker when its database stops answering or goes away for a while.

The service reaches the database through a TCP proxy the test freezes (packets stop, no
connection is closed: a database that hangs) or takes down and brings back.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from support.durable import (
    enqueue,
    job_message,
    jobs,
    migrated,
    queue_config,
    wait_for_states,
)
from support.proxy import DatabaseProxy
from support.queue_rows import insert_job, unique_schema
from support.service import TASKS, Evidence, ServiceProcess, task_message, wait_until
from support.service_tasks import DURABLE_TICKS, open_gate

pytestmark = pytest.mark.timeout(90)

Conn = psycopg.Connection[Any]
Start = Callable[..., ServiceProcess]
CTL = (sys.executable, "-m", "dispatcher.server.ctl")


@pytest.fixture
def schema(pg_conn: Conn) -> str:
    return migrated(pg_conn, unique_schema())


def test_a_stop_ends_in_bounded_time_when_the_database_hangs_on_an_open_connection(
    start_service: Start,
    tmp_path: Path,
    pg_dsn: str,
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    proxy = DatabaseProxy(pg_dsn)
    proxy.up()
    try:
        config = queue_config(proxy.dsn, schema, channel, lease=30)
        config["service"]["shutdown_grace"] = 3
        service = start_service(config)
        # A first job settles: the connection that writes outcomes is open.
        first = enqueue(pg_conn, schema, channel, [job_message("record", evidence.path, 1)])
        wait_for_states(pg_conn, schema, first, {"done"})
        # Two jobs end one after the other during the stop's grace: the first outcome's
        # write hangs, the second is written by the stop itself.
        gates = tmp_path / "gates"
        gates.mkdir()
        waiting = [job_message("wait_for_own_gate", evidence.path, gates, n) for n in "12"]
        enqueue(pg_conn, schema, channel, waiting)
        running = evidence.wait_for(3)[1:]  # both running
        proxy.freeze(new=True)  # the database stops answering, as if SIGSTOPped
        service.signal(signal.SIGTERM)
        for count, run in enumerate(sorted(running, key=lambda r: r["label"]), start=4):
            open_gate(str(gates), run["pid"])
            last_end = evidence.wait_for(count)[-1]
            assert last_end["event"] == "end"
        assert service.wait(timeout=30) == 0
        # From the last job's end (in the worker's clock): the jobs end when the test says,
        # so the grace's part is the test's; what is left is the stop's own writes (5 s
        # each), with some to spare.
        took = time.time() - last_end["time"]
    finally:
        proxy.down()
    assert took < 10 + 3, took
    assert "2 outcomes not recorded" in service.log  # it says what it gave up


def test_a_stop_on_a_database_that_answers_records_every_outcome(
    start_service: Start,
    pg_dsn: str,
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    """The stop's 5 s for its writes are not a budget for all of them: a job that ends 6 s
    into a 20 s grace has its outcome written, as one ending in its first second does."""
    config = queue_config(pg_dsn, schema, channel, lease=60)
    config["service"].update(shutdown_grace=20, pool={"min_workers": 2, "max_workers": 2})
    service = start_service(config)
    sleeping = [job_message("sleep_then_record", evidence.path, s) for s in (0.5, 6.5)]
    uuids = enqueue(pg_conn, schema, channel, sleeping)
    evidence.wait_for(2)  # both started
    service.signal(signal.SIGTERM)
    assert service.wait(timeout=40) == 0
    assert [row["state"] for row in wait_for_states(pg_conn, schema, uuids, {"done"})] == [
        "done",
        "done",
    ]
    assert "not recorded" not in service.log, service.log


def test_an_outcome_not_written_during_an_outage_is_written_once_the_database_is_back(
    start_service: Start,
    tmp_path: Path,
    pg_dsn: str,
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    """An outcome whose write failed (the database away as the job ended) waited for the
    next outcome of the service, or for its next renewal of leases, a third of the lease
    later: an idle service with a long lease left the job running in the table for minutes
    after the database came back (its serial twins waiting, get_job() saying running)."""
    proxy = DatabaseProxy(pg_dsn)
    proxy.up()
    try:
        # A long lease: no round of renewals (every 200 s) comes during the test.
        config = queue_config(proxy.dsn, schema, channel, lease=600, prefetch=0)
        service = start_service(config)
        gates = tmp_path / "gates"
        gates.mkdir()
        message = job_message("wait_for_own_gate", evidence.path, gates, "outage")
        uuids = enqueue(pg_conn, schema, channel, [message])
        [start] = evidence.wait_for(1)
        proxy.down()
        open_gate(str(gates), start["pid"])  # the job ends while the database is away
        service.wait_for_log(r"1 outcome not recorded yet")
        proxy.up()
        (row,) = wait_for_states(pg_conn, schema, uuids, {"done"}, timeout=15)
        assert row["attempts"] == 1
    finally:
        proxy.down()


def test_a_service_back_on_the_database_renews_its_own_leases_before_it_sweeps(
    start_service: Start,
    pg_dsn: str,
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    # What a database outage longer than the lease leaves: the leases of the jobs the
    # service still runs have run out in the table, and its connections are gone. Nobody
    # else took the jobs: reconnecting, the service must not take its own jobs for lost
    # (sweeping them back to the queue, to claim and run them a second time).
    # Claims poll often, renewals come every second: the claiming connection comes back
    # first, as it may after an outage (each connection waits out its own reconnect delay).
    config = queue_config(pg_dsn, schema, channel, lease=3, prefetch=0, poll_interval=0.1)
    config["service"]["node_id"] = "outage-a"
    config["service"]["pool"] = {"min_workers": 3, "max_workers": 3}  # one stays free
    service = start_service(config)
    labels = ["first", "second"]
    messages = [job_message("sleep_then_record", evidence.path, 2, label) for label in labels]
    uuids = enqueue(pg_conn, schema, channel, messages)
    evidence.wait_for(2)  # both running
    wait_until(lambda: queue_connections(pg_conn) == 2, timeout=10)  # claims, and renewals
    with pg_conn.transaction():  # in one go: no renewal comes in between
        pg_conn.execute(
            sql.SQL(
                "UPDATE {} SET lease_until = now() - interval '1 second' WHERE state = 'running'"
            ).format(sql.Identifier(schema, "jobs"))
        )
        pg_conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'dispatcher-queue:outage-a'"
        )
    # It noticed: a claim or a step of the upkeep failed, or it found a connection ended.
    service.wait_for_log(
        r"cannot claim jobs|(leases|outcomes|finished jobs) failed|was ended while idle"
    )
    rows = wait_for_states(pg_conn, schema, uuids, {"done"})
    assert [row["attempts"] for row in rows] == [1, 1]
    runs = [record["label"] for record in evidence.records() if record["event"] == "start"]
    assert sorted(runs) == sorted(labels)  # none ran twice
    assert "ran out" not in service.log


def test_services_back_from_the_same_outage_leave_each_other_time_to_renew(
    start_service: Start,
    pg_dsn: str,
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    """An outage cuts every service off: the first one back took the others' leases for
    dead (swept them) before they could renew them, and their jobs ran twice."""
    proxy = DatabaseProxy(pg_dsn)
    proxy.up()
    try:
        # A queue each, and a free worker each: both claim (and reconnect) every 0.1 s.
        services, uuids, labels = [], [], ["first", "second"]
        for node, label in zip(("outage-b", "outage-c"), labels, strict=True):
            queue = f"{channel}_{node[-1]}"
            config = queue_config(proxy.dsn, schema, queue, lease=3, prefetch=0, poll_interval=0.1)
            config["service"]["node_id"] = node
            config["service"]["pool"] = {"min_workers": 2, "max_workers": 2}
            services.append(start_service(config))
            message = job_message("sleep_then_record", evidence.path, 2.5, label)
            uuids += enqueue(pg_conn, schema, queue, [message])
        evidence.wait_for(2)  # one running on each service
        proxy.down()  # the database is out of reach for two leases: both services' attempts fail
        back = time.monotonic() + 2 * 3
        lapsed = sql.SQL("SELECT bool_and(lease_until < now()) FROM {} WHERE uuid = ANY(%s)")
        query = lapsed.format(sql.Identifier(schema, "jobs"))
        wait_until(lambda: pg_conn.execute(query, (uuids,)).fetchone() == (True,), timeout=10)
        evidence.wait_for(4)  # both jobs ended meanwhile: their outcomes wait
        wait_until(lambda: time.monotonic() >= back, timeout=10)
        proxy.up()
        rows = wait_for_states(pg_conn, schema, uuids, {"done"})
    finally:
        proxy.down()
    assert [row["attempts"] for row in rows] == [1, 1]
    runs = [record["label"] for record in evidence.records() if record["event"] == "start"]
    assert sorted(runs) == sorted(labels)  # none ran twice
    for service in services:  # (each says so, once back: once, though two connections are)
        service.wait_for_log(
            r"taking back no expired lease for 3 s \(the database could not be used for "
            r"[0-9.]+ s: it could not be reached\)"
        )
        assert service.log.count("taking back no expired lease") == 1, service.log
    assert not any("ran out" in service.log for service in services)


def test_a_durable_schedule_stores_the_tick_after_its_connections_were_cut(
    start_service: Start, pg_dsn: str, pg_conn: Conn, schema: str, evidence: Evidence
) -> None:
    """A tick offered on an idle connection the database had terminated was not stored by
    anyone (one attempt, no retry): the schedule lost it."""
    period = 2
    # A long lease: no sweep nor renewal finds the cut before the tick does.
    config = queue_config(pg_dsn, schema, DURABLE_TICKS, lease=60)
    config["service"]["node_id"] = "outage-tick"
    config["producers"] = {
        "scheduled": {TASKS + "tick": {"schedule": period, "args": [str(evidence.path)]}}
    }
    service = start_service(config)
    evidence.wait_for(2, timeout=15)
    # Every outcome written: no statement waits to find the cut before the next tick does.
    wait_until(lambda: [row["state"] for row in jobs(pg_conn, schema)] == ["done"] * 2, 5)
    pg_conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name LIKE 'dispatcher%%:outage-tick'"
    )
    evidence.wait_for(4, timeout=4 * period)  # the next two ticks, the first one included
    service.stop()
    ticks = [
        tick
        for (tick,) in pg_conn.execute(
            sql.SQL("SELECT tick FROM {} WHERE tick > 1e9 ORDER BY tick").format(
                sql.Identifier(schema, "schedule_ticks")
            )
        ).fetchall()
    ]  # the runs' times (the other numbers are the multiples', for older releases)
    assert ticks == list(range(ticks[0], ticks[-1] + 1, period)), ticks  # none skipped
    rows = jobs(pg_conn, schema)
    assert len(rows) == len(ticks)
    assert len(evidence.records()) == sum(row["state"] == "done" for row in rows)


def queue_connections(conn: Conn) -> int:
    """How many pg_queue working connections the service "outage-a" has open."""
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE application_name = 'dispatcher-queue:outage-a' AND datname = current_database()"
    ).fetchone()
    return 0 if row is None else int(row[0])


def test_status_reports_failing_claims_and_the_log_says_when_claiming_resumes(
    start_service: Start,
    tmp_path: Path,
    pg_dsn: str,
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    # The service's role is made read-only (as a standby, or an operator's mistake): every
    # claim fails; `dispatcherctl status` must say so, and the log when it works again.
    role = f"ro_{schema}"
    pg_conn.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER").format(sql.Identifier(role)))
    try:
        pg_conn.execute(
            sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(
                sql.Identifier(role)
            )
        )
        config = queue_config(make_conninfo(pg_dsn, user=role), schema, channel)
        config["brokers"]["socket"] = {"path": str(tmp_path / "dispatcher.sock")}
        config["service"]["node_id"] = "outage-a"
        service = start_service(config)
        # (Refused as its claiming connection opens: its first sweep, a SELECT that updates.)
        service.wait_for_log(r"cannot claim jobs: cannot execute SELECT FOR UPDATE in a read-only")
        status = ctl_status(service)
        health = status["pg_queue"]
        assert health["claim_failures"] >= 1, health
        assert health["claiming"] is False
        assert health["failing_since"] <= time.time()
        assert "read-only" in health["last_error"]
        assert health["connect_failures"] >= 1  # its set-up (the first sweep) fails too
        assert status["brokers"]["pg_queue"]["serving"] is False
        assert "read-only" in status["brokers"]["pg_queue"]["last_error"]

        pg_conn.execute(
            sql.SQL("ALTER ROLE {} RESET default_transaction_read_only").format(
                sql.Identifier(role)
            )
        )
        pg_conn.execute(  # its connections keep the setting: make it open new ones
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'dispatcher-queue:outage-a'"
        )
        uuids = enqueue(pg_conn, schema, channel, [job_message("record", evidence.path, 1)])
        wait_for_states(pg_conn, schema, uuids, {"done"})
        service.wait_for_log(r"claiming jobs again after \d+ failures? over \d+\.\d s")
        status = ctl_status(service)
        health = status["pg_queue"]
        assert (health["claiming"], health["failing_since"]) == (True, None)
        assert status["brokers"]["pg_queue"]["serving"] is True
        assert health["last_error"]  # the last error stays, for the record
        service.stop()
    finally:
        pg_conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def ctl_status(service: ServiceProcess) -> dict[str, Any]:
    """The service's answer to ``dispatcherctl status --json``."""
    result = subprocess.run(
        [*CTL, "status", "--json", "--config", str(service.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    [status] = json.loads(result.stdout)
    return status  # type: ignore[no-any-return]


def test_tables_missing_on_a_database_that_comes_up_late_stop_the_service_with_status_2(
    start_service: Start, pg_dsn: str, channel: str
) -> None:
    # The database answered only after the service started: the check of the tables was
    # put off, and then "the tables are missing" was retried for ever at WARNING, where a
    # database up at start gets exit status 2.
    schema = unique_schema()
    proxy = DatabaseProxy(pg_dsn)  # down: the service cannot check the tables at start
    try:
        service = start_service(queue_config(proxy.dsn, schema, channel), wait=False)
        service.wait_for_log("cannot check the tables now")
        proxy.up()
        assert service.wait(timeout=30) == 2
    finally:
        proxy.down()
    missing = (
        f'the pg_queue tables in schema "{schema}" are missing: '
        f"run 'dispatcherctl migrate --config {service.config_path}'"
    )
    assert f"CRITICAL dispatcher.service: cannot go on, stopping: {missing}" in service.log
    # A claim tried while the database was still down may say so; none says the tables
    # are missing (retried at WARNING), which only the stop says.
    claims = [line for line in service.log.splitlines() if "cannot claim jobs" in line]
    assert all("connection failed" in line for line in claims), claims


def test_tables_checked_on_a_database_that_comes_up_late_let_the_service_serve(
    start_service: Start,
    pg_dsn: str,
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    proxy = DatabaseProxy(pg_dsn)
    try:
        service = start_service(queue_config(proxy.dsn, schema, channel), wait=False)
        service.wait_for_log("cannot check the tables now")
        proxy.up()
        uuids = enqueue(pg_conn, schema, channel, [job_message("record", evidence.path, 1)])
        wait_for_states(pg_conn, schema, uuids, {"done"}, timeout=30)
        assert service.stop() == 0
    finally:
        proxy.down()


def test_an_idle_service_back_first_from_an_outage_leaves_the_others_a_lease_to_renew(
    start_service: Start,
    tmp_path: Path,
    pg_dsn: str,
    pg_conn: Conn,
    notify: Callable[[str, str], None],
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    """A service with no lease of its own reconnects by its sweep: the sweep that opened
    the connection (and so began the wait of one lease) went on at once, and took back the
    job that another service, not back yet, still ran."""
    proxies = DatabaseProxy(pg_dsn), DatabaseProxy(pg_dsn)
    for proxy in proxies:
        proxy.up()
    try:
        queue, busy = f"{channel}_q", f"{channel}_n"
        services = []
        for node, proxy in zip(("hold-a", "hold-b"), proxies, strict=True):
            config = queue_config(proxy.dsn, schema, queue, lease=3, prefetch=0, poll_interval=0.1)
            config["service"]["node_id"] = node
            config["service"]["pool"] = {"min_workers": 1, "max_workers": 1}
            if node == "hold-b":  # its only worker busy with a NOTIFY task: it claims nothing
                config["brokers"]["pg_notify"] = {"conninfo": proxy.dsn, "channels": [busy]}
            services.append(start_service(config))
        idle = services[1]
        # Its first sweep made (by its claiming connection, opened after its working one, the
        # sweeps'); with pg_notify its wake-up listener is named after the node too.
        wait_until(lambda: node_connections(pg_conn, "hold-b") == 3, timeout=10)
        # Each run ends when the test opens its gate.
        gates = tmp_path / "gates"
        gates.mkdir()
        notify(busy, task_message("wait_for_own_gate", evidence.path, str(gates), "busy"))
        [busy_run] = evidence.wait_for(1)
        uuids = enqueue(
            pg_conn, schema, queue, [job_message("wait_for_own_gate", evidence.path, gates, "job")]
        )
        job_run = evidence.wait_for(2, timeout=30)[1]  # the job runs on "hold-a"
        for proxy in proxies:
            proxy.down()
        # As if the outage had lasted longer than the lease.
        pg_conn.execute(
            sql.SQL("UPDATE {} SET lease_until = now() - interval '1 second'").format(
                sql.Identifier(schema, "jobs")
            )
        )
        back = time.monotonic() + 4
        wait_until(lambda: time.monotonic() >= back, timeout=10)
        proxies[1].up()  # the idle service is back first
        idle.wait_for_log(
            r"taking back no expired lease for 3 s \(the database could not be used for "
            r"[0-9.]+ s: it could not be reached\)"
        )
        proxies[0].up()  # the other one a second later: its lease is not taken meanwhile
        renewed = sql.SQL("SELECT lease_until > now() FROM {} WHERE uuid = %s").format(
            sql.Identifier(schema, "jobs")
        )
        wait_until(lambda: pg_conn.execute(renewed, uuids).fetchone() == (True,), timeout=30)
        open_gate(str(gates), job_run["pid"])  # the job ends once "hold-a" is back
        rows = wait_for_states(pg_conn, schema, uuids, {"done"}, timeout=30)
        open_gate(str(gates), busy_run["pid"])
    finally:
        for proxy in proxies:
            proxy.down()
    assert [(row["attempts"], row["node_id"]) for row in rows] == [(1, "hold-a")]
    runs = [record["label"] for record in evidence.records() if record["event"] == "start"]
    assert runs == ["busy", "job"]  # it ran once
    assert "ran out" not in idle.log, idle.log


def test_a_service_started_while_the_database_was_out_of_reach_leaves_the_others_a_lease(
    start_service: Start,
    pg_dsn: str,
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    """The first sweep (by the claiming connection's first open) went ahead after an outage
    too: a service started (or restarted) while the database was out of reach took back at
    once the job of another service that was still reconnecting."""
    queue = f"{channel}_q"
    other = insert_job(pg_conn, schema, queue=queue, state="running", attempts=1, max_attempts=1)
    table = sql.Identifier(schema, "jobs")
    pg_conn.execute(  # another service's lease, which runs out during the outage
        sql.SQL(
            "UPDATE {} SET node_id = 'elsewhere', lease_until = now() + interval '2 s'"
            " WHERE uuid = %s"
        ).format(table),
        (other,),
    )
    proxy = DatabaseProxy(pg_dsn)
    try:
        service = start_service(queue_config(proxy.dsn, schema, queue, lease=12), wait=False)
        # The outage the service sees begins with its first attempt, seconds after its
        # start on a loaded machine (timed from the start, it was a third of the lease).
        service.wait_for_log(r"pg_queue connection to .* failed", timeout=30)
        back = time.monotonic() + 6  # longer than a third of the lease
        wait_until(lambda: time.monotonic() >= back, timeout=10)
        proxy.up()
        service.wait_for_log(  # (at its next attempt: up to 5 s away)
            r"taking back no expired lease for 12 s \(the database could not be used for "
            r"[0-9.]+ s: it could not be reached\)",
            timeout=30,
        )
        # Its claiming connection is open (it claimed and ran a job), and the other service's
        # job is still its own.
        uuids = enqueue(pg_conn, schema, queue, [job_message("record", evidence.path, 1)])
        wait_for_states(pg_conn, schema, uuids, {"done"}, timeout=30)
        state = sql.SQL("SELECT state FROM {} WHERE uuid = %s").format(table)
        assert pg_conn.execute(state, (other,)).fetchone() == ("running",)
        # Once the lease has passed, the expired lease is taken back.
        (row,) = wait_for_states(pg_conn, schema, [other], {"failed"}, timeout=30)
        assert row["outcome"] == "worker_lost"
        assert service.stop() == 0
    finally:
        proxy.down()


def node_connections(conn: Conn, node: str) -> int:
    """How many pg_queue connections the service *node* has open (its wake-up listener
    among them when it has pg_notify, which names the service otherwise)."""
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
        " AND datname = current_database()",
        (f"dispatcher-queue:{node}",),
    ).fetchone()
    return 0 if row is None else int(row[0])


def test_a_renewal_that_waits_for_the_reconnect_delay_says_so(
    start_service: Start,
    pg_dsn: str,
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    """A renewal that never reached the database (its connection waited out the delay
    before the next attempt to reconnect) was logged as the database not answering."""
    proxy = DatabaseProxy(pg_dsn)
    proxy.up()
    try:
        service = start_service(queue_config(proxy.dsn, schema, channel, lease=3))
        uuids = enqueue(
            pg_conn, schema, channel, [job_message("sleep_then_record", evidence.path, 14)]
        )
        evidence.wait_for(1)
        proxy.down()  # the delays between attempts grow past a renewal's 1 s
        service.wait_for_log(
            r"renewal of leases failed: no connection to the database: waiting [0-9.]+ s "
            r"more before reconnecting",
            timeout=20,
        )
        proxy.up()
        wait_for_states(pg_conn, schema, uuids, {"done"}, timeout=30)
    finally:
        proxy.down()
    # A renewal begun with less than its second left of the delay waits it out, then tries:
    # if that try does not answer either, it may say so, naming the wait, never without it.
    unexplained = r"renewal of leases failed: the database did not answer within [0-9.]+ s(?! \()"
    assert not re.search(unexplained, service.log, re.MULTILINE), service.log
