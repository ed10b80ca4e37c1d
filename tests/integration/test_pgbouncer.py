"""Through a real pgbouncer, in transaction and in session mode (skipped where none is installed).

A pool of one server session: every client's transactions run on the same session, one
after the other, so that whatever a client leaves on it (a setting, a prepared statement, a
LISTEN) is met by the next, as a team running pgbouncer in production would meet it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from dispatcher.config import reset, setup
from dispatcher.publish import (
    abatch,
    aclose_connections,
    aget_job,
    asubmit_task,
    batch,
    close_connections,
    get_job,
    submit_task,
)
from support.ctl_here import dispatcherctl
from support.durable import enqueue, job_message, migrated, queue_config, wait_for_states
from support.metrics import Samples, free_port, scrape
from support.pgbouncer import NOT_INSTALLED, Pgbouncer, pgbouncer_binary, running_pgbouncer
from support.pgbouncer import server_sessions as sessions_of
from support.queue_rows import unique_schema
from support.service import Evidence, ServiceProcess, wait_until

pytestmark = [
    pytest.mark.skipif(pgbouncer_binary() is None, reason=NOT_INSTALLED),
    pytest.mark.timeout(60),
]

Conn = psycopg.Connection[Any]
Start = Callable[..., ServiceProcess]


@pytest.fixture
def transaction_pool(pg_dsn: str) -> Iterator[Pgbouncer]:
    """A pgbouncer in transaction mode with one server session, for the test alone (what a
    test leaves on the session is its own)."""
    with running_pgbouncer(pg_dsn, "transaction") as bouncer:
        yield bouncer


@pytest.fixture
def schema(pg_conn: Conn) -> str:
    return migrated(pg_conn, unique_schema())


def untouched(pg_dsn: str) -> tuple[object, ...]:
    """What a server session holds that no client changed (the server's defaults)."""
    with psycopg.connect(pg_dsn, prepare_threshold=None) as fresh:
        row = fresh.execute(
            "SELECT current_setting('lock_timeout'), current_setting('statement_timeout'),"
            " current_setting('search_path'), 0::bigint, ARRAY[]::text[]"
        ).fetchone()
    assert row is not None
    return tuple(row)


def pooled_config(tmp_path: Path, conninfo: str, schema: str, queue: str) -> Path:
    """A config file whose conninfo leads to a transaction-mode pool, marked so."""
    brokers = {
        "pg_notify": {
            "conninfo": conninfo,
            "channels": [f"{queue}_notify"],
            "transaction_pooler": True,
        },
        "pg_queue": {
            "conninfo": conninfo,
            "schema": schema,
            "queues": [queue],
            "transaction_pooler": True,
        },
    }
    path = tmp_path / "dispatcher.yml"
    path.write_text(json.dumps({"version": 1, "brokers": brokers}), encoding="utf-8")
    return path


def failed_jobs(pg_conn: Conn, schema: str, queue: str) -> None:
    """Eight failed jobs in *queue*, each with an ``on_duplicate``: ``retry --failed`` queues
    them again one by one, the same statement each time (prepared at its fifth run)."""
    messages = [job_message("record", n, on_duplicate="discard") for n in range(8)]
    enqueue(pg_conn, schema, queue, messages)
    pg_conn.execute(
        sql.SQL(
            "UPDATE {}.jobs SET state = 'failed', outcome = 'error', finished_at = now()"
        ).format(sql.Identifier(schema))
    )


def test_queue_commands_leave_nothing_on_the_pools_session(
    transaction_pool: Pgbouncer,
    pg_dsn: str,
    pg_conn: Conn,
    schema: str,
    channel: str,
    tmp_path: Path,
) -> None:
    """``retry`` of many jobs prepared its statement on the pool's session (left there for
    the next client, whose psycopg names its own ``_pg3_0`` too), and ``jobs``, ``purge``
    and ``cancel-job`` set their ``lock_timeout`` (``--timeout``) on it: another client's
    statements were then cancelled after that long waiting for a lock."""
    failed_jobs(pg_conn, schema, channel)
    config = pooled_config(tmp_path, transaction_pool.dsn, schema, channel)
    commands = [
        ("jobs", "--timeout", "7"),
        ("purge", "--state", "done", "--older-than", "0", "--timeout", "7"),
        ("cancel-job", "--task", "nothing.here", "--timeout", "7"),
    ]
    retried = dispatcherctl(config, "retry", "--failed")
    assert "retried 8 failed jobs" in retried.stdout, retried
    for command in commands:
        done = dispatcherctl(config, *command)
        assert done.returncode == 0, done
    assert sessions_of(transaction_pool) == [untouched(pg_dsn)]


def test_services_sharing_a_transaction_pool_run_each_job_once_and_leave_nothing_on_it(
    transaction_pool: Pgbouncer,
    pg_dsn: str,
    start_service: Start,
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    """Two services and a publisher share one server session of a transaction-mode pool:
    every job ran once, a long one kept its lease (renewed), a failed one was retried, the
    queue-depth sampler exported its gauges. The wake-up listener LISTENed through the
    pool (lost to it: the LISTEN stayed on the shared session, whose notifications pgbouncer
    then dropped, or handed to whichever client it lent the session to)."""
    port = free_port()
    services = []
    for n in range(2):
        config = queue_config(
            transaction_pool.dsn, schema, channel, transaction_pooler=True, poll_interval=0.2
        )
        config["service"]["node_id"] = f"pooled-{n}"
        if n == 0:
            config["service"]["metrics"] = {"host": "127.0.0.1", "port": port}
        services.append(start_service(config))
    slow = job_message("sleep_then_record", evidence.path, 3, "slow")  # > the lease of 2 s
    retried = job_message("fail_first", str(evidence.path) + ".first")
    quick = [job_message("record", evidence.path, n) for n in range(20)]
    uuids = enqueue(pg_conn, schema, channel, [slow, retried, *quick])
    rows = wait_for_states(pg_conn, schema, uuids, {"done"}, timeout=30)
    assert [row["attempts"] for row in rows] == [1, 2, *[1] * 20]
    ran = sorted(str(record.get("args", [None])[0]) for record in evidence.records())
    assert ran == sorted([*map(str, range(20)), "None", "None"])  # the slow one's start, end

    def sampled() -> Samples | None:
        found = scrape(port)
        claims = found.get(("dispatcher_pg_queue_claims_total", (("queue", channel),)))
        return found if claims is not None and claims > 0 else None

    assert (
        wait_until(sampled, timeout=15)[("dispatcher_pg_queue_ready_jobs", (("queue", channel),))]
        == 0
    )
    for service in services:
        assert "prepared statement" not in service.log, service.log
    assert sessions_of(transaction_pool) == [untouched(pg_dsn)]


@pytest.fixture(scope="module")
def session_pool(pg_dsn: str) -> Iterator[Pgbouncer]:
    """A pgbouncer in session mode, for the module (a server session per client)."""
    with running_pgbouncer(pg_dsn, "session", pool_size=10) as bouncer:
        yield bouncer


def test_a_service_listening_through_a_transaction_pool_says_its_notifications_are_lost(
    transaction_pool: Pgbouncer,
    start_service: Start,
    service_config: dict[str, Any],
    pg_conn: Conn,
    schema: str,
    channel: str,
) -> None:
    """Its config does not say so (no ``transaction_pooler``): it said it was listening, lost
    every task sent to it, and only now and then logged that a self-check 'took longer than'
    its timeout. So did its durable queue's wake-up listener, without a word."""
    service_config["brokers"]["pg_notify"]["conninfo"] = transaction_pool.dsn
    queue = f"{channel}_durable"
    service_config["brokers"]["pg_queue"] = {
        "conninfo": transaction_pool.dsn,
        "schema": schema,
        "queues": [queue],
    }
    service = start_service(service_config, wait=False)
    service.wait_for_log(
        r"pg_notify connection to .* failed \(notifications do not arrive \(a probe did not "
        r"come back within 2 s\): a pooler in transaction mode\? .* point "
        r"brokers.pg_notify.conninfo of the services at PostgreSQL or a session-mode pool\)"
    )
    service.wait_for_log(
        r"wake-up connection to .* failed \(notifications do not arrive .* set "
        r"brokers.pg_queue.transaction_pooler: true, or point its conninfo at PostgreSQL or a "
        r"session-mode pool\)"
    )
    assert "listening on channels" not in service.log


def test_a_service_listening_through_a_session_pool_gets_its_tasks_and_commands(
    session_pool: Pgbouncer,
    start_service: Start,
    service_config: dict[str, Any],
    tmp_path: Path,
    channel: str,
    evidence: Evidence,
) -> None:
    """A pool in session mode keeps the LISTEN's session for its client: the probe comes
    back, tasks and control commands arrive, replies come back through the pool too."""
    service_config["brokers"]["pg_notify"]["conninfo"] = session_pool.dsn
    service = start_service(service_config)
    setup(service_config)
    try:
        submit_task("support.service_tasks.record", args=[str(evidence.path), "pooled"])
        evidence.wait_for(1)
    finally:
        close_connections()
        reset()
    config = tmp_path / "ctl.yml"
    config.write_text(json.dumps(service_config), encoding="utf-8")
    alive = dispatcherctl(config, "alive")
    assert alive.returncode == 0, alive
    assert "do not arrive" not in service.log


@pytest.mark.parametrize("marked", [False, True], ids=["unmarked", "transaction_pooler"])
def test_publishers_through_a_transaction_pool_prepare_nothing_said_or_not(
    transaction_pool: Pgbouncer, pg_dsn: str, pg_conn: Conn, schema: str, channel: str, marked: bool
) -> None:
    """Two of the SDK's connections (a thread's and an event loop's) share the pool's one
    server session. Unmarked, each prepared its statements there at their fifth run, under
    the same names: the second was refused (``prepared statement "_pg3_0" already exists``),
    or ran the other's statement. Every way to publish, sync and async, durable or not."""
    queue = f"{channel}_durable"
    brokers = {
        "pg_notify": {
            "conninfo": transaction_pool.dsn,
            "channels": [channel],
            "transaction_pooler": marked,
        },
        "pg_queue": {
            "conninfo": transaction_pool.dsn,
            "schema": schema,
            "queues": [queue],
            "transaction_pooler": marked,
        },
    }
    setup({"version": 1, "brokers": brokers})
    name = "support.service_tasks.record"
    try:
        for n in range(6):
            submit_task(name, args=[n], queue=channel)
            job = submit_task(name, args=[n], queue=queue)
            with batch():
                submit_task(name, args=[n], queue=channel)
                submit_task(name, args=[n], queue=queue)
            assert get_job(job.uuid) is not None

        async def publish() -> None:
            for n in range(6):
                await asubmit_task(name, args=[n], queue=channel)
                job = await asubmit_task(name, args=[n], queue=queue)
                async with abatch():
                    await asubmit_task(name, args=[n], queue=channel)
                    await asubmit_task(name, args=[n], queue=queue)
                assert await aget_job(job.uuid) is not None
            await aclose_connections()

        asyncio.run(publish())
    finally:
        close_connections()
        reset()
    stored = pg_conn.execute(
        sql.SQL("SELECT count(*) FROM {}.jobs").format(sql.Identifier(schema))
    ).fetchone()
    assert stored == (24,)
    assert sessions_of(transaction_pool) == [untouched(pg_dsn)]


def test_a_service_finds_its_queue_behind_a_transaction_pool_and_sets_nothing_on_it(
    transaction_pool: Pgbouncer,
    pg_dsn: str,
    start_service: Start,
    pg_conn: Conn,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    """Its config does not say ``transaction_pooler``: its queue connections gave their
    ``statement_timeout`` of 25 s, ``enable_seqscan = off``, ``jit = off`` and the rest to the
    pool's session, which every other client then had (an application's long report was
    cancelled after 25 s)."""
    config = queue_config(transaction_pool.dsn, schema, channel, poll_interval=0.2)
    service = start_service(config)
    uuids = enqueue(pg_conn, schema, channel, [job_message("record", evidence.path, 1)])
    wait_for_states(pg_conn, schema, uuids, {"done"})
    with psycopg.connect(transaction_pool.dsn, prepare_threshold=None) as other:
        row = other.execute(
            "SELECT current_setting('statement_timeout'), current_setting('enable_seqscan'),"
            " current_setting('jit'), current_setting('search_path')"
        ).fetchone()
    with psycopg.connect(pg_dsn) as fresh:
        assert (
            row
            == fresh.execute(
                "SELECT current_setting('statement_timeout'), current_setting('enable_seqscan'),"
                " current_setting('jit'), current_setting('search_path')"
            ).fetchone()
        )
    service.wait_for_log(
        r"the durable queue's connections to .* go through a pooler in transaction mode .*"
        r" Set brokers.pg_queue.transaction_pooler: true"
    )


def test_queue_commands_set_nothing_through_a_pool_the_config_does_not_name(
    transaction_pool: Pgbouncer,
    pg_dsn: str,
    pg_conn: Conn,
    schema: str,
    channel: str,
    tmp_path: Path,
) -> None:
    """Without ``transaction_pooler`` in its config, ``dispatcherctl jobs --timeout 7`` left
    its ``lock_timeout`` of 7 s on the pool's session, and ``retry`` its prepared statement."""
    failed_jobs(pg_conn, schema, channel)
    brokers = {
        "pg_queue": {"conninfo": transaction_pool.dsn, "schema": schema, "queues": [channel]}
    }
    config = tmp_path / "dispatcher.yml"
    config.write_text(json.dumps({"version": 1, "brokers": brokers}), encoding="utf-8")
    retried = dispatcherctl(config, "retry", "--failed")
    assert "retried 8 failed jobs" in retried.stdout, retried
    listed = dispatcherctl(config, "jobs", "--timeout", "7")
    assert listed.returncode == 0, listed
    assert sessions_of(transaction_pool) == [untouched(pg_dsn)]


def test_replies_lost_in_a_transaction_pool_are_said_to_be(
    transaction_pool: Pgbouncer,
    start_service: Start,
    service_config: dict[str, Any],
    tmp_path: Path,
) -> None:
    """A control client whose config does not say ``transaction_pooler`` LISTENed for the
    replies through the pool, which lost them: ``dispatcherctl alive`` said only that the
    service, alive (it listens directly), did not answer."""
    service_config["service"]["node_id"] = "direct-node"
    start_service(service_config)
    ctl = {**service_config, "brokers": {"pg_notify": dict(service_config["brokers"]["pg_notify"])}}
    ctl["brokers"]["pg_notify"]["conninfo"] = transaction_pool.dsn
    config = tmp_path / "ctl.yml"
    config.write_text(json.dumps(ctl), encoding="utf-8")
    alive = dispatcherctl(config, "alive", "--timeout", "1")
    assert alive.returncode == 1, alive
    assert "no answer from direct-node: the replies were waited for through a pooler" in (
        alive.stderr
    ), alive.stderr
