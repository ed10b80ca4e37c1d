"""Small parts of the service: the worker line protocol, backoff, rate-limited logs."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from dispatcher.server.backoff import Backoff
from dispatcher.server.protocol import LineReader, LineTooLong, event_line, read_line, run_line
from dispatcher.server.ratelimit import RateLimitedLog, flush_suppressed


def test_line_reader_joins_partial_reads() -> None:
    reader = LineReader()
    assert reader.feed(b'{"a":') == []
    assert reader.feed(b'1}\n{"b"') == [b'{"a":1}']
    assert reader.feed(b":2}\n\n") == [b'{"b":2}', b""]


@pytest.mark.parametrize(
    "feeds",
    [
        [b"x" * 11],  # no newline yet, already too long
        [b"x" * 6, b"x" * 5],  # too long only once joined
        [b"ok\n" + b"x" * 11 + b"\nok\n"],  # a complete line, too long
        [b"ok\nxxxxxx", b"xxxxx\n"],  # the end of a line, too long with its start
    ],
)
def test_line_reader_refuses_a_line_past_its_limit(feeds: list[bytes]) -> None:
    reader = LineReader(max_line=10)
    *first, last = feeds
    for data in first:
        reader.feed(data)
    with pytest.raises(LineTooLong, match="a line of more than 10 bytes"):
        reader.feed(last)


def test_line_reader_takes_lines_up_to_its_limit() -> None:
    reader = LineReader(max_line=10)
    assert reader.feed(b"x" * 10 + b"\n" + b"y" * 6) == [b"x" * 10]
    assert reader.feed(b"y" * 4) == []
    assert reader.feed(b"\n") == [b"y" * 10]


def test_run_line_keeps_the_message_text_on_one_line() -> None:
    line = run_line('{"task":\r\n "t", "args": ["multi\\nline"]}', "chan")
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert json.loads(line) == {
        "op": "run",
        "channel": "chan",
        "message": {"task": "t", "args": ["multi\nline"]},
    }


def test_event_line() -> None:
    assert event_line({"event": "ready", "tasks": ["a"]}) == b'{"event":"ready","tasks":["a"]}\n'


@pytest.mark.parametrize(
    "event", [{"event": "ready", "tasks": ["a"]}, {"event": "done", "result": None, "é": "ü"}, []]
)
def test_read_line_reads_what_the_lines_hold(event: Any) -> None:
    assert read_line(event_line(event).rstrip(b"\n")) == event
    assert read_line(run_line('{"task":"t"}', "c")[:-1])["message"] == {"task": "t"}


@pytest.mark.parametrize("line", [b' {"a":1} ', b'{"a":1}  ', b"  7"])
def test_read_line_takes_outer_whitespace(line: bytes) -> None:
    assert read_line(line) == json.loads(line)


@pytest.mark.parametrize("line", [b'{"a":1} x', b'{"a":1}{}', b"", b"{", b"\xff{}", b"[1,]"])
def test_read_line_refuses_what_is_not_one_json_value(line: bytes) -> None:
    with pytest.raises((json.JSONDecodeError, UnicodeDecodeError)):
        read_line(line)


def test_backoff_doubles_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(initial=1, maximum=5)
    delays = [backoff.next_delay() for _ in range(5)]
    for delay, expected in zip(delays, [1, 2, 4, 5, 5], strict=True):
        assert expected * 0.9 <= delay <= expected * 1.1
    backoff.reset()
    assert backoff.next_delay() <= 1.1


def test_backoff_jitter_never_goes_above_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("random.uniform", lambda low, high: high)  # the largest jitter
    backoff = Backoff(initial=1, maximum=5)
    delays = [backoff.next_delay() for _ in range(6)]
    assert delays[:3] == pytest.approx([1.1, 2.2, 4.4])
    assert delays[3:] == [5, 5, 5]


def test_rate_limited_log_says_what_it_held_back(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = RateLimitedLog(
        logging.getLogger("test.ratelimit"), logging.WARNING, per_second=2, clock=lambda: now[0]
    )
    with caplog.at_level(logging.WARNING, logger="test.ratelimit"):
        for n in range(5):
            log.log("event %d", n)
        now[0] = 1.5
        log.log("event %d", 5)
    assert [r.getMessage() for r in caplog.records] == [
        "event 0",
        "event 1",
        "event 5 (3 similar lines suppressed)",
    ]


def test_lines_held_back_before_a_silence_are_reported_by_the_flush(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    log = RateLimitedLog(
        logging.getLogger("test.ratelimit"), logging.WARNING, per_second=2, clock=lambda: now[0]
    )
    with caplog.at_level(logging.WARNING, logger="test.ratelimit"):
        for n in range(5):
            log.log("rejected message %d: %s", n, "why")
        flush_suppressed()  # within the second: not yet
        now[0] = 1.5
        flush_suppressed()
        flush_suppressed()  # once
        log.log("rejected message %d: %s", 5, "why")
        log.log("rejected message %d: %s", 6, "why")
        log.log("rejected message %d: %s", 7, "why")
        flush_suppressed(now=True)  # the service stops: within the second
    mine = [r for r in caplog.records if r.name == "test.ratelimit"]  # others flush too
    assert [r.getMessage() for r in mine] == [
        "rejected message 0: why",
        "rejected message 1: why",
        "3 similar lines suppressed (the last: rejected message 4: why)",
        "rejected message 5: why",
        "rejected message 6: why",
        "1 similar line suppressed (the last: rejected message 7: why)",
    ]


def test_a_rate_limited_log_over_a_longer_window_counts_until_it_is_over(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    log = RateLimitedLog(
        logging.getLogger("test.ratelimit"), logging.INFO, 1, lambda: now[0], window=60.0
    )
    with caplog.at_level(logging.INFO, logger="test.ratelimit"):
        assert log.log("lost %d", 0)
        for n in range(1, 4):
            now[0] = n * 10.0
            assert not log.log("lost %d", n)
            flush_suppressed()  # the minute is not over: nothing yet
        now[0] = 61.0
        flush_suppressed()
        now[0] = 130.0
        assert log.log("lost %d", 4)
    mine = [r.getMessage() for r in caplog.records if r.name == "test.ratelimit"]
    assert mine == ["lost 0", "3 similar lines suppressed (the last: lost 3)", "lost 4"]
