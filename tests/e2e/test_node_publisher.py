"""A non-Python publisher: the Node.js example validates with ajv, then NOTIFYs (or stores a job).

Needs Node.js and npm (the npm packages `pg` and `ajv`); skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from dispatcher.schema import (
    CHANNEL_NAME_RULE,
    QUEUE_WAKEUP_CHANNEL,
    duplicate_key,
    sql_queue_publisher,
)
from dispatcher.server.brokers.pg_queue.migrations import migrate
from support.paths import EXAMPLES, REPO, SCHEMAS
from support.service import Evidence, ServiceProcess

EXPECTED_ERRORS: dict[str, str] = json.loads((EXAMPLES / "expected-errors.json").read_text())[
    "errors"
]


@pytest.fixture(scope="module")
def node_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js and npm are not installed on this machine")
    folder = tmp_path_factory.mktemp("node") / "example"
    shutil.copytree(REPO / "docs" / "examples" / "node", folder)
    install = subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--silent"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if install.returncode != 0:
        pytest.skip(f"npm could not install pg and ajv: {install.stderr[-500:]}")
    return folder


def node(
    folder: Path, script: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["node", script, *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DISPATCHER_SCHEMAS": str(SCHEMAS), **(env or {})},
    )


def node_dsn(dsn: str) -> str:
    """The DSN as a URL, which node-postgres understands."""
    params = conninfo_to_dict(dsn)
    host = str(params.get("host", "127.0.0.1"))
    user, database, port = (
        params.get("user", "postgres"),
        params.get("dbname", "postgres"),
        params.get("port", 5432),
    )
    if host.startswith("/"):
        return f"postgresql://{user}@/{database}?host={host}&port={port}"
    return f"postgresql://{user}@{host}:{port}/{database}"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_every_conformance_example_behaves_the_same_in_ajv(node_example: Path) -> None:
    result = node(node_example, "conformance.js")
    assert result.returncode == 0, result.stderr
    outcomes = json.loads(result.stdout)
    assert len(outcomes) == len(list(EXAMPLES.glob("*/*/*.json")))
    for example, outcome in outcomes.items():
        if "/valid/" in example:
            assert outcome == {"valid": True, "paths": []}, example
        else:
            assert outcome["valid"] is False, example
            assert EXPECTED_ERRORS[example] in outcome["paths"], example


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_node_publisher_submits_a_task_that_runs(
    node_example: Path,
    start_service: Callable[..., ServiceProcess],
    service_config: dict[str, Any],
    pg_dsn: str,
    channel: str,
    evidence: Evidence,
) -> None:
    start_service(service_config)
    env = {"DISPATCHER_DSN": node_dsn(pg_dsn)}
    sent = node(
        node_example,
        "publisher.js",
        channel,
        "support.service_tasks.record",
        json.dumps([str(evidence.path), "from node"]),
        '{"n": 1}',
        env=env,
    )
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.startswith("submitted support.service_tasks.record as ")
    [record] = evidence.wait_for(1)
    assert (record["args"], record["kwargs"]) == (["from node"], {"n": 1})
    refused = node(node_example, "publisher.js", channel, "lambda: 1", env=env)
    assert refused.returncode != 0
    assert "invalid task message: /task must match pattern" in refused.stderr


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("script", "arguments", "reason"),
    [
        ("publisher.js", ["a b", "a.b"], 'channel "a b": not a valid channel name'),
        ("publisher.js", ["", "a.b"], 'channel "": not a valid channel name'),
        ("publisher.js", ["node_cli", "a.b", "[1,"], "args: not JSON: "),
        ("publisher.js", ["node_cli", "a.b", "[]", "{x}"], "kwargs: not JSON: "),
        ("enqueue.js", ["a b", "a.b"], 'queue "a b": not a valid channel name'),
        ("enqueue.js", ["orders", "a.b", "[]", "{}", "nope"], "options: not JSON: "),
    ],
)
def test_node_command_lines_refuse_bad_input_in_one_line(
    node_example: Path, pg_dsn: str, script: str, arguments: list[str], reason: str
) -> None:
    refused = node(node_example, script, *arguments, env={"DISPATCHER_DSN": node_dsn(pg_dsn)})
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert refused.stderr.startswith(f"{script}: {reason}")
    assert len(refused.stderr.splitlines()) == 1, refused.stderr


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_node_signs_the_conformance_examples_byte_for_byte(node_example: Path) -> None:
    """Node's createHmac gives the signatures of the examples (secret ``example-secret``)."""
    examples = sorted((EXAMPLES / "signed-envelope" / "valid").glob("*.json"))
    vectors = [json.loads(path.read_text(encoding="utf-8")) for path in examples]
    script = (
        "import { signEnvelope } from './publisher.js';"
        "for (const v of JSON.parse(process.env.VECTORS))"
        " console.log(signEnvelope(v.body, v.key_id, 'example-secret', v.signed_at));"
    )
    result = subprocess.run(
        ["node", "--input-type=module", "-e", script],
        cwd=node_example,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "VECTORS": json.dumps(vectors)},
    )
    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == vectors


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_signed_message_from_node_runs_where_signatures_are_required(
    node_example: Path,
    start_service: Callable[..., ServiceProcess],
    service_config: dict[str, Any],
    pg_dsn: str,
    channel: str,
    evidence: Evidence,
) -> None:
    service_config["security"] = {
        "keys": [{"id": "node-key", "secret_env": "DISPATCHER_SIGNING_SECRET"}],
        "require_signed": ["task"],
    }
    signing = {"DISPATCHER_SIGNING_KEY_ID": "node-key", "DISPATCHER_SIGNING_SECRET": "ň0de secret"}
    service = start_service(service_config, env=signing)
    env = {"DISPATCHER_DSN": node_dsn(pg_dsn)}
    args = json.dumps([str(evidence.path), "signed in node"])
    unsigned = node(
        node_example, "publisher.js", channel, "support.service_tasks.record", args, env=env
    )
    assert unsigned.returncode == 0, unsigned.stderr
    service.wait_for_log(r"rejected message on channel .*unsigned task message over pg_notify")
    sent = node(
        node_example,
        "publisher.js",
        channel,
        "support.service_tasks.record",
        args,
        env={**env, **signing},
    )
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.rstrip().endswith("(signed with key node-key)")
    [record] = evidence.wait_for(1)
    assert record["args"] == ["signed in node"]


