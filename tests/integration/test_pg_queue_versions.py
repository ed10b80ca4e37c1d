"""The pg_queue tables' version: services refuse older tables, ``dispatcherctl migrate`` upgrades.

Tables of an older version are made for real (only the first migrations applied, as the
release that shipped them did) or simulated by editing the version table after migrating.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from dispatcher.config import reset, setup
from dispatcher.publish import PublishError, aget_job, close_connections, get_job, jobs
from dispatcher.server.brokers.pg_queue.migrations import latest_version, plan
from dispatcher.server.ctl import main as dispatcherctl
from support.ctl_here import dispatcherctl as ctl_here
from support.durable import enqueue, job_message, migrated, queue_config, wait_for_states
from support.queue_rows import insert_job, job_row, unique_schema
from support.service import TASKS, Evidence, ServiceProcess, wait_until

pytestmark = pytest.mark.timeout(60)

Conn = psycopg.Connection[Any]
CTL = (sys.executable, "-m", "dispatcher.server.ctl")
Start = Callable[..., ServiceProcess]


def ctl(config: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatcher.server.ctl", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_config(folder: Path, config: dict[str, Any]) -> Path:
    path = folder / "dispatcher.yml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def versions(conn: Conn, schema: str) -> list[int]:
    query = sql.SQL("SELECT version FROM {}.migrations ORDER BY version")
    return [v for (v,) in conn.execute(query.format(sql.Identifier(schema))).fetchall()]


def at_version(conn: Conn, schema: str, version: int) -> str:
    """Make the tables of *schema* as migrations 1 to *version* alone make them."""
    work = plan(schema, 0)
    with conn.transaction():
        for statement in (*work.setup, *work.steps[: 2 * version]):  # each: its SQL, its row
            conn.execute(statement.encode())
    assert versions(conn, schema) == list(range(1, version + 1))
    return schema


def test_a_service_refuses_tables_of_an_older_version_with_one_line(
    start_service: Start, pg_dsn: str, pg_conn: Conn, channel: str
) -> None:
    latest = latest_version()
    assert latest >= 2
    schema = migrated(pg_conn, unique_schema())
    pg_conn.execute(
        sql.SQL("DELETE FROM {}.migrations WHERE version = %s").format(sql.Identifier(schema)),
        (latest,),
    )
    service = start_service(queue_config(pg_dsn, schema, channel), wait=False)
    assert service.wait() == 2
    assert service.log.strip().splitlines() == [
        f'dispatcher-standalone: the pg_queue tables in schema "{schema}" are at version '
        f"{latest - 1}, this version needs {latest}: "
        f"run 'dispatcherctl migrate --config {service.config_path}'"
    ]
    # The migrations check before they change anything: applying the last one again is a
    # no-op that records it, after which a service starts.
    upgraded = ctl(service.config_path, "migrate")
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"from version {latest - 1} to {latest}" in upgraded.stdout
    assert versions(pg_conn, schema) == list(range(1, latest + 1))
    start_service(queue_config(pg_dsn, schema, channel))


def test_the_queue_commands_refuse_tables_of_an_older_version_as_the_service_does(
    tmp_path: Path, pg_dsn: str, pg_conn: Conn, capsys: pytest.CaptureFixture[str]
) -> None:
    """Reading them failed on a column they lack (claims); the others wrote to them unchecked."""
    schema = at_version(pg_conn, unique_schema(), 1)
    insert_job(pg_conn, schema, queue="mail", uuid="u-failed", state="failed", attempts=3)
    path = write_config(tmp_path, queue_config(pg_dsn, schema, "mail"))
    refused = (
        f'dispatcherctl: the pg_queue tables in schema "{schema}" are at version 1, this '
        f"version needs {latest_version()}: run 'dispatcherctl migrate --config {path}'\n"
    )
    result = ctl(path, "jobs")
    assert (result.returncode, result.stdout, result.stderr) == (2, "", refused)
    try:
        for args in (
            ["jobs", "--uuid", "u-failed"],
            ["retry", "--uuid", "u-failed"],
            ["retry", "--failed"],
            ["purge", "--state", "failed", "--older-than", "0"],
            ["cancel-job", "--task", TASKS + "record"],
            ["submit", TASKS + "record", "--queue", "mail"],
            ["submit", TASKS + "record"],  # the config's only queue
        ):
            status = dispatcherctl([*args, "--config", str(path)])
            assert (status, *capsys.readouterr()) == (2, "", refused), args
    finally:
        close_connections()
        reset()
    rows = pg_conn.execute(
        sql.SQL("SELECT uuid, state FROM {}").format(sql.Identifier(schema, "jobs"))
    ).fetchall()
    assert rows == [("u-failed", "failed")]  # nothing written
    # Newer tables than this code knows (a rolling upgrade under way) are worked on.
    migrated(pg_conn, schema)
    pg_conn.execute(
        sql.SQL("INSERT INTO {} (version) VALUES (%s)").format(
            sql.Identifier(schema, "migrations")
        ),
        (latest_version() + 1,),
    )
    listed = ctl(path, "jobs", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [job["uuid"] for job in json.loads(listed.stdout)] == ["u-failed"]


def test_the_sdk_says_tables_of_an_older_version_need_migrate(pg_dsn: str, pg_conn: Conn) -> None:
    """Not the database's error alone: which tables, and what to run."""
    schema = at_version(pg_conn, unique_schema(), 1)
    setup(queue_config(pg_dsn, schema, "mail"))
    older = (
        f'the pg_queue tables in schema "{schema}" are older than version {latest_version()}, '
        "which this version of dispatcher needs: run 'dispatcherctl migrate' (the database "
        'said: column "claims" does not exist)'
    )
    try:
        for read in (lambda: get_job("u"), lambda: jobs(), lambda: anyio.run(aget_job, "u")):
            with pytest.raises(PublishError) as caught:
                read()
            assert str(caught.value) == older
        with psycopg.connect(pg_dsn) as caller, pytest.raises(PublishError) as caught:
            get_job("u", connection=caller)
        assert str(caught.value) == older
    finally:
        close_connections()
        reset()


