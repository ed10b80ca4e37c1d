"""``dispatcher_enqueue()``: durable jobs stored from SQL, as the Python publisher stores them."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from dispatcher.schema import QUEUE_WAKEUP_CHANNEL, duplicate_key, sql_queue_publisher
from dispatcher.schema.identity import canonical_number
from support.durable import own_schema
from support.examples import examples
from support.postgres import wait_for_notifies
from support.queue_rows import job_row, unique_schema

Conn = psycopg.Connection[Any]


@pytest.fixture
def schema(pg_dsn: str) -> Iterator[str]:
    """A schema of this test's own, with the queue's tables made by the migrations."""
    with own_schema(pg_dsn) as name:
        yield name


@pytest.fixture
def conn(pg_dsn: str, schema: str) -> Iterator[Conn]:
    """An autocommit connection to a database where dispatcher_enqueue() is installed."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql_queue_publisher().encode())
        yield conn


def enqueue(conn: Conn, schema: str, *args: str | None) -> str:
    """Call dispatcher_enqueue(queue, task, args, kwargs, options) on *schema*'s tables."""
    padded = [*args, *[None] * (5 - len(args))]
    defaults = [None, None, "[]", "{}", "{}"]
    values = [d if a is None else a for a, d in zip(padded, defaults, strict=True)]
    row = conn.execute(
        "SELECT dispatcher_enqueue(%s, %s, %s::jsonb, %s::jsonb, %s::jsonb, %s)",
        [*values, schema],
    ).fetchone()
    assert row is not None
    return str(row[0])


VECTORS = [
    ("a.b", [], {}),
    ("a.b", [1, "x", None, True, False, 2.5, -3, 10**20, [], {}], {"z": 1, "a": {"y": [0.1]}}),
    ("a.b", ["é€😀", 'q"u\\o\n\t\x01\x7f'], {"é": 1, "b": 2, "B": 3, "aa": 4, "a": 5, "😀": 6}),
]


@pytest.mark.parametrize(("task", "args", "kwargs"), VECTORS)
def test_the_duplicate_key_is_the_one_python_computes(
    conn: Conn, task: str, args: list[Any], kwargs: dict[str, Any]
) -> None:
    row = conn.execute(
        "SELECT dispatcher_duplicate_key(%s, %s::jsonb, %s::jsonb)",
        (task, json.dumps(args), json.dumps(kwargs)),
    ).fetchone()
    assert row == (duplicate_key({"task": task, "args": args, "kwargs": kwargs}),)


NUMBERS = [1e16, 1e-7, 1e21, 1.5e20, -1e-5, -0.0, 0.0, 1.0, 5e-324, 1.7976931348623157e308]


@pytest.mark.parametrize("number", NUMBERS)
def test_numbers_in_exponent_form_give_the_key_python_computes(conn: Conn, number: float) -> None:
    args = [number, -number, {"n": [number]}]
    row = conn.execute(
        "SELECT dispatcher_duplicate_key('t.x', %s::jsonb, '{}')", (json.dumps(args),)
    ).fetchone()
    assert row == (duplicate_key({"task": "t.x", "args": args}),)


@settings(
    max_examples=examples(200),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # conn is read-only here
)
@given(
    args=st.lists(
        st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(10**30), 10**30),
        max_size=4,
    )
)
def test_every_number_gives_the_key_python_computes(conn: Conn, args: list[float]) -> None:
    row = conn.execute(
        "SELECT dispatcher_duplicate_key('t.x', %s::jsonb, '{}')", (json.dumps(args),)
    ).fetchone()
    assert row == (duplicate_key({"task": "t.x", "args": args}),)


@pytest.mark.parametrize(
    ("written", "read"),
    [
        ("[42, 10.50]", [42, 10.5]),
        ("[100.000, -0.0, 1.0, 2.50e-3]", [100.0, 0.0, 1.0, 0.0025]),
        (
            "[12345678901234567890.5, 19206977437338646.0]",
            [1.2345678901234567e19, 1.920697743733865e16],
        ),
        ("[0.10000000000000000001, 1e-400, -1e-400]", [0.1, 0.0, 0.0]),
        ("[1.50e1, 1e-7, 5e-324]", [15.0, 1e-7, 5e-324]),
    ],
)
def test_a_number_with_a_point_gives_the_key_of_the_double_a_service_reads(
    conn: Conn, written: str, read: list[Any]
) -> None:
    for digits in (1, 0, -15):  # whatever the session's float8 output, the key is the same
        conn.execute(f"SET extra_float_digits = {digits}")
        row = conn.execute(
            "SELECT dispatcher_duplicate_key('t.x', %s::jsonb, '{}')", (written,)
        ).fetchone()
        assert row == (duplicate_key({"task": "t.x", "args": read}),), digits


