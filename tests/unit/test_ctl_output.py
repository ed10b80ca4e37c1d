"""``dispatcherctl`` shows replies from outside without letting them forge terminal lines."""

from __future__ import annotations

from dispatcher.control import ControlResult
from dispatcher.server.ctl import render


def test_replies_cannot_start_lines_or_send_terminal_sequences() -> None:
    result = ControlResult(
        "running",
        replies=[
            {
                "node_id": "host-a\nhost-b:",
                "note\u2028key": "value\r\x1b[2J\x00",
                "tasks": [{"uuid": "u\nhost-c:", "task": "t\u202e", "message": {"a": "\n"}}],
            }
        ],
    )
    assert render(result).splitlines() == [
        "host-a\\nhost-b::",
        "  note\\u2028key: value\\r\\x1b[2J\\x00",
        "  tasks:",
        "    uuid        task",
        "    u\\nhost-c:  t\\u202e",
    ]
