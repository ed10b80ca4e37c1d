"""The real-PostgreSQL harness, and the wire facts the schemas rely on."""

from __future__ import annotations

import json

import psycopg
import pytest

from dispatcher.schema import MAX_CHANNEL_NAME_BYTES, MAX_NOTIFY_PAYLOAD_BYTES, validator
from support.postgres import unique_channel, wait_for_notifies

Conn = psycopg.Connection[tuple[object, ...]]


def test_a_notify_reaches_a_listener(pg_conn: Conn, pg_dsn: str, channel: str) -> None:
    pg_conn.execute(f'LISTEN "{channel}"')
    message = {"task": "myapp.tasks.send_email", "args": [1]}
    with psycopg.connect(pg_dsn, autocommit=True) as sender:
        sender.execute("SELECT pg_notify(%s, %s)", (channel, json.dumps(message)))
    [notify] = wait_for_notifies(pg_conn, 1)
    assert notify.channel == channel
    assert json.loads(notify.payload) == message
    assert validator("task-message").is_valid(json.loads(notify.payload))


def test_unique_channels_do_not_see_each_other(pg_conn: Conn, pg_dsn: str) -> None:
    mine, other = unique_channel(), unique_channel()
    assert mine != other
    pg_conn.execute(f'LISTEN "{mine}"')
    with psycopg.connect(pg_dsn, autocommit=True) as sender:
        sender.execute("SELECT pg_notify(%s, 'not for you')", (other,))
        sender.execute("SELECT pg_notify(%s, 'for you')", (mine,))
    assert [n.payload for n in wait_for_notifies(pg_conn, 2, timeout=1)] == ["for you"]


def test_notify_payload_limit_is_below_8000_bytes(pg_conn: Conn, channel: str) -> None:
    pg_conn.execute("SELECT pg_notify(%s, %s)", (channel, "x" * MAX_NOTIFY_PAYLOAD_BYTES))
    # Multi-byte characters count by their UTF-8 size.
    pg_conn.execute("SELECT pg_notify(%s, %s)", (channel, "é" * (MAX_NOTIFY_PAYLOAD_BYTES // 2)))
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="payload string too long"):
        pg_conn.execute("SELECT pg_notify(%s, %s)", (channel, "x" * (MAX_NOTIFY_PAYLOAD_BYTES + 1)))


def test_channel_names_over_63_bytes_are_refused_by_notify(pg_conn: Conn) -> None:
    pg_conn.execute("SELECT pg_notify(%s, 'x')", ("c" * MAX_CHANNEL_NAME_BYTES,))
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="channel name too long"):
        pg_conn.execute("SELECT pg_notify(%s, 'x')", ("c" * (MAX_CHANNEL_NAME_BYTES + 1),))
