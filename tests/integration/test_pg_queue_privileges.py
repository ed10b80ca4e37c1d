"""A role with too few privileges on the pg_queue tables: refused at start, named at run time.

Each test has a role of its own (dropped at the end) and a schema migrated by the
superuser, as a DBA would do for a team's least-privilege role.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from support.durable import enqueue, job_message, migrated, queue_config, wait_for_states
from support.queue_rows import unique_schema
from support.service import ServiceProcess, wait_until

pytestmark = pytest.mark.timeout(60)

Conn = psycopg.Connection[Any]
Start = Callable[..., ServiceProcess]

SERVICE_GRANTS = (
    "GRANT USAGE ON SCHEMA {schema} TO {role}",
    "GRANT SELECT ON {schema}.migrations TO {role}",
    "GRANT SELECT, UPDATE, DELETE ON {schema}.jobs TO {role}",
    "GRANT SELECT, DELETE ON {schema}.schedule_ticks TO {role}",
)
"""What a service's role needs (no schedule of a durable queue: no INSERT)."""

STEP_FAILED = (
    r"(?:renewal of leases|writing of outcomes|sweep of lost leases|purge of finished jobs)"
    r" failed|cannot claim jobs|not recorded yet"
)
"""The log's words for a step of the pg_queue broker refused by the database."""


class Role:
    """A login role of one test, and the schema it works in."""

    def __init__(self, conn: Conn, dsn: str, schema: str, name: str | None = None) -> None:
        self.conn = conn
        self.schema = schema
        self.name = name or f"r_{schema}"
        self.conninfo = make_conninfo(dsn, user=self.name)
        self.names = {"role": sql.Identifier(self.name), "schema": sql.Identifier(schema)}

    def run(self, *statements: str) -> None:
        for statement in statements:
            self.conn.execute(sql.SQL(statement).format(**self.names))


@pytest.fixture(params=[None])
def role(pg_conn: Conn, pg_dsn: str, request: pytest.FixtureRequest) -> Iterator[Role]:
    """A role and its schema; a test may name it (``indirect``: the role's name, after
    the schema's)."""
    schema = unique_schema()
    made = Role(pg_conn, pg_dsn, schema, request.param and f"r_{schema}{request.param}")
    made.run("CREATE ROLE {role} LOGIN")
    try:
        yield made
    finally:
        made.run(
            "DROP SCHEMA IF EXISTS {schema} CASCADE", "DROP OWNED BY {role}", "DROP ROLE {role}"
        )


def ctl(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatcher.server.ctl", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_service_whose_role_may_only_reach_the_schema_refuses_to_start_naming_what_it_lacks(
    start_service: Start, role: Role, pg_conn: Conn, channel: str
) -> None:
    migrated(pg_conn, role.schema)
    role.run("GRANT USAGE ON SCHEMA {schema} TO {role}")
    service = start_service(queue_config(role.conninfo, role.schema, channel), wait=False)
    assert service.wait() == 2
    schema, name = f'"{role.schema}"', f'"{role.name}"'
    assert service.log.strip().splitlines() == [
        f"dispatcher-standalone: the role {name} lacks SELECT on {schema}.migrations (reading "
        f"the tables' version), SELECT, UPDATE, DELETE on {schema}.jobs (claiming jobs, "
        f"recording their outcomes, purging finished jobs), SELECT, DELETE on "
        f"{schema}.schedule_ticks (purging old schedule ticks): "
        f"GRANT SELECT ON {schema}.migrations TO {name}; "
        f"GRANT SELECT, UPDATE, DELETE ON {schema}.jobs TO {name}; "
        f"GRANT SELECT, DELETE ON {schema}.schedule_ticks TO {name}"
    ]


def test_a_role_that_cannot_reach_the_schema_is_refused_and_told_so(
    start_service: Start, role: Role, pg_conn: Conn, channel: str
) -> None:
    migrated(pg_conn, role.schema)
    role.run(*SERVICE_GRANTS[1:])
    service = start_service(queue_config(role.conninfo, role.schema, channel), wait=False)
    assert service.wait() == 2
    assert service.log.strip().splitlines() == [
        f'dispatcher-standalone: the role "{role.name}" lacks USAGE on schema "{role.schema}" '
        f'(reaching the tables): GRANT USAGE ON SCHEMA "{role.schema}" TO "{role.name}"'
    ]


