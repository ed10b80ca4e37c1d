"""Chunk envelopes: how a message larger than one NOTIFY travels (schema ``chunk-envelope``).

The sender cuts the message's JSON text into slices on character boundaries and wraps each
in an envelope of at most :data:`~dispatcher.schema.MAX_NOTIFY_PAYLOAD_BYTES` bytes; the
receiver joins the slices once all have arrived, in any order.

Anyone who can NOTIFY can send first slices that never complete, so the receiving side
(:class:`ChunkAssembler`) bounds what it holds, in messages and in memory, and evicts the
oldest incomplete messages to make room; each envelope costs constant time however many
messages are pending.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from dispatcher.schema.errors import DispatcherError, InvalidArgumentValue
from dispatcher.schema.wire import CHUNK_KEY, CHUNK_VERSION, MAX_NOTIFY_PAYLOAD_BYTES

__all__ = [
    "CHUNK_KEY",
    "CHUNK_VERSION",
    "MAX_CHUNKS",
    "MAX_PARTIAL_BYTES",
    "MAX_PARTIAL_MESSAGES",
    "SOCKET_CHUNK_BYTES",
    "ChunkAssembler",
    "ChunkError",
    "ChunkedMessageTooLarge",
    "is_chunk",
    "socket_lines",
    "split_message",
]

MAX_CHUNKS: Final = 10000
"""Most envelopes one message may be cut into (the schema's maximum ``total``)."""

SOCKET_CHUNK_BYTES: Final = 1024
"""Longest line a message or a reply travels in whole over a service's local socket.

dispatcherd's socket broker cuts longer ones into chunk envelopes of at most this many
bytes, one per line, both ways; :func:`socket_lines` does the same.
"""

MAX_PARTIAL_MESSAGES: Final = 1000
"""Default bound on the incomplete messages an assembler holds."""

MAX_PARTIAL_BYTES: Final = 32 * 1024 * 1024
"""Default bound on the memory held by the slices of incomplete messages, in bytes."""

_MAX_DIGITS: Final = 99999  # stands for the widest index and total when sizing an envelope

_REMEMBERED_DROPS: Final = 10_000

_PARTIAL_OVERHEAD: Final = 400
"""Bytes counted for each incomplete message besides its slices (its record and id)."""

_SLICE_OVERHEAD: Final = 64
"""Bytes counted for each slice besides its string (its entry and index)."""


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
        raise InvalidArgumentValue(f"a limit of {limit} bytes leaves no room for a chunk's payload")
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


def socket_lines(text: str) -> list[str]:
    """The lines (without their newlines) that carry the JSON text *text* over the socket.

    Up to :data:`SOCKET_CHUNK_BYTES` bytes, the text itself; beyond, chunk envelopes of at
    most that size, as dispatcherd's socket broker sends them. A text so long that it
    would take more than :data:`MAX_CHUNKS` envelopes is cut into larger ones (readers
    take lines of any length; the count is what the schema bounds).
    """
    size = len(text) if text.isascii() else len(text.encode("utf-8"))
    if size <= SOCKET_CHUNK_BYTES:
        return [text]
    # In an envelope, a slice grows at most threefold (a quote becomes two bytes, a
    # character of two UTF-8 bytes six), and 200 bytes hold the envelope's other fields.
    limit = max(SOCKET_CHUNK_BYTES, 3 * size // (MAX_CHUNKS - 1) + 200)
    return split_message(text, limit)


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


class ChunkError(DispatcherError, ValueError):
    """A chunk envelope contradicts the others of its message."""


def _whole_text(message_id: str, text: str) -> str:
    r"""*text* as valid Unicode: surrogate pairs cut across slices are joined again.

    A slice's payload may end in half a surrogate pair (a sender that cuts UTF-16 text)
    written as a ``\ud83d`` escape; the joined message must hold whole characters.

    :raises ChunkError: when a lone surrogate remains.
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
        except UnicodeDecodeError:
            raise ChunkError(
                f"chunked message {message_id} holds a lone surrogate: it is not text"
            ) from None
    return text


class ChunkedMessageTooLarge(ChunkError):
    """The slices of one message add up to more than the assembler accepts."""


@dataclass
class _Partial:
    total: int
    started: float
    parts: dict[int, str] = field(default_factory=dict)
    size: int = 0
    """Characters of the slices so far (against ``max_bytes``)."""
    memory: int = _PARTIAL_OVERHEAD
    """Bytes of memory counted for this message (against ``max_memory``)."""


class ChunkAssembler:
    """Joins chunk envelopes back into whole messages.

    Envelopes must already be valid against the ``chunk-envelope`` schema (an integral
    float such as ``1.0`` is a valid index or total). Bounds:

    - *expiry*: :meth:`expire` drops incomplete messages older than this, in seconds;
    - *max_bytes*: one message growing beyond it is dropped at once
      (:class:`ChunkedMessageTooLarge`);
    - *max_messages*, *max_memory*: when a new message would make more than *max_messages*
      incomplete ones, or a slice would make their slices hold more than *max_memory* bytes
      (``sys.getsizeof`` of each slice, plus bookkeeping), the oldest incomplete messages
      are evicted; :meth:`take_evicted` says which.

    Incomplete messages are kept in the order they started, so every call costs constant
    time (amortised) however many are pending.
    """

    def __init__(
        self,
        expiry: float = 1800,
        clock: Callable[[], float] = time.monotonic,
        max_bytes: int | None = None,
        max_messages: int = MAX_PARTIAL_MESSAGES,
        max_memory: int = MAX_PARTIAL_BYTES,
    ) -> None:
        self.expiry = expiry
        self.max_bytes = max_bytes
        self.max_messages = max_messages
        self.max_memory = max_memory
        self._clock = clock
        self._partials: OrderedDict[str, _Partial] = OrderedDict()
        self._memory = 0
        self._evicted: deque[str] = deque(maxlen=_REMEMBERED_DROPS)
        self._dropped: OrderedDict[str, None] = OrderedDict()
        """Ids of messages dropped (expired, evicted, contradictory, too large): their late
        slices are ignored. The oldest ids are forgotten beyond :data:`_REMEMBERED_DROPS`."""
        self.late_slices = 0
        """Slices that arrived for a message already dropped, and were ignored."""
        self.evictions = 0
        """Incomplete messages evicted to stay within *max_messages* and *max_memory*."""
        self.received = 0
        """Envelopes taken by :meth:`add` (every slice, whatever became of it)."""
        self.assembled = 0
        """Messages joined whole (and returned by :meth:`add`)."""

    def add(self, envelope: Mapping[str, Any]) -> str | None:
        """Take one envelope; return the whole message's text once its last slice arrives.

        :raises ChunkError: when the envelope's index or total contradicts its message.
        """
        self.received += 1
        message_id: str = envelope["message_id"]
        index, total = int(envelope["index"]), int(envelope["total"])
        if message_id in self._dropped:
            self.late_slices += 1
            return None
        if index >= total:
            raise ChunkError(f"chunk index {index} is not below its total {total}")
        payload: str = envelope["payload"]
        partial = self._partials.get(message_id)
        if partial is None:
            if total == 1:
                if self.max_bytes is not None and len(payload) > self.max_bytes:
                    raise self._too_large(message_id)
                whole = _whole_text(message_id, payload)
                self.assembled += 1
                return whole
            while len(self._partials) >= self.max_messages:
                self._evict_oldest()
            partial = self._partials[message_id] = _Partial(total, self._clock())
            self._memory += partial.memory
        elif partial.total != total:
            self._drop(message_id)
            raise ChunkError(
                f"chunk {index} of message {message_id} says {total} chunks, "
                f"earlier ones said {partial.total}; the message is dropped"
            )
        self._store(partial, index, payload)
        if self.max_bytes is not None and partial.size > self.max_bytes:
            self._drop(message_id)
            raise self._too_large(message_id)
        if len(partial.parts) == total:
            self._remove(message_id)
            whole = _whole_text(message_id, "".join(partial.parts[i] for i in range(total)))
            self.assembled += 1
            return whole
        while self._memory > self.max_memory:
            self._evict_oldest()
        return None

    def _store(self, partial: _Partial, index: int, payload: str) -> None:
        previous = partial.parts.get(index)
        if previous is not None:  # a repeated slice replaces the earlier one
            partial.size -= len(previous)
            released = sys.getsizeof(previous) + _SLICE_OVERHEAD
            partial.memory -= released
            self._memory -= released
        cost = sys.getsizeof(payload) + _SLICE_OVERHEAD
        partial.parts[index] = payload
        partial.size += len(payload)
        partial.memory += cost
        self._memory += cost

    def _too_large(self, message_id: str) -> ChunkedMessageTooLarge:
        return ChunkedMessageTooLarge(
            f"chunked message {message_id} exceeds {self.max_bytes} bytes; it is dropped"
        )

    def expire(self) -> list[str]:
        """Drop incomplete messages older than the expiry; return their message ids."""
        deadline = self._clock() - self.expiry
        expired = []
        while self._partials:
            message_id, oldest = next(iter(self._partials.items()))
            if oldest.started >= deadline:
                break
            self._drop(message_id)
            expired.append(message_id)
        return expired

    def take_evicted(self) -> list[str]:
        """Return the ids of the messages evicted since the last call, oldest first."""
        evicted = list(self._evicted)
        self._evicted.clear()
        return evicted

    def _evict_oldest(self) -> None:
        message_id = next(iter(self._partials))
        self._drop(message_id)
        self.evictions += 1
        self._evicted.append(message_id)

    def _remove(self, message_id: str) -> None:
        partial = self._partials.pop(message_id, None)
        if partial is not None:
            self._memory -= partial.memory

    def _drop(self, message_id: str) -> None:
        self._remove(message_id)
        self._dropped[message_id] = None
        if len(self._dropped) > _REMEMBERED_DROPS:
            self._dropped.popitem(last=False)

    def partials(self) -> dict[str, dict[str, Any]]:
        """A snapshot of the incomplete messages, oldest first, in dispatcherd's shape.

        ``{message_id: {seconds_since_start, expected_total, chunks: [{chunk_id, length}]}}``:
        the seconds since its first slice arrived, how many slices it says it has, and each
        slice received so far (its index, and its length in characters), by index.
        """
        now = self._clock()
        return {
            message_id: {
                "seconds_since_start": round(now - partial.started, 3),
                "expected_total": partial.total,
                "chunks": [
                    {"chunk_id": index, "length": len(partial.parts[index])}
                    for index in sorted(partial.parts)
                ],
            }
            for message_id, partial in self._partials.items()
        }

    @property
    def memory(self) -> int:
        """Bytes counted for the incomplete messages held."""
        return self._memory

    def __len__(self) -> int:
        """The number of partial messages waiting for slices."""
        return len(self._partials)
