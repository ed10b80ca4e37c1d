"""Submission uuids: random (version 4) UUIDs, read from the OS's random source in batches.

One read of :func:`os.urandom` per :data:`BATCH` uuids instead of one per submission: a
system call less for nearly every ``.delay()``, from the same source as ``uuid.uuid4()``.
The uuids not handed out yet are forgotten in a forked child, which must never reuse its
parent's.
"""

from __future__ import annotations

import os
from typing import Final

from dispatcher.config.forking import at_fork

BATCH: Final = 64
"""How many uuids one read of the random source makes."""

_VARIANT: Final = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}
"""The digit of the RFC 4122 variant made from each random hex digit (its two low bits)."""

_ready: list[str] = []
"""Uuids not handed out yet. ``list.pop()`` and ``list.extend()`` are atomic: threads share it."""


def _refill() -> None:
    h = os.urandom(16 * BATCH).hex()  # 32 random hex digits per uuid
    variant = _VARIANT
    _ready.extend(
        [
            f"{h[a : a + 8]}-{h[a + 8 : a + 12]}-4{h[a + 13 : a + 16]}-"
            f"{variant[h[a + 16]]}{h[a + 17 : a + 20]}-{h[a + 20 : a + 32]}"
            for a in range(0, 32 * BATCH, 32)
        ]
    )


def submission_uuid() -> str:
    """Return a new random (version 4) UUID in text form, as ``str(uuid.uuid4())`` would."""
    while True:
        try:
            return _ready.pop()
        except IndexError:
            _refill()


at_fork(after_in_child=_ready.clear)
