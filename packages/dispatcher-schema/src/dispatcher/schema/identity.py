"""What makes two task messages duplicates, for ``on_duplicate``: one definition for all.

Two messages are duplicates when they name the same task with the same ``args`` and
``kwargs``. A service compares :func:`duplicate_identity` in memory; the durable queue
compares :func:`duplicate_key`, its fixed-size digest, in the ``dup_key`` column of its
table (a unique index cannot hold the arguments themselves: an index entry is limited to
about 2.7 kB).

Numbers are written in one canonical form, the one Python, the SQL function and the Node.js
example can all reach. An integer, which is a number whose JSON text written as PostgreSQL's
``numeric`` (so ``jsonb``) writes it has no point (``42``, and ``1e5`` too), is that plain
decimal text. Any other number is read by a service as a double, and is written as that
double's shortest text (Python's ``repr``), in plain decimal: ``10.50`` is ``10.5``, ``1e-7``
``0.0000001``, ``1e16`` (a float from 1e16 on) ``10000000000000000``, ``100.000`` ``100.0``
(an integral float below 1e16 keeps one zero after its point), ``-0.0`` and ``1e-400``
``0.0``. ``1`` and ``1.0`` still differ, as their JSON texts do.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final

_MAY_NEED_CANONICAL: Final = re.compile(r"\de[+-]?\d|-0\.0(?![0-9])")
"""What a number written by ``json.dumps`` looks like when it is not in canonical form."""

_STRING_OR_NUMBER: Final = re.compile(r'"(?:[^"\\]|\\.)*"|-?[0-9][0-9.eE+-]*')


def canonical_number(text: str) -> str:
    """Return the JSON number *text* in canonical form (see the module's docstring).

    ``1e+16`` gives ``10000000000000000``, ``1e-07`` ``0.0000001``, ``10.50`` ``10.5``,
    ``1.50e1`` ``15.0``, ``1e5`` ``100000``, ``-0.0`` ``0.0``; a number in that form already
    is returned as it is.
    """
    written = format(Decimal(text), "f")
    if "." in written:
        number = float(text)  # as a service reads it: correctly rounded, 0.0 when too small
        if math.isfinite(number):  # else no service takes the message: leave it as it is
            written = format(Decimal(repr(number)), "f")
    if written.startswith("-") and not written.strip("-0."):
        return written[1:]  # PostgreSQL's numeric has no negative zero
    return written


def _canonical_token(match: re.Match[str]) -> str:
    token = match.group()
    return token if token.startswith('"') else canonical_number(token)


def duplicate_identity(message: Mapping[str, Any]) -> str:
    """Return the identity of a task *message*: the JSON text of ``[task, args, kwargs]``.

    Keys sorted, no spaces, every character outside printable ASCII written as a JSON
    escape (as Python's ``json.dumps`` does by default), and numbers in canonical form (see
    the module's docstring), so that equal values give equal text whatever the order of
    their keys, and the SQL function and the Node.js example agree.
    """
    parts = [message["task"], message.get("args", []), message.get("kwargs", {})]
    try:
        text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    except TypeError:  # keys of types that do not compare (1 and "b"): as JSON writes them
        text = _with_keys_as_written(parts)
    else:
        if _CONVERTED_KEY.search(text) is not None:  # maybe sorted as numbers: 10 before 9
            text = _with_keys_as_written(parts)
    if _MAY_NEED_CANONICAL.search(text) is None:
        return text  # no float in exponent form, no negative zero: the text is canonical
    return _STRING_OR_NUMBER.sub(_canonical_token, text)


_CONVERTED_KEY: Final = re.compile(r'"(?:null|true|false|-?[0-9][0-9.eE+-]*)":')
"""A key as JSON writes one that was no string in Python (``None``, ``True``, a number)."""


def _with_keys_as_written(parts: list[Any]) -> str:
    """The sorted JSON text of *parts* once its keys are strings, as a service reads them.

    A publisher's arguments may have keys that are no strings (``{1: "a"}``): their order is
    that of the strings JSON writes for them, as in the identity a service computes.
    """
    as_read = json.loads(json.dumps(parts, separators=(",", ":")))
    return json.dumps(as_read, sort_keys=True, separators=(",", ":"))


def duplicate_key(message: Mapping[str, Any]) -> str:
    """Return the hex SHA-256 of :func:`duplicate_identity`: the queue table's ``dup_key``.

    The SQL function ``dispatcher_duplicate_key()`` and the Node.js example compute the same
    value from the same arguments (numbers in canonical form: ``1e16`` and
    ``10000000000000000`` are the same, ``10.50`` and ``10.5`` too, ``1`` and ``1.0`` differ).
    """
    return hashlib.sha256(duplicate_identity(message).encode("ascii")).hexdigest()
