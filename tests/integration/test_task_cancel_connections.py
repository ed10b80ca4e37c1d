"""The connection pattern docs/tasks.md gives survives a cancel in the middle of a statement.

A timeout or ``dispatcherctl cancel`` raises ``DispatcherCancel`` inside whatever the task
is doing: a psycopg ``conn.execute()`` on a connection kept in a global was left
mid-statement, and every later task of that worker failed with ``another command is already
in progress`` (a scheduled task of 1 s failed every second for 6 minutes). The guide's
example, run as it is written (its module, its database and table names aside), opens a new
connection then, and cancels the interrupted statement on the server; the same module
without that check fails as the guide says.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from support.durable import enqueue, job_message, jobs, migrated, queue_config, wait_for_states
from support.paths import REPO
from support.queue_rows import unique_schema
from support.service import TESTS, ServiceProcess, wait_until

pytestmark = pytest.mark.timeout(90)

Conn = psycopg.Connection[Any]

GUIDE = REPO / "docs" / "tasks.md"
CHECK = "if _conn is not None and _conn.info.transaction_status != TransactionStatus.IDLE:"
"""The line of the example that finds a connection a cancel left mid-statement."""


def documented_example() -> str:
    """The guide's example of a connection kept across tasks."""
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(encoding="utf-8"), re.DOTALL)
    [example] = [block for block in blocks if "def connection()" in block]
    assert CHECK in example
    return str(example)


@pytest.mark.parametrize("variant", ["documented", "without-the-check"])
def test_a_connection_kept_across_tasks_survives_a_cancel_mid_statement(
    variant: str,
    start_service: Callable[..., ServiceProcess],
    pg_conn: Conn,
    pg_dsn: str,
    channel: str,
    tmp_path: Path,
) -> None:
    schema = migrated(pg_conn, unique_schema())
    orders = sql.Identifier(schema, "orders")
    table = sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, archived bool NOT NULL DEFAULT false)")
    pg_conn.execute(table.format(orders))
    pg_conn.execute(sql.SQL("INSERT INTO {} (id) VALUES (1), (2)").format(orders))
    source = documented_example()
    source = source.replace('DSN = "dbname=app"', f"DSN = {pg_dsn!r}")
    source = source.replace("UPDATE orders", f"UPDATE {schema}.orders")  # (a plain name)
    if variant != "documented":
        source = source.replace(CHECK, "if False:")
    modules = tmp_path / "modules"
    modules.mkdir()
    module = f"kept_connection_{variant.replace('-', '_')}"
    (modules / f"{module}.py").write_text(source)
    config = queue_config(pg_dsn, schema, channel)
    config["tasks"]["modules"] = [module]
    config["service"]["pool"] = {"min_workers": 1, "max_workers": 1}  # the same worker
    start_service(config, env={"PYTHONPATH": f"{TESTS}{os.pathsep}{modules}"})
    task = f"{module}.archive_order"

    def archived() -> dict[int, bool]:
        query = sql.SQL("SELECT id, archived FROM {}").format(orders)
        return {row[0]: row[1] for row in pg_conn.execute(query)}

    with psycopg.connect(pg_dsn) as holder:  # holds order 1's row: its update waits
        holder.execute(sql.SQL("SELECT * FROM {} WHERE id = 1 FOR UPDATE").format(orders))
        [first] = enqueue(
            pg_conn, schema, channel, [job_message(task, 1, timeout=1)], max_attempts=1
        )
        [row] = wait_for_states(pg_conn, schema, [first], {"failed"})
        assert row["outcome"] == "timeout", row
        [second] = enqueue(pg_conn, schema, channel, [job_message(task, 2)], max_attempts=1)
        [row] = wait_for_states(pg_conn, schema, [second], {"done", "failed"})
        if variant != "documented":
            assert row["state"] == "failed", row
            assert "another command is already in progress" in row["last_error"], row
            return
        assert (row["state"], archived()) == ("done", {1: False, 2: True}), row

        def update_waiting() -> bool:
            query = (
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND state = 'active' AND query LIKE %s"
            )
            [(count,)] = pg_conn.execute(query, [f"UPDATE {schema}.orders%"])
            return count == 0

        # The interrupted update was cancelled on the server: none waits for the row.
        wait_until(update_waiting, 10)
        holder.rollback()
    assert archived() == {1: False, 2: True}
    assert [row["state"] for row in jobs(pg_conn, schema)] == ["failed", "done"]
