"""Text that cannot be (part of) a libpq connection string, whatever libpq would make of it."""

from __future__ import annotations


def conninfo_text_problem(text: str) -> str | None:
    """Why *text* cannot be (part of) a conninfo at all, without quoting it; ``None`` if it can.

    libpq reads a C string: a NUL character would end it there, silently dropping what
    follows (a host, a user); and text holding lone surrogates (bytes that were not UTF-8)
    cannot be passed to it.
    """
    if "\x00" in text:
        return (
            f"holds a NUL character (at index {text.index(chr(0))}), which libpq would take "
            "for its end, ignoring what follows"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"is not UTF-8 text: it holds a lone surrogate at index {exc.start}"
    return None