def test_tables_whose_jobs_table_was_dropped_are_called_damaged_by_migrate_and_the_service(
    start_service: Start, tmp_path: Path, pg_dsn: str, pg_conn: Conn, channel: str
) -> None:
    schema = migrated(pg_conn, unique_schema())
    pg_conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, "jobs")))
    damaged = (
        f'the pg_queue tables in schema "{schema}" are damaged: migrations are recorded but '
        f"the jobs table is missing (dropped by hand?); restore it, or drop the queue's other "
        f'tables (DROP TABLE "{schema}".schedule_ticks, "{schema}".migrations) and run '
        "'dispatcherctl migrate' again"
    )
    config = queue_config(pg_dsn, schema, channel)
    for args in (["migrate"], ["migrate", "--print"]):
        refused = ctl(write_config(tmp_path, config), *args)
        assert (refused.returncode, refused.stderr) == (2, f"dispatcherctl: {damaged}\n")
    service = start_service(config, wait=False)
    assert service.wait() == 2
    assert service.log.strip().splitlines() == [f"dispatcher-standalone: {damaged}"]
    # Doing what it says mends the tables.
    names = {"schema": sql.Identifier(schema)}
    pg_conn.execute(
        sql.SQL("DROP TABLE {schema}.schedule_ticks, {schema}.migrations").format(**names)
    )
    mended = ctl(write_config(tmp_path, config), "migrate")
    assert mended.returncode == 0, mended.stderr


@pytest.mark.parametrize(
    "damage", ["DROP TABLE {schema}.migrations", "DELETE FROM {schema}.migrations"]
)
def test_a_jobs_table_without_recorded_migrations_is_called_damaged_and_left_alone(
    start_service: Start, tmp_path: Path, pg_dsn: str, pg_conn: Conn, channel: str, damage: str
) -> None:
    """The migrations table dropped or emptied by hand: migrate must not try to create the
    jobs table again (it failed on "already exists"), nor offer to drop it."""
    schema = migrated(pg_conn, unique_schema())
    names = {"schema": sql.Identifier(schema)}
    pg_conn.execute(sql.SQL(damage).format(**names))
    unrecorded = (
        f'the pg_queue tables in schema "{schema}" are damaged: a jobs table is there but no '
        f'migration is recorded in "{schema}".migrations (dropped or emptied by hand?); '
        "restore that table, or, if this jobs table is the application's, give the queue a "
        "schema of its own (brokers.pg_queue.schema)"
    )
    config = queue_config(pg_dsn, schema, channel)
    purge = ["purge", "--state", "done", "--older-than", "0"]
    for args in (["migrate"], ["migrate", "--print"], ["jobs"], purge):
        refused = ctl_here(write_config(tmp_path, config), *args)  # in this process
        assert (refused.returncode, refused.stderr) == (2, f"dispatcherctl: {unrecorded}\n")
    service = start_service(config, wait=False)
    assert service.wait() == 2
    assert service.log.strip().splitlines() == [f"dispatcher-standalone: {unrecorded}"]
    jobs = pg_conn.execute(sql.SQL("SELECT count(*) FROM {schema}.jobs").format(**names))
    assert jobs.fetchone() == (0,)  # still there


