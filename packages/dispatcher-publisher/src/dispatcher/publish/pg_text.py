r"""Python strings that PostgreSQL cannot hold as ``text``, found before they are sent.

A ``str`` may hold a NUL character, which ``text`` never does, and lone surrogates (such as
``"\udcff"`` from ``os.fsdecode()``), which UTF-8 cannot encode. Sent as a parameter, the
first is refused by the server (aborting the transaction it was sent in), the second by the
client's encoder. What the SDK writes as JSON is safe: its JSON text escapes both.
"""

from __future__ import annotations


def text_problem(text: str) -> str | None:
    """Say why PostgreSQL cannot hold *text* as ``text``; ``None`` when it can."""
    if text.isascii():  # nearly always: one pass, no copy
        return None if "\x00" not in text else _nul(text)
    if "\x00" in text:
        return _nul(text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (
            f"{text!r} holds the lone surrogate {text[exc.start]!r} at index {exc.start}, "
            "which UTF-8 cannot encode"
        )
    return None


def _nul(text: str) -> str:
    index = text.index("\x00")
    return f"{text!r} holds a NUL character at index {index}, which PostgreSQL text cannot hold"
