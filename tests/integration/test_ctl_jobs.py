"""dispatcherctl jobs, retry and purge against durable-queue tables filled with SQL."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from dispatcher.config import reset, setup
from dispatcher.publish import close_connections, get_job
from dispatcher.schema import QUEUE_WAKEUP_CHANNEL
from dispatcher.server.ctl_jobs_table import CELL_WIDTH
from support.ctl_here import dispatcherctl
from support.durable import enqueue, job_message, migrated, queue_config, wait_for_states
from support.queue_rows import insert_job, job_row, unique_schema
from support.service import Evidence, ServiceProcess

Conn = psycopg.Connection[Any]


def ctl(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """dispatcherctl, in this process (several commands a test: a child each took most of
    a test's time limit on a loaded machine)."""
    return dispatcherctl(config, *args)


@pytest.fixture
def schema(pg_conn: Conn) -> str:
    return migrated(pg_conn, unique_schema())


def write_config(folder: Path, pg_dsn: str, schema: str) -> Path:
    path = folder / "dispatcher.yml"
    queue = {"conninfo": pg_dsn, "queues": ["jobs", "mail"], "schema": schema}
    path.write_text(json.dumps({"version": 1, "brokers": {"pg_queue": queue}}))
    return path


@pytest.fixture
def config(tmp_path: Path, pg_dsn: str, schema: str) -> Path:
    return write_config(tmp_path, pg_dsn, schema)


def seconds(duration: str) -> int:
    """The seconds of a listed duration such as ``1m29s`` or ``4s``."""
    match = re.fullmatch(r"(?:(\d+)m)?(\d+)s", duration)
    assert match, duration
    return int(match.group(1) or 0) * 60 + int(match.group(2))


def test_jobs_lists_newest_first_as_a_table(config: Path, pg_conn: Conn, schema: str) -> None:
    insert_job(pg_conn, schema, uuid="u-waiting", age=125)
    insert_job(
        pg_conn, schema, uuid="u-delayed", queue="mail", task="myapp.tasks.mail", run_after=90
    )
    insert_job(
        pg_conn,
        schema,
        uuid="u-failed",
        state="failed",
        attempts=3,
        age=3700,
        last_error="Traceback (most recent call last):\n  ...\nValueError: bad\nline",
    )
    insert_job(pg_conn, schema, uuid="u-running", state="running", attempts=1, age=4)
    result = ctl(config, "jobs")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "uuid",
        "queue",
        "task",
        "state",
        "attempts",
        "when",
        "last",
        "error",
    ]
    assert [line.split()[0] for line in lines[1:]] == [
        "u-running",
        "u-failed",
        "u-delayed",
        "u-waiting",
    ]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    # Started 4 s before the listing was asked for; starting dispatcherctl takes a moment
    # (several seconds on a loaded machine).
    assert rows["u-running"][:5] == ["jobs", "myapp.tasks.work", "running", "1/3", "running"]
    assert 4 <= seconds(rows["u-running"][5]) <= 15
    assert rows["u-failed"][:6] == ["jobs", "myapp.tasks.work", "failed", "3/3", "1h01m", "ago"]
    assert rows["u-failed"][6:] == ["line"]
    assert rows["u-delayed"][:5] == ["mail", "myapp.tasks.mail", "queued", "0/3", "in"]
    assert 75 <= seconds(rows["u-delayed"][5]) <= 90
    assert rows["u-waiting"][3:5] == ["0/3", "waiting"]
    assert result.stderr == ""


