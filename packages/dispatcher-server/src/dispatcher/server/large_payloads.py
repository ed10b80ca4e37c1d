"""Large payloads: decoded in a worker thread, handed on in the order their source sent them.

Decoding JSON costs the event loop 20 to 60 µs a kilobyte of dense JSON (measured: 53 kB
1.5 ms, 107 kB 7 ms, 833 kB 86 ms; a message of 6.5 MB, near the size limit, 0.9 s),
during which nothing else runs. A payload of at least :data:`LARGE_PAYLOAD_CHARS` (a
message, or the whole text of a chunked one once joined) is decoded in a worker thread
instead, one at a time; the rest of its way (signature, schema, routing) runs on the loop,
as before. Below the threshold, nothing changes: the path of nearly every message pays no
thread's round trip.

Order. The payloads of one source (a broker's channel, queue or connection: the broker of
their :class:`~dispatcher.server.origin.Origin`, and the channel they came on) are handed on in the
order they arrived, as when all was decoded on the loop: those that arrive from a source
while one of its large payloads is being decoded are held behind it (at most
:data:`MAX_HELD` of them and ``service.limits.max_held_bytes`` with the large ones; more
are refused, ``overloaded``), and handed on once it has been. A chunked message counts
where its last chunk arrived (as before: it is whole then). Other sources go on meanwhile.
A connection that waits for its answers before it reads on (the socket broker) is told,
through :attr:`~dispatcher.server.origin.Origin.answering`, that the payload is still
being answered.
"""

from __future__ import annotations

import gc
import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import anyio.lowlevel
import anyio.to_thread
from anyio.abc import TaskStatus

from dispatcher.schema import SIGNED_KEY, DecodeError, decode_json_sharing
from dispatcher.server.origin import Origin
from dispatcher.server.rejection import Rejected
from dispatcher.server.resources import shortage_text

LARGE_PAYLOAD_CHARS: Final = 65_536
"""Payloads of at least this many characters are decoded in a worker thread: at most some
1.5 ms of dense JSON (5 ms at about 100 kB) is decoded on the loop."""

MAX_HELD: Final = 100_000
"""Payloads held behind the large ones of their sources, at most (as many as may wait for
the first worker)."""

HANDED_ON_A_TURN: Final = 1_000
"""Held payloads handed on in one turn of the event loop, once their large one has been."""

Decoded = dict[str, Any]
"""JSON texts decoded ahead, each to its value, or to the :class:`DecodeError` it raised."""


def decode_ahead(text: str) -> Decoded:
    """*text* decoded, and the body of the signed envelope it may be: in a worker thread.

    The intake decodes them next (:class:`~dispatcher.server.intake.Intake`), on the loop:
    it takes them from here instead.
    """
    decoded: Decoded = {text: _value_or_error(text)}
    envelope = decoded[text]
    if isinstance(envelope, dict) and SIGNED_KEY in envelope:
        body = envelope.get("body")
        if isinstance(body, str) and len(body) >= LARGE_PAYLOAD_CHARS:
            decoded[body] = _value_or_error(body)
    return decoded


def _value_or_error(text: str) -> Any:
    try:
        return decode_json_sharing(text)
    except DecodeError as exc:
        return exc


@dataclass(eq=False)
class LargePayload:
    """A large payload on its way: decoded ahead, then handed on."""

    text: str
    channel: str
    origin: Origin
    joined: bool
    """Whether it is the whole text of a chunked message (its chunks were joined)."""
    decoded: Decoded = field(default_factory=dict)
    """What the worker thread decoded (empty until it has)."""
    answered: Callable[[], None] | None = None
    """Tells its connection that it has been answered (see the module)."""
    refused: Rejected | None = None
    """Why it was refused, if it was: decoded only to answer the control command it may be
    (see :mod:`~dispatcher.server.held_refusals`)."""


Source = tuple[str | None, str]


def _source(origin: Origin, channel: str) -> Source:
    return origin.broker, channel


