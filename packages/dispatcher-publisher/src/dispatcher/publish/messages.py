"""Building a task message from a submission's options, checked before anything is sent."""

from __future__ import annotations

import json
import math
import time
import uuid as uuid_module
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from dispatcher.config import get_settings
from dispatcher.publish.chunking import split_message
from dispatcher.publish.errors import InvalidSubmission
from dispatcher.publish.registry import OnDuplicate, Queue, RegisteredTask, registry
from dispatcher.schema import (
    CHANNEL_NAME_RULE,
    MAX_MESSAGE_BYTES,
    MAX_NOTIFY_PAYLOAD_BYTES,
    is_valid_channel_name,
    validator,
)
from dispatcher.schema.errors import format_path, json_type_name

RESERVED_KEYS: Final = frozenset(
    {"task", "uuid", "args", "kwargs", "time_pub", "timeout", "delay", "on_duplicate", "bind"}
    | {"channel", "control", "__dispatcherd_chunk__"}
)
"""Message keys the SDK sets itself, which ``extra`` may not contain."""


@dataclass(frozen=True)
class Submission:
    """A task message ready to send (or sent): what ``submit_task`` and ``.delay()`` return."""

    uuid: str
    """The submission's identifier, to find or cancel the task later."""
    channel: str
    """The channel the message is (or was) sent on."""
    message: Mapping[str, Any]
    """The task message, as the service receives it."""
    payloads: tuple[str, ...]
    """The NOTIFY payloads: the message's JSON text, or its chunk envelopes."""


def prepare_submission(
    task: str | Callable[..., Any],
    *,
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    queue: Queue = None,
    uuid: str | None = None,
    timeout: float | None = None,
    delay: float | None = None,
    on_duplicate: OnDuplicate | None = None,
    bind: bool | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Submission:
    """Build and check the message for one submission, without sending it.

    Options left as ``None`` take the defaults given to ``@task``, when *task* is registered.

    :raises InvalidSubmission: naming the option and the reason, when anything is wrong.
    """
    name, entry = _resolve_task(task)
    defaults = entry if entry is not None else _NO_DEFAULTS

    def invalid(reason: str) -> InvalidSubmission:
        return InvalidSubmission(f"cannot submit {name}: {reason}")

    if args is None:
        args = ()
    elif isinstance(args, str | bytes) or not isinstance(args, Sequence):
        raise invalid(f"args: expected a list or tuple, got {type(args).__name__}")
    if kwargs is None:
        kwargs = {}
    elif not isinstance(kwargs, Mapping):
        raise invalid(f"kwargs: expected a dict, got {type(kwargs).__name__}")

    message: dict[str, Any] = {
        "task": name,
        "uuid": uuid if uuid is not None else str(uuid_module.uuid4()),
        "args": list(args),
        "kwargs": dict(kwargs),
        "time_pub": time.time(),
    }
    options = {
        "timeout": timeout if timeout is not None else defaults.timeout,
        "delay": delay if delay is not None else defaults.delay,
        "on_duplicate": on_duplicate if on_duplicate is not None else defaults.on_duplicate,
    }
    message.update((key, value) for key, value in options.items() if value is not None)
    if bind is not None and not isinstance(bind, bool):
        raise invalid(f"bind: expected boolean, got {json_type_name(bind)} {bind!r}")
    if bind if bind is not None else defaults.bind:
        message["bind"] = True
    if extra:
        clashes = sorted(str(key) for key in extra if key in RESERVED_KEYS)
        if clashes:
            raise invalid(f"extra: {', '.join(clashes)} cannot be set through extra")
        message.update(extra)

    checker = validator("task-message")
    if not checker.is_valid(message):
        problems = checker.problems(message)
        raise invalid("; ".join(str(problem) for problem in problems) or "invalid message")

    channel = _resolve_channel(queue if queue is not None else defaults.queue, invalid)
    text = _serialise(message, invalid)
    if len(text) > MAX_MESSAGE_BYTES:
        raise invalid(
            f"the message is {len(text)} bytes of JSON, over the limit of {MAX_MESSAGE_BYTES}"
        )
    payloads = (text,) if len(text) <= MAX_NOTIFY_PAYLOAD_BYTES else tuple(split_message(text))
    return Submission(uuid=message["uuid"], channel=channel, message=message, payloads=payloads)


_NO_DEFAULTS: Final = RegisteredTask(name="unregistered", target=object)
"""The defaults of a task known only by its name: none."""


def _resolve_task(task: str | Callable[..., Any]) -> tuple[str, RegisteredTask | None]:
    if isinstance(task, str):
        return task, registry.get(task)
    entry = registry.find(task)
    if entry is None:
        described = getattr(task, "__qualname__", repr(task))
        raise InvalidSubmission(
            f"cannot submit {described}: it is not a registered task; decorate it with "
            "@task(...) or pass the task's name as a string"
        )
    return entry.name, entry


def _resolve_channel(queue: Queue, invalid: Callable[[str], InvalidSubmission]) -> str:
    if callable(queue):
        try:
            queue = queue()
        except Exception as exc:
            raise invalid(f"queue: the queue function raised {exc!r}") from exc
    if queue is None:
        queue = _default_channel(invalid)
    if not is_valid_channel_name(queue):
        raise invalid(f"queue: {queue!r} is not a valid channel name ({CHANNEL_NAME_RULE})")
    return queue


def _default_channel(invalid: Callable[[str], InvalidSubmission]) -> str:
    settings = get_settings()
    pg_notify = settings.brokers.pg_notify
    if pg_notify is not None and pg_notify.default_publish_channel is not None:
        return pg_notify.default_publish_channel
    if pg_notify is not None and len(pg_notify.channels) == 1:
        return pg_notify.channels[0]
    raise invalid(
        "no channel to send it on: pass queue=..., give the task a queue with "
        f"@task(queue=...), or set brokers.pg_notify.default_publish_channel in {settings.source}"
    )


def _serialise(message: dict[str, Any], invalid: Callable[[str], InvalidSubmission]) -> str:
    try:
        return json.dumps(message, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        where = _first_non_json(message, ()) or ((), str(exc))
        path, reason = where
        raise invalid(f"{format_path(path)}: {reason}") from None


Path = tuple[str | int, ...]


def _first_non_json(value: Any, path: Path) -> tuple[Path, str] | None:
    """Find the first value JSON cannot represent, and say why."""
    if value is None or isinstance(value, str | bool | int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, f"{value} is not valid in JSON")
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _first_non_json(item, (*path, index))
            if found:
                return found
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str | int | float | bool) and key is not None:
                return (path, f"key {key!r} of type {type(key).__name__} cannot be a JSON key")
            found = _first_non_json(item, (*path, str(key)))
            if found:
                return found
        return None
    return path, f"a value of type {type(value).__name__} is not JSON-serialisable"