def test_migrate_upgrades_version_one_tables_and_their_jobs_run(
    start_service: Start,
    tmp_path: Path,
    pg_dsn: str,
    pg_conn: Conn,
    channel: str,
    evidence: Evidence,
) -> None:
    schema = at_version(pg_conn, unique_schema(), 1)
    waiting = enqueue(pg_conn, schema, channel, [job_message("record", evidence.path, "old")])
    failed = insert_job(pg_conn, schema, queue=channel, state="failed", attempts=3)
    config = queue_config(pg_dsn, schema, channel)
    path = write_config(tmp_path, config)

    printed = ctl(path, "migrate", "--print")
    assert printed.returncode == 0, printed.stderr
    assert f"version 1 -> {latest_version()}" in printed.stdout
    assert "VALUES (1)" not in printed.stdout  # only what is missing
    upgraded = ctl(path, "migrate")
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"from version 1 to {latest_version()}" in upgraded.stdout
    assert versions(pg_conn, schema) == list(range(1, latest_version() + 1))
    again = ctl(path, "migrate")
    assert f"are at version {latest_version()}: nothing to do" in again.stdout

    row = job_row(pg_conn, schema, failed)
    assert row is not None
    assert (row["state"], row["attempts"], row["claims"]) == ("failed", 3, 0)  # rows are kept
    start_service(config)
    (done,) = wait_for_states(pg_conn, schema, waiting, {"done"})
    assert done["attempts"] == 1
    assert [record["args"] for record in evidence.records()] == [["old"]]


def test_migrate_ends_rows_no_service_can_work_off_and_the_table_refuses_new_ones(
    pg_conn: Conn,
) -> None:
    schema = at_version(pg_conn, unique_schema(), 2)
    jobs = sql.Identifier(schema, "jobs")
    hostile = {
        "used-up": "'queued', 3, 3, NULL, 0",
        "no-lease": "'running', 1, 3, NULL, 1",
        "endless-lease": "'running', 1, 3, 'infinity', 1",
        "too-many": "'done', 5, 3, NULL, 5",
        "fine": "'queued', 0, 3, NULL, 0",
    }
    for uuid, values in hostile.items():
        pg_conn.execute(
            sql.SQL(
                "INSERT INTO {} (uuid, queue, task, message, state, attempts, max_attempts,"
                " lease_until, claims) VALUES (%s, 'q', 't', '{{}}', " + values + ")"
            ).format(jobs),
            (uuid,),
        )
    migrated(pg_conn, schema)

    rows = {uuid: job_row(pg_conn, schema, uuid) for uuid in hostile}
    ended = {uuid: (row["state"], row["last_error"]) for uuid, row in rows.items() if row}
    assert rows["too-many"] is not None
    assert rows["too-many"]["attempts"] == 3
    assert ended == {
        "used-up": ("failed", "rejected: waiting with no attempt left (3 of 3 used)"),
        "no-lease": ("failed", "rejected: running without a lease that can run out"),
        "endless-lease": ("failed", "rejected: running without a lease that can run out"),
        "too-many": ("done", None),
        "fine": ("queued", None),
    }
    refused = {
        "'queued', 1, 1, NULL, 0": "jobs_attempts_left",
        "'running', 1, 3, NULL, 1": "jobs_running_leased",
        "'done', 4, 3, NULL, 4": "jobs_attempts_left",
    }
    for values, check in refused.items():
        with pytest.raises(psycopg.errors.CheckViolation, match=check):
            pg_conn.execute(
                sql.SQL(
                    "INSERT INTO {} (uuid, queue, task, message, state, attempts, max_attempts,"
                    " lease_until, claims) VALUES ('new', 'q', 't', '{{}}', " + values + ")"
                ).format(jobs)
            )


def test_migrate_gives_up_on_a_lock_held_elsewhere_naming_the_holder(
    tmp_path: Path, pg_dsn: str, pg_conn: Conn, channel: str
) -> None:
    schema = at_version(pg_conn, unique_schema(), 2)
    path = write_config(tmp_path, queue_config(pg_dsn, schema, channel))
    with psycopg.connect(pg_dsn, application_name="forgotten-session") as holder:
        holder.execute(sql.SQL("SELECT count(*) FROM {}.jobs").format(sql.Identifier(schema)))
        started = time.monotonic()
        result = ctl(path, "--timeout", "0.5", "migrate")
        took = time.monotonic() - started
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"dispatcherctl: gave up after 0.5 s waiting for a lock on the pg_queue tables in schema "
        f'"{schema}" (--timeout S waits longer); nothing was changed; held by: pid '
    )
    assert "(forgotten-session, idle in transaction, transaction open" in result.stderr
    assert took < 30
    assert versions(pg_conn, schema) == [1, 2]
    assert ctl(path, "migrate").returncode == 0  # once the transaction is over


