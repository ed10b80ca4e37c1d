"""What the service's log lines look like, and a uuid that tries to forge one."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Final

FORGED: Final = "x\nCRITICAL dispatcher.service: FORGED LINE"
"""A uuid that would start a log line of its own if it were written unescaped."""
FORGED_SHOWN: Final = "x\\nCRITICAL dispatcher.service: FORGED LINE"
"""How the service writes :data:`FORGED` (escaped)."""

LINE_START: Final = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) "
)
"""How every line the service writes begins, unless it continues a record (indented)."""


def assert_every_line_is_ours(log: str) -> None:
    """Fail on any line of *log* that neither starts a record nor continues one."""
    for line in log.splitlines():
        assert LINE_START.match(line) or line.startswith("  | "), f"line not ours: {line!r}"


def logged_at(line: str) -> datetime:
    """When the service wrote the record *line* starts (its time stamp, to the millisecond)."""
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
