"""Publishing without Python: dispatcher_submit() from psql, and a raw pg_notify."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from dispatcher.schema import sql_publisher
from support.service import Evidence, ServiceProcess

RECORD = "support.service_tasks.record"


def psql(dsn: str, query: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["psql", dsn, "-v", "ON_ERROR_STOP=1", "-Atc", query],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def service(
    start_service: Callable[..., ServiceProcess], service_config: dict[str, Any]
) -> ServiceProcess:
    return start_with_sql_publisher(start_service, service_config)


def start_with_sql_publisher(
    start_service: Callable[..., ServiceProcess], config: dict[str, Any], **options: Any
) -> ServiceProcess:
    """Start a service, then install dispatcher_submit() with dispatcherctl install-sql."""
    service = start_service(config, **options)
    installed = subprocess.run(
        [
            sys.executable,
            "-m",
            "dispatcher.server.ctl",
            "install-sql",
            "--config",
            str(service.config_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **options.get("env", {})},
    )
    assert installed.returncode == 0, installed.stderr
    assert installed.stdout.startswith(
        'installed dispatcher_submit() in schema "public" of PostgreSQL at '
    )
    return service


def test_psql_dispatcher_submit_runs_small_and_chunked_tasks(
    service: ServiceProcess, pg_dsn: str, channel: str, evidence: Evidence
) -> None:
    small = psql(
        pg_dsn,
        f"SELECT dispatcher_submit('{channel}', '{RECORD}', '[\"{evidence.path}\", \"from sql\"]', '{{\"k\": 1}}', '{{\"timeout\": 30}}')",
    )
    assert small.returncode == 0, small.stderr
    big = psql(
        pg_dsn,
        f"SELECT dispatcher_submit('{channel}', '{RECORD}', jsonb_build_array('{evidence.path}', repeat('\"é\\\\', 20000)))",
    )
    assert big.returncode == 0, big.stderr
    records = evidence.wait_for(2)
    by_first_arg = {r["args"][0][:8]: r for r in records}
    assert by_first_arg["from sql"]["kwargs"] == {"k": 1}
    # SQL's standard strings keep both backslashes: each repeat is `"é\\` (4 characters).
    assert any(r["args"][0] == '"é\\\\' * 20000 for r in records)


def test_dispatcher_submit_returns_the_uuid_the_message_carries(
    service: ServiceProcess, pg_dsn: str, channel: str, evidence: Evidence
) -> None:
    bound = f"'[\"{evidence.path}\", \"alive\", {{}}]', '{{}}'"
    results = [
        psql(
            pg_dsn,
            f"SELECT dispatcher_submit('{channel}', 'support.service_tasks.follow_up', {bound}, "
            f"'{{\"bind\": true{options}}}')",
        )
        for options in (', "uuid": "my-id"', "")
    ]
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    returned = [r.stdout.strip() for r in results]
    assert returned[0] == "my-id"
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", returned[1]
    )
    assert sorted(r["uuid"] for r in evidence.wait_for(2)) == sorted(returned)


def test_a_large_message_of_characters_of_every_utf8_width_arrives_whole(
    service: ServiceProcess, pg_dsn: str, channel: str, evidence: Evidence
) -> None:
    """Cut into chunks on its bytes, never inside a character (in time linear in its size:
    a 9 MB message once took 82 s)."""
    text = "é€😀x" * 250_000  # 1, 2, 3 and 4 bytes: 2.5 MB
    big = psql(
        pg_dsn,
        f"SELECT dispatcher_submit('{channel}', '{RECORD}', "
        f"jsonb_build_array('{evidence.path}', repeat('é€😀x', 250000)))",
    )
    assert big.returncode == 0, big.stderr
    [record] = evidence.wait_for(1, timeout=30)
    assert record["args"] == [text]


def test_raw_pg_notify_from_psql(
    service: ServiceProcess, pg_dsn: str, channel: str, evidence: Evidence
) -> None:
    payload = json.dumps({"task": RECORD, "args": [str(evidence.path), "raw"]})
    result = psql(pg_dsn, f"SELECT pg_notify('{channel}', '{payload}')")
    assert result.returncode == 0, result.stderr
    assert evidence.wait_for(1)[0]["args"] == ["raw"]


@pytest.mark.parametrize(
    ("call", "error"),
    [
        ("dispatcher_submit('has space', 'a.b')", "channel 'has space': not a valid channel name"),
        ("dispatcher_submit('c', 'lambda: 1')", "task 'lambda: 1': not a valid task name"),
        ("dispatcher_submit('c', 'a.b', '{}')", "args must be a JSON array, got object"),
        (
            "dispatcher_submit('c', 'a.b', '[]', '{}', '{\"timeout\": -1}')",
            "options.timeout: must be between 0 and 31536000",
        ),
        (
            "dispatcher_submit('c', 'a.b', '[]', '{}', '{\"on_duplicate\": \"x\"}')",
            'options.on_duplicate: "x" is not one of',
        ),
        (
            "dispatcher_submit('c', repeat('t', 1000000))",
            "task 'ttttttttttttttttttttttttttttttttttttttt... (1000002 characters): not a valid",
        ),
        (  # a refused value is shown cut short, with its length
            "dispatcher_submit('c', 'a.b', '[]', '{}', jsonb_build_object('uuid', repeat('u', 256)))",
            'options.uuid: expected a string of 1 to 255 characters, got "uuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuu... (258 characters)',
        ),
        (
            "dispatcher_submit('c', 'a.b', '[]', '{}', jsonb_build_object('delay', ('1e' || 100000)::numeric))",
            "options.delay: must be between 0 and 31536000 seconds, got 1000000000000000000000000000000000000000... (100001 characters)",
        ),
        (
            "dispatcher_submit('c', 'a.b', '[]', '{}', '{\"retries\": 3}')",
            "options: unknown key(s) retries",
        ),
        (  # what the service would drop: refused here, as the Python SDK refuses it
            "dispatcher_submit('c', 'a.b', jsonb_build_array(repeat('x', 8400000)))",
            "the message is 8400",
        ),
        (
            "dispatcher_submit('c', 'a.b', ('[' || repeat('9', 4301) || ']')::jsonb)",
            "args[0]: the integer has more than 4300 digits, too many to send",
        ),
        (
            "dispatcher_submit('c', 'a.b', '[]', '{\"a\": [{\"b c\": -1e5000}]}')",
            'kwargs.a[0]["b c"]: the integer has more than 4300 digits, too many to send',
        ),
        (  # what the service would drop: "number ... is out of range"
            "dispatcher_submit('c', 'a.b', jsonb_build_array(1, ('1' || repeat('0', 400) || '.5')::numeric))",
            "args[1]: the number 10000000000000000000... is out of range (a service reads a number"
            " with a fraction as a double: below 1.8e308)",
        ),
        (  # what the service would drop: nested too deep
            "dispatcher_submit('c', 'a.b', '[]', jsonb_build_object('k', (repeat('[', 63) || repeat(']', 63))::jsonb))",
            "kwargs: nested more than 63 levels deep (a message may nest 64 levels in all,",
        ),
        (
            "dispatcher_submit('c', 'a.b', (repeat('[', 64) || repeat(']', 64))::jsonb)",
            "args: nested more than 63 levels deep",
        ),
    ],
)
def test_bad_calls_are_refused_with_a_reason(
    service: ServiceProcess, pg_dsn: str, call: str, error: str
) -> None:
    result = psql(pg_dsn, f"SELECT {call}")
    assert result.returncode != 0
    assert f"dispatcher_submit: {error}" in result.stderr


def test_the_deepest_and_largest_numbers_a_service_reads_are_sent(
    service: ServiceProcess, pg_dsn: str, channel: str, evidence: Evidence
) -> None:
    deepest = "(repeat('[', 62) || repeat(']', 62))::jsonb"  # the message, args, then 62
    largest = f"1{'0' * 307}.5, -1.5, 1e-400"  # 1e307 and a half: a double, but no integer
    result = psql(
        pg_dsn,
        f"SELECT dispatcher_submit('{channel}', '{RECORD}',"
        f" jsonb_build_array('{evidence.path}', {deepest}) || '[{largest}]')",
    )
    assert result.returncode == 0, result.stderr
    [record] = evidence.wait_for(1)
    deep: Any = record["args"][0]
    for _ in range(61):
        [deep] = deep
    assert deep == []
    assert record["args"][1:] == [1e307, -1.5, 0.0]


def test_install_sql_can_print_the_sql() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dispatcher.server.ctl", "install-sql", "--print"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert "CREATE OR REPLACE FUNCTION dispatcher_submit(" in result.stdout


@pytest.fixture
def pgcrypto(pg_dsn: str) -> None:
    """pgcrypto in the test database (what dispatcher_submit() signs with), or a skip."""
    created = psql(pg_dsn, "CREATE EXTENSION IF NOT EXISTS pgcrypto")
    if created.returncode != 0:
        pytest.skip(f"the pgcrypto extension cannot be created here: {created.stderr.strip()}")


def signing(key_id: str, secret: str) -> str:
    """SQL that sets the signing key for the transaction (never with ALTER ROLE: readable)."""
    return (
        f"SELECT set_config('dispatcher.signing_key_id', '{key_id}', true), "
        f"set_config('dispatcher.signing_secret', '{secret}', true);"
    )


def test_dispatcher_submit_signs_when_a_key_is_set(
    pgcrypto: None,
    start_service: Callable[..., ServiceProcess],
    service_config: dict[str, Any],
    pg_dsn: str,
    channel: str,
    evidence: Evidence,
) -> None:
    service_config["security"] = {
        "keys": [{"id": "sql", "secret_env": "SQL_SIGNING_SECRET"}],
        "require_signed": ["task"],
    }
    service = start_with_sql_publisher(
        start_service, service_config, env={"SQL_SIGNING_SECRET": "sql sécret"}
    )
    call = f"SELECT dispatcher_submit('{channel}', '{RECORD}', jsonb_build_array('{evidence.path}', %s))"
    unsigned = psql(pg_dsn, call % "'unsigned'")
    assert unsigned.returncode == 0, unsigned.stderr
    service.wait_for_log(r"rejected message on channel .*: unsigned task message over pg_notify")
    forged = psql(pg_dsn, "BEGIN;" + signing("sql", "guessed") + call % "'forged'" + "; COMMIT")
    assert forged.returncode == 0, forged.stderr
    service.wait_for_log(r"rejected message on channel .*: bad signature \(key 'sql'\)")
    big = "repeat('é', 9000)"  # over one NOTIFY once signed: chunk envelopes
    for argument in ("'signed'", big):
        signed = psql(
            pg_dsn, "BEGIN;" + signing("sql", "sql sécret") + call % argument + "; COMMIT"
        )
        assert signed.returncode == 0, signed.stderr
    records = evidence.wait_for(2)
    assert sorted(r["args"][0][:6] for r in records) == ["signed", "éééééé"]


def test_dispatcher_submit_says_when_pgcrypto_is_missing(
    service: ServiceProcess, pg_dsn: str
) -> None:
    # DDL is transactional: the extension is dropped only inside this transaction.
    result = psql(
        pg_dsn,
        "BEGIN; DROP EXTENSION IF EXISTS pgcrypto;"
        + signing("sql", "secret")
        + "SELECT dispatcher_submit('c', 'a.b'); ROLLBACK",
    )
    assert result.returncode != 0
    assert (
        "dispatcher_submit: cannot sign the message: dispatcher.signing_key_id is set but the "
        "pgcrypto extension is not installed in this database" in result.stderr
    )
    half = psql(
        pg_dsn,
        "SELECT set_config('dispatcher.signing_key_id', 'k', false), dispatcher_submit('c', 'a.b')",
    )
    assert half.returncode != 0
    assert "set both dispatcher.signing_key_id and dispatcher.signing_secret" in half.stderr


PLANTS = {
    # Each would be called, if the functions resolved names through the caller's search_path
    # or let a looser type match win, and raises: the call fails rather than leak.
    "convert_to(t text, e text) RETURNS bytea": "the signing secret",
    "jsonb_path_exists(j jsonb, p text) RETURNS boolean": "args and kwargs",
    "dispatcher_unreadable_path(j jsonb, p text) RETURNS text": "args and kwargs",
    # Concrete types beat a built-in's variadic "any" or polymorphic parameters, wherever
    # the built-in's schema is on the path: only a call naming pg_catalog is safe from them.
    "jsonb_build_array(a jsonb, b jsonb) RETURNS jsonb": "args and kwargs",
    "format(f text, a name, b text, c text) RETURNS text": "the HMAC statement",
    "to_jsonb(t text) RETURNS jsonb": "object keys",
}


@pytest.mark.parametrize("planted_in", ["a schema on the publisher's path", "the install schema"])
def test_functions_a_role_plants_are_never_called_by_a_signed_submit(
    pgcrypto: None,
    start_service: Callable[..., ServiceProcess],
    service_config: dict[str, Any],
    pg_dsn: str,
    pg_conn: psycopg.Connection[Any],
    channel: str,
    evidence: Evidence,
    planted_in: str,
) -> None:
    """Installed in a schema of its own and called by its full name by a role whose
    search_path has a schema another role may create in: the built-ins and the helpers it
    calls are pg_catalog's and its own (even in its own schema, should another role create
    there), and the message is signed and delivered. A role granted CREATE on the install
    schema is trusted like its owner (it could plant operators, docs/security.md): its
    functions are still never called."""
    tag = uuid.uuid4().hex[:10]
    names = {
        "publisher": sql.Identifier(f"publisher_{tag}"),
        "planter": sql.Identifier(f"planter_{tag}"),
        "installed": sql.Identifier(f"installed_{tag}"),
        "trap": sql.Identifier(f"trap_{tag}"),
    }
    service_config["security"] = {
        "keys": [{"id": "sql", "secret_env": "SQL_SIGNING_SECRET"}],
        "require_signed": ["task"],
    }
    service = start_service(service_config, env={"SQL_SIGNING_SECRET": "sql sécret"})
    try:
        for statement in (
            "CREATE ROLE {publisher} LOGIN",
            "CREATE ROLE {planter} LOGIN",
            "CREATE SCHEMA {installed}",
            "CREATE SCHEMA {trap} AUTHORIZATION {planter}",
            "GRANT USAGE ON SCHEMA {installed}, {trap} TO {publisher}",
            "GRANT USAGE, CREATE ON SCHEMA {installed} TO {planter}",
        ):
            pg_conn.execute(sql.SQL(statement).format(**names))
        # As `psql -f dispatcher_submit.sql` with the schema first on the installer's path.
        with psycopg.connect(pg_dsn, autocommit=True) as installer:
            installer.execute(sql.SQL("SET search_path = {installed}").format(**names))
            installer.execute(sql_publisher().encode())
        schema = names["trap" if planted_in.startswith("a schema") else "installed"]
        with psycopg.connect(make_conninfo(pg_dsn, user=f"planter_{tag}"), autocommit=True) as c:
            for signature, what in PLANTS.items():
                if signature.startswith("dispatcher_") and schema is names["installed"]:
                    continue  # its own, already there
                c.execute(
                    sql.SQL(
                        "CREATE FUNCTION {}.{} LANGUAGE plpgsql AS"
                        " $f$BEGIN RAISE EXCEPTION 'planted function called with {}'; END$f$"
                    ).format(schema, sql.SQL(signature), sql.SQL(what))
                )
        publisher = make_conninfo(
            pg_dsn, user=f"publisher_{tag}", options=f"-c search_path=trap_{tag},public"
        )
        # 10**308: an integer a service reads, which makes the function look for unreadable
        # numbers with its helper.
        submitted = psql(
            publisher,
            "BEGIN;"
            + signing("sql", "sql sécret")
            + f"SELECT installed_{tag}.dispatcher_submit('{channel}', '{RECORD}',"
            f" jsonb_build_array('{evidence.path}', 'signed', ('1' || repeat('0', 308))::jsonb));"
            "COMMIT",
        )
        assert submitted.returncode == 0, submitted.stderr
        [record] = evidence.wait_for(1)
        assert record["args"] == ["signed", 10**308]
        assert "rejected message" not in service.log
    finally:
        pg_conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {installed}, {trap} CASCADE").format(**names)
        )
        for role in ("publisher", "planter"):
            if pg_conn.execute(
                "SELECT FROM pg_roles WHERE rolname = %s", (f"{role}_{tag}",)
            ).rowcount:
                pg_conn.execute(sql.SQL("DROP OWNED BY {0}; DROP ROLE {0}").format(names[role]))