def test_jobs_marks_a_running_job_whose_lease_ran_out(
    config: Path, pg_conn: Conn, schema: str
) -> None:
    """Its service stopped renewing the lease (died, cut off, frozen): it may no longer run,
    and is taken back at the next sweep; it read as any running job."""
    insert_job(pg_conn, schema, uuid="u-lapsed", state="running", attempts=1, age=78)
    insert_job(pg_conn, schema, uuid="u-held", state="running", attempts=1, age=5)
    pg_conn.execute(
        sql.SQL(
            "UPDATE {} SET lease_until = now() - interval '40 seconds' WHERE uuid = 'u-lapsed'"
        ).format(sql.Identifier(schema, "jobs"))
    )
    result = ctl(config, "jobs")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    match = re.search(r" running (\S+), lease expired (\S+) ago\b", rows["u-lapsed"])
    assert match, rows["u-lapsed"]
    assert 78 <= seconds(match.group(1)) <= 90
    assert 40 <= seconds(match.group(2)) <= 52
    assert "lease" not in rows["u-held"]


def columns(text: str) -> int:
    """How many terminal columns *text* takes (wide characters two, combining marks none)."""
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in text
    )


def test_jobs_cuts_long_cells_and_aligns_wide_characters(
    config: Path, pg_conn: Conn, schema: str
) -> None:
    insert_job(pg_conn, schema, uuid="u-huge", task="myapp.tasks." + "t" * 1_000_000, age=3)
    insert_job(pg_conn, schema, uuid="u-wide", task="myapp.tasks.報告書", age=2)
    error = "RuntimeError: " + "漢" * 100
    mark = "myapp.tasks.cafe\u0301"  # a combining accent: no column of its own
    insert_job(pg_conn, schema, uuid="u-mark", task=mark, state="failed", age=1, last_error=error)
    result = ctl(config, "jobs")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout) < 1000
    lines = result.stdout.splitlines()
    rows = {line.split()[0]: line for line in lines[1:]}
    cut_task = "myapp.tasks." + "t" * (CELL_WIDTH - len("myapp.tasks.") - 1) + "…"
    assert f" {cut_task} " in rows["u-huge"]
    assert rows["u-mark"].endswith("  RuntimeError: " + "漢" * 22 + "…")  # 59 columns, and …
    # Every column starts at the same place on the terminal, whatever the characters before.
    states = {"u-mark": "failed", "u-wide": "queued", "u-huge": "queued"}
    for title, values in (("state", states), ("attempts", dict.fromkeys(states, "0/3"))):
        at = {columns(lines[0][: lines[0].index(title)])}
        at |= {columns(rows[u][: rows[u].index(f" {v} ") + 1]) for u, v in values.items()}
        assert len(at) == 1, (title, lines)
    error_at = columns(rows["u-mark"][: rows["u-mark"].index("RuntimeError")])
    assert error_at == columns(lines[0][: lines[0].index("last error")])


def test_jobs_filters_and_limit(config: Path, pg_conn: Conn, schema: str) -> None:
    for n in range(3):
        insert_job(pg_conn, schema, uuid=f"u-mail-{n}", queue="mail", state="failed")
    insert_job(pg_conn, schema, uuid="u-other-task", queue="mail", task="myapp.tasks.other")
    insert_job(pg_conn, schema, uuid="u-jobs", state="failed")
    failed_mail = ctl(config, "jobs", "--state", "failed", "--queue", "mail", "--limit", "2")
    assert failed_mail.returncode == 0, failed_mail.stderr
    assert [line.split()[0] for line in failed_mail.stdout.splitlines()[1:]] == [
        "u-mail-2",
        "u-mail-1",
    ]
    assert "showing the newest 2; --limit N shows more" in failed_mail.stderr
    by_task = ctl(config, "jobs", "--task", "myapp.tasks.other")
    assert [line.split()[0] for line in by_task.stdout.splitlines()[1:]] == ["u-other-task"]
    assert by_task.stderr == ""
    nothing = ctl(config, "jobs", "--state", "cancelled")
    assert (nothing.returncode, nothing.stdout) == (0, "no cancelled jobs\n")


