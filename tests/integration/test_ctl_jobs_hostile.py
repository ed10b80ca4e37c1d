"""dispatcherctl jobs, retry and purge against races, locks, odd rows and odd arguments."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.types.json import set_json_loads

from dispatcher.config import reset, setup
from dispatcher.publish import close_connections, get_job
from support.durable import migrated
from support.proxy import DatabaseProxy
from support.queue_rows import insert_job, job_row, unique_schema
from support.service import wait_until

Conn = psycopg.Connection[Any]


def command(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "dispatcher.server.ctl", *args, "--config", str(config)]


def ctl(config: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(config, *args), capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def schema(pg_conn: Conn) -> str:
    return migrated(pg_conn, unique_schema())


def write_config(path: Path, dsn: str, schema: str) -> Path:
    queue = {"conninfo": dsn, "queues": ["jobs", "mail"], "schema": schema}
    path.write_text(json.dumps({"version": 1, "brokers": {"pg_queue": queue}}))
    return path


@pytest.fixture
def config(tmp_path: Path, pg_dsn: str, schema: str) -> Path:
    return write_config(tmp_path / "dispatcher.yml", pg_dsn, schema)


def set_columns(conn: Conn, schema: str, uuid: str, **values: str) -> None:
    """Set columns of job *uuid* to literal values (``'infinity'``, ``'2020-01-01'``...)."""
    assignments = sql.SQL(", ").join(
        sql.SQL("{} = {}").format(sql.Identifier(column), sql.Literal(value))
        for column, value in values.items()
    )
    conn.execute(
        sql.SQL("UPDATE {}.jobs SET {} WHERE uuid = %s").format(
            sql.Identifier(schema), assignments
        ),
        (uuid,),
    )


def run_while_blocked(
    pg_conn: Conn, holder: Conn, args: list[str]
) -> subprocess.CompletedProcess[str]:
    """Run dispatcherctl *args* while *holder*'s open transaction holds its locks.

    *holder* commits once dispatcherctl waits for one of its locks (or has already ended):
    what PostgreSQL then does with the row dispatcherctl waited for is what is tested.
    """
    holder_pid = holder.info.backend_pid
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:

        def blocked_or_done() -> bool:
            if process.poll() is not None:
                return True
            waiting = pg_conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                (holder_pid,),
            ).fetchone()
            return bool(waiting and waiting[0])

        wait_until(blocked_or_done, 30)
        holder.commit()
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


# -- races ---------------------------------------------------------------------------------


def test_purge_leaves_a_job_a_concurrent_retry_queued_again(
    config: Path, pg_conn: Conn, pg_dsn: str, schema: str
) -> None:
    requeued = insert_job(pg_conn, schema, state="failed")
    other = insert_job(pg_conn, schema, state="failed")
    for uuid in (requeued, other):
        set_columns(pg_conn, schema, uuid, finished_at="2020-01-01")
    jobs = sql.SQL("{}.jobs").format(sql.Identifier(schema))
    with psycopg.connect(pg_dsn) as retry:
        # What `retry` does, its transaction still open when the purge starts.
        retry.execute(
            sql.SQL("SELECT id FROM {} WHERE uuid = %s FOR UPDATE").format(jobs), (requeued,)
        )
        retry.execute(
            sql.SQL(
                "UPDATE {} SET state = 'queued', attempts = 0, run_after = now(),"
                " finished_at = NULL WHERE uuid = %s"
            ).format(jobs),
            (requeued,),
        )
        purged = run_while_blocked(
            pg_conn, retry, command(config, "purge", "--state", "failed", "--older-than", "60")
        )
    assert (purged.returncode, purged.stdout) == (
        0,
        "purged 1 failed job that ended more than 60 s ago\n",
    ), purged.stderr
    survivor = job_row(pg_conn, schema, requeued)
    assert survivor is not None
    assert survivor["state"] == "queued"
    assert job_row(pg_conn, schema, other) is None


def test_retry_failed_leaves_a_job_another_session_changed_meanwhile(
    config: Path, pg_conn: Conn, pg_dsn: str, schema: str
) -> None:
    uuid = insert_job(pg_conn, schema, queue="mail", state="failed", on_duplicate="discard")
    with psycopg.connect(pg_dsn) as other:
        other.execute(
            sql.SQL("UPDATE {}.jobs SET state = 'cancelled' WHERE uuid = %s").format(
                sql.Identifier(schema)
            ),
            (uuid,),
        )
        retried = run_while_blocked(pg_conn, other, command(config, "retry", "--failed"))
    assert (retried.returncode, retried.stdout) == (0, "retried 0 failed jobs\n"), retried.stderr
    assert job_row(pg_conn, schema, uuid)["state"] == "cancelled"  # type: ignore[index]


# -- arguments -----------------------------------------------------------------------------


def test_retry_of_an_empty_uuid_is_refused_and_retries_nothing(
    config: Path, pg_conn: Conn, schema: str
) -> None:
    failed = [insert_job(pg_conn, schema, state="failed", attempts=3) for _ in range(2)]
    result = ctl(config, "retry", "--uuid", "")
    assert result.returncode == 2
    assert "argument --uuid: must not be empty" in result.stderr
    assert [job_row(pg_conn, schema, u)["state"] for u in failed] == ["failed", "failed"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("args", "option", "said"),
    [
        (["jobs", "--uuid", ""], "--uuid", "must not be empty"),
        (["jobs", "--queue", ""], "--queue", "must not be empty"),
        (["jobs", "--task", ""], "--task", "must not be empty"),
        (["retry", "--failed", "--queue", ""], "--queue", "must not be empty"),
        (["jobs", "--queue", "\udcff"], "--queue", "must be UTF-8 text"),
        (["jobs", "--task", "\udcff"], "--task", "must be UTF-8 text"),
        (["jobs", "--uuid", "\udcff"], "--uuid", "must be UTF-8 text"),
        (["retry", "--uuid", "\udcff"], "--uuid", "must be UTF-8 text"),
        (["retry", "--failed", "--queue", "\udcff"], "--queue", "must be UTF-8 text"),
        (["submit", "\udcff"], "task", "must be UTF-8 text"),
        (["submit", "app.tasks.t", "--queue", "\udcff"], "--queue", "must be UTF-8 text"),
        (["submit", "app.tasks.t", "--uuid", ""], "--uuid", "must not be empty"),
        (["cancel", "--uuid", "\udcff"], "--uuid", "must be UTF-8 text"),
        (["cancel", "--task", "\udcff"], "--task", "must be UTF-8 text"),
        (["cancel", "--uuid", ""], "--uuid", "must not be empty"),
        (["running", "--uuid", "\udcff"], "--uuid", "must be UTF-8 text"),
        (["running", "--task", "\udcff"], "--task", "must be UTF-8 text"),
        (["run", "\udcff"], "task", "must be UTF-8 text"),
        (["run", "app.tasks.t", "--args", '["\udcff"]'], "--args", "must be UTF-8 text"),
        (["cancel", "--kwargs", '{"\udcff": 1}'], "--kwargs", "must be UTF-8 text"),
        (["submit", "app.tasks.t", "--args", '["\udcff"]'], "--args", "must be UTF-8 text"),
        (["submit", "app.tasks.t", "--args", "[" * 60000 + "]" * 60000], "--args", "nested"),
        (["purge", "--state", "done", "--older-than", "1e20"], "--older-than", "'1e20'"),
    ],
    ids=lambda value: repr(value)[:40],
)
def test_unusable_arguments_are_usage_errors_naming_the_option(
    config: Path, args: list[str], option: str, said: str
) -> None:
    # A byte of argv that is not UTF-8 reaches Python as a lone surrogate ("\udcff").
    result = ctl(config, *args)
    assert (result.returncode, result.stdout) == (2, "")
    assert f"argument {option}: " in result.stderr
    assert said in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr) < 2000


@pytest.mark.parametrize("command", [["jobs"], ["retry", "--failed"], ["migrate"]])
def test_expected_replies_is_refused_where_no_service_is_asked(
    config: Path, command: list[str]
) -> None:
    result = ctl(config, *command, "--expected-replies", "1")
    assert (result.returncode, result.stdout) == (2, "")
    assert f"--expected-replies: {command[0]} asks no service, so waits for none" in result.stderr


def test_purge_takes_up_to_a_year(config: Path) -> None:
    result = ctl(config, "purge", "--state", "done", "--older-than", "31536000")
    assert (result.returncode, result.stdout) == (
        0,
        "purged 0 done jobs that ended more than 31536000 s ago\n",
    ), result.stderr


# -- locks ---------------------------------------------------------------------------------


@pytest.fixture
def locked_table(pg_dsn: str, schema: str) -> Iterator[Conn]:
    """A session holding the jobs table in ACCESS EXCLUSIVE mode (until the test ends)."""
    with psycopg.connect(pg_dsn) as holder:
        holder.execute(
            sql.SQL("LOCK TABLE {}.jobs IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema))
        )
        yield holder


@pytest.mark.parametrize(
    "args",
    [
        ["jobs", "--timeout", "0.5"],
        ["--timeout", "0.5", "retry", "--failed"],
        ["retry", "--uuid", "u-1", "--timeout", "0.5"],
        ["purge", "--state", "done", "--older-than", "0", "--timeout", "0.5"],
        ["jobs"],
    ],
    ids=" ".join,
)
def test_a_locked_jobs_table_is_waited_for_timeout_seconds_then_named(
    config: Path, locked_table: Conn, args: list[str]
) -> None:
    started = time.monotonic()
    result = ctl(config, *args, timeout=30)
    waited = 2 if "--timeout" not in args else 0.5
    assert waited <= time.monotonic() - started < 20
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        "dispatcherctl: the jobs table (or a job's row) is locked by another session: gave up "
        f"after {waited:g} s (--timeout S waits longer)\n"
    )


def test_a_timeout_past_what_postgresql_takes_waits_as_long_as_it_can(config: Path) -> None:
    result = ctl(config, "jobs", "--timeout", "3000000")
    assert (result.returncode, result.stderr) == (0, "")


def test_a_cancelled_statement_is_named_as_such(
    config: Path, pg_conn: Conn, locked_table: Conn
) -> None:
    process = subprocess.Popen(
        command(config, "jobs", "--timeout", "30"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        holder = locked_table.info.backend_pid

        def blocked() -> list[int]:
            rows = pg_conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                (holder,),
            ).fetchall()
            return [pid for (pid,) in rows]

        [waiting] = wait_until(blocked, 30)
        pg_conn.execute("SELECT pg_cancel_backend(%s)", (waiting,))
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 1
    assert stderr.startswith(
        "dispatcherctl: the database cancelled a statement on the jobs table: "
    )
    assert "cannot read" not in stderr
    assert len(stderr.splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["jobs"], "read the queue in"),
        (["retry", "--failed"], "change the queue in"),
        (["purge", "--state", "done", "--older-than", "0"], "change the queue in"),
    ],
)
def test_a_connection_lost_in_the_middle_of_a_command_is_named_as_such(
    tmp_path: Path,
    pg_dsn: str,
    schema: str,
    pg_conn: Conn,
    locked_table: Conn,
    args: list[str],
    said: str,
) -> None:
    """The database stopped answering (a partition, a crash) while the command ran: said so,
    not taken for a lock (only PostgreSQL's own lock_timeout says locked)."""
    proxy = DatabaseProxy(pg_dsn)
    proxy.up()
    try:
        config = write_config(tmp_path / "dispatcher.yml", proxy.dsn, schema)
        process = subprocess.Popen(
            command(config, *args, "--timeout", "30"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        holder = locked_table.info.backend_pid
        wait_until(
            lambda: (
                pg_conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                    (holder,),
                ).fetchone()
                == (1,)
            ),
            30,
        )
        proxy.down()  # in the middle of its statement
        _, stderr = process.communicate(timeout=30)
    finally:
        proxy.down()
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 1
    assert stderr.startswith(f"dispatcherctl: cannot {said} PostgreSQL at 127.0.0.1, port ")
    assert ": the database stopped answering during the command (" in stderr
    assert ("may or may not have been made" in stderr) is (said != "read the queue in")
    assert "locked" not in stderr
    assert len(stderr.splitlines()) == 1


# -- odd rows ------------------------------------------------------------------------------


def test_timestamps_python_cannot_hold_are_listed_as_postgresql_writes_them(
    config: Path, pg_conn: Conn, schema: str
) -> None:
    forever = insert_job(pg_conn, schema, uuid="u-forever")
    set_columns(pg_conn, schema, forever, run_after="infinity")
    ancient = insert_job(pg_conn, schema, uuid="u-ancient", state="failed")
    set_columns(pg_conn, schema, ancient, created_at="4713-01-01 BC", finished_at="-infinity")
    ended = insert_job(pg_conn, schema, uuid="u-ended", state="done")
    set_columns(pg_conn, schema, ended, finished_at="infinity")
    insert_job(pg_conn, schema, uuid="u-plain", state="done", age=3700)
    listed = ctl(config, "jobs")
    assert listed.returncode == 0, listed.stderr
    whens = {line.split()[0]: line.split()[5:] for line in listed.stdout.splitlines()[1:]}
    assert whens == {
        "u-plain": ["1h01m", "ago"],
        "u-ended": ["finished", "infinity"],
        "u-ancient": ["finished", "-infinity"],
        "u-forever": ["run", "after", "infinity"],
    }
    as_json = ctl(config, "jobs", "--json")
    assert as_json.returncode == 0, as_json.stderr
    rows = {row["uuid"]: row for row in json.loads(as_json.stdout)}
    assert rows["u-forever"]["run_after"] == "infinity"
    assert rows["u-ended"]["finished_at"] == "infinity"
    assert rows["u-ancient"]["finished_at"] == "-infinity"
    assert rows["u-ancient"]["created_at"].endswith(" BC")
    assert rows["u-plain"]["finished_at"].endswith("+00:00")
    one = ctl(config, "jobs", "--uuid", "u-ancient", "--json")
    assert one.returncode == 0, one.stderr
    assert [row["finished_at"] for row in json.loads(one.stdout)] == ["-infinity"]


# -- permissions ---------------------------------------------------------------------------


@pytest.fixture
def reader(pg_conn: Conn, pg_dsn: str, schema: str, tmp_path: Path) -> Iterator[Path]:
    """The config of a role that may read the jobs table but not change it."""
    role = f"reader_{schema}"
    names = {"role": sql.Identifier(role), "schema": sql.Identifier(schema)}
    pg_conn.execute(sql.SQL("CREATE ROLE {role} LOGIN").format(**names))
    try:
        pg_conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {schema} TO {role}").format(**names))
        pg_conn.execute(sql.SQL("GRANT SELECT ON {schema}.jobs TO {role}").format(**names))
        yield write_config(tmp_path / "reader.yml", make_conninfo(pg_dsn, user=role), schema)
    finally:
        pg_conn.execute(sql.SQL("DROP OWNED BY {role}").format(**names))
        pg_conn.execute(sql.SQL("DROP ROLE {role}").format(**names))


def test_missing_privileges_are_worded_by_what_the_command_does(
    reader: Path, pg_conn: Conn, schema: str
) -> None:
    insert_job(pg_conn, schema, state="failed", age=7200)
    listed = ctl(reader, "jobs")
    assert listed.returncode == 0, listed.stderr
    changes = (["retry", "--failed"], ["purge", "--state", "failed", "--older-than", "60"])
    for args in (*changes, ["cancel-job", "--uuid", "u-1"]):
        refused = ctl(reader, *args)
        assert refused.returncode == 2, args  # a refusal no retry mends
        assert refused.stderr.startswith("dispatcherctl: cannot change the queue in PostgreSQL at ")
        assert refused.stderr.endswith(": permission denied for table jobs\n")
    pg_conn.execute(
        sql.SQL("REVOKE SELECT ON {}.jobs FROM {}").format(
            sql.Identifier(schema), sql.Identifier(f"reader_{schema}")
        )
    )
    unread = ctl(reader, "jobs")
    assert unread.returncode == 2
    assert unread.stderr.startswith("dispatcherctl: cannot read the queue in PostgreSQL at ")
    assert unread.stderr.endswith(": permission denied for table jobs\n")


def test_a_submission_the_database_refuses_for_good_exits_2_not_1(reader: Path) -> None:
    refused = ctl(reader, "submit", "app.tasks.work", "--queue", "jobs")
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.startswith("dispatcherctl: cannot send to PostgreSQL at ")
    assert refused.stderr.endswith(
        ": it refused to store the job: permission denied for table jobs "
        "(SQLSTATE 42501: sending again will not help)\n"
    )


def test_a_result_python_cannot_decode_is_read_as_none(
    config: Path, pg_conn: Conn, pg_dsn: str, schema: str
) -> None:
    # Services never store such results; a row edited by hand may hold one.
    huge = insert_job(pg_conn, schema, uuid="u-huge", state="done")
    set_columns(pg_conn, schema, huge, result="9" * 5000)
    deep = insert_job(pg_conn, schema, uuid="u-deep", state="done")
    set_columns(pg_conn, schema, deep, result="[" * 5000 + "]" * 5000)
    plain = insert_job(pg_conn, schema, uuid="u-plain", state="done")
    set_columns(pg_conn, schema, plain, result='{"a": 0.1}')
    as_json = ctl(config, "jobs", "--json")
    assert as_json.returncode == 0, as_json.stderr
    results = {row["uuid"]: row["result"] for row in json.loads(as_json.stdout)}
    assert results == {"u-huge": None, "u-deep": None, "u-plain": {"a": 0.1}}
    setup(json.loads(config.read_text()))
    try:
        assert get_job("u-huge") is not None
        assert [get_job(uuid).result for uuid in ("u-huge", "u-deep", "u-plain")] == [
            None,
            None,
            {"a": 0.1},
        ]
        # The application's own loader of its connection is kept.
        with psycopg.connect(pg_dsn) as own:
            set_json_loads(functools.partial(json.loads, parse_float=Decimal), own)
            job = get_job("u-plain", connection=own)
            assert job is not None
            assert job.result == {"a": Decimal("0.1")}
            assert get_job("u-huge", connection=own).result is None
    finally:
        close_connections()
        reset()
