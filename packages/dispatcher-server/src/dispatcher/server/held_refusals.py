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
answer it rather than run it once whole).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from dispatcher.schema import CHUNK_KEY
from dispatcher.server.rejection import Rejected

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