def test_jobs_json_gives_whole_rows(config: Path, pg_conn: Conn, schema: str) -> None:
    insert_job(pg_conn, schema, uuid="u-1", state="failed", attempts=2, last_error="boom\nmore")
    result = ctl(config, "jobs", "--json", "--uuid", "u-1")
    assert result.returncode == 0, result.stderr
    [row] = json.loads(result.stdout)
    assert row["uuid"] == "u-1"
    assert (row["state"], row["attempts"], row["max_attempts"]) == ("failed", 2, 3)
    assert row["last_error"] == "boom\nmore"
    assert json.loads(row["message"])["task"] == "myapp.tasks.work"
    assert row["finished_at"].endswith("+00:00")
    assert {"id", "queue", "run_after", "lease_until", "node_id", "outcome", "result"} <= set(row)
    assert (row["claims"], row["dup_key"]) == (0, None)  # every column of the row


def test_jobs_json_and_get_job_give_every_column_of_the_table(
    config: Path, pg_conn: Conn, schema: str, pg_dsn: str
) -> None:
    """What ``--json`` and ``get_job()`` show is the table's columns, all of them."""
    uuid = insert_job(pg_conn, schema, on_duplicate="serial")
    table = {
        name
        for (name,) in pg_conn.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = %s AND table_name = 'jobs'",
            (schema,),
        )
    }
    result = ctl(config, "jobs", "--json", "--uuid", uuid)
    assert result.returncode == 0, result.stderr
    [row] = json.loads(result.stdout)
    assert set(row) - {"now"} == table
    assert row["dup_key"] is not None
    setup(
        {
            "version": 1,
            "brokers": {"pg_queue": {"conninfo": pg_dsn, "schema": schema, "queues": ["jobs"]}},
        }
    )
    try:
        job = get_job(uuid)
    finally:
        close_connections()
        reset()
    assert job is not None
    assert {field.name for field in dataclasses.fields(job)} == table
    assert (job.claims, job.dup_key) == (row["claims"], row["dup_key"])


def test_retry_by_uuid_requeues_with_attempts_reset_and_wakes_the_queue(
    config: Path, pg_conn: Conn, pg_dsn: str, schema: str
) -> None:
    uuid = insert_job(pg_conn, schema, queue="mail", state="failed", attempts=3, age=60)
    with psycopg.connect(pg_dsn, autocommit=True) as listener:
        listener.execute(f"LISTEN {QUEUE_WAKEUP_CHANNEL}")
        result = ctl(config, "retry", "--uuid", uuid)
        assert (result.returncode, result.stdout) == (0, f"retried job {uuid}\n"), result.stderr
        wakeups = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
    assert wakeups == ["mail"]
    row = job_row(pg_conn, schema, uuid)
    assert row is not None
    assert (row["state"], row["attempts"], row["finished_at"]) == ("queued", 0, None)
    assert row["last_error"] is None or isinstance(row["last_error"], str)


def test_retry_by_uuid_refuses_unknown_and_unfinished_jobs(
    config: Path, pg_conn: Conn, schema: str
) -> None:
    running = insert_job(pg_conn, schema, state="running", attempts=1)
    unknown = ctl(config, "retry", "--uuid", "no-such-job")
    assert unknown.returncode == 1
    assert unknown.stderr == "dispatcherctl: no job has uuid 'no-such-job'\n"
    busy = ctl(config, "retry", "--uuid", running)
    assert busy.returncode == 1
    assert "is running: only failed or cancelled jobs are retried" in busy.stderr
    assert job_row(pg_conn, schema, running)["state"] == "running"  # type: ignore[index]


