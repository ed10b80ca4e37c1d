"""Databases whose encoding is not UTF8: every connection of the project speaks UTF-8.

On ``SQL_ASCII`` the server passes the bytes through (a client in its own encoding would read
``bytes``); on ``LATIN1`` it converts them, and refuses the characters it lacks: the SDK and
``dispatcherctl`` say which value holds one.
"""

from __future__ import annotations

import json
import subprocess
import uuid as uuids
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from dispatcher.config import reset, setup
from dispatcher.publish import (
    InvalidSubmission,
    close_connections,
    get_job,
    jobs,
    submit_task,
)
from dispatcher.publish.pg_text import CHECKED_IN_ADVANCE
from dispatcher.server.brokers.pg_queue.migrations import migrate
from support.ctl_here import dispatcherctl
from support.metrics import free_port, scrape
from support.service import TASKS, Evidence, ServiceProcess, wait_until

pytestmark = pytest.mark.timeout(60)

QUEUE = "enc_jobs"
TEXT = "café ñ ÿ"
"""Text every encoding tested holds (LATIN1 has these characters, ASCII does not)."""


@pytest.fixture(scope="module", params=["SQL_ASCII", "LATIN1"])
def encoded_dsn(request: pytest.FixtureRequest, pg_dsn: str) -> Iterator[str]:
    """A database of this encoding, with the durable queue's tables (dropped at the end)."""
    name = f"dispatcher_enc_{request.param.lower()}_{uuids.uuid4().hex[:10]}"
    statement = sql.SQL(
        "CREATE DATABASE {} ENCODING {} LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
    ).format(sql.Identifier(name), sql.Literal(request.param))
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(statement)
    dsn = make_conninfo(pg_dsn, dbname=name)
    try:
        with psycopg.connect(dsn) as conn:
            migrate(conn, "dispatcher")
        yield dsn
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def encoding_of(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        return str(conn.info.parameter_status("server_encoding"))


def config_of(dsn: str, channel: str) -> dict[str, Any]:
    return {
        "version": 1,
        "brokers": {
            "pg_notify": {"conninfo": dsn, "channels": [channel]},
            "pg_queue": {"queues": [QUEUE], "poll_interval": 0.5, "lease": 5},
        },
        "tasks": {"modules": ["support.service_tasks"]},
        "service": {"pool": {"min_workers": 1, "max_workers": 2}, "shutdown_grace": 5},
    }


@pytest.fixture
def configured(encoded_dsn: str, channel: str, tmp_path: Path) -> Iterator[Path]:
    """The SDK set up on the encoded database; yields the config file, for dispatcherctl."""
    config = config_of(encoded_dsn, channel)
    path = tmp_path / "dispatcher.yml"
    path.write_text(json.dumps(config))
    setup(config)
    yield path
    close_connections()
    reset()


def ctl(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """dispatcherctl, in this process (a child each took most of a test's time limit on a
    loaded machine)."""
    return dispatcherctl(config, *args)


def test_text_travels_whole_through_a_service_and_back(
    encoded_dsn: str,
    channel: str,
    configured: Path,
    evidence: Evidence,
    start_service: Callable[..., ServiceProcess],
) -> None:
    service = start_service(config_of(encoded_dsn, channel))
    path = str(evidence.path)
    durable = submit_task(TASKS + "give_back", args=[path, TEXT], queue=QUEUE, uuid=f"é-{TEXT}")
    submit_task(TASKS + "record", args=[path, TEXT])  # over NOTIFY
    # Unescaped, as the SQL functions and other clients may send it.
    raw = {"task": TASKS + "record", "uuid": uuids.uuid4().hex, "args": [path, TEXT]}
    with psycopg.connect(encoded_dsn, autocommit=True, client_encoding="UTF8") as conn:
        conn.execute("SELECT pg_notify(%s, %s)", (channel, json.dumps(raw, ensure_ascii=False)))

    records = evidence.wait_for(3)
    recorded = [r["args"] for r in records if "args" in r]
    assert recorded.count([TEXT]) == 2, records

    job = wait_until(lambda: (j := get_job(durable.uuid)) is not None and j.finished and j, 20)
    assert (job.state, job.uuid, job.task, job.result) == (
        "done",
        f"é-{TEXT}",
        TASKS + "give_back",
        TEXT,
    )
    assert [j.uuid for j in jobs(task=TASKS + "give_back")] == [durable.uuid]
    assert "rejected" not in service.log

    listing = ctl(configured, "jobs")
    assert listing.returncode == 0, listing.stderr
    assert f"é-{TEXT}" in listing.stdout
    listed = ctl(configured, "jobs", "--json", "--uuid", durable.uuid)
    assert listed.returncode == 0, listed.stderr
    assert [(row["uuid"], row["result"]) for row in json.loads(listed.stdout)] == [
        (durable.uuid, TEXT)
    ]
    alive = ctl(configured, "alive")
    assert alive.returncode == 0, alive.stdout + alive.stderr


LACKED = "€"
"""A character LATIN1 lacks."""


@pytest.mark.parametrize("encoded_dsn", ["LATIN1"], indirect=True)
def test_text_the_database_cannot_hold_is_named_not_a_traceback(
    encoded_dsn: str, configured: Path
) -> None:
    with pytest.raises(InvalidSubmission) as caught:
        submit_task(TASKS + "record", args=["unused"], queue=QUEUE, uuid=f"{LACKED}1")
    said = str(caught.value)
    assert said.startswith(f"cannot submit '{TASKS}record': uuid: holds '€' (U+20AC), a character")
    assert "LATIN1" in said
    # Arguments travel as JSON text, escaped: any database holds them.
    submitted = submit_task(TASKS + "record", queue=QUEUE, args=[LACKED], kwargs={LACKED: 1})
    job = get_job(submitted.uuid)
    assert job is not None
    assert json.loads(job.message)["args"] == [LACKED]
    with psycopg.connect(encoded_dsn) as own:  # the database's encoding, as clients default to
        with pytest.raises(InvalidSubmission, match=r"^cannot submit .*: uuid: holds '€'"):
            submit_task(TASKS + "record", args=["unused"], queue=QUEUE, uuid=LACKED, connection=own)
        assert get_job(LACKED, connection=own) is None
        assert jobs(task=LACKED, connection=own) == []
        own.execute("SELECT 1")  # its transaction is not aborted: nothing was sent
    assert get_job(f"{LACKED}1") is None  # no job can have it
    assert jobs(task=f"x{LACKED}") == jobs(queue=LACKED) == []
    assert get_job("e1") is None  # the connection is still usable

    for args, option in [
        (["jobs", "--uuid", LACKED], "--uuid"),
        (["jobs", "--task", LACKED], "--task"),
        (["retry", "--uuid", LACKED], "--uuid"),
        (["cancel-job", "--task", LACKED], "--task"),
        (["purge", "--state", "done", "--older-than", "1", "--queue", LACKED], "--queue"),
    ]:
        result = ctl(configured, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.splitlines() == [
            f"dispatcherctl: argument {option}: holds '€' (U+20AC), a character the "
            "database's encoding (LATIN1) lacks"
        ], args
    # Arguments the task takes: in this process its signature may be known (the tasks'
    # module imported by another test), and checked first.
    result = ctl(
        configured,
        "submit",
        TASKS + "record",
        "--args",
        '["p"]',
        "--queue",
        QUEUE,
        "--uuid",
        LACKED,
    )
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert "uuid: holds '€' (U+20AC)" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("encoded_dsn", ["EUC_JP"], indirect=True)
def test_a_multi_byte_database_is_asked_not_second_guessed(
    encoded_dsn: str, configured: Path
) -> None:
    """PostgreSQL's EUC_JP holds ①, which Python's euc_jp codec lacks: no false refusal; what
    it lacks (an emoji) is named from the server's refusal, the caller's transaction intact."""
    held, lacked = "株式会社①\uff5e㈱\u2160", "\U0001f600"  # (fullwidth tilde, roman one)
    # In a transaction from its first statement; in UTF-8 (in EUC_JP, psycopg would encode
    # text with Python's codec, and refuse ① itself).
    with psycopg.connect(encoded_dsn, client_encoding="UTF8") as own:
        submit_task(
            TASKS + "record", args=["unused"], queue=QUEUE, uuid=f"a-{held}", connection=own
        )
        with pytest.raises(InvalidSubmission) as caught:
            submit_task(TASKS + "record", args=["unused"], queue=QUEUE, uuid=lacked, connection=own)
        assert str(caught.value).startswith(
            f"cannot submit '{TASKS}record': uuid: holds '{lacked}' (U+1F600), a character the "
            "database's encoding (EUC_JP) lacks"
        ), caught.value
        assert get_job(lacked, connection=own) is None
        assert jobs(task=lacked, connection=own) == []
        found = get_job(f"a-{held}", connection=own)
        assert found is not None
        assert found.uuid == f"a-{held}"
        own.commit()  # the transaction is intact: the first job is stored
    assert [j.uuid for j in jobs(queue=QUEUE)] == [f"a-{held}"]
    with pytest.raises(InvalidSubmission, match=f"^cannot submit .*: uuid: holds '{lacked}'"):
        submit_task(TASKS + "record", args=["unused"], queue=QUEUE, uuid=lacked)
    assert submit_task(
        TASKS + "record", args=["unused"], kwargs={"x": held}, queue=QUEUE, uuid=f"b-{held}"
    )

    listed = ctl(configured, "jobs", "--json", "--task", TASKS + "record", "--uuid", f"b-{held}")
    assert listed.returncode == 0, listed.stderr
    assert [row["uuid"] for row in json.loads(listed.stdout)] == [f"b-{held}"]
    for args, option in [
        (["jobs", "--task", lacked], "--task"),
        (["cancel-job", "--uuid", lacked], "--uuid"),
    ]:
        result = ctl(configured, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.splitlines() == [
            f"dispatcherctl: argument {option}: holds '{lacked}' (U+1F600), a character the "
            "database's encoding (EUC_JP) lacks"
        ], args


DECODE_EVERY_BYTE = """
CREATE FUNCTION pg_temp.decode_every_byte(encoding text) RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE decoded text[] := '{}';
BEGIN
    FOR byte IN 128..255 LOOP
        BEGIN
            decoded := decoded || convert_from(decode(to_hex(byte), 'hex'), encoding);
        EXCEPTION WHEN others THEN  -- a byte the encoding leaves undefined
            decoded := decoded || NULL::text;
        END;
    END LOOP;
    RETURN decoded;
END $$"""


def test_the_encodings_checked_in_advance_are_postgresql_s_own(
    pg_conn: psycopg.Connection[Any],
) -> None:
    """Python's codec of each decodes every byte as PostgreSQL converts it (one byte each)."""
    pg_conn.execute(DECODE_EVERY_BYTE)
    for encoding, codec in CHECKED_IN_ADVANCE.items():
        row = pg_conn.execute("SELECT pg_temp.decode_every_byte(%s)", (encoding,)).fetchone()
        assert row is not None
        python: list[str | None] = []
        for byte in range(128, 256):
            try:
                python.append(bytes([byte]).decode(codec))
            except UnicodeDecodeError:
                python.append(None)
        assert row[0] == python, encoding


PY_CODECS = {"SQL_ASCII": "utf-8", "WIN1252": "cp1252", "EUC_JP": "euc_jp"}
"""Python's codec of each encoding, for text it holds as PostgreSQL does."""

UNDEFINED = {
    # SQL_ASCII stores any byte: LATIN1's é, written by a client in that encoding, is no UTF-8.
    "SQL_ASCII": (b"\xe9", "is not UTF-8 text"),
    # A byte WIN1252 leaves undefined (no UTF-8 equivalent), and its é, which is legitimate.
    "WIN1252": (b"\x81", "undefined (no UTF-8 equivalent)"),
    # A character of EUC_JP's unassigned row 9: valid EUC_JP, with no UTF-8 equivalent.
    "EUC_JP": (
        b"\xa9\xa1",
        'has no UTF-8 equivalent (character with byte sequence 0xa9 0xa1 in encoding "EUC_JP"',
    ),
}


@pytest.mark.parametrize("encoded_dsn", list(UNDEFINED), indirect=True)
def test_rows_holding_characters_without_a_utf8_equivalent_are_failed_not_blocking_claims(
    encoded_dsn: str,
    channel: str,
    configured: Path,
    evidence: Evidence,
    start_service: Callable[..., ServiceProcess],
) -> None:
    """A client in the database's encoding stores a character it leaves undefined (0x81 in
    WIN1252), which has no UTF-8 equivalent, or on SQL_ASCII bytes that are not UTF-8: such a
    row is failed with the reason, and the jobs around it run, those holding text the
    encoding defines (é) among them. Listing the jobs says in one line why it cannot show
    them, and they can be purged."""
    encoding = encoding_of(encoded_dsn)
    undefined, said = UNDEFINED[encoding]
    path = str(evidence.path)
    with psycopg.connect(encoded_dsn) as conn:  # (the database is the module's: rows before)
        first = conn.execute("SELECT coalesce(max(id), 0) FROM dispatcher.jobs").fetchone()
    submit_task(TASKS + "record", args=[path, "before"], queue=QUEUE)
    legit = {"SQL_ASCII": "café", "WIN1252": "café", "EUC_JP": "株式会社"}[encoding]

    def message(uuid: str, text: str = "") -> bytes:
        document = {"task": TASKS + "record", "uuid": uuid, "args": [path, text or uuid]}
        return json.dumps(document, ensure_ascii=False).encode(PY_CODECS[encoding])

    rows = [
        (
            b"bad-message",
            TASKS.encode() + b"record",
            message("bad-message")[:-1] + b', "' + undefined + b'": 1}',
        ),
        (b"bad-uuid-" + undefined, TASKS.encode() + b"record", message("bad-uuid")),
        (b"bad-task", TASKS.encode() + b"record" + undefined, message("bad-task")),
        (b"legit", TASKS.encode() + b"record", message("legit", legit)),
    ]
    with psycopg.connect(encoded_dsn, autocommit=True) as conn:
        for uuid, task, text in rows:
            conn.execute(
                "INSERT INTO dispatcher.jobs (uuid, queue, task, message, max_attempts) VALUES ("
                "convert_from(%s, %s), %s, convert_from(%s, %s), convert_from(%s, %s), 3)",
                (uuid, encoding, QUEUE, task, encoding, text, encoding),
            )
    after = submit_task(TASKS + "record", args=[path, "after"], queue=QUEUE)
    service = start_service(config_of(encoded_dsn, channel))

    records = evidence.wait_for(3, timeout=20)
    assert sorted(r["args"] for r in records if "args" in r) == [["after"], ["before"], [legit]]
    with psycopg.connect(encoded_dsn, autocommit=True, client_encoding="UTF8") as conn:
        states = wait_until(
            lambda: (
                (
                    found := conn.execute(
                        "SELECT state, outcome, last_error FROM dispatcher.jobs WHERE id > %s"
                        " ORDER BY id",
                        first,
                    ).fetchall()
                )
                and all(row[0] in ("done", "failed") for row in found)
                and found
            ),
            20,
        )
    assert [(state, outcome) for state, outcome, _ in states] == [("done", "ok")] + [
        ("failed", "rejected")
    ] * 3 + [("done", "ok")] * 2, states
    for (_, _, error), column in zip(states[1:4], ["message", "uuid", "task"], strict=True):
        assert error.startswith(f"rejected: its {column} "), error
        assert said in error, error
    assert get_job(after.uuid) is not None
    assert "cannot claim jobs" not in service.log
    service.wait_for_log(r"rejected: its message ")
    listing = ctl(configured, "jobs", "--state", "failed")
    assert listing.returncode == 2
    assert listing.stderr.count("\n") == 1, listing.stderr
    assert "Traceback" not in listing.stderr
    purged = ctl(configured, "purge", "--state", "failed", "--older-than", "0")
    assert purged.returncode == 0, purged.stderr
    assert ctl(configured, "jobs").returncode == 0


@pytest.mark.parametrize("encoded_dsn", ["SQL_ASCII"], indirect=True)
def test_a_row_no_service_can_read_behind_serial_jobs_whose_twin_runs_is_found(
    encoded_dsn: str,
    channel: str,
    configured: Path,
    evidence: Evidence,
    start_service: Callable[..., ServiceProcess],
) -> None:
    """The rows a claim skips (serial jobs whose twin runs, older than the rest) hide no
    unreadable row from what fails it: it is found among the rows the claim reads."""
    path = str(evidence.path)
    key = f"twin-{uuids.uuid4().hex}"
    latin1 = "é".encode("latin-1")  # not UTF-8
    message = json.dumps({"task": TASKS + "record", "args": [path, "x"]})
    with psycopg.connect(encoded_dsn, autocommit=True, client_encoding="UTF8") as conn:
        first = conn.execute("SELECT coalesce(max(id), 0) FROM dispatcher.jobs").fetchone()
        conn.execute(
            "INSERT INTO dispatcher.jobs (uuid, queue, task, message, max_attempts, state,"
            " attempts, claims, node_id, lease_until, started_at, on_duplicate, dup_key)"
            " VALUES (%s, %s, %s, %s, 3, 'running', 1, 1, 'elsewhere', now() + interval '1 hour',"
            " now(), 'serial', %s)",
            (f"{key}-running", QUEUE, TASKS + "record", message, key),
        )
        for n in range(20):  # more than a claim of the service reads
            conn.execute(
                "INSERT INTO dispatcher.jobs (uuid, queue, task, message, max_attempts,"
                " run_after, on_duplicate, dup_key)"
                " VALUES (%s, %s, %s, %s, 3, now() - interval '1 hour', 'serial', %s)",
                (f"{key}-{n}", QUEUE, TASKS + "record", message, key),
            )
        conn.execute(
            "INSERT INTO dispatcher.jobs (uuid, queue, task, message, max_attempts, run_after)"
            " VALUES (%s, %s, %s, convert_from(%s, 'SQL_ASCII'), 3,"
            " now() - interval '30 minutes')",
            (
                f"{key}-bad",
                QUEUE,
                TASKS + "record",
                message[:-1].encode() + b', "' + latin1 + b'": 1}',
            ),
        )
    submit_task(TASKS + "record", args=[path, "after"], queue=QUEUE)
    config = config_of(encoded_dsn, channel)
    config["brokers"]["pg_queue"]["batch_size"] = 2  # each claim reads 2 rows at most
    service = start_service(config)
    try:
        records = evidence.wait_for(1, timeout=20)
        assert [r["args"] for r in records] == [["after"]]
        with psycopg.connect(encoded_dsn, autocommit=True, client_encoding="UTF8") as conn:
            wait_until(
                lambda: (
                    conn.execute(
                        "SELECT state FROM dispatcher.jobs WHERE uuid = %s", (f"{key}-bad",)
                    ).fetchone()
                    == ("failed",)
                ),
                20,
            )
            waiting = conn.execute(
                "SELECT count(*) FROM dispatcher.jobs WHERE dup_key = %s AND state = 'queued'",
                (key,),
            ).fetchone()
        assert waiting == (20,)
        assert "cannot claim jobs" not in service.log
    finally:
        with psycopg.connect(encoded_dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM dispatcher.jobs WHERE id > %s", first)


@pytest.mark.parametrize("encoded_dsn", ["SQL_ASCII"], indirect=True)
def test_a_row_no_service_can_read_counts_as_a_failure_of_its_queue(
    encoded_dsn: str, channel: str, evidence: Evidence, start_service: Callable[..., ServiceProcess]
) -> None:
    """The rows failed for text no service can read were failed by the claim loop itself, not
    through an outcome: ``dispatcher_pg_queue_failures_total`` (failed jobs, refused ones
    included, to alert on) did not count them."""
    queue = f"{QUEUE}_{uuids.uuid4().hex[:8]}"
    message = json.dumps({"task": TASKS + "record", "args": [str(evidence.path), "x"]})
    with psycopg.connect(encoded_dsn, autocommit=True, client_encoding="UTF8") as conn:
        conn.execute(
            "INSERT INTO dispatcher.jobs (uuid, queue, task, message, max_attempts)"
            " VALUES (%s, %s, %s, convert_from(%s, 'SQL_ASCII'), 3)",
            (f"{queue}-bad", queue, TASKS + "record", message[:-1].encode() + b', "\xe9": 1}'),
        )
    config = config_of(encoded_dsn, channel)
    config["brokers"]["pg_queue"]["queues"] = [queue]
    port = free_port()
    config["service"]["metrics"] = {"host": "127.0.0.1", "port": port}
    service = start_service(config)
    service.wait_for_log(r"rejected: its message ")
    failures = ("dispatcher_pg_queue_failures_total", (("queue", queue),))
    assert wait_until(lambda: scrape(port).get(failures) == 1, 10)
    with psycopg.connect(encoded_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM dispatcher.jobs WHERE queue = %s", (queue,))