@pytest.mark.parametrize("args", [(), ("--print",)], ids=["migrate", "print"])
def test_migrate_bounds_its_wait_to_read_the_version_of_up_to_date_tables(
    tmp_path: Path, pg_dsn: str, pg_conn: Conn, channel: str, args: tuple[str, ...]
) -> None:
    schema = migrated(pg_conn, unique_schema())
    path = write_config(tmp_path, queue_config(pg_dsn, schema, channel))
    with psycopg.connect(pg_dsn, application_name="maintenance") as holder:
        table = sql.Identifier(schema, "migrations")
        holder.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(table))
        started = time.monotonic()
        result = ctl(path, "--timeout", "0.5", "migrate", *args, timeout=20)
        took = time.monotonic() - started
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith(
        f"dispatcherctl: gave up after 0.5 s waiting for a lock on the pg_queue tables in schema "
        f'"{schema}" (--timeout S waits longer); nothing was changed; held by: pid '
    )
    assert "(maintenance, idle in transaction, transaction open" in result.stderr
    assert took < 10


def test_migrate_waits_for_a_migrate_in_progress_past_its_lock_timeout(
    tmp_path: Path, pg_dsn: str, pg_conn: Conn, channel: str
) -> None:
    schema = at_version(pg_conn, unique_schema(), 2)
    path = write_config(tmp_path, queue_config(pg_dsn, schema, channel))
    key = f"dispatcher.migrate:{schema}"
    with psycopg.connect(pg_dsn) as other:  # a migrate in progress holds this lock
        other.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (key,))
        process = subprocess.Popen(
            [*CTL, "--timeout", "0.5", "migrate", "--config", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            waiting = (
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND wait_event = 'advisory' AND datname = current_database()"
            )
            wait_until(lambda: pg_conn.execute(waiting).fetchone() == (1,), timeout=20)
            time.sleep(1)  # not a wait for anything: past the 0.5 s it would give up after
            assert process.poll() is None
        finally:
            other.rollback()
        stdout, stderr = process.communicate(timeout=30)
    assert (process.returncode, stderr) == (0, "")
    assert f"from version 2 to {latest_version()}" in stdout


@pytest.mark.parametrize("how", ["migrate", "print"])
def test_a_statement_timeout_does_not_cut_the_wait_for_a_migrate_in_progress(
    tmp_path: Path, pg_dsn: str, pg_conn: Conn, channel: str, how: str
) -> None:
    """The role's statement_timeout (here the conninfo's) would cancel the wait for another
    migration: it does not apply to that wait, in migrate or in the script it prints."""
    schema = at_version(pg_conn, unique_schema(), 2)
    impatient = make_conninfo(pg_dsn, options="-c statement_timeout=500")
    path = write_config(tmp_path, queue_config(impatient, schema, channel))
    printed = ctl(path, "migrate", "--print")
    assert printed.returncode == 0, printed.stderr
    key = f"dispatcher.migrate:{schema}"
    outcome: list[BaseException | None] = []

    def apply_script() -> None:
        try:
            with psycopg.connect(impatient, autocommit=True) as dba:
                dba.execute(printed.stdout.encode())
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    with psycopg.connect(pg_dsn) as other:  # a migrate in progress holds this lock
        other.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (key,))
        if how == "migrate":
            process = subprocess.Popen(
                [*CTL, "migrate", "--config", str(path)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        else:
            applying = threading.Thread(target=apply_script)
            applying.start()
        try:
            waiting = (
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND wait_event = 'advisory' AND datname = current_database()"
            )
            wait_until(lambda: pg_conn.execute(waiting).fetchone() == (1,), timeout=20)
            time.sleep(1)  # not a wait for anything: past the 0.5 s it would be cancelled after
            still = process.poll() is None if how == "migrate" else applying.is_alive()
        finally:
            other.rollback()
    if how == "migrate":
        stdout, stderr = process.communicate(timeout=30)
        assert (process.returncode, stderr) == (0, "")
        assert f"from version 2 to {latest_version()}" in stdout
    else:
        applying.join(timeout=30)
        assert outcome == [None]
    assert still
    assert versions(pg_conn, schema) == list(range(1, latest_version() + 1))


def test_a_migrate_whose_connection_is_lost_says_nothing_was_changed(
    tmp_path: Path, pg_dsn: str, pg_conn: Conn, channel: str
) -> None:
    schema = at_version(pg_conn, unique_schema(), 2)
    path = write_config(tmp_path, queue_config(pg_dsn, schema, channel))
    with psycopg.connect(pg_dsn) as holder:  # the upgrade of jobs waits behind it
        holder.execute(sql.SQL("SELECT count(*) FROM {}.jobs").format(sql.Identifier(schema)))
        process = subprocess.Popen(
            [*CTL, "--timeout", "30", "migrate", "--config", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        blocked = (
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND wait_event = 'relation' AND datname = current_database()"
        )
        wait_until(lambda: pg_conn.execute(blocked).fetchone() is not None, timeout=20)
        pg_conn.execute(f"SELECT pg_terminate_backend(({blocked}))")
        stdout, stderr = process.communicate(timeout=30)
    assert (process.returncode, stdout) == (1, "")
    assert "the database stopped answering during the migration" in stderr
    assert stderr.endswith(
        "the migration is one transaction: nothing was changed, unless it was lost as it "
        "committed; migrate again (it says which)\n"
    )
    assert versions(pg_conn, schema) == [1, 2]
    assert ctl(path, "migrate").returncode == 0


def test_the_printed_migration_bounds_its_lock_waits_as_migrate_does(
    pg_dsn: str, pg_conn: Conn, channel: str, tmp_path: Path
) -> None:
    """Applied with psql behind a long transaction, the script gives up, changing nothing,
    instead of queueing for its ACCESS EXCLUSIVE lock, with every publisher behind it."""
    schema = at_version(pg_conn, unique_schema(), 1)
    path = write_config(tmp_path, queue_config(pg_dsn, schema, channel))
    printed = ctl(path, "migrate", "--print", "--timeout", "0.5")
    assert printed.returncode == 0, printed.stderr
    assert "SET LOCAL lock_timeout = '500ms';" in printed.stdout
    assert "run it again" in printed.stdout
    with psycopg.connect(pg_dsn) as holder, psycopg.connect(pg_dsn, autocommit=True) as dba:
        holder.execute(sql.SQL("SELECT count(*) FROM {}.jobs").format(sql.Identifier(schema)))
        dba.execute("SET statement_timeout = '20s'")  # unbounded, the script would hang here
        began = time.monotonic()
        with pytest.raises(psycopg.errors.LockNotAvailable):
            dba.execute(printed.stdout.encode())
        assert time.monotonic() - began < 10
        holder.rollback()
    assert versions(pg_conn, schema) == [1]  # nothing changed
    with psycopg.connect(pg_dsn, autocommit=True) as dba:  # once the holder is gone, it works
        dba.execute(printed.stdout.encode())
    assert versions(pg_conn, schema) == list(range(1, latest_version() + 1))


def test_the_printed_migration_waits_for_another_migration_whatever_the_lock_timeout(
    pg_dsn: str, pg_conn: Conn, channel: str, tmp_path: Path
) -> None:
    """As migrate, the script waits for a concurrent migration (its advisory lock) however
    long it takes, even under a role's or session's lock_timeout shorter than that wait."""
    schema = at_version(pg_conn, unique_schema(), 1)
    path = write_config(tmp_path, queue_config(pg_dsn, schema, channel))
    printed = ctl(path, "migrate", "--print", "--timeout", "5")
    assert printed.returncode == 0, printed.stderr
    lock = printed.stdout[printed.stdout.index("SELECT pg_catalog.pg_advisory_xact_lock") :]
    lock = lock[: lock.index(";")]
    with psycopg.connect(pg_dsn) as other, psycopg.connect(pg_dsn, autocommit=True) as dba:
        other.execute(lock)  # another migration, under way
        dba.execute("SET lock_timeout = '200ms'")
        finished = threading.Event()
        failures: list[BaseException] = []

        def apply() -> None:
            try:
                dba.execute(printed.stdout.encode())
            except psycopg.Error as exc:
                failures.append(exc)
            else:
                finished.set()

        applying = threading.Thread(target=apply)
        applying.start()
        # It waits for the other migration's lock, past its session's lock_timeout.
        wait_until(lambda: advisory_lock_waiters(pg_conn) == 1, 10)
        # Longer than the session's lock_timeout: a bounded advisory wait would give up here.
        assert not finished.wait(0.5)
        other.rollback()
        applying.join(10)
        assert failures == []
        assert finished.is_set()
    assert versions(pg_conn, schema) == list(range(1, latest_version() + 1))


def advisory_lock_waiters(conn: Conn) -> int:
    """How many sessions of this database wait for an advisory lock."""
    row = conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    ).fetchone()
    assert row is not None
    return int(row[0])