def test_a_missing_delete_is_refused_at_start_rather_than_failing_every_purge(
    start_service: Start, role: Role, pg_conn: Conn, channel: str
) -> None:
    migrated(pg_conn, role.schema)
    role.run(*SERVICE_GRANTS, "REVOKE DELETE ON {schema}.jobs FROM {role}")
    service = start_service(queue_config(role.conninfo, role.schema, channel), wait=False)
    assert service.wait() == 2
    jobs = f'"{role.schema}".jobs'
    assert service.log.strip().splitlines() == [
        f'dispatcher-standalone: the role "{role.name}" lacks DELETE on {jobs} (purging '
        f'finished jobs): GRANT DELETE ON {jobs} TO "{role.name}"'
    ]


def test_the_privileges_a_service_is_told_to_grant_are_enough_and_a_later_revoke_is_named(
    start_service: Start, role: Role, pg_conn: Conn, channel: str
) -> None:
    migrated(pg_conn, role.schema)
    role.run(*SERVICE_GRANTS)
    config = queue_config(role.conninfo, role.schema, channel, keep_finished=0)
    service = start_service(config)
    # It claims, runs, records and purges with these grants alone.
    (uuid,) = enqueue(pg_conn, role.schema, channel, [job_message("record", "/dev/null")])
    wait_for_states(pg_conn, role.schema, [uuid], {"done"})
    query = sql.SQL("SELECT count(*) FROM {}.jobs").format(sql.Identifier(role.schema))
    wait_until(lambda: pg_conn.execute(query).fetchone() == (0,), 10)
    # Revoked while it runs: it goes on, and says which step failed and what to grant.
    role.run("REVOKE DELETE ON {schema}.jobs FROM {role}")
    jobs = f'"{role.schema}".jobs'
    service.wait_for_log(
        rf"WARNING dispatcher\.pg_queue: purge of finished jobs failed: permission denied for "
        rf'table jobs: GRANT DELETE ON {jobs} TO "{role.name}"$'
    )
    # The purge alone fails: renewals, outcomes and sweeps go on.
    assert set(re.findall(STEP_FAILED, service.log)) == {"purge of finished jobs failed"}
    # Claims go on meanwhile.
    (other,) = enqueue(pg_conn, role.schema, channel, [job_message("record", "/dev/null")])
    wait_for_states(pg_conn, role.schema, [other], {"done"})
    role.run("REVOKE UPDATE ON {schema}.jobs FROM {role}")
    enqueue(pg_conn, role.schema, channel, [job_message("record", "/dev/null")])
    service.wait_for_log(
        rf"cannot claim jobs: permission denied for table jobs: GRANT UPDATE ON {jobs} "
        rf'TO "{role.name}"$'
    )
    assert service.process is not None
    assert service.process.poll() is None


COLUMN_GRANTS = (
    "GRANT USAGE ON SCHEMA {schema} TO {role}",
    "GRANT SELECT (version) ON {schema}.migrations TO {role}",
    "GRANT SELECT (id, uuid, queue, task, message, state, attempts, max_attempts, claims,"
    " run_after, lease_until, node_id, on_duplicate, dup_key, created_at, finished_at,"
    " outcome, last_error) ON {schema}.jobs TO {role}",
    "GRANT UPDATE (state, attempts, max_attempts, claims, run_after, lease_until, node_id,"
    " started_at, finished_at, outcome, last_error, result) ON {schema}.jobs TO {role}",
    "GRANT DELETE ON {schema}.jobs TO {role}",
    "GRANT SELECT (task, tick, created_at), DELETE ON {schema}.schedule_ticks TO {role}",
)
"""Column privileges on exactly the columns the service's statements read and write (no
``started_at`` or ``result`` read; no ``id``, ``uuid``, ``queue``, ``task``, ``message``,
``on_duplicate``, ``dup_key`` or ``created_at`` written), and no table privilege but
``DELETE``."""