def test_cancel_job_cancels_a_waiting_job_and_refuses_the_others(
    config: Path, pg_conn: Conn, schema: str
) -> None:
    waiting = insert_job(pg_conn, schema, queue="mail", run_after=600)
    result = ctl(config, "cancel-job", "--uuid", waiting)
    assert (result.returncode, result.stdout) == (
        0,
        f"cancelled waiting job {waiting} of queue mail\n",
    ), result.stderr
    row = job_row(pg_conn, schema, waiting)
    assert row is not None
    assert (row["state"], row["outcome"], row["last_error"]) == (
        "cancelled",
        "cancelled",
        "cancelled by an operator before it started",
    )
    assert row["finished_at"] is not None
    again = ctl(config, "cancel-job", "--uuid", waiting)
    assert (again.returncode, again.stderr) == (
        1,
        f"dispatcherctl: job {waiting} is cancelled already: only waiting jobs are cancelled "
        "here\n",
    )
    running = insert_job(pg_conn, schema, state="running", attempts=1)
    busy = ctl(config, "cancel-job", "--uuid", running)
    assert busy.returncode == 1
    assert f"cancel it with 'dispatcherctl cancel --uuid {running}'" in busy.stderr
    assert job_row(pg_conn, schema, running)["state"] == "running"  # type: ignore[index]
    unknown = ctl(config, "cancel-job", "--uuid", "no-such-job", "--json")
    assert (unknown.returncode, json.loads(unknown.stdout)) == (1, {})  # JSON, always
    other = insert_job(pg_conn, schema)
    as_json = ctl(config, "cancel-job", "--uuid", other, "--json")
    assert json.loads(as_json.stdout) == {"cancelled": 1, "uuid": other, "queue": "jobs"}


def test_cancel_by_uuid_cancels_a_durable_job_waiting_in_the_table(
    tmp_path: Path, pg_dsn: str, pg_conn: Conn, schema: str
) -> None:
    # No service holds a delayed job, or one waiting for its retry: the services' cancel
    # cannot reach it, so dispatcherctl cancels its row.
    config = tmp_path / "dispatcher.yml"
    queue = {"conninfo": pg_dsn, "queues": ["jobs", "mail"], "schema": schema}
    notify = {"conninfo": pg_dsn, "channels": ["ctl_cancel_waiting"]}
    config.write_text(
        json.dumps({"version": 1, "brokers": {"pg_queue": queue, "pg_notify": notify}})
    )
    delayed = insert_job(pg_conn, schema, queue="mail", run_after=600)
    result = ctl(config, "cancel", "--uuid", delayed)
    assert (result.returncode, result.stdout) == (
        0,
        f"cancelled waiting durable job {delayed} of queue mail\n",
    ), result.stderr
    assert job_row(pg_conn, schema, delayed)["state"] == "cancelled"  # type: ignore[index]
    # With --json, stdout holds JSON only: the replies (none), the line goes to stderr.
    another = insert_job(pg_conn, schema, queue="mail", run_after=600)
    as_json = ctl(config, "--json", "cancel", "--uuid", another)
    assert (as_json.returncode, json.loads(as_json.stdout)) == (0, []), as_json.stderr
    assert f"cancelled waiting durable job {another} of queue mail\n" in as_json.stderr
    other_task = insert_job(pg_conn, schema, run_after=600)
    wrong = ctl(config, "cancel", "--uuid", other_task, "--task", "myapp.tasks.other")
    assert "cancelled waiting" not in wrong.stdout
    assert job_row(pg_conn, schema, other_task)["state"] == "queued"  # type: ignore[index]
    by_args = ctl(config, "cancel", "--uuid", other_task, "--args", "[]")
    assert (
        f"job {other_task} waits in its durable queue, where --args and --kwargs are not "
        f"compared: cancel it with 'dispatcherctl cancel-job --uuid {other_task}'"
    ) in by_args.stderr
    assert job_row(pg_conn, schema, other_task)["state"] == "queued"  # type: ignore[index]


