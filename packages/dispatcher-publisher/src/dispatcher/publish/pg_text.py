r"""Python strings that PostgreSQL cannot hold as ``text``, found before they are sent.

A ``str`` may hold a NUL character, which ``text`` never does, and lone surrogates (such as
``"\udcff"`` from ``os.fsdecode()``), which UTF-8 cannot encode. Sent as a parameter, the
first is refused by the server (aborting the transaction it was sent in), the second by the
client's encoder. What the SDK writes as JSON is safe: its JSON text escapes both.

A database whose encoding is not UTF8 (nor ``SQL_ASCII``) also refuses the characters its
encoding lacks (``€`` in ``LATIN1``): :func:`unstorable` finds them, to name the value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from dispatcher.publish.errors import InvalidSubmission
from dispatcher.schema import DecodeError, decode_json


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


HOLDS_ANY_TEXT: Final = frozenset({"UTF8", "SQL_ASCII"})
"""Database encodings that store any UTF-8 text (``SQL_ASCII`` stores the bytes it gets)."""


def python_codec(pg_encoding: str | None) -> str | None:
    """Python's codec for the PostgreSQL encoding *pg_encoding*.

    ``None`` when the encoding holds any text (:data:`HOLDS_ANY_TEXT`), or is unknown here
    (nothing can be checked before sending then: the server's refusal says it).
    """
    if not pg_encoding or pg_encoding.upper() in HOLDS_ANY_TEXT:
        return None
    try:
        from psycopg._encodings import pg2pyenc  # the names psycopg itself maps

        return pg2pyenc(pg_encoding.encode("ascii", "replace"))
    except Exception:  # an encoding psycopg does not know, or psycopg's internals changed
        return None


def lacked_character(value: Any, codec: str) -> str | None:
    """The first character of a text in *value* that *codec* cannot encode, if any.

    *value* is a str, or JSON's lists and dicts of them (keys included).
    """
    if isinstance(value, str):
        if value.isascii():
            return None
        try:
            value.encode(codec)
        except UnicodeEncodeError as exc:
            return value[exc.start]
        except LookupError:
            return None
        return None
    if isinstance(value, list | tuple):
        items: Iterable[Any] = value
    elif isinstance(value, Mapping):
        items = (item for pair in value.items() for item in pair)
    else:
        return None
    for item in items:
        found = lacked_character(item, codec)
        if found is not None:
            return found
    return None


def unstorable(
    fields: Iterable[tuple[str, Any]], encodings: Iterable[str | None]
) -> tuple[str, str, str] | None:
    """``(name, character, encoding)``: the first field with a character an encoding lacks.

    *fields* are ``(name, value)`` pairs; *encodings* are PostgreSQL's names of the
    database's encoding (and of a connection's). ``None`` when every character fits, or when
    that cannot be told here (see :func:`python_codec`).
    """
    codecs = [(name, codec) for name in encodings if name and (codec := python_codec(name))]
    if not codecs:
        return None
    for field, value in fields:
        for encoding, codec in codecs:
            character = lacked_character(value, codec)
            if character is not None:
                return field, character, encoding
    return None


def unstorable_reason(character: str, encoding: str | None) -> str:
    """Why a value holding *character* is refused by a database in *encoding*."""
    where = f"the database's encoding ({encoding})" if encoding else "the database's encoding"
    return f"holds {character!r} (U+{ord(character):04X}), a character {where} lacks"


def job_not_storable(
    rows: Sequence[Sequence[Any]], encodings: Iterable[str | None]
) -> InvalidSubmission | None:
    """The error naming the job and the value of *rows* that *encodings* cannot store.

    *rows* are the columns of the jobs to store: uuids, queues, tasks, messages' JSON texts
    (see ``dispatcher.publish.pg_queue.JobRows``). ``None`` when none is found.
    """
    encodings = list(encodings)
    for uuid, queue, task, text in zip(*rows[:4], strict=True):
        try:
            message = decode_json(text)
        except DecodeError:
            message = {}
        fields = [("uuid", uuid), ("queue", queue), ("task", task)]
        if isinstance(message, dict):
            fields += [(k, v) for k, v in message.items() if k not in ("uuid", "task")]
        found = unstorable(fields, encodings)
        if found is not None:
            field, character, encoding = found
            return InvalidSubmission(
                f"cannot submit {task!r}: {field}: {unstorable_reason(character, encoding)};"
                " nothing was sent"
            )
    return None