@pytest.fixture
def queue_schema(pg_dsn: str) -> Iterator[str]:
    """A schema of this test's own, holding the durable queue's tables."""
    schema = f"node_{uuid4().hex[:12]}"
    with psycopg.connect(pg_dsn) as conn:
        migrate(conn, schema)
    yield schema
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_node_enqueues_a_durable_job_and_wakes_the_services(
    node_example: Path, pg_dsn: str, queue_schema: str
) -> None:
    env = {"DISPATCHER_DSN": node_dsn(pg_dsn), "DISPATCHER_QUEUE_SCHEMA": queue_schema}
    args, kwargs = ["é", {"b": 1, "a": [1.5, None]}], {"z": True, "ä": "x"}
    options = {"max_attempts": 7, "delay": 30, "on_duplicate": "queue_one", "timeout": 5}
    call = ["orders", "myapp.tasks.ship", json.dumps(args), json.dumps(kwargs), json.dumps(options)]
    with psycopg.connect(pg_dsn, autocommit=True) as listener:
        listener.execute(f"LISTEN {QUEUE_WAKEUP_CHANNEL}")
        sent = node(node_example, "enqueue.js", *call, env=env)
        assert sent.returncode == 0, sent.stderr
        woken = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
        again = node(node_example, "enqueue.js", *call, env=env)  # queue_one: one waits already
        assert again.returncode == 0, again.stderr
        rows = listener.execute(
            sql.SQL(
                "SELECT uuid, queue, task, message, max_attempts, on_duplicate, dup_key,"
                " run_after - created_at FROM {}.jobs"
            ).format(sql.Identifier(queue_schema))
        ).fetchall()
    assert woken == ["orders"]
    [(uuid, queue, task, text, max_attempts, mode, key, delay)] = rows
    assert sent.stdout.strip() == f"enqueued myapp.tasks.ship as {uuid}"
    message = json.loads(text)
    assert (queue, task, max_attempts, mode, delay.total_seconds()) == (
        "orders",
        "myapp.tasks.ship",
        7,
        "queue_one",
        30,
    )
    assert {k: message[k] for k in ("task", "uuid", "args", "kwargs", "timeout", "delay")} == {
        "task": "myapp.tasks.ship",
        "uuid": uuid,
        "args": args,
        "kwargs": kwargs,
        "timeout": 5,
        "delay": 30,
    }
    assert "max_attempts" not in message
    assert key == duplicate_key(message)  # the same key as Python's and SQL's
    refused = node(
        node_example, "enqueue.js", "orders", "a.b", "[]", "{}", '{"max_attempts": 0}', env=env
    )
    assert refused.returncode != 0
    assert "max_attempts: expected an integer between 1 and 1000, got 0" in refused.stderr