def test_cancel_job_by_task_cancels_its_waiting_jobs_only(
    config: Path, pg_conn: Conn, schema: str
) -> None:
    task = "myapp.tasks.report"
    mail = [insert_job(pg_conn, schema, queue="mail", task=task, run_after=600) for _ in "ab"]
    retrying = insert_job(pg_conn, schema, task=task, attempts=1, run_after=600)
    running = insert_job(pg_conn, schema, task=task, state="running", attempts=1)
    other = insert_job(pg_conn, schema, queue="mail", run_after=600)
    refused = ctl(config, "cancel-job", "--uuid", other, "--queue", "mail")
    assert (refused.returncode, refused.stderr) == (
        2,
        "dispatcherctl: cancel-job --queue goes with --task\n",
    )
    in_mail = ctl(config, "cancel-job", "--task", task, "--queue", "mail")
    assert (in_mail.returncode, in_mail.stdout) == (
        0,
        f"cancelled 2 waiting jobs of task {task} in queue mail\n",
    ), in_mail.stderr
    states = {u: job_row(pg_conn, schema, u)["state"] for u in [*mail, retrying, running, other]}  # type: ignore[index]
    assert list(states.values()) == ["cancelled", "cancelled", "queued", "running", "queued"]
    rest = ctl(config, "cancel-job", "--task", task, "--json")
    assert json.loads(rest.stdout) == {"cancelled": 1, "task": task, "by_queue": {"jobs": 1}}
    assert job_row(pg_conn, schema, retrying)["state"] == "cancelled"  # type: ignore[index]
    assert job_row(pg_conn, schema, running)["state"] == "running"  # type: ignore[index]
    none = ctl(config, "cancel-job", "--task", task)
    assert (none.returncode, none.stdout) == (0, f"cancelled 0 waiting jobs of task {task}\n")


def test_cancel_by_task_names_cancel_job_when_jobs_of_the_task_wait_in_the_table(
    tmp_path: Path, pg_dsn: str, pg_conn: Conn, schema: str
) -> None:
    config = tmp_path / "dispatcher.yml"
    queue = {"conninfo": pg_dsn, "queues": ["jobs", "mail"], "schema": schema}
    notify = {"conninfo": pg_dsn, "channels": ["ctl_cancel_task_hint"]}
    config.write_text(
        json.dumps({"version": 1, "brokers": {"pg_queue": queue, "pg_notify": notify}})
    )
    task = "myapp.tasks.report"
    quiet = ctl(config, "cancel", "--task", task)
    assert "cancel-job" not in quiet.stderr
    waiting = [insert_job(pg_conn, schema, task=task, run_after=600) for _ in "ab"]
    insert_job(pg_conn, schema, task=task)  # ready: a service claims it in moments, not counted
    result = ctl(config, "cancel", "--task", task, "--args", "[1]")
    assert (
        "dispatcherctl: 2 jobs of this task wait in durable queues (delayed, or waiting for a "
        "retry), where no service holds them to cancel: 'dispatcherctl cancel-job --task "
        f"{task}' cancels every waiting job of the task, whatever its args and kwargs\n"
    ) in result.stderr
    assert [job_row(pg_conn, schema, u)["state"] for u in waiting] == ["queued", "queued"]  # type: ignore[index]


def test_cancel_job_of_a_job_waiting_for_a_retry_keeps_why_it_failed(
    config: Path, pg_conn: Conn, schema: str
) -> None:
    error = "ZeroDivisionError: division by zero\nTraceback (most recent call last): ..."
    retrying = insert_job(pg_conn, schema, attempts=2, run_after=600, last_error=error)
    result = ctl(config, "cancel-job", "--uuid", retrying)
    assert result.returncode == 0, result.stderr
    row = job_row(pg_conn, schema, retrying)
    assert row is not None
    assert (row["state"], row["outcome"], row["last_error"]) == (
        "cancelled",
        "cancelled",
        "cancelled by an operator while it waited to run again (2 of 3 attempts used);"
        f" the last ended in error: {error}",
    )


def test_retry_failed_of_one_queue_skips_duplicates_and_cancelled(
    config: Path, pg_conn: Conn, schema: str
) -> None:
    retried = [
        insert_job(pg_conn, schema, queue="mail", state="failed", attempts=3) for _ in range(2)
    ]
    other_queue = insert_job(pg_conn, schema, queue="jobs", state="failed", attempts=3)
    cancelled = insert_job(pg_conn, schema, queue="mail", state="cancelled")
    # queue_one: one identical job already waits, so the failed twin stays failed.
    insert_job(pg_conn, schema, queue="mail", task="myapp.tasks.once", on_duplicate="queue_one")
    twin = insert_job(
        pg_conn,
        schema,
        queue="mail",
        task="myapp.tasks.once",
        on_duplicate="queue_one",
        state="failed",
    )
    result = ctl(config, "retry", "--failed", "--queue", "mail")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "retried 2 failed jobs of queue mail",
        "left 1 failed job as they were: an identical job is already waiting (on_duplicate)",
    ]
    states = {
        u: job_row(pg_conn, schema, u)["state"] for u in [*retried, other_queue, cancelled, twin]
    }  # type: ignore[index]
    assert [states[u] for u in retried] == ["queued", "queued"]
    assert (states[other_queue], states[cancelled], states[twin]) == (
        "failed",
        "cancelled",
        "failed",
    )
    everywhere = ctl(config, "retry", "--failed")
    assert everywhere.stdout.splitlines()[0] == "retried 1 failed job"


