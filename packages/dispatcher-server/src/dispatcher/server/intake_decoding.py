"""Turn the text of a received payload into a message, joining chunk envelopes first.

Its JSON is decoded, or it is taken as a bare task name (as dispatcherd); chunk envelopes
are joined into the whole text they carry. A text that cannot be decoded, or is not a JSON
object, is refused (:class:`Rejected`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

from dispatcher.schema import DecodeError, decode_json, validator
from dispatcher.schema.chunks import ChunkAssembler, ChunkedMessageTooLarge, ChunkError
from dispatcher.server.rejection import Rejected

MAX_TASK_NAME: Final = 255
"""The longest task name (the task-message schema says the same); a longer bare payload is
not looked at as one."""


class PayloadDecoder:
    """Decodes payload texts, taking those decoded ahead (in a worker thread) as they are."""

    def __init__(self) -> None:
        self._task_validator = validator("task-message")
        self.ahead: dict[str, Any] = {}
        """Texts decoded ahead (:attr:`Intake.large <dispatcher.server.intake.Intake.large>`),
        which :meth:`decode` takes instead of decoding."""

    def decode_payload(self, payload: str) -> tuple[str, dict[str, Any]]:
        """Decode a payload as received: JSON text, or a bare task name (as dispatcherd)."""
        try:
            return payload, self.decode(payload)
        except Rejected as rejected:
            if rejected.reason != "not_json" or not self._is_task_name(payload):
                raise
        message = {"task": payload}
        return json.dumps(message, separators=(",", ":")), message

    def _is_task_name(self, text: str) -> bool:
        return len(text) <= MAX_TASK_NAME and self._task_validator.is_valid({"task": text})

    def decode(self, text: str) -> dict[str, Any]:
        """The JSON object *text* holds.

        :raises Rejected: when *text* is not JSON, or not an object.
        """
        try:
            if self.ahead and text in self.ahead:  # decoded in a worker thread
                message = self.ahead.pop(text)
                if isinstance(message, DecodeError):
                    raise message
            else:
                message = decode_json(text)
        except DecodeError as exc:
            raise Rejected(exc.reason, str(exc), exc.uuid) from None
        if not isinstance(message, dict):
            kind = type(message).__name__ if message is not None else "null"
            raise Rejected("not_object", f"a JSON {_json_kind(kind)}, not an object")
        return message


class ChunkJoiner:
    """Joins chunk envelopes in *chunks*; the incomplete messages it drops go to *lost*."""

    def __init__(self, chunks: ChunkAssembler, lost: Callable[[Rejected], None]) -> None:
        self._chunks = chunks
        self._lost = lost
        self._chunk_validator = validator("chunk-envelope")

    def join(self, envelope: dict[str, Any]) -> str | None:
        """The whole text once *envelope* is its message's last chunk, else ``None``.

        :raises Rejected: when *envelope* is invalid, or its message too large.
        """
        if not self._chunk_validator.is_valid(envelope):
            problems = "; ".join(str(p) for p in self._chunk_validator.problems(envelope))
            raise Rejected("invalid_chunk", f"invalid chunk envelope: {problems}")
        try:
            whole = self._chunks.add(envelope)
        except ChunkedMessageTooLarge as exc:
            raise Rejected("oversized", str(exc)) from None
        except ChunkError as exc:
            raise Rejected("invalid_chunk", str(exc)) from None
        finally:
            for message_id in self._chunks.take_evicted():
                evicted = Rejected(
                    "chunk_evicted",
                    f"incomplete chunked message {message_id} evicted to make room "
                    "(service.limits.max_partial_messages or max_partial_bytes reached)",
                )
                self._lost(evicted)
        for message_id in self._chunks.expire():
            expired = Rejected("chunk_expired", f"incomplete chunked message {message_id} expired")
            self._lost(expired)
        return whole


_JSON_KINDS: Final = {"list": "array", "str": "string", "int": "number", "float": "number"}


def _json_kind(python_type: str) -> str:
    return _JSON_KINDS.get(python_type, {"bool": "boolean"}.get(python_type, python_type))