class LargePayloads:
    """Decodes large payloads in a worker thread, in order per source (see the module).

    *resume* takes each on, on the loop, once decoded; *take* hands on a payload that was
    held behind one, as the intake takes any payload.
    """

    def __init__(
        self,
        resume: Callable[[LargePayload], None],
        take: Callable[[str, str, Origin], None],
        max_held_bytes: int,
    ) -> None:
        self._resume = resume
        self._take = take
        self._max_held_bytes = max_held_bytes
        self._held: dict[Source, deque[tuple[str, str, Origin]]] = {}
        """By source: present while a large payload of it is being decoded, or its held
        payloads are being handed on."""
        self._large: Counter[Source] = Counter()
        """Large payloads of each source not yet handed on."""
        self._to_decode: deque[LargePayload] = deque()
        self._decoding: LargePayload | None = None
        self._added = anyio.Event()
        self._held_count = 0
        self._bytes = 0
        self.running = False
        """Whether :meth:`run` runs: until it does, and after, nothing is decoded here."""
        self._limiter: anyio.CapacityLimiter | None = None
        """The thread it decodes in: its own, never waiting for an embedding application's
        (anyio's default limiter, shared by every ``to_thread`` call of the process)."""
        self._closed = False

    @property
    def waiting(self) -> int:
        """Payloads waiting here: large ones, and those held behind them."""
        return self._held_count + sum(self._large.values())

    def holds(self, channel: str, origin: Origin) -> bool:
        """Whether payloads from *channel* of *origin* wait behind a large one (:meth:`hold`)."""
        return bool(self._held) and _source(origin, channel) in self._held

    def hold(self, payload: str, channel: str, origin: Origin) -> None:
        """Hold *payload* until the large payloads before it from its source are handed on.

        :raises Rejected: (``overloaded``) when too many are held; (``oversized``) when
            *payload* alone is larger than ``service.limits.max_held_bytes``.
        """
        self._refuse_oversized(payload)
        if self._held_count >= MAX_HELD or self._bytes + len(payload) > self._max_held_bytes:
            raise Rejected(
                "overloaded",
                f"too many messages held behind large ones being decoded ({self._held_count} "
                f"messages, {self._bytes} bytes with the large ones; service.limits."
                f"max_held_bytes is {self._max_held_bytes})",
            )
        self._held[_source(origin, channel)].append((payload, channel, origin))
        self._held_count += 1
        self._bytes += len(payload)

    def decode_later(
        self,
        text: str,
        channel: str,
        origin: Origin,
        *,
        joined: bool,
        refused: Rejected | None = None,
    ) -> bool:
        """Take *text* to decode in a worker thread; ``False``: not running, decode it now.

        *refused*: it was refused (see :attr:`LargePayload.refused`), and takes its place
        all the same.

        :raises Rejected: (``overloaded``) when too much is held; (``oversized``) when
            *text* alone is larger than ``service.limits.max_held_bytes``.
        """
        if not self.running or self._closed:
            return False
        self._refuse_oversized(text)
        if self._bytes + len(text) > self._max_held_bytes:
            raise Rejected(
                "overloaded",
                f"too many large messages being decoded ({self._bytes} bytes; "
                f"service.limits.max_held_bytes is {self._max_held_bytes})",
            )
        large = LargePayload(text, channel, origin, joined, refused=refused)
        if origin.answering is not None:
            large.answered = origin.answering()
        source = _source(origin, channel)
        self._held.setdefault(source, deque())
        self._large[source] += 1
        self._bytes += len(text)
        self._to_decode.append(large)
        self._added.set()
        return True

    def _refuse_oversized(self, text: str) -> None:
        """Refuse *text* for good when it could never be held, however little else is."""
        if len(text) > self._max_held_bytes:
            raise Rejected(
                "oversized",
                f"the message is {len(text)} bytes, more than service.limits.max_held_bytes "
                f"({self._max_held_bytes}) lets this service hold",
            )

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Decode the large payloads and hand them on, one at a time, until cancelled."""
        self._limiter = anyio.CapacityLimiter(1)
        self.running = True
        task_status.started()
        try:
            while True:
                while not self._to_decode:
                    await self._added.wait()
                    self._added = anyio.Event()
                large = self._decoding = self._to_decode.popleft()
                pause = CollectionPause()
                try:
                    decoded = await _decode_ahead(large.text, pause, self._limiter)
                    if self._decoding is not large:  # dropped meanwhile (see close())
                        continue
                    self._decoding = None
                    large.decoded = decoded
                    del decoded
                    self._take_on(large)
                finally:
                    pause.end()
                await self._take_held(large)
        finally:
            self.running = False

    def _take_on(self, large: LargePayload) -> None:
        """Hand *large* on; what it was decoded to is dropped."""
        self._bytes -= len(large.text)
        try:
            self._resume(large)
        finally:
            large.decoded = {}
            self._large[_source(large.origin, large.channel)] -= 1
            if large.answered is not None:
                large.answered()

    async def _take_held(self, large: LargePayload) -> None:
        """Hand on what the source of *large* sent since, up to its next large one."""
        source = _source(large.origin, large.channel)
        held = self._held[source]
        taken = 0
        while held and not self._large[source]:
            payload, channel, origin = held.popleft()
            self._held_count -= 1
            self._bytes -= len(payload)
            self._take(payload, channel, origin)  # may be large: it holds the rest again
            taken += 1
            if taken % HANDED_ON_A_TURN == 0:
                await anyio.lowlevel.checkpoint()  # what arrives meanwhile goes behind
        if not held and not self._large[source]:
            self._held.pop(source, None)
            self._large.pop(source, None)

    def close(self) -> list[Origin]:
        """Drop what waits here, decode no more (the service stops); returns their origins."""
        self._closed = True
        large = [*filter(None, [self._decoding]), *self._to_decode]
        left = [payload.origin for payload in large]
        for held in self._held.values():
            left.extend(origin for _, _, origin in held)
            held.clear()
        for payload in large:
            if payload.answered is not None:
                payload.answered()
        self._decoding = None
        self._to_decode.clear()
        self._held.clear()
        self._large.clear()
        self._held_count = self._bytes = 0
        return left


class CollectionPause:
    """No garbage collection from a large payload's decoding until its objects are dropped.

    A second or so: nothing is held up meanwhile, only collected later.

    Decoding makes objects by the million. Each collection looks at all the objects of its
    generations in one step that holds the interpreter, and so the event loop: while the
    decoding went on, five full ones of 60 to 270 ms each for 6.5 MB of dense JSON; once
    it is done, a young one over all it made, some 150 ms. All for nothing: what decoding
    makes holds no cycle, and it is dropped soon after (its objects leave the count as
    they go).

    The collector is switched off when the decoding begins (:meth:`begin`, in its thread),
    not while it waits for that thread, and back on at :meth:`end` (on the loop); a
    :meth:`begin` after :meth:`end` (a thread that started after its wait was cancelled)
    leaves it on.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._collecting = gc.isenabled()
        self._paused = False
        self._ended = False

    def begin(self) -> None:
        """The decoding begins: no collection until :meth:`end` (if there was any)."""
        with self._lock:
            if self._collecting and not self._ended and not self._paused:
                gc.disable()
                self._paused = True

    def end(self) -> None:
        """What the decoding made is dropped: collections as before :meth:`begin`."""
        with self._lock:
            self._ended = True
            if self._paused:
                self._paused = False
                gc.enable()


def _decode_paused(text: str, pause: CollectionPause) -> Decoded:
    """:func:`decode_ahead` of *text*, without garbage collection from the start."""
    pause.begin()
    return decode_ahead(text)


async def _decode_ahead(
    text: str, pause: CollectionPause, limiter: anyio.CapacityLimiter | None
) -> Decoded:
    """:func:`decode_ahead` in a worker thread of *limiter* (here, when none can start)."""
    try:
        return await anyio.to_thread.run_sync(
            _decode_paused, text, pause, abandon_on_cancel=True, limiter=limiter
        )
    except RuntimeError as exc:
        if shortage_text(exc) is None:
            raise
        return _decode_paused(text, pause)