def test_a_queue_neither_configured_nor_in_the_table_is_refused_with_a_hint(
    config: Path, pg_conn: Conn, schema: str
) -> None:
    insert_job(pg_conn, schema, queue="mail", state="failed", attempts=3)
    for command in (["retry", "--failed"], ["jobs"]):
        result = ctl(config, *command, "--queue", "mial")
        assert (result.returncode, result.stdout) == (2, ""), result.stderr
        assert result.stderr == (
            "dispatcherctl: --queue mial: no such queue (not in brokers.pg_queue.queues: jobs,"
            " mail; and no job in the table names it); did you mean 'mail'?\n"
        )
    # A queue no longer configured whose jobs are still in the table is still served.
    insert_job(pg_conn, schema, uuid="u-old", queue="retired", state="failed", attempts=3)
    result = ctl(config, "retry", "--failed", "--queue", "retired")
    assert (result.returncode, result.stdout) == (0, "retried 1 failed job of queue retired\n")


def test_retry_needs_one_target(config: Path) -> None:
    neither = ctl(config, "retry")
    assert neither.returncode == 2
    assert "one of the arguments --uuid --failed is required" in neither.stderr
    queue_alone = ctl(config, "retry", "--uuid", "u", "--queue", "mail")
    assert (queue_alone.returncode, queue_alone.stderr) == (
        2,
        "dispatcherctl: retry --queue goes with --failed\n",
    )


def test_purge_deletes_old_finished_jobs_of_one_state(
    config: Path, pg_conn: Conn, schema: str
) -> None:
    old_done = [insert_job(pg_conn, schema, state="done", age=7200) for _ in range(3)]
    recent_done = insert_job(pg_conn, schema, state="done", age=10)
    old_failed = insert_job(pg_conn, schema, state="failed", age=7200)
    result = ctl(config, "purge", "--state", "done", "--older-than", "3600")
    assert (result.returncode, result.stdout) == (
        0,
        "purged 3 done jobs that ended more than 3600 s ago\n",
    ), result.stderr
    assert [job_row(pg_conn, schema, u) for u in old_done] == [None, None, None]
    assert job_row(pg_conn, schema, recent_done) is not None
    assert job_row(pg_conn, schema, old_failed) is not None
    refused = ctl(config, "purge", "--state", "queued", "--older-than", "0")
    assert refused.returncode == 2
    assert "invalid choice: 'queued'" in refused.stderr


def test_purge_with_queue_deletes_the_old_finished_jobs_of_that_queue_only(
    config: Path, pg_conn: Conn, schema: str
) -> None:
    gone = [insert_job(pg_conn, schema, queue="retired", state="done", age=7200) for _ in range(2)]
    kept = [
        insert_job(pg_conn, schema, queue="mail", state="done", age=7200),
        insert_job(pg_conn, schema, queue="retired", state="done", age=10),
        insert_job(pg_conn, schema, queue="retired", state="failed", age=7200),
    ]
    result = ctl(config, "purge", "--state", "done", "--older-than", "3600", "--queue", "retired")
    assert (result.returncode, result.stdout) == (
        0,
        "purged 2 done jobs of queue retired that ended more than 3600 s ago\n",
    ), result.stderr
    assert [job_row(pg_conn, schema, u) for u in gone] == [None, None]
    assert None not in [job_row(pg_conn, schema, u) for u in kept]
    shown = ctl(
        config, "purge", "--state", "failed", "--older-than", "0", "--queue", "retired", "--json"
    )
    assert json.loads(shown.stdout) == {"purged": 1, "state": "failed", "queue": "retired"}


