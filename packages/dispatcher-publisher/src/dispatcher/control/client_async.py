"""Control commands from asyncio code (the source the sync twin is generated from).

``client_sync.py`` is generated from this file by ``tools/async_to_sync.py``; edit this one
and run ``hatch run generate-sync``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg import AsyncConnection, sql

from dispatcher.config import get_settings
from dispatcher.control.local import asocket_request
from dispatcher.control.result import ControlResult
from dispatcher.publish.connections import NOTIFY_MANY, connect_options, unavailable
from dispatcher.publish.errors import InvalidSubmission, PublishError
from dispatcher.publish.signing import signed, signing_key
from dispatcher.schema import MAX_NOTIFY_PAYLOAD_BYTES, DecodeError, decode_json, validator
from dispatcher.schema.chunks import ChunkAssembler, ChunkError, is_chunk, split_message

SERVICES_QUERY = (
    "SELECT substr(application_name, 20) FROM pg_stat_activity"
    " WHERE application_name LIKE 'dispatcher-service:%%' AND datname = current_database()"
    " ORDER BY 1"
)
"""The node ids of the services connected to this database (see the service's listener)."""


async def acontrol(
    command: str, data: Mapping[str, Any] | None = None, *, queue: str | None = None
) -> None:
    """Send a control command without waiting for replies."""
    message = _message(command, data, reply_to=None)
    text = _text(message)
    socket_path = _socket_path()
    if socket_path is not None:
        await asocket_request(socket_path, message, timeout=5.0, payload=text)
        return
    conninfo, channel = _target(queue)
    async with await _connect(conninfo) as conn:
        await _notify(conn, channel, text)


async def acontrol_with_reply(
    command: str,
    data: Mapping[str, Any] | None = None,
    *,
    expected_replies: int | None = None,
    timeout: float = 2.0,
    queue: str | None = None,
) -> ControlResult:
    """Send a control command and collect the services' replies.

    Without *expected_replies*, the services connected to the database are looked up first
    (each service names its connection after its node id) and the call waits for exactly
    those, up to *timeout* seconds; :attr:`ControlResult.missing` names any that did not
    answer.

    With ``publish.default_control_broker: socket`` (the default when ``brokers.socket`` is
    configured), the command goes to the local service over its socket, without the
    database, and one reply is expected.

    :raises InvalidSubmission: when the command name or data cannot be sent.
    :raises BrokerUnavailable: when the database (or the socket) cannot be reached.
    """
    reply_to = f"reply_to_{uuid.uuid4().hex}"
    message = _message(command, data, reply_to=reply_to)
    text = _text(message)
    result = ControlResult(command)
    socket_path = _socket_path()
    if socket_path is not None:
        result.expected = 1 if expected_replies is None else expected_replies
        line = await asocket_request(socket_path, message, timeout, payload=text)
        if line is not None:
            result.add(line)
        return result
    conninfo, channel = _target(queue)
    async with await _connect(conninfo) as conn:
        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(reply_to)))
        if expected_replies is None:
            cursor = await conn.execute(SERVICES_QUERY)
            result.expected_nodes = [row[0] for row in await cursor.fetchall()]
            result.expected = len(result.expected_nodes)
        else:
            result.expected = expected_replies
        await _notify(conn, channel, text)
        deadline = time.monotonic() + timeout
        chunks = ChunkAssembler()
        while len(result.replies) < result.expected:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            async for notify in conn.notifies(timeout=remaining, stop_after=1):
                payload: str | None = notify.payload
                if payload is not None and notify.channel == reply_to:
                    payload = _join(chunks, payload)
                    if payload is not None:
                        result.add(payload)
    return result


def _join(chunks: ChunkAssembler, payload: str) -> str | None:
    """The reply *payload* is, or completes; ``None`` while slices are missing."""
    try:
        decoded = decode_json(payload)
    except DecodeError:
        return payload  # not a chunk: skipped as a reply, saying why
    if not isinstance(decoded, dict) or not is_chunk(decoded):
        return payload
    if not validator("chunk-envelope").is_valid(decoded):
        return payload
    try:
        return chunks.add(decoded)
    except ChunkError:
        return None


def _message(command: str, data: Mapping[str, Any] | None, reply_to: str | None) -> dict[str, Any]:
    message: dict[str, Any] = {"control": command, "control_data": dict(data or {})}
    if reply_to is not None:
        message["reply_to"] = reply_to
    checker = validator("control-message")
    if not checker.is_valid(message):
        problems = "; ".join(str(p) for p in checker.problems(message))
        raise InvalidSubmission(f"cannot send control command {command!r}: {problems}")
    return message


def _text(message: dict[str, Any]) -> str:
    """The message's JSON text, in a signed envelope when the config has a key."""
    return signed(json.dumps(message), signing_key())


async def _notify(conn: AsyncConnection[Any], channel: str, text: str) -> None:
    """NOTIFY *text* on *channel*, as chunk envelopes when it is too large for one."""
    payloads = [text] if len(text) <= MAX_NOTIFY_PAYLOAD_BYTES else split_message(text)
    await conn.execute(NOTIFY_MANY, ([channel] * len(payloads), payloads))


def _socket_path() -> str | None:
    """The socket to use for control, if the config points control at one."""
    settings = get_settings()
    broker = settings.publish.default_control_broker
    if broker is None:
        broker = "socket" if settings.brokers.socket is not None else "pg_notify"
    if broker == "socket" and settings.brokers.socket is not None:
        return settings.brokers.socket.path
    return None


def _target(queue: str | None) -> tuple[str, str]:
    settings = get_settings()
    pg_notify = settings.brokers.pg_notify
    if pg_notify is None:
        raise PublishError(
            f"cannot send control commands: {settings.source} has no brokers.pg_notify"
        )
    channel = queue or pg_notify.default_publish_channel
    if channel is None and len(pg_notify.channels) == 1:
        channel = pg_notify.channels[0]
    if channel is None:
        raise PublishError(
            "cannot send control commands: no channel; set brokers.pg_notify."
            f"default_publish_channel in {settings.source}, or pass queue=..."
        )
    return pg_notify.conninfo, channel


async def _connect(conninfo: str) -> AsyncConnection[Any]:
    options = connect_options(conninfo) | {"application_name": "dispatcher-control"}
    try:
        return await AsyncConnection.connect(conninfo, **options)
    except psycopg.Error as exc:
        raise unavailable(conninfo, exc, "connect to") from None