@settings(
    max_examples=examples(200),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # conn is read-only here
)
@given(
    sign=st.sampled_from(["", "-"]),
    whole=st.integers(0, 10**25),
    fraction=st.text("0123456789", min_size=1, max_size=25),
    exponent=st.none() | st.integers(-340, 340),
)
def test_a_number_written_in_sql_has_the_canonical_form_python_writes(
    conn: Conn, sign: str, whole: int, fraction: str, exponent: int | None
) -> None:
    text = f"{sign}{whole}.{fraction}" + ("" if exponent is None else f"e{exponent}")
    row = conn.execute(
        "SELECT dispatcher_identity_json(%s::jsonb), dispatcher_duplicate_key('t.x', %s::jsonb, '{}')",
        (text, f"[{text}]"),
    ).fetchone()
    assert row is not None
    assert row[0] == canonical_number(text)
    if exponent is None:  # a float to Python, with a point to jsonb: they read the same double
        assert row[1] == duplicate_key({"task": "t.x", "args": [json.loads(text)]})


def test_a_job_is_stored_with_its_options_and_wakes_its_queue(
    conn: Conn, schema: str, pg_dsn: str
) -> None:
    options = {"max_attempts": 5, "delay": 30, "on_duplicate": "queue_one", "guid": "g"}
    with psycopg.connect(pg_dsn, autocommit=True) as listener:
        listener.execute(f"LISTEN {QUEUE_WAKEUP_CHANNEL}")
        uuid = enqueue(
            conn, schema, "orders", "myapp.tasks.ship", "[42]", '{"a": 1}', json.dumps(options)
        )
        woken = [n.payload for n in wait_for_notifies(listener, 1, 5)]
        again = enqueue(
            conn, schema, "orders", "myapp.tasks.ship", "[42]", '{"a": 1}', json.dumps(options)
        )
        assert [n.payload for n in wait_for_notifies(listener, 1, 0.3)] == []  # nothing stored
    assert woken == ["orders"]
    row = job_row(conn, schema, uuid)
    assert row is not None
    assert job_row(conn, schema, again) is None
    message = json.loads(row["message"])
    assert message == {
        "task": "myapp.tasks.ship",
        "uuid": uuid,
        "args": [42],
        "kwargs": {"a": 1},
        "time_pub": message["time_pub"],
        "delay": 30,
        "on_duplicate": "queue_one",
        "guid": "g",
    }
    assert (row["queue"], row["task"], row["max_attempts"], row["on_duplicate"]) == (
        "orders",
        "myapp.tasks.ship",
        5,
        "queue_one",
    )
    assert row["run_after"] - row["created_at"] == timedelta(seconds=30)
    assert row["dup_key"] == duplicate_key(message)


def test_defaults_and_a_given_uuid(conn: Conn, schema: str) -> None:
    uuid = enqueue(conn, schema, "orders", "a.b", None, None, '{"uuid": "mine"}')
    assert uuid == "mine"
    assert enqueue(conn, schema, "orders", "a.b", None, None, '{"uuid": "mine"}') == "mine"  # no-op
    row = job_row(conn, schema, "mine")
    assert row is not None
    assert (row["max_attempts"], row["on_duplicate"], row["dup_key"]) == (3, None, None)


def test_a_delay_counts_from_the_call_late_in_a_long_statement(conn: Conn, schema: str) -> None:
    # As from a trigger of a long UPDATE: the call comes a second after its statement began.
    row = conn.execute(
        "SELECT statement_timestamp(), dispatcher_enqueue('orders', 'a.b', options =>"
        ' \'{"uuid": "late", "delay": 5}\', queue_schema => %s)'
        " FROM (SELECT pg_sleep(1)) AS slept",
        (schema,),
    ).fetchone()
    assert row is not None
    began = row[0]
    job = job_row(conn, schema, "late")
    assert job is not None
    assert (job["created_at"] - began).total_seconds() >= 1  # the call, not the statement
    assert (job["run_after"] - job["created_at"]).total_seconds() == 5


