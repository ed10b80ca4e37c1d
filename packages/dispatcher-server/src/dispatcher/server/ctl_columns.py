"""Text in a terminal's columns: how wide a text is, cut to fit, rows aligned, escaped.

What every ``dispatcherctl`` command that prints a table or a value from a reply builds on
(wide characters count two columns, combining marks none).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable

from dispatcher.server.log_text import escape


def aligned(rows: list[list[str]], indent: str) -> list[str]:
    """*rows* of cells (the first being the titles) as lines, in columns two spaces apart.

    A row shorter than the others leaves its last columns empty.
    """
    count = max(len(row) for row in rows)
    filled = [row + [""] * (count - len(row)) for row in rows]
    widths = [max(width(row[i]) for row in filled) for i in range(count)]
    out = []
    for row in filled:
        padded = (value + " " * (w - width(value)) for value, w in zip(row, widths, strict=True))
        out.append(indent + "  ".join(padded).rstrip())
    return out


def width(text: str) -> int:
    """How many columns *text* takes in a terminal.

    2 for a wide character (CJK), 0 for a combining mark, else 1 (non-printable characters
    were escaped before).
    """
    if text.isascii():
        return len(text)
    return sum(
        0 if unicodedata.combining(char) else 2 if unicodedata.east_asian_width(char) in "WF" else 1
        for char in text
    )


def cut(text: str, cells: int, measure: Callable[[str], int] = width) -> str:
    """*text*, or as much of it as fits in *cells* columns followed by an ellipsis (``…``).

    Columns as :func:`width` counts them (*measure*): a wide character takes two.
    """
    if text.isascii() and measure is width:
        return text if len(text) <= cells else text[: max(cells - 1, 0)] + "…"
    if measure(text) <= cells:
        return text
    kept, used = [], 0
    for char in text:
        used += measure(char)
        if used > cells - 1:
            break
        kept.append(char)
    return "".join(kept) + "…"


def shown(value: object) -> str:
    """Return *value* for the terminal: whole, with its non-printable characters escaped."""
    return escape(value, limit=None)