def random_doubles(count: int) -> list[float]:
    """Doubles of every magnitude (random bit patterns), NaN and infinities left out."""
    rng = random.Random(20260527)
    found: list[float] = []
    while len(found) < count:
        [value] = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))
        if math.isfinite(value):
            found.append(value)
    return found


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_node_sql_and_python_write_every_number_alike_in_duplicate_keys(
    node_example: Path, pg_dsn: str
) -> None:
    edges = [1e16, 1e-7, 1e21, 1.5e20, -1e-5, -0.0, 0.5, 1e-6, 5e-324, 1.7976931348623157e308]
    numbers = edges + [-n for n in edges] + random_doubles(300) + [2**53 + 2, -(10**20)]
    script = (
        "import { duplicateKey, canonicalNumber } from './enqueue.js';"
        "for (const n of JSON.parse(process.env.NUMBERS)) console.log(JSON.stringify("
        "[JSON.stringify([n, {k: [n]}]), duplicateKey('t.x', [n, {k: [n]}], {}), canonicalNumber(n)]));"
    )
    result = subprocess.run(
        ["node", "--input-type=module", "-e", script],
        cwd=node_example,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NUMBERS": json.dumps(numbers)},
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == len(numbers)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql_queue_publisher().encode())
        for number, (text, node_key, _) in zip(numbers, rows, strict=True):
            sql_row = conn.execute(
                "SELECT dispatcher_duplicate_key('t.x', %s::jsonb, '{}')", (text,)
            ).fetchone()
            # Node writes 1.0 as 1: Python's 1.0 is another value (the key differs, as it should).
            python_args = (
                json.loads(text) if repr(number).endswith(".0") else [number, {"k": [number]}]
            )
            python_key = duplicate_key({"task": "t.x", "args": python_args})
            assert (node_key, sql_row) == (python_key, (python_key,)), (number, text)


NOT_JSON = (
    "is not valid in JSON (send plain objects, arrays, strings, finite numbers, booleans and null)"
)

