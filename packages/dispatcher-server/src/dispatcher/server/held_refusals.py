r"""The control commands among payloads refused behind a large one: which to read, and when.

A payload that arrives while a large payload of its source is being decoded waits behind it
(:mod:`~dispatcher.server.large_payloads`); beyond the bounds of what may wait, it is refused
at once, not decoded. A control command among those still gets its refusal as a reply, as
other refused control messages do (its client would otherwise wait until it timed out), in
whichever form it came:

- plain: ``{"control": "alive", ...}``;
- in a signed envelope: its body is a JSON string, where the key reads ``\"control\"``;
- in chunk envelopes, each a slice of its text (plain or signed) as a JSON string, the key
  maybe cut between two slices, maybe in none of those refused.

So the intake reads a refused payload that :func:`may_be_control` lets through (on the loop
if it is small, else in the decoding thread, if it has room), and joins a refused slice with
the others of its message (:class:`RefusedChunks` remembers that the message was refused, to
answer it rather than run it once whole): :class:`RefusedAnswers` does all this.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final

from dispatcher.schema import CHUNK_KEY, SIGNED_KEY
from dispatcher.server.intake_decoding import ChunkJoiner, PayloadDecoder
from dispatcher.server.large_payloads import LARGE_PAYLOAD_CHARS, LargePayloads
from dispatcher.server.origin import Origin
from dispatcher.server.rejection import Rejected

RefusalSink = Callable[[dict[str, Any], str, Origin, Rejected], None]
"""Answers a refused control message with its refusal: ``sink(message, channel, origin,
refused)`` (the intake's control sink)."""

_CONTROL_SIGNS: Final = ("control", CHUNK_KEY, "\\u")
"""Texts one of which the JSON text of a control message, in any form, holds verbatim."""


def may_be_control(text: str) -> bool:
    r"""Whether the JSON text *text* may carry a control message (else it surely does not).

    The key ``control``, in the message or in the body of a signed envelope, is written
    ``control`` in the text, or with ``\u`` escapes (no other escape makes a letter); a slice
    of a chunked message may hold none of it, but its envelope names :data:`CHUNK_KEY` (or
    escapes it). A few substring searches: most refused payloads (task messages) are not
    decoded.
    """
    return any(sign in text for sign in _CONTROL_SIGNS)


class RefusedChunks:
    """The chunked messages a slice of which was refused, by message id, with why.

    Their refused slices are joined with the others all the same, so that a control command
    among them is answered once whole; the whole is then refused, not run. At most
    *capacity* are remembered (as many as the chunk assembler holds incomplete messages):
    beyond, the oldest is forgotten (its message never completes: a refused slice was
    forgotten before it, or the assembler evicted it).
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = max(1, capacity)
        self._refused: OrderedDict[str, Rejected] = OrderedDict()

    def __len__(self) -> int:
        return len(self._refused)

    def refuse(self, message_id: str, rejected: Rejected) -> None:
        """Remember that a slice of message *message_id* was refused, as *rejected* says."""
        self._refused.setdefault(message_id, rejected)
        self._refused.move_to_end(message_id)
        while len(self._refused) > self._capacity:
            self._refused.popitem(last=False)

    def take(self, message_id: str) -> Rejected | None:
        """Why message *message_id*, whole now, was refused; ``None`` if it was not."""
        if not self._refused:
            return None
        return self._refused.pop(message_id, None)


class RefusedAnswers:
    """Answers the control commands refused behind a large payload, in any form they came.

    *decoder* and *joiner* are the intake's (a refused slice joins the others of its
    message); a large text is decoded by *large*, in its thread, which gives it back to the
    intake (then :meth:`answer_decoded`). Without *on_control*, nothing is answered.
    """

    def __init__(
        self,
        on_control: RefusalSink | None,
        decoder: PayloadDecoder,
        joiner: ChunkJoiner,
        large: LargePayloads,
        capacity: int,
    ) -> None:
        self._on_control = on_control
        self._decoder = decoder
        self._joiner = joiner
        self._large = large
        self._chunks = RefusedChunks(capacity)

    def answer(
        self, text: str, channel: str, origin: Origin, rejected: Rejected, joined: bool = False
    ) -> None:
        """Answer with *rejected* the control command the refused *text* carries, if any.

        *joined*: the whole text of a chunked message. A small text is decoded here, as the
        intake decodes small payloads; a large one in the decoding thread, if it has room,
        never here: else (or once the service stops) the refusal goes unanswered, logged only.
        """
        if self._on_control is None:
            return
        if len(text) >= LARGE_PAYLOAD_CHARS:
            with contextlib.suppress(Rejected):  # no room to read it
                self._large.decode_later(text, channel, origin, joined=joined, refused=rejected)
            return
        try:
            message = self._decoder.decode(text)
        except Rejected:
            return
        self.answer_decoded(message, channel, origin, rejected, joined=joined)

    def answer_decoded(
        self,
        message: dict[str, Any],
        channel: str,
        origin: Origin,
        rejected: Rejected,
        *,
        joined: bool,
    ) -> None:
        """:meth:`answer` from the decoded *message* on."""
        if CHUNK_KEY in message:
            whole = None if joined else self._join(message, rejected)
            if whole is not None:
                self.answer(whole, channel, origin, rejected, joined=True)
            return
        try:
            body = message.get("body") if SIGNED_KEY in message else None
            if isinstance(body, str):
                message = self._decoder.decode(body)
        except Rejected:
            return
        if "control" in message and self._on_control is not None:
            self._on_control(message, channel, origin, rejected)

    def whole_refused(self, message_id: str) -> Rejected | None:
        """Why the chunked message *message_id*, whole now, was refused; ``None`` if it was not."""
        return self._chunks.take(message_id)

    def _join(self, envelope: dict[str, Any], rejected: Rejected) -> str | None:
        """Join the refused slice *envelope* with the others; the whole text once complete.

        Until then, its message is remembered as refused: once whole, it is answered if it
        is a control command, and not run.
        """
        try:
            whole = self._joiner.join(envelope)
        except Rejected:
            return None  # (not a valid slice, or its message was dropped)
        message_id = str(envelope["message_id"])
        if whole is None:
            self._chunks.refuse(message_id, rejected)
        else:
            self._chunks.take(message_id)
        return whole