def test_a_rolled_back_transaction_stores_nothing(conn: Conn, schema: str, pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as caller:
        enqueue(caller, schema, "orders", "a.b", None, None, '{"uuid": "gone"}')
        caller.rollback()
        enqueue(caller, schema, "orders", "a.b", None, None, '{"uuid": "kept"}')
        assert job_row(conn, schema, "kept") is None  # not before the commit
        caller.commit()
    assert job_row(conn, schema, "gone") is None
    assert job_row(conn, schema, "kept") is not None


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("bad queue", "a.b"), "queue 'bad queue': not a valid channel name"),
        (("orders", "lambda: 1"), "task 'lambda: 1': not a valid task name"),
        (("orders", "a.b", "{}"), "args must be a JSON array, got object"),
        (("orders", "a.b", "[]", "{}", '{"max_attempts": 0}'), "options.max_attempts: expected an"),
        (("orders", "a.b", "[]", "{}", '{"max_attempts": 2.5}'), "options.max_attempts: expected"),
        (("orders", "a.b", "[]", "{}", '{"max_attempts": "3"}'), "options.max_attempts: expected"),
        (
            ("orders", "a.b", "[]", "{}", '{"max_attempts": 1e400}'),
            "options.max_attempts: expected",
        ),
        (("orders", "a.b", "[]", "{}", '{"delay": -1}'), "options.delay: must be between 0"),
        (("orders", "a.b", "[]", "{}", '{"retries": 1}'), "options: unknown key(s) retries"),
        (
            ("orders", "a.b", "[" + "9" * 4301 + "]"),
            "args[0]: the integer has more than 4300 digits, too many to send",
        ),
        (
            ("orders", "a.b", "[]", '{"a": [1e5000]}'),
            "kwargs.a[0]: the integer has more than 4300 digits, too many to send",
        ),
        (
            ("orders", "a.b", "[1, [" + "1" * 400 + ".5]]"),
            "args[1][0]: the number 11111111111111111111... is out of range",
        ),
        (
            ("orders", "a.b", "[]", '{"k": -1' + "1" * 399 + ".5}"),
            "kwargs.k: the number -1111111111111111111... is out of range",
        ),
        (
            ("orders", "a.b", "[" * 64 + "]" * 64),
            "args: nested more than 63 levels deep (a message may nest 64 levels in all,",
        ),
        (
            ("orders", "a.b", "[]", '{"k": ' + '{"a": ' * 63 + "1" + "}" * 64),
            "kwargs: nested more than 63 levels deep",
        ),
        (("orders", "a.b", '["' + "x" * 8_400_000 + '"]'), "the message is 8400"),
    ],
)
def test_bad_calls_are_refused_with_a_reason(
    conn: Conn, schema: str, args: tuple[str, ...], error: str
) -> None:
    with pytest.raises(
        psycopg.errors.RaiseException, match=f"^dispatcher_enqueue: {re.escape(error)}"
    ):
        enqueue(conn, schema, *args)


HUGE_OPTIONS = [
    ("delay", "1e100000", "must be between 0 and 31536000 seconds, got 1000000000"),
    ("timeout", "-1e-16000", "must be between 0 and 31536000 seconds, got -0.000000000"),
    ("max_attempts", "1e100000", "expected an integer between 1 and 1000, got 1000000000"),
    ("delay", json.dumps("9" * 10**6), 'expected a number of seconds, got "999999999'),
    ("uuid", json.dumps("u" * 256), 'expected a string of 1 to 255 characters, got "uuuuuuuu'),
    ("on_duplicate", json.dumps("x" * 10**6), "x... (1000002 characters) is not one of"),
    ("bind", json.dumps(["b"] * 10**5), 'expected true or false, got ["b", "b", '),
    ("guid", json.dumps([0] * 10**5), "expected a string, got [0, 0, 0"),
]


@pytest.mark.parametrize(("option", "value", "reason"), HUGE_OPTIONS)
def test_a_refused_option_of_megabytes_is_shown_cut_short(
    conn: Conn, schema: str, option: str, value: str, reason: str
) -> None:
    """Named with the reason, its start and its length; not a hundred thousand digits."""
    options = f'{{"{option}": {value}}}'
    with pytest.raises(psycopg.errors.RaiseException) as refused:
        enqueue(conn, schema, "orders", "a.b", "[]", "{}", options)
    message = str(refused.value).splitlines()[0]
    assert message.startswith(f"dispatcher_enqueue: options.{option}: ")
    assert reason in message
    assert re.search(r"\.\.\. \(\d+ characters\)", message), message
    assert len(message) < 200, message


@pytest.mark.parametrize(
    ("place", "call"),
    [
        ("queue", ("q" * 10**6, "a.b")),
        ("task", ("orders", "t" * 10**6)),
    ],
)
def test_a_refused_name_of_megabytes_is_shown_cut_short(
    conn: Conn, schema: str, place: str, call: tuple[str, str]
) -> None:
    with pytest.raises(psycopg.errors.RaiseException) as refused:
        enqueue(conn, schema, *call)
    message = str(refused.value).splitlines()[0]
    assert message.startswith(f"dispatcher_enqueue: {place} '")
    assert "... (1000002 characters): not a valid" in message
    assert len(message) < 300, message[:300]


