"""FailureLog: a failure that goes on for one cause is logged once, then once a minute."""

from __future__ import annotations

import logging

import pytest

from dispatcher.server.ratelimit import FailureLog


def test_one_line_per_cause_then_one_a_window_with_the_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="test.failures")
    now = [0.0]
    lines = FailureLog(logging.getLogger("test.failures"), window=60, clock=lambda: now[0])
    slots = "too many connections for role x"
    for n in range(32):  # an attempt every 2 s, retrying in 2 s each time
        now[0] = n * 2.0
        lines.log(slots, "connection failed (%s); retrying in %.1f s", slots, 2.0 + n % 3)
    lines.log("the server is gone", "connection failed (%s)", "the server is gone")
    now[0] = 200.0
    lines.log("another 1.5 s", "x (%s)", "another 1.5 s")
    lines.log("another 2.5 s", "x (%s)", "another 2.5 s")  # numbers aside, the same cause
    assert lines.ended() == 1
    lines.log("another 3.5 s", "x (%s)", "another 3.5 s")  # after a success: at once
    said = [(r.levelno, r.getMessage()) for r in caplog.records]
    warnings = [text for level, text in said if level == logging.WARNING]
    assert warnings == [
        f"connection failed ({slots}); retrying in 2.0 s",
        f"connection failed ({slots}); retrying in 2.0 s (29 similar failures since the last line)",
        "connection failed (the server is gone) (after 1 more failure like the last line)",
        "x (another 1.5 s)",
        "x (another 3.5 s)",
    ]
    assert len([level for level, _ in said if level == logging.DEBUG]) == 29 + 1 + 1
