"""What the log line of a ``cancel`` command says: its filter, and the tasks it cancelled.

``control cancel (uuid='u1'): cancelled 1 task: app.export (uuid u1, worker-1)``: of many,
the first :data:`CANCELLED_SHOWN` are named, and ``...`` stands for the others.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from dispatcher.server.log_arguments import Phrase

CANCELLED_SHOWN: Final = 3
"""Cancelled tasks a ``cancel`` log line names (the others are counted)."""


def filter_text(data: Mapping[str, Any]) -> Phrase:
    """The filter of a ``cancel`` command, for its log line."""
    if data.get("all"):
        return Phrase("all")
    keys = [key for key in ("uuid", "task", "args", "kwargs") if key in data]
    shown = [Phrase(f"{key}=%s", repr(data[key])) for key in keys]
    return Phrase.joined(", ", shown) if shown else Phrase("no filter")


def cancelled_text(listed: Mapping[str, Mapping[str, Any]], count: int) -> Phrase:
    """The first tasks a ``cancel`` command cancelled (of *count*), for its log line."""
    if not count:
        return Phrase("")
    shown = list(listed.values())[:CANCELLED_SHOWN]
    named = Phrase.joined(
        ", ",
        (
            Phrase("%s (uuid %s, %s)", entry.get("task"), entry["uuid"], entry["where"])
            for entry in shown
        ),
    )
    more = ", ..." if count > len(shown) else ""
    return Phrase(": " + named.text + more, *named.args)
