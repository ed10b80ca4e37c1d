"""Task return values, as durable brokers store them: JSON text, size-capped.

Runs in the worker (it imports nothing of the service's machinery). Only jobs whose broker
acknowledges outcomes (a durable queue) have their result encoded; a result that is not
JSON-serialisable, or too large, is dropped with a note saying why.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from dispatcher.publish.json_values import unsendable_reason

MAX_RESULT_BYTES: Final = 64 * 1024
"""Largest result kept, in bytes of its JSON text (UTF-8)."""

_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False)

_ESCAPED_NUL: Final = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
r"""A NUL character's escape in JSON text: ``\u0000`` after an even number of backslashes.

(``\\u0000`` is an escaped backslash followed by the letters ``u0000``: PostgreSQL takes it.)"""


def encode_result(value: Any) -> tuple[str | None, str | None]:
    """Return ``(json_text, None)`` for a value worth keeping, else ``(None, note)``.

    JSON as PostgreSQL's ``jsonb`` takes it: no ``NaN`` or infinities, no escaped NUL.
    """
    try:
        text = _ENCODER.encode(value)
    except (TypeError, ValueError, RecursionError) as exc:
        try:
            why = unsendable_reason(value, ("result",))
        except BaseException:  # (a key's __repr__ raising, even SystemExit: the task's code)
            why = None
        if why is None:  # refused by the encoder for a reason the walk does not know
            why = f"a value of type {type(value).__name__} that JSON cannot hold ({exc})"
        return None, f"result not kept: {why}"[:300]
    if len(text) > MAX_RESULT_BYTES:  # ASCII: characters are bytes
        return None, (f"result not kept: {len(text)} bytes of JSON, more than {MAX_RESULT_BYTES}")
    if "\\u0000" in text and _ESCAPED_NUL.search(text):
        return None, "result not kept: it holds a NUL character, which PostgreSQL refuses"
    return text, None
