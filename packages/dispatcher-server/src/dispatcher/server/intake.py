"""What happens to each payload the service receives, before any worker sees it.

Decode the JSON, join chunk envelopes, validate against the schemas, route, and check that
the task is registered. A payload that fails any step is rejected: one (rate-limited) log
line with the reason and the uuid if there is one, and a counter. Nothing a payload holds
can stop the service.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from dispatcher.publish.chunking import ChunkAssembler, ChunkedMessageTooLarge, ChunkError
from dispatcher.publish.messages import new_uuid
from dispatcher.schema import MAX_MESSAGE_BYTES, validator
from dispatcher.server.pool import Job, WorkerPool
from dispatcher.server.protocol import run_line
from dispatcher.server.ratelimit import RateLimitedLog
from dispatcher.server.stats import ServiceStats

logger = logging.getLogger("dispatcher.intake")

MAX_WAITING_FOR_WORKERS: Final = 100_000
"""Messages held while the first worker starts (until the registered names are known)."""

_CHUNK_KEY: Final = "__dispatcherd_chunk__"


class Rejected(Exception):
    """A payload is refused; ``reason`` is the counter's key, the message says why."""

    def __init__(self, reason: str, detail: str, uuid: object = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.uuid = uuid


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class Intake:
    """Turns received payloads into jobs for the pool."""

    def __init__(
        self,
        pool: WorkerPool,
        stats: ServiceStats,
        chunk_expiry: float,
        on_control: Callable[[dict[str, Any], str], None] | None = None,
    ) -> None:
        self._pool = pool
        self._on_control = on_control
        self._stats = stats
        self.chunks = ChunkAssembler(expiry=chunk_expiry, max_bytes=MAX_MESSAGE_BYTES)
        self._task_validator = validator("task-message")
        self._chunk_validator = validator("chunk-envelope")
        self._task_names: frozenset[str] | None = None
        self._waiting: deque[tuple[dict[str, Any], str, str]] = deque()
        self._decoder = json.JSONDecoder(parse_constant=_refuse_constant)
        self._rejections = RateLimitedLog(logger, logging.WARNING)
        self._internal_ids = 0

    def receive(self, payload: str, channel: str) -> None:
        """Take one payload as it arrived on *channel*; never raises."""
        try:
            self._receive(payload, channel)
        except Rejected as rejected:
            self._reject(rejected, channel)
        except Exception:  # a bug here must cost one message, never the service
            logger.exception("internal error while handling a message on %s", channel)
            self._stats.rejected["internal_error"] += 1

    def submit(self, message: dict[str, Any], source: str) -> str:
        """Accept a task message made inside the service (a producer, the ``run`` command).

        Returns its uuid.

        :raises Rejected: when the message is refused, saying why.
        """
        message = {**message, "uuid": message.get("uuid") or new_uuid()}
        self._receive(json.dumps(message, separators=(",", ":")), source)
        return str(message["uuid"])

    def _receive(self, payload: str, channel: str) -> None:
        message = self._decode(payload)
        if _CHUNK_KEY in message:
            whole = self._join(message)
            if whole is None:
                return
            payload, message = whole, self._decode(whole)
            if _CHUNK_KEY in message:
                raise Rejected("invalid_chunk", "a chunk envelope holds another chunk envelope")
        self._stats.received += 1
        if "control" in message and self._on_control is not None:
            self._on_control(message, channel)
            return
        if "control" in message:
            raise Rejected(
                "control_unsupported",
                f"control command {message.get('control')!r}: control messages over a broker "
                "are not supported by this version of the service",
            )
        if not self._task_validator.is_valid(message):
            problems = "; ".join(str(p) for p in self._task_validator.problems(message))
            raise Rejected("invalid_message", problems, message.get("uuid"))
        if self._task_names is None:
            if len(self._waiting) >= MAX_WAITING_FOR_WORKERS:
                uuid = message.get("uuid")
                raise Rejected("overloaded", "too many messages while workers start", uuid)
            self._waiting.append((message, payload, channel))
            return
        self._dispatch(message, payload, channel)

    def _decode(self, text: str) -> dict[str, Any]:
        try:
            message = self._decoder.decode(text)
        except ValueError as exc:
            raise Rejected("not_json", f"not JSON ({exc})") from None
        if not isinstance(message, dict):
            kind = type(message).__name__ if message is not None else "null"
            raise Rejected("not_object", f"a JSON {_json_kind(kind)}, not an object")
        return message

    def _join(self, envelope: dict[str, Any]) -> str | None:
        if not self._chunk_validator.is_valid(envelope):
            problems = "; ".join(str(p) for p in self._chunk_validator.problems(envelope))
            raise Rejected("invalid_chunk", f"invalid chunk envelope: {problems}")
        try:
            whole = self.chunks.add(envelope)
        except ChunkedMessageTooLarge as exc:
            raise Rejected("oversized", str(exc)) from None
        except ChunkError as exc:
            raise Rejected("invalid_chunk", str(exc)) from None
        for message_id in self.chunks.expire():
            expired = Rejected("chunk_expired", f"incomplete chunked message {message_id} expired")
            self._reject(expired, "")
        return whole

    def tasks_known(self, names: frozenset[str]) -> None:
        """The first worker has told which tasks are registered: release what waited."""
        self._task_names = names
        logger.info("%d registered tasks", len(names))
        while self._waiting:
            message, payload, channel = self._waiting.popleft()
            try:
                self._dispatch(message, payload, channel)
            except Rejected as rejected:
                self._reject(rejected, channel)

    def _dispatch(self, message: dict[str, Any], payload: str, channel: str) -> None:
        name = message["task"]
        assert self._task_names is not None
        if name not in self._task_names:
            raise Rejected("unknown_task", f"task {name!r} is not registered", message.get("uuid"))
        uuid = message.get("uuid")
        if uuid is None:
            self._internal_ids += 1
            uuid = message["uuid"] = f"internal-{self._internal_ids}"
            payload = json.dumps(message, separators=(",", ":"))
        on_duplicate = message.get("on_duplicate")
        tracked = on_duplicate is not None and on_duplicate != "parallel"
        self._pool.submit(
            Job(
                uuid=uuid,
                task=name,
                line=run_line(payload, channel),
                timeout=message.get("timeout") or 0,
                delay=message.get("delay") or 0,
                on_duplicate=on_duplicate,
                key=_identity(message) if tracked else None,
                published=message.get("time_pub") or 0,
            )
        )

    def _reject(self, rejected: Rejected, channel: str) -> None:
        self._stats.rejected[rejected.reason] += 1
        where = f" on channel {channel}" if channel else ""
        uuid = f" (uuid {rejected.uuid})" if isinstance(rejected.uuid, str) else ""
        self._rejections.log("rejected message%s%s: %s", where, uuid, rejected)


def _identity(message: dict[str, Any]) -> str:
    """What makes two messages duplicates: the same task, args and kwargs."""
    parts = [message["task"], message.get("args", []), message.get("kwargs", {})]
    return json.dumps(parts, sort_keys=True, separators=(",", ":"))


_JSON_KINDS: Final = {"list": "array", "str": "string", "int": "number", "float": "number"}


def _json_kind(python_type: str) -> str:
    return _JSON_KINDS.get(python_type, {"bool": "boolean"}.get(python_type, python_type))