def test_a_role_with_column_privileges_on_the_columns_used_starts_and_serves(
    start_service: Start, role: Role, pg_conn: Conn, channel: str, tmp_path: Path
) -> None:
    migrated(pg_conn, role.schema)
    role.run(*COLUMN_GRANTS)
    # A job whose service died: its lease ran out long ago (the sweep takes it back).
    (lost,) = enqueue(pg_conn, role.schema, channel, [job_message("record", "/dev/null")])
    pg_conn.execute(
        sql.SQL(
            "UPDATE {}.jobs SET state = 'running', attempts = 1, claims = 1, node_id = 'gone',"
            " lease_until = now() - interval '1 minute' WHERE uuid = %s"
        ).format(sql.Identifier(role.schema)),
        [lost],
    )
    config = queue_config(role.conninfo, role.schema, channel, keep_finished=0, retry_backoff=0.01)
    service = start_service(config)
    # It sweeps, claims, runs, retries, records and purges with these grants alone.
    messages = [job_message("record", "/dev/null"), job_message("fail", str(tmp_path / "f"))]
    uuids = enqueue(pg_conn, role.schema, channel, messages, max_attempts=2)
    query = sql.SQL("SELECT count(*) FROM {}.jobs").format(sql.Identifier(role.schema))
    wait_until(lambda: pg_conn.execute(query).fetchone() == (0,), 10)
    assert ": attempt 1 of 2 ended in error; retried in" in service.log, service.log
    assert not re.search(STEP_FAILED, service.log), service.log
    assert len(uuids) == 2


def test_a_role_lacking_the_privilege_on_one_column_used_is_refused_at_start(
    start_service: Start, role: Role, pg_conn: Conn, channel: str
) -> None:
    migrated(pg_conn, role.schema)
    role.run(*COLUMN_GRANTS, "REVOKE UPDATE (result) ON {schema}.jobs FROM {role}")
    service = start_service(queue_config(role.conninfo, role.schema, channel), wait=False)
    assert service.wait() == 2
    jobs, name = f'"{role.schema}".jobs', f'"{role.name}"'
    assert service.log.strip().splitlines() == [
        f"dispatcher-standalone: the role {name} lacks UPDATE on {jobs} (recording their "
        f"outcomes): GRANT UPDATE ON {jobs} TO {name}"
    ]


@pytest.mark.parametrize("role", [None, ": a service: its role"], indirect=True)
def test_a_service_with_durable_schedules_warns_when_it_may_not_store_their_jobs(
    start_service: Start, role: Role, pg_conn: Conn, channel: str
) -> None:
    migrated(pg_conn, role.schema)
    role.run(*SERVICE_GRANTS)
    config = queue_config(role.conninfo, role.schema, channel)
    config["producers"] = {"scheduled": {"support.service_tasks.record": {"schedule": 3600}}}
    service = start_service(config)
    schema, name = f'"{role.schema}"', f'"{role.name}"'
    assert (
        f"WARNING dispatcher.pg_queue: the role {name} lacks INSERT on {schema}.jobs (storing "
        f"the jobs of schedules), INSERT on {schema}.schedule_ticks (storing the jobs of "
        "schedules): the scheduled tasks of durable queues cannot be stored: "
        f"GRANT INSERT ON {schema}.jobs TO {name}; GRANT INSERT ON {schema}.schedule_ticks "
        f"TO {name}\n"
    ) in service.log


# -- dispatcherctl migrate ------------------------------------------------------------------


def write_config(folder: Path, conninfo: str, schema: str, queue: str) -> Path:
    path = folder / "dispatcher.yml"
    path.write_text(json.dumps(queue_config(conninfo, schema, queue)))
    return path


def test_migrate_needs_no_create_privilege_when_the_tables_are_up_to_date(
    role: Role, pg_conn: Conn, tmp_path: Path, channel: str
) -> None:
    migrated(pg_conn, role.schema)
    role.run(*SERVICE_GRANTS)
    config = write_config(tmp_path, role.conninfo, role.schema, channel)
    done = ctl(config, "migrate")
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith(": nothing to do\n")


