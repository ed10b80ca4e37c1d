"""Task return values, as durable brokers store them: JSON text, size-capped.

Runs in the worker (it imports nothing of the service's machinery). Only jobs whose broker
acknowledges outcomes (a durable queue) have their result encoded; a result that is not
JSON-serialisable, or too large, is dropped with a note saying why: the task ran, and its job
ends ``done`` all the same (never retried for it, which would repeat its side effects).
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from dispatcher.publish.broker_errors import first_line
from dispatcher.publish.json_values import unsendable_reason

MAX_RESULT_BYTES: Final = 64 * 1024
"""Largest result kept, in bytes of its JSON text (UTF-8)."""

_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False)
"""Text as it is, not ``\\u`` escapes: PostgreSQL's ``jsonb`` converts those to the database's
encoding, which it cannot do on a ``SQL_ASCII`` database (where text as it is, UTF-8 on the
services' connections, is stored as it comes)."""

_ESCAPED_NUL: Final = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
r"""A NUL character's escape in JSON text: ``\u0000`` after an even number of backslashes.

(``\\u0000`` is an escaped backslash followed by the letters ``u0000``: PostgreSQL takes it.)"""


def encode_result(value: Any) -> tuple[str | None, str | None]:
    """Return ``(json_text, None)`` for a value worth keeping, else ``(None, note)``.

    JSON as PostgreSQL's ``jsonb`` takes it: no ``NaN`` or infinities, no escaped NUL, no
    lone surrogate. Whatever encoding it raises (a container of the task's whose methods
    fail, say) is a value not kept, never an error of the task.
    """
    try:
        text = _ENCODER.encode(value)
    except BaseException as exc:  # any failure of the task's objects (even SystemExit)
        return None, f"result not kept: {_why_not_encoded(value, exc)}"[:300]
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return None, "result not kept: it holds a lone surrogate, which UTF-8 cannot encode"
    if size > MAX_RESULT_BYTES:
        return None, f"result not kept: {size} bytes of JSON, more than {MAX_RESULT_BYTES}"
    if "\\u0000" in text and _ESCAPED_NUL.search(text):
        return None, "result not kept: it holds a NUL character, which PostgreSQL refuses"
    return text, None


def _why_not_encoded(value: Any, exc: BaseException) -> str:
    """Why JSON could not encode *value*, which raised *exc*: never raises itself.

    The walk that names the value at fault runs the task's objects' methods again, which
    may fail as well (then the encoder's error says what went wrong).
    """
    try:
        why = unsendable_reason(value, ("result",))
    except BaseException:  # the value's own methods fail (even with SystemExit: task code)
        why = None
    if why is not None:
        return why
    return f"a value of type {type(value).__name__} that JSON cannot hold ({first_line(exc)})"
