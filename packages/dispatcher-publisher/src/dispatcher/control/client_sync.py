"""Control commands from synchronous code.

Generated from ``client_async.py`` by ``tools/async_to_sync.py``; do not edit.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

from dispatcher.control.local import control_payloads
from dispatcher.control.result import MAX_CONTROL_TIMEOUT, ControlResult
from dispatcher.publish.errors import InvalidSubmission, PublishError
from dispatcher.publish.event_loops import sync_require_loop
from dispatcher.publish.json_values import (
    may_hold_converted_key,
    may_hold_too_long_integer,
    shown,
    unsendable_reason,
)
from dispatcher.publish.message_text import too_deep
from dispatcher.publish.routing import control_broker
from dispatcher.publish.signing import signed, signing_key
from dispatcher.schema import (
    CHANNEL_NAME_RULE,
    MAX_MESSAGE_BYTES,
    MAX_NESTING_DEPTH,
    is_valid_channel_name,
    validator,
)


def control(
    command: str, data: Mapping[str, Any] | None = None, *, queue: str | None = None
) -> None:
    """Send a control command without waiting for replies.

    A message over one NOTIFY (over the socket: over 1 kB) goes in chunk envelopes.

    :raises InvalidSubmission: when the command name, data or *queue* cannot be sent.
    :raises BrokerUnavailable: when the database (or the socket) cannot be reached.
    """
    sync_require_loop()
    message = _message(command, data, reply_to=None)
    _check_queue(command, queue)
    text = _text(message)
    broker = control_broker()
    queue = queue or broker.default_queue
    if queue is None:
        hint = "default_publish_channel" if broker.name == "pg_notify" else "default queue"
        raise PublishError(
            f"cannot send control commands: no channel; set brokers.{broker.name}.{hint}, "
            "or pass queue=..."
        )
    payloads = [(queue, payload) for payload in control_payloads(text, broker)]
    # A broker may send commands otherwise than tasks (pg_notify: never on the application's
    # connection, whose transaction may roll back).
    send = getattr(broker, "send_own", None) or broker.send
    send(payloads)


def control_with_reply(
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
    answer. dispatcherd services cannot be found that way (their connections bear no
    name): to hear from them too, pass *expected_replies*.

    With ``publish.default_control_broker: socket`` (the default when ``brokers.socket`` is
    configured), the command goes to the local service over its socket, without the
    database, and one reply is expected; the socket speaks dispatcherd's format (see
    :mod:`dispatcher.control.local`), so a dispatcherd service answers there too. Through
    another broker (a plug-in's), that broker says how many replies to wait for.

    A command over one NOTIFY goes in chunk envelopes, and replies that come in chunk
    envelopes are joined; a reply that is not one (or whose envelopes never all came) is
    noted in :attr:`ControlResult.skipped`.

    :raises InvalidSubmission: when the command name, data or *queue* cannot be sent.
    :raises BrokerUnavailable: when the database (or the socket) cannot be reached.
    """
    sync_require_loop()
    reply_to = f"reply_to_{uuid.uuid4().hex}"
    message = _message(command, data, reply_to=reply_to)
    _check_queue(command, queue)
    _check_waiting(command, expected_replies, timeout)
    result = ControlResult(command)
    started = time.monotonic()
    control_broker().control_with_reply(
        _text(message),
        reply_to,
        result,
        queue=queue,
        expected_replies=expected_replies,
        timeout=timeout,
    )
    waited = time.monotonic() - started
    result.finish(ran_out_after=timeout if waited >= timeout else None)
    return result


def _message(command: str, data: Mapping[str, Any] | None, reply_to: str | None) -> dict[str, Any]:
    if data is not None and not isinstance(data, Mapping):
        raise InvalidSubmission(
            f"cannot send control command {command!r}: control_data: expected a dict, got "
            f"{type(data).__name__}"
        )
    message: dict[str, Any] = {"control": command, "control_data": dict(data or {})}
    if reply_to is not None:
        message["reply_to"] = reply_to
    checker = validator("control-message")
    if not checker.is_valid(message):
        try:
            problems = "; ".join(str(p) for p in checker.problems(message))
        except ValueError:  # explaining writes the values out: too long an integer cannot be
            problems = ""
        problems = problems or unsendable_reason(message) or "invalid message"
        raise InvalidSubmission(f"cannot send control command {command!r}: {problems}")
    return message


def _check_queue(command: str, queue: object) -> None:
    """Refuse a *queue* that is no channel name (it would reach the database as it is)."""
    if queue is not None and not (isinstance(queue, str) and is_valid_channel_name(queue)):
        raise InvalidSubmission(
            f"cannot send control command {shown(command)}: queue: {shown(queue)} is not a "
            f"valid channel name ({CHANNEL_NAME_RULE})"
        )


def _check_waiting(command: str, expected_replies: object, timeout: object) -> None:
    """Refuse an *expected_replies* that is no count, a *timeout* that is no wait."""
    if expected_replies is not None and (type(expected_replies) is not int or expected_replies < 0):
        raise InvalidSubmission(
            f"cannot send control command {shown(command)}: expected_replies: expected a whole "
            f"number (0 or more) or None, got {_described(expected_replies)}"
        )
    if (
        not isinstance(timeout, int | float)
        or isinstance(timeout, bool)
        or not 0 < timeout <= MAX_CONTROL_TIMEOUT
    ):
        raise InvalidSubmission(
            f"cannot send control command {shown(command)}: timeout: expected a number of "
            f"seconds above 0 and at most {MAX_CONTROL_TIMEOUT} (365 days), got "
            f"{_described(timeout)}"
        )


def _described(value: object) -> str:
    return f"{type(value).__name__} {shown(value)}"


def _text(message: dict[str, Any]) -> str:
    """The message's JSON text, in a signed envelope when the config has a key.

    :raises InvalidSubmission: naming the value in ``control_data`` a service could not read.
    """
    try:
        text = json.dumps(message, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        reason: str | None = unsendable_reason(message) or str(exc)
    else:
        reason = (
            unsendable_reason(message)
            if may_hold_too_long_integer(text) or may_hold_converted_key(text, 1)
            else None
        )
        if reason is None and text.count("[") + text.count("{") > MAX_NESTING_DEPTH:
            reason = too_deep(message)
    if reason is None:
        text = signed(text, signing_key())
        if len(text) > MAX_MESSAGE_BYTES:
            reason = (
                f"the message is {len(text)} bytes of JSON, over the limit of {MAX_MESSAGE_BYTES}"
            )
    if reason is not None:
        raise InvalidSubmission(f"cannot send control command {message['control']!r}: {reason}")
    return text
