"""Chunk envelopes: how a message larger than one NOTIFY travels (schema ``chunk-envelope``).

The sender cuts the message's JSON text into slices on character boundaries and wraps each
in an envelope of at most :data:`~dispatcher.schema.MAX_NOTIFY_PAYLOAD_BYTES` bytes; the
receiver joins the slices once all have arrived, in any order.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from dispatcher.schema import MAX_NOTIFY_PAYLOAD_BYTES

CHUNK_KEY: Final = "__dispatcherd_chunk__"
"""The key that marks a JSON object as a chunk envelope."""

CHUNK_VERSION: Final = "v1"
"""The only envelope version there is."""

_MAX_DIGITS: Final = 99999  # stands for the widest index and total when sizing an envelope

_REMEMBERED_DROPS: Final = 10_000


def is_chunk(message: Mapping[str, Any]) -> bool:
    """Tell whether a decoded message is a chunk envelope."""
    return CHUNK_KEY in message


def split_message(
    text: str, limit: int = MAX_NOTIFY_PAYLOAD_BYTES, message_id: str | None = None
) -> list[str]:
    """Cut the JSON text *text* into envelopes of at most *limit* bytes each.

    *text* must be ASCII (``json.dumps`` with its default ``ensure_ascii``), so that
    characters and bytes count alike.
    """
    message_id = message_id or uuid.uuid4().hex
    budget = limit - len(_envelope(message_id, _MAX_DIGITS, _MAX_DIGITS, ""))
    if budget < 16:
        raise ValueError(f"a limit of {limit} bytes leaves no room for a chunk's payload")
    slices = []
    start = 0
    while start < len(text):
        size = min(budget, len(text) - start)
        while (escaped := _escaped_length(text[start : start + size])) > budget:
            # Escaping (quotes, backslashes) makes some characters longer: shrink in proportion.
            size = max(1, size * budget // escaped - 1)
        slices.append(text[start : start + size])
        start += size
    return [_envelope(message_id, index, len(slices), part) for index, part in enumerate(slices)]


def _escaped_length(part: str) -> int:
    return len(json.dumps(part)) - 2


def _envelope(message_id: str, index: int, total: int, payload: str) -> str:
    envelope = {
        CHUNK_KEY: CHUNK_VERSION,
        "message_id": message_id,
        "index": index,
        "total": total,
        "payload": payload,
    }
    return json.dumps(envelope, separators=(",", ":"))


class ChunkError(ValueError):
    """A chunk envelope contradicts the others of its message."""


class ChunkedMessageTooLarge(ChunkError):
    """The slices of one message add up to more than the assembler accepts."""


@dataclass
class _Partial:
    total: int
    started: float
    parts: dict[int, str] = field(default_factory=dict)
    size: int = 0


class ChunkAssembler:
    """Joins chunk envelopes back into whole messages.

    Envelopes must already be valid against the ``chunk-envelope`` schema. Partial messages
    older than *expiry* seconds are dropped by :meth:`expire`; one that grows beyond
    *max_bytes* is dropped at once.
    """

    def __init__(
        self,
        expiry: float = 1800,
        clock: Callable[[], float] = time.monotonic,
        max_bytes: int | None = None,
    ) -> None:
        self.expiry = expiry
        self.max_bytes = max_bytes
        self._clock = clock
        self._partials: dict[str, _Partial] = {}
        self._dropped: OrderedDict[str, None] = OrderedDict()
        """Ids of messages dropped (expired, contradictory, too large): their late slices
        are ignored. The oldest ids are forgotten beyond :data:`_REMEMBERED_DROPS`."""
        self.late_slices = 0
        """Slices that arrived for a message already dropped, and were ignored."""

    def add(self, envelope: Mapping[str, Any]) -> str | None:
        """Take one envelope; return the whole message's text once its last slice arrives.

        :raises ChunkError: when the envelope's index or total contradicts its message.
        """
        message_id, index, total = envelope["message_id"], envelope["index"], envelope["total"]
        if message_id in self._dropped:
            self.late_slices += 1
            return None
        if index >= total:
            raise ChunkError(f"chunk index {index} is not below its total {total}")
        partial = self._partials.get(message_id)
        if partial is None:
            partial = self._partials[message_id] = _Partial(total, self._clock())
        elif partial.total != total:
            self._drop(message_id)
            raise ChunkError(
                f"chunk {index} of message {message_id} says {total} chunks, "
                f"earlier ones said {partial.total}; the message is dropped"
            )
        payload = envelope["payload"]
        if index not in partial.parts:
            partial.size += len(payload)
        partial.parts[index] = payload
        if self.max_bytes is not None and partial.size > self.max_bytes:
            self._drop(message_id)
            raise ChunkedMessageTooLarge(
                f"chunked message {message_id} exceeds {self.max_bytes} bytes; it is dropped"
            )
        if len(partial.parts) < total:
            return None
        del self._partials[message_id]
        return "".join(partial.parts[i] for i in range(total))

    def expire(self) -> list[str]:
        """Drop partial messages older than the expiry; return their message ids."""
        deadline = self._clock() - self.expiry
        expired = [mid for mid, partial in self._partials.items() if partial.started < deadline]
        for message_id in expired:
            self._drop(message_id)
        return expired

    def _drop(self, message_id: str) -> None:
        self._partials.pop(message_id, None)
        self._dropped[message_id] = None
        if len(self._dropped) > _REMEMBERED_DROPS:
            self._dropped.popitem(last=False)

    def __len__(self) -> int:
        """The number of partial messages waiting for slices."""
        return len(self._partials)