def test_a_refused_queue_schema_of_megabytes_is_shown_cut_short(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.RaiseException) as refused:
        conn.execute(
            "SELECT dispatcher_enqueue('orders', 'a.b', queue_schema => %s)", ["S" * 10**6]
        )
    message = str(refused.value).splitlines()[0]
    assert "queue_schema 'SSSSS" in message
    assert "... (1000002 characters): not a valid PostgreSQL identifier" in message
    assert len(message) < 300, message[:300]


def test_an_integral_max_attempts_and_a_sub_microsecond_delay_are_taken(
    conn: Conn, schema: str
) -> None:
    options = '{"uuid": "u", "max_attempts": 2.0, "delay": 1e-400, "timeout": 1e-400}'
    assert enqueue(conn, schema, "orders", "a.b", "[" * 63 + "]" * 63, None, options) == "u"
    row = job_row(conn, schema, "u")
    assert row is not None
    assert (row["max_attempts"], row["run_after"] - row["created_at"]) == (2, timedelta(0))


def test_the_largest_numbers_with_a_fraction_a_service_reads_are_taken(
    conn: Conn, schema: str
) -> None:
    largest = f"{int(sys.float_info.max)}.5"  # a double rounds it down to the largest
    args = f"[{largest}, -{largest}, 1{'0' * 307}.5, 0.{'0' * 400}1]"
    uuid = enqueue(conn, schema, "orders", "a.b", args)
    row = job_row(conn, schema, uuid)
    assert row is not None
    assert json.loads(row["message"])["args"] == [
        sys.float_info.max,
        -sys.float_info.max,
        1e307,
        0.0,
    ]


def test_missing_tables_are_explained(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.RaiseException) as caught:
        conn.execute("SELECT dispatcher_enqueue('orders', 'a.b', queue_schema => 'absent')")
    assert str(caught.value).startswith(
        "dispatcher_enqueue: the durable queue's tables are missing from schema absent"
    )
    assert caught.value.diag.message_hint == (
        "Run `dispatcherctl migrate`, or pass the schema of brokers.pg_queue as queue_schema."
    )


@pytest.mark.parametrize("planted_in", ["a schema on the caller's path", "the install schema"])
def test_functions_planted_on_the_path_or_in_the_install_schema_are_never_called(
    pg_dsn: str, schema: str, planted_in: str
) -> None:
    """Installed in a schema of its own and called by its full name from a session whose
    search_path has a schema with functions named like those it calls: it calls pg_catalog's
    and its own, and stores the job with the key Python computes. (Who may create in the
    install schema is trusted, as it could plant operators: these are never called still.)"""
    installed, trap = unique_schema(), unique_schema()
    plants = [
        "convert_to(t text, e text) RETURNS bytea",
        "jsonb_path_exists(j jsonb, p text) RETURNS boolean",
        # Concrete types beat a built-in's variadic "any" or polymorphic parameters.
        "jsonb_build_array(a text, b jsonb, c jsonb) RETURNS jsonb",
        "jsonb_build_array(a jsonb, b jsonb) RETURNS jsonb",
        "format(f text, a text) RETURNS text",
        "to_jsonb(t text) RETURNS jsonb",
    ]
    if planted_in == "the install schema":
        trap = installed
    else:
        plants += [
            "dispatcher_unreadable_path(j jsonb, p text) RETURNS text",
            "dispatcher_identity_json(j jsonb) RETURNS text",
            "dispatcher_duplicate_key(t text, a jsonb, k jsonb) RETURNS text",
        ]
    names = {"installed": sql.Identifier(installed), "trap": sql.Identifier(trap)}
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        try:
            conn.execute(sql.SQL("CREATE SCHEMA {installed}").format(**names))
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {trap}").format(**names))
            conn.execute(sql.SQL("SET search_path = {installed}").format(**names))
            conn.execute(sql_queue_publisher().encode())
            for signature in plants:
                conn.execute(
                    sql.SQL(
                        "CREATE FUNCTION {}.{} LANGUAGE plpgsql AS"
                        " $f$BEGIN RAISE EXCEPTION 'planted function called'; END$f$"
                    ).format(names["trap"], sql.SQL(signature))
                )
            conn.execute(sql.SQL("SET search_path = {trap}, public").format(**names))
            args = ["é", 10**308, 2.5]
            row = conn.execute(
                sql.SQL(
                    "SELECT {installed}.dispatcher_enqueue('q', 'a.b', %s::jsonb, '{{}}',"
                    ' \'{{"on_duplicate": "discard"}}\', %s)'
                ).format(**names),
                (json.dumps(args), schema),
            ).fetchone()
            assert row is not None
            stored = job_row(conn, schema, row[0])
            assert stored is not None
            assert stored["dup_key"] == duplicate_key({"task": "a.b", "args": args, "kwargs": {}})
        finally:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {installed}, {trap} CASCADE").format(**names)
            )