def test_migrate_by_a_role_that_cannot_read_the_version_names_only_what_reading_it_takes(
    role: Role, pg_conn: Conn, tmp_path: Path, channel: str
) -> None:
    # A publisher's role, with the documented grants, runs migrate as a check: the tables
    # are up to date, and nothing but the version table is out of its reach.
    migrated(pg_conn, role.schema)
    role.run(
        "GRANT USAGE ON SCHEMA {schema} TO {role}",
        "GRANT INSERT, SELECT (queue) ON {schema}.jobs TO {role}",
    )
    config = write_config(tmp_path, role.conninfo, role.schema, channel)
    schema, name = f'"{role.schema}"', f'"{role.name}"'
    told = (
        f"dispatcherctl: cannot read the version of the pg_queue tables in schema {schema} "
        f"(whether they need a migration is not known): the role {name} lacks SELECT on "
        f"{schema}.migrations: GRANT SELECT ON {schema}.migrations TO {name}\n"
    )
    for args in (("migrate",), ("migrate", "--print")):
        refused = ctl(config, *args)
        assert (refused.returncode, refused.stdout, refused.stderr) == (2, "", told), args
    role.run("REVOKE USAGE ON SCHEMA {schema} FROM {role}")
    refused = ctl(config, "migrate")
    assert (refused.returncode, refused.stderr) == (
        2,
        f"dispatcherctl: cannot read the version of the pg_queue tables in schema {schema} "
        f"(whether they need a migration is not known): the role {name} lacks USAGE on "
        f"schema {schema}, SELECT on {schema}.migrations: GRANT USAGE ON SCHEMA {schema} TO "
        f"{name}; GRANT SELECT ON {schema}.migrations TO {name}\n",
    )
    role.run(
        "GRANT USAGE ON SCHEMA {schema} TO {role}", "GRANT SELECT ON {schema}.migrations TO {role}"
    )
    done = ctl(config, "migrate")  # what it was told to grant is all it needed
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith(": nothing to do\n")


def test_migrate_says_which_create_privilege_the_role_lacks(
    role: Role, pg_conn: Conn, tmp_path: Path, channel: str
) -> None:
    role.run("CREATE SCHEMA {schema}", "GRANT USAGE ON SCHEMA {schema} TO {role}")
    config = write_config(tmp_path, role.conninfo, role.schema, channel)
    refused = ctl(config, "migrate")
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr == (
        f'dispatcherctl: cannot create the pg_queue tables in schema "{role.schema}": the role '
        f'"{role.name}" lacks CREATE on schema "{role.schema}": GRANT CREATE ON SCHEMA '
        f'"{role.schema}" TO "{role.name}" (or run dispatcherctl migrate as the schema\'s '
        "owner)\n"
    )
    role.run("DROP SCHEMA {schema}")
    # No schema, and no right to create one in the database.
    refused = ctl(config, "migrate")
    assert refused.returncode == 2
    database = pg_conn.execute("SELECT current_database()").fetchone()
    assert database is not None
    assert refused.stderr == (
        f'dispatcherctl: cannot create the pg_queue tables in schema "{role.schema}": the role '
        f'"{role.name}" lacks CREATE on database "{database[0]}" (creating schema '
        f'"{role.schema}"): GRANT CREATE ON DATABASE "{database[0]}" TO "{role.name}", or '
        f'have the schema made for it: CREATE SCHEMA "{role.schema}" AUTHORIZATION '
        f'"{role.name}"\n'
    )


def test_migrate_says_the_role_must_own_the_tables_it_upgrades(
    role: Role, pg_conn: Conn, tmp_path: Path, channel: str
) -> None:
    migrated(pg_conn, role.schema)
    role.run(
        "DELETE FROM {schema}.migrations WHERE version = (SELECT max(version) FROM "
        "{schema}.migrations)",
        "GRANT USAGE, CREATE ON SCHEMA {schema} TO {role}",
        "GRANT SELECT ON {schema}.migrations TO {role}",
    )
    config = write_config(tmp_path, role.conninfo, role.schema, channel)
    refused = ctl(config, "migrate")
    assert refused.returncode == 2
    name = f'"{role.schema}"'
    assert refused.stderr == (
        f"dispatcherctl: cannot upgrade the pg_queue tables in schema {name}: the role "
        f'"{role.name}" does not own {name}.jobs, {name}.migrations, {name}.schedule_ticks, '
        "which a migration alters: run dispatcherctl migrate as their owner\n"
    )