def test_without_pg_queue_in_the_config_exit_2(tmp_path: Path, pg_dsn: str) -> None:
    path = tmp_path / "dispatcher.yml"
    path.write_text(
        json.dumps(
            {"version": 1, "brokers": {"pg_notify": {"conninfo": pg_dsn, "channels": ["c"]}}}
        )
    )
    result = ctl(path, "jobs")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"dispatcherctl: {path} has no brokers.pg_queue\n"


def test_missing_tables_exit_2_naming_migrate_with_the_config(tmp_path: Path, pg_dsn: str) -> None:
    # Not an unreachable database (1): like submit and the service, a set-up to finish.
    config = write_config(tmp_path, pg_dsn, unique_schema())
    for args in (
        ["jobs"],
        ["retry", "--failed"],
        ["purge", "--state", "done", "--older-than", "1"],
        ["cancel-job", "--uuid", "u"],
        ["submit", "myapp.tasks.t", "--queue", "mail"],
    ):
        result = ctl(config, *args)
        assert (result.returncode, result.stdout) == (2, ""), args
        assert result.stderr.startswith("dispatcherctl: the durable queue's tables are missing")
        assert f"run `dispatcherctl migrate --config {config}` first (it creates" in result.stderr
        assert len(result.stderr.splitlines()) == 1


def test_a_dropped_jobs_table_is_called_damaged_as_migrate_calls_it(
    tmp_path: Path, pg_dsn: str, pg_conn: psycopg.Connection[Any]
) -> None:
    schema = migrated(pg_conn, unique_schema())
    pg_conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, "jobs")))
    config = write_config(tmp_path, pg_dsn, schema)
    for command in (["jobs"], ["migrate"]):
        result = ctl(config, *command)
        assert result.returncode == 2, command
        assert f'the pg_queue tables in schema "{schema}" are damaged' in result.stderr


def test_an_unreachable_database_exits_1_naming_the_server(tmp_path: Path) -> None:
    config = write_config(tmp_path, "host=127.0.0.1 port=1 user=postgres dbname=nowhere", "s")
    result = ctl(config, "jobs")
    assert result.returncode == 1
    assert result.stderr.startswith(
        "dispatcherctl: cannot read the queue in PostgreSQL at 127.0.0.1, port 1, database 'nowhere'"
    )
    assert len(result.stderr.splitlines()) == 1


def test_a_dead_letter_listed_and_retried_runs_again_on_a_service(
    start_service: Callable[..., ServiceProcess],
    pg_conn: Conn,
    pg_dsn: str,
    schema: str,
    channel: str,
    evidence: Evidence,
) -> None:
    # A long poll interval: only the retry's wake-up can start the job again in time.
    service = start_service(queue_config(pg_dsn, schema, channel, poll_interval=60))
    [uuid] = enqueue(pg_conn, schema, channel, [job_message("fail", evidence.path)], max_attempts=1)
    wait_for_states(pg_conn, schema, [uuid], {"failed"})
    listed = ctl(service.config_path, "jobs", "--state", "failed")
    assert listed.returncode == 0, listed.stderr
    [row] = [line.split() for line in listed.stdout.splitlines()[1:]]
    assert row[:5] == [uuid, channel, "support.service_tasks.fail", "failed", "1/1"]
    assert row[-4:] == ["this", "task", "always", "fails"]
    retried = ctl(service.config_path, "retry", "--uuid", uuid)
    assert (retried.returncode, retried.stdout) == (0, f"retried job {uuid}\n"), retried.stderr
    assert len(evidence.wait_for(2, timeout=10)) == 2
    [again] = wait_for_states(pg_conn, schema, [uuid], {"failed"})
    assert again["attempts"] == 1  # reset by the retry, then used once more
