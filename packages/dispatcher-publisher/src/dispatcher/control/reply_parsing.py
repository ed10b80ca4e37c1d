"""A payload on a reply channel, taken as a control reply: its chunks joined, decoded, checked.

Anyone may NOTIFY a reply channel: a payload that is not a control reply is refused with
:class:`InvalidReply` saying why, and the chunk envelopes of replies cut into several are
joined within bounds (:class:`ReplyChunks`).
"""

from __future__ import annotations

from typing import Any

from dispatcher.schema import (
    CHUNK_KEY,
    MAX_MESSAGE_BYTES,
    ChunkAssembler,
    ChunkedMessageTooLarge,
    ChunkError,
    DecodeError,
    DispatcherError,
    decode_json,
    is_chunk,
    validator,
)


class InvalidReply(DispatcherError, ValueError):
    """A payload on the reply channel that is not a control reply; the message says why."""


class ReplyTooLarge(InvalidReply):
    """A reply, chunked, that adds up to more than :data:`~dispatcher.schema.MAX_MESSAGE_BYTES`."""


_MAX_REASON_CHARS = 300

MAX_PENDING_CHUNKED_REPLIES = 100
"""Chunked replies a :class:`ReplyChunks` assembles at once; the oldest give way."""


class ReplyChunks:
    """Joins replies that come cut into chunk envelopes (dispatcherd's format, and ours).

    Bounded: a reply may not exceed :data:`~dispatcher.schema.MAX_MESSAGE_BYTES`, nor more
    than :data:`MAX_PENDING_CHUNKED_REPLIES` be incomplete at once (anyone may NOTIFY a
    reply channel).
    """

    def __init__(self) -> None:
        self._assembler = ChunkAssembler(
            max_bytes=MAX_MESSAGE_BYTES, max_messages=MAX_PENDING_CHUNKED_REPLIES
        )
        self._validator = validator("chunk-envelope")

    def join(self, payload: str | bytes) -> str | bytes | None:
        """The reply *payload* is, or completes; ``None`` while envelopes of it are missing.

        A payload that is not a chunk envelope is returned as it is.

        :raises InvalidReply: when it is an invalid chunk envelope, or one that contradicts
            the others of its reply; :class:`ReplyTooLarge` when it makes its reply too
            large.
        """
        if isinstance(payload, str):
            if CHUNK_KEY not in payload:
                return payload
        elif CHUNK_KEY.encode() not in payload:
            return payload
        try:
            envelope = decode_json(payload)
        except DecodeError:
            return payload  # not JSON: parse_reply says so
        if not isinstance(envelope, dict) or not is_chunk(envelope):
            return payload
        if not self._validator.is_valid(envelope):
            problems = "; ".join(str(p) for p in self._validator.problems(envelope))
            raise InvalidReply(f"an invalid chunk envelope ({_cut(problems)})")
        try:
            return self._assembler.add(envelope)
        except ChunkedMessageTooLarge as exc:
            raise ReplyTooLarge(f"a chunked reply too large to take: {exc}") from None
        except ChunkError as exc:
            raise InvalidReply(f"a chunked reply: {exc}") from None

    @property
    def incomplete(self) -> int:
        """Chunked replies still missing envelopes."""
        return len(self._assembler)


def _cut(problems: str) -> str:
    if len(problems) > _MAX_REASON_CHARS:
        return problems[:_MAX_REASON_CHARS] + "..."
    return problems


def parse_reply(payload: str | bytes) -> dict[str, Any]:
    """Decode one reply (bounded in depth, like every message).

    :raises InvalidReply: when it is not JSON, too deep, or not a control reply.
    """
    try:
        reply = decode_json(payload)
    except DecodeError as exc:
        raise InvalidReply(str(exc)) from None
    checker = validator("control-reply")
    if not checker.is_valid(reply):
        problems = "; ".join(str(p) for p in checker.problems(reply))
        raise InvalidReply(f"not a control reply ({_cut(problems)})")
    return reply  # type: ignore[no-any-return]