REFUSALS_SCRIPT = """
import pg from 'pg';
import { submit, buildMessage } from './publisher.js';
import { enqueue } from './enqueue.js';
const client = new pg.Client({ connectionString: process.env.DISPATCHER_DSN });
await client.connect();
const deep = (n) => JSON.parse('['.repeat(n) + ']'.repeat(n));
const cases = {
  deepest: [[deep(62)], {}, {}],
  too_deep: [[1, deep(63)], {}, {}],
  too_deep_kwargs: [[], { 'a b': { c: deep(62) } }, {}],
  nan: [[[NaN]], {}, {}],
  infinity: [[], { x: -Infinity }, {}],
  uuid_nul: [[], {}, { uuid: 'a\\u0000b' }],
  uuid_lone: [[], {}, { uuid: 'x\\udc00y' }],
  undefined: [[undefined], {}, {}],
  function: [[], { f: () => 1 }, {}],
  symbol: [[Symbol('s')], {}, {}],
  bigint: [[], { n: 10n }, {}],
  map: [[new Map([['a', 1]])], {}, {}],
  bytes: [[[new Uint8Array([1, 2])]], {}, {}],
  date: [[new Date(0)], {}, {}],
  hole: [[1, , 3], {}, {}],
  name_empty: [[], {}, {}, ''],
  name_space: [[], {}, {}, 'a b'],
  name_long: [[], {}, {}, 'a'.repeat(64)],
  name_accent: [[], {}, {}, 'caf\u00e9'],
  name_not_text: [[], {}, {}, 42],
};
for (const [name, [args, kwargs, options, target]] of Object.entries(cases)) {
  for (const how of ['notify', 'queue']) {
    try {
      if (how === 'notify') await submit(client, target ?? 'node_refusals', { ...buildMessage('a.b', args, kwargs), ...options }, null);
      else await enqueue(client, target ?? 'orders', 'a.b', args, kwargs, options, process.env.DISPATCHER_QUEUE_SCHEMA);
      console.log(JSON.stringify([name, how, 'sent']));
    } catch (e) {
      console.log(JSON.stringify([name, how, e.message]));
    }
  }
}
await client.end();
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_node_refuses_what_a_service_would_drop_naming_the_place(
    node_example: Path, pg_dsn: str, queue_schema: str
) -> None:
    result = subprocess.run(
        ["node", "--input-type=module", "-e", REFUSALS_SCRIPT],
        cwd=node_example,
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "DISPATCHER_DSN": node_dsn(pg_dsn),
            "DISPATCHER_QUEUE_SCHEMA": queue_schema,
            "DISPATCHER_SCHEMAS": str(SCHEMAS),
        },
    )
    assert result.returncode == 0, result.stderr
    outcomes: dict[tuple[str, str], str] = {}
    for line in result.stdout.splitlines():
        name, how, outcome = json.loads(line)
        outcomes[name, how] = outcome
    expected = {
        "deepest": "sent",
        "too_deep": "invalid task message: args[1]"
        + "[0]" * 62
        + ": nested too deeply, or contains itself (a message may nest 64 levels in all)",
        "too_deep_kwargs": 'invalid task message: kwargs["a b"].c'
        + "[0]" * 61
        + ": nested too deeply, or contains itself (a message may nest 64 levels in all)",
        "nan": "invalid task message: args[0][0]: NaN is not valid in JSON",
        "infinity": "invalid task message: kwargs.x: -Infinity is not valid in JSON",
        "uuid_nul": 'invalid task message: uuid: "a\\u0000b" holds a NUL character at index 1,'
        " which PostgreSQL text cannot hold",
        "uuid_lone": 'invalid task message: uuid: "x\\udc00y" holds the lone surrogate \\udc00'
        " at index 1, which UTF-8 cannot encode",
        "undefined": f"invalid task message: args[0]: undefined {NOT_JSON}",
        "function": f"invalid task message: kwargs.f: a function {NOT_JSON}",
        "symbol": f"invalid task message: args[0]: a symbol {NOT_JSON}",
        "bigint": f"invalid task message: kwargs.n: a bigint {NOT_JSON}",
        "map": f"invalid task message: args[0]: a Map {NOT_JSON}",
        "bytes": f"invalid task message: args[0][0]: a Uint8Array {NOT_JSON}",
        "date": f"invalid task message: args[0]: a Date {NOT_JSON}",
        "hole": "invalid task message: args[1]: a hole in a sparse array"
        " (JSON.stringify would send null)",
    }
    # A name no service can listen on, or PostgreSQL refuses, is refused before anything is
    # sent, naming the argument and the rule (a message NOTIFYd there would reach no one).
    for name, text in BAD_NAMES.items():
        for how, argument in (("notify", "channel"), ("queue", "queue")):
            expected_by_how = f"{argument} {text}: not a valid channel name ({CHANNEL_NAME_RULE})"
            assert outcomes.pop((name, how)) == expected_by_how
    assert outcomes == {
        (name, how): text for name, text in expected.items() for how in ("notify", "queue")
    }


BAD_NAMES = {
    "name_empty": '""',
    "name_space": '"a b"',
    "name_long": json.dumps("a" * 64),
    "name_accent": '"café"',
    "name_not_text": "42",
}


UUID_SCRIPT = """
import pg from 'pg';
import { submit, buildMessage } from './publisher.js';
import { enqueue } from './enqueue.js';
const client = new pg.Client({ connectionString: process.env.DISPATCHER_DSN });
await client.connect();
const sent = [];
client.on('notification', (n) => sent.push(JSON.parse(n.payload).uuid));
await client.query('LISTEN node_uuids');
const returned = [
  await submit(client, 'node_uuids', buildMessage('a.b', [], {}, { uuid: undefined }), null),
  await submit(client, 'node_uuids', { task: 'a.b', args: [], kwargs: {} }, null),
  await submit(client, 'node_uuids', { task: 'a.b', args: [], kwargs: {}, uuid: undefined }, null),
];
const deadline = Date.now() + 10000;
while (sent.length < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
const queued = await enqueue(client, 'orders', 'a.b', [], {}, { uuid: undefined },
  process.env.DISPATCHER_QUEUE_SCHEMA);
const row = await client.query(
  `SELECT message::jsonb ->> 'uuid' AS uuid FROM ${process.env.DISPATCHER_QUEUE_SCHEMA}.jobs`);
console.log(JSON.stringify({ returned: [...returned, queued], sent: [...sent, row.rows[0].uuid] }));
await client.end();
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_node_returns_the_uuid_it_sends(node_example: Path, pg_dsn: str, queue_schema: str) -> None:
    result = subprocess.run(
        ["node", "--input-type=module", "-e", UUID_SCRIPT],
        cwd=node_example,
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "DISPATCHER_DSN": node_dsn(pg_dsn),
            "DISPATCHER_QUEUE_SCHEMA": queue_schema,
            "DISPATCHER_SCHEMAS": str(SCHEMAS),
        },
    )
    assert result.returncode == 0, result.stderr
    uuids = json.loads(result.stdout)
    assert uuids["returned"] == uuids["sent"]
    assert all(isinstance(uuid, str) and len(uuid) == 36 for uuid in uuids["sent"])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_node_counts_a_delay_from_the_statement_not_the_transaction(
    node_example: Path, pg_dsn: str, queue_schema: str
) -> None:
    script = (
        "import pg from 'pg'; import { enqueue } from './enqueue.js';"
        "const c = new pg.Client({ connectionString: process.env.DISPATCHER_DSN });"
        "await c.connect(); await c.query('BEGIN'); await c.query('SELECT pg_sleep(1)');"
        "await enqueue(c, 'orders', 'a.b', [], {}, { uuid: 'late', delay: 2 },"
        " process.env.DISPATCHER_QUEUE_SCHEMA);"
        "const r = await c.query(`SELECT extract(epoch FROM created_at - now()) AS late,"
        " extract(epoch FROM run_after - created_at) AS delay"
        " FROM ${process.env.DISPATCHER_QUEUE_SCHEMA}.jobs`);"
        "await c.query('COMMIT'); await c.end(); console.log(JSON.stringify(r.rows[0]));"
    )
    result = subprocess.run(
        ["node", "--input-type=module", "-e", script],
        cwd=node_example,
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "DISPATCHER_DSN": node_dsn(pg_dsn),
            "DISPATCHER_QUEUE_SCHEMA": queue_schema,
            "DISPATCHER_SCHEMAS": str(SCHEMAS),
        },
    )
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)
    assert float(row["late"]) >= 1  # created by the statement, a second into its transaction
    assert float(row["delay"]) == 2
