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

from dispatcher.config import Limits, Security
from dispatcher.publish.messages import new_uuid
from dispatcher.schema import MAX_MESSAGE_BYTES, DecodeError, decode_json, validator
from dispatcher.schema.chunks import ChunkAssembler, ChunkedMessageTooLarge, ChunkError
from dispatcher.server.logsafe import get_logger
from dispatcher.server.origin import INTERNAL, PG_NOTIFY, Origin
from dispatcher.server.pool import Job, WorkerPool
from dispatcher.server.protocol import run_line
from dispatcher.server.ratelimit import InternalErrorLog, RateLimitedLog
from dispatcher.server.rejection import Rejected
from dispatcher.server.signatures import SignatureCheck
from dispatcher.server.stats import ServiceStats

logger = get_logger("dispatcher.intake")

MAX_WAITING_FOR_WORKERS: Final = 100_000
"""Messages held while the first worker starts (until the registered names are known)."""

_CHUNK_KEY: Final = "__dispatcherd_chunk__"

ControlSink = Callable[[dict[str, Any], str, Origin, Rejected | None], None]
"""Runs a control message, ``sink(message, channel, origin, refused)``, and answers it; with
*refused*, the message was refused and is only answered with the error."""


class Intake:
    """Turns received payloads into jobs for the pool."""

    def __init__(
        self,
        pool: WorkerPool,
        stats: ServiceStats,
        chunk_expiry: float,
        on_control: ControlSink | None = None,
        limits: Limits | None = None,
        signatures: SignatureCheck | None = None,
    ) -> None:
        self._pool = pool
        self._on_control = on_control
        self._signatures = signatures or SignatureCheck(Security())
        self._stats = stats
        limits = limits or Limits()
        self.chunks = ChunkAssembler(
            expiry=chunk_expiry,
            max_bytes=MAX_MESSAGE_BYTES,
            max_messages=limits.max_partial_messages,
            max_memory=limits.max_partial_bytes,
        )
        self._task_validator = validator("task-message")
        self._chunk_validator = validator("chunk-envelope")
        self._task_names: frozenset[str] | None = None
        self._waiting: deque[tuple[dict[str, Any], str, str]] = deque()
        self._rejections = RateLimitedLog(logger, logging.WARNING)
        self._internal_errors = InternalErrorLog(logger)
        self._internal_ids = 0

    def receive(self, payload: str, channel: str, origin: Origin = PG_NOTIFY) -> None:
        """Take one payload as it arrived on *channel* through *origin*; never raises."""
        try:
            self._receive(payload, channel, origin)
        except Rejected as rejected:
            self._reject(rejected, channel)
        except Exception as exc:  # a bug here must cost one message, never the service
            self._stats.rejected["internal_error"] += 1
            self._internal_errors.report("intake", exc, f"a message on {channel}")

    def submit(self, message: dict[str, Any], source: str) -> str:
        """Accept a task message made inside the service (a producer, the ``run`` command).

        Returns its uuid.

        :raises Rejected: when the message is refused, saying why.
        """
        message = {**message, "uuid": message.get("uuid") or new_uuid()}
        self._receive(json.dumps(message, separators=(",", ":")), source, INTERNAL)
        return str(message["uuid"])

    def _receive(self, payload: str, channel: str, origin: Origin) -> None:
        message = self._decode(payload)
        if _CHUNK_KEY in message:
            whole = self._join(message)
            if whole is None:
                return
            payload, message = whole, self._decode(whole)
            if _CHUNK_KEY in message:
                raise Rejected("invalid_chunk", "a chunk envelope holds another chunk envelope")
        try:
            payload, message = self._signatures.open(payload, message, origin, self._decode)
        except Rejected as rejected:
            if rejected.control is not None and self._on_control is not None:
                self._on_control(rejected.control, channel, origin, rejected)
            raise
        self._stats.received += 1
        if "control" in message and self._on_control is not None:
            self._on_control(message, channel, origin, None)
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
            message = decode_json(text)
        except DecodeError as exc:
            raise Rejected(exc.reason, str(exc)) from None
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
        finally:
            for message_id in self.chunks.take_evicted():
                evicted = Rejected(
                    "chunk_evicted",
                    f"incomplete chunked message {message_id} evicted to make room "
                    "(service.limits.max_partial_messages or max_partial_bytes reached)",
                )
                self._reject(evicted, "")
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
