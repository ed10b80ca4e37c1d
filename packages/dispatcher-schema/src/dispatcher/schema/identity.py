"""What makes two task messages duplicates, for ``on_duplicate``: one definition for all.

Two messages are duplicates when they name the same task with the same ``args`` and
``kwargs``. A service compares :func:`duplicate_identity` in memory; the durable queue
compares :func:`duplicate_key`, its fixed-size digest, in the ``dup_key`` column of its
table (a unique index cannot hold the arguments themselves: an index entry is limited to
about 2.7 kB).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any


def duplicate_identity(message: Mapping[str, Any]) -> str:
    """Return the identity of a task *message*: the JSON text of ``[task, args, kwargs]``.

    Keys sorted, no spaces, every character outside printable ASCII written as a JSON
    escape (as Python's ``json.dumps`` does by default), so that equal values give equal
    text whatever the order of their keys.
    """
    parts = [message["task"], message.get("args", []), message.get("kwargs", {})]
    return json.dumps(parts, sort_keys=True, separators=(",", ":"))


def duplicate_key(message: Mapping[str, Any]) -> str:
    """Return the hex SHA-256 of :func:`duplicate_identity`: the queue table's ``dup_key``.

    The SQL function ``dispatcher_duplicate_key()`` and the Node.js example compute the same
    value from the same arguments (numbers compare as JSON writes them: ``1`` and ``1.0``
    differ).
    """
    return hashlib.sha256(duplicate_identity(message).encode("ascii")).hexdigest()
