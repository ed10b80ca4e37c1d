r"""Python strings that PostgreSQL cannot hold as ``text``, found before they are sent.

A ``str`` may hold a NUL character, which ``text`` never does, and lone surrogates (such as
``"\udcff"`` from ``os.fsdecode()``), which UTF-8 cannot encode. Sent as a parameter, the
first is refused by the server (aborting the transaction it was sent in), the second by the
client's encoder. What the SDK writes as JSON is safe: its JSON text escapes both.

A database whose encoding is not UTF8 (nor ``SQL_ASCII``) also refuses the characters its
encoding lacks (``€`` in ``LATIN1``). For the encodings whose PostgreSQL tables Python's
codecs match (:data:`CHECKED_IN_ADVANCE`), :func:`unstorable` finds them before sending, to
name the value. The others (``EUC_JP``: PostgreSQL's holds ``①``, Python's codec lacks it)
are left to the server, whose refusal :func:`refused_character` reads the character from.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
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


CHECKED_IN_ADVANCE: Final[Mapping[str, str]] = {
    **{
        f"LATIN{n}": f"iso8859-{part}"
        for n, part in enumerate((1, 2, 3, 4, 9, 10, 13, 14, 15, 16), 1)
    },
    **{f"WIN{n}": f"cp{n}" for n in (866, 874, *range(1250, 1259))},
    **{f"ISO_8859_{n}": f"iso8859-{n}" for n in range(5, 9)},
    "KOI8R": "koi8-r",
    "KOI8U": "koi8-u",
}
"""Database encodings whose characters are checked before sending, and Python's codec of each.

Single-byte encodings whose PostgreSQL conversion tables Python's codecs match (a test
checks every byte). Python's codecs of the multi-byte ones (``EUC_JP``, ``EUC_KR``...) lack
characters PostgreSQL's tables hold: text for those is sent, and the server judges it."""


def python_codec(pg_encoding: str | None) -> str | None:
    """Python's codec for the database encoding *pg_encoding*, if it is checked in advance.

    ``None`` when the encoding holds any text (:data:`HOLDS_ANY_TEXT`), or its characters are
    not checked here (:data:`CHECKED_IN_ADVANCE`): the server's refusal says it then.
    """
    if not pg_encoding:
        return None
    return CHECKED_IN_ADVANCE.get(pg_encoding.upper())


def checked_by_the_server(pg_encoding: str | None) -> bool:
    """Whether a database in *pg_encoding* may refuse text that was not checked in advance."""
    if not pg_encoding:
        return True  # unknown
    name = pg_encoding.upper()
    return name not in HOLDS_ANY_TEXT and name not in CHECKED_IN_ADVANCE


def client_codec(pg_encoding: str | None) -> str | None:
    """Python's codec for the client encoding *pg_encoding* (psycopg encodes text with it).

    ``None`` when it holds any text, or is unknown here.
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
    fields: Iterable[tuple[str, Any]],
    encodings: Iterable[str | None],
    client_encoding: str | None = None,
) -> tuple[str, str, str] | None:
    """``(name, character, encoding)``: the first field with a character an encoding lacks.

    *fields* are ``(name, value)`` pairs; *encodings* are PostgreSQL's names of the
    database's encoding, *client_encoding* a connection's own. ``None`` when every character
    fits, or when that cannot be told here (see :func:`python_codec`).
    """
    codecs = [(name, codec) for name in encodings if name and (codec := python_codec(name))]
    if client_encoding and (codec := client_codec(client_encoding)):
        codecs.append((client_encoding, codec))
    if not codecs:
        return None
    for field, value in fields:
        for encoding, codec in codecs:
            character = lacked_character(value, codec)
            if character is not None:
                return field, character, encoding
    return None


_REFUSED: Final = re.compile(r'byte sequence ((?:0x[0-9a-f]{2} ?)+) in encoding "([^"]+)"')
"""Where PostgreSQL's refusal of a character names it (in English: its messages may be
translated, as ``lc_messages`` says)."""


def refused_character(message: str) -> str | None:
    """The character a PostgreSQL error *message* says an encoding lacks, if it says so.

    ``character with byte sequence 0xf0 0x9f 0x98 0x80 in encoding "UTF8" has no
    equivalent in encoding "EUC_JP"``: ``"\U0001f600"``.
    """
    found = _REFUSED.search(message)
    if found is None:
        return None
    codec = client_codec(found[2]) or "utf-8"
    try:
        return bytes(int(part, 16) for part in found[1].split()).decode(codec)
    except (UnicodeDecodeError, LookupError):
        return None


def holds(value: Any, character: str) -> bool:
    """Whether a text in *value* (a str, or JSON's lists and dicts of them) holds *character*."""
    if isinstance(value, str):
        return character in value
    if isinstance(value, list | tuple):
        return any(holds(item, character) for item in value)
    if isinstance(value, Mapping):
        return any(holds(key, character) or holds(item, character) for key, item in value.items())
    return False


def field_holding(fields: Iterable[tuple[str, Any]], character: str) -> str | None:
    """The name of the first of *fields* (``(name, value)`` pairs) holding *character*."""
    return next((name for name, value in fields if holds(value, character)), None)


def unstorable_reason(character: str, encoding: str | None) -> str:
    """Why a value holding *character* is refused by a database in *encoding*."""
    where = f"the database's encoding ({encoding})" if encoding else "the database's encoding"
    return f"holds {character!r} (U+{ord(character):04X}), a character {where} lacks"


def job_not_storable(
    rows: Sequence[Sequence[Any]],
    encodings: Iterable[str | None],
    client_encoding: str | None = None,
) -> InvalidSubmission | None:
    """The error naming the job and the value of *rows* that *encodings* cannot store.

    *rows* are the columns of the jobs to store: uuids, queues, tasks, messages' JSON texts
    (see ``dispatcher.publish.pg_queue.JobRows``). ``None`` when none is found.
    """
    encodings = list(encodings)
    for task, fields in _job_fields(rows):
        found = unstorable(fields, encodings, client_encoding)
        if found is not None:
            field, character, encoding = found
            return _not_storable(task, field, character, encoding)
    return None


def job_refused(
    rows: Sequence[Sequence[Any]], encoding: str | None, message: str
) -> InvalidSubmission | None:
    """The error naming the job and the value of *rows* the database refused, if found.

    From the server's error *message* (see :func:`refused_character`), for a database in
    *encoding* whose characters are not checked in advance.
    """
    character = refused_character(message)
    if character is None:
        return None
    for task, fields in _job_fields(rows):
        field = field_holding(fields, character)
        if field is not None:
            return _not_storable(task, field, character, encoding)
    return None


def _job_fields(rows: Sequence[Sequence[Any]]) -> Iterator[tuple[str, list[tuple[str, Any]]]]:
    """Each job of *rows*: its task, and its fields as ``(name, value)`` pairs."""
    for uuid, queue, task, text in zip(*rows[:4], strict=True):
        try:
            message = decode_json(text)
        except DecodeError:
            message = {}
        fields = [("uuid", uuid), ("queue", queue), ("task", task)]
        if isinstance(message, dict):
            fields += [(k, v) for k, v in message.items() if k not in ("uuid", "task")]
        yield task, fields


def _not_storable(task: str, field: str, character: str, encoding: str | None) -> InvalidSubmission:
    return InvalidSubmission(
        f"cannot submit {task!r}: {field}: {unstorable_reason(character, encoding)};"
        " nothing was sent"
    )
